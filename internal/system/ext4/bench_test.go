package ext4

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// debianLikeTar generates a synthetic root filesystem resembling Debian:
// thousands of small files, some medium and big ones, symlinks, hard links,
// setuid binaries, device nodes and capability xattrs. It returns the tar
// and the regular-file byte count.
func debianLikeTar(t testing.TB, scale float64) ([]byte, int64) {
	rng := rand.New(rand.NewChaCha8([32]byte{1}))
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	mt := time.Unix(1700000000, 0)
	var data int64
	write := func(h *tar.Header, body []byte) {
		h.ModTime = mt
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(body))
			data += h.Size
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if len(body) > 0 {
			if _, err := tw.Write(body); err != nil {
				t.Fatal(err)
			}
		}
	}
	blob := make([]byte, 32<<20)
	for i := range blob {
		blob[i] = byte(rng.Uint32())
	}
	body := func(n int) []byte {
		off := rng.IntN(len(blob) - n)
		return blob[off : off+n]
	}
	top := []string{"bin", "etc", "lib", "sbin", "var/lib/dpkg/info", "var/log", "usr/bin", "usr/sbin", "usr/lib/x86_64-linux-gnu", "usr/share/doc", "usr/share/locale", "usr/share/man/man1", "usr/lib/python3/dist-packages"}
	write(&tar.Header{Typeflag: tar.TypeDir, Name: "./", Mode: 0o755}, nil)
	made := map[string]bool{}
	mkdir := func(d string) {
		parts := strings.Split(d, "/")
		for i := range parts {
			p := strings.Join(parts[:i+1], "/")
			if !made[p] {
				made[p] = true
				write(&tar.Header{Typeflag: tar.TypeDir, Name: "./" + p + "/", Mode: 0o755}, nil)
			}
		}
	}
	var files []string
	nSmall := int(6000 * scale)
	for i := 0; i < nSmall; i++ {
		d := fmt.Sprintf("%s/pkg%03d", top[i%len(top)], i%150)
		mkdir(d)
		name := fmt.Sprintf("./%s/file%05d", d, i)
		write(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644}, body(512+rng.IntN(15<<10)))
		files = append(files, name)
	}
	for i := 0; i < int(300*scale); i++ {
		mkdir("usr/lib/x86_64-linux-gnu")
		write(&tar.Header{Typeflag: tar.TypeReg, Name: fmt.Sprintf("./usr/lib/x86_64-linux-gnu/lib%03d.so.1", i), Mode: 0o644}, body(100<<10+rng.IntN(400<<10)))
	}
	for i := 0; i < int(10*scale); i++ {
		mkdir("usr/lib/big")
		write(&tar.Header{Typeflag: tar.TypeReg, Name: fmt.Sprintf("./usr/lib/big/blob%02d", i), Mode: 0o755}, body(15<<20))
	}
	for i := 0; i < 20; i++ {
		write(&tar.Header{Typeflag: tar.TypeReg, Name: fmt.Sprintf("./usr/bin/suid%02d", i), Mode: 0o4755}, body(40<<10))
	}
	write(&tar.Header{Typeflag: tar.TypeReg, Name: "./usr/bin/ping", Mode: 0o755, Format: tar.FormatPAX,
		PAXRecords: map[string]string{"SCHILY.xattr.security.capability": string(capV2)}}, body(60<<10))
	for i := 0; i < int(800*scale); i++ {
		write(&tar.Header{Typeflag: tar.TypeSymlink, Name: fmt.Sprintf("./usr/bin/alias%04d", i), Linkname: strings.TrimPrefix(files[rng.IntN(len(files))], "."), Mode: 0o777}, nil)
	}
	for i := 0; i < int(100*scale); i++ {
		write(&tar.Header{Typeflag: tar.TypeLink, Name: fmt.Sprintf("./usr/bin/hard%03d", i), Linkname: files[i]}, nil)
	}
	mkdir("dev")
	write(&tar.Header{Typeflag: tar.TypeChar, Name: "./dev/null", Mode: 0o666, Devmajor: 1, Devminor: 3}, nil)
	write(&tar.Header{Typeflag: tar.TypeChar, Name: "./dev/console", Mode: 0o600, Devmajor: 5, Devminor: 1}, nil)
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes(), data
}

// BenchmarkTarToExt4 compares the chosen way (extract, mkfs.ext4 -d, one
// debugfs fixup batch) with fakeroot + tar + mkfs.ext4 -d, on a ~300 MB
// Debian-like root. MB/s is regular-file data per second.
func BenchmarkTarToExt4(b *testing.B) {
	e := testExt4(b)
	tarball, data := debianLikeTar(b, 1)
	dir := b.TempDir()
	size := autoSize(data+int64(len(tarball))/8, 20000)
	b.Logf("tar %d MB, file data %d MB, image %d MB", len(tarball)>>20, data>>20, size>>20)
	b.Run("banger", func(b *testing.B) {
		b.SetBytes(data)
		benchBuilds(b, e, filepath.Join(dir, "a.ext4"), func(img string) error {
			_, err := e.BuildExt4FromTar(context.Background(), img, bytes.NewReader(tarball), size)
			return err
		})
	})
	b.Run("fakeroot-tar-mkfs", func(b *testing.B) {
		fr, err := exec.LookPath("fakeroot")
		if err != nil {
			b.Skip("fakeroot not installed (apt-get install fakeroot)")
		}
		// Without --xattrs: with them mkfs.ext4 1.47.0 under fakeroot fails
		// on the security.capability file ("File not found by ext2_lookup
		// while populating file system"), so this way cannot keep xattrs.
		b.SetBytes(data)
		for i := 0; i < b.N; i++ {
			img := filepath.Join(dir, "f.ext4")
			stage := filepath.Join(dir, "stage")
			os.Mkdir(stage, 0o755)
			f, _ := os.Create(img)
			f.Truncate(size)
			f.Close()
			cmd := exec.Command(fr, "--", "sh", "-c", `tar -xpf - -C "$1" && "$2" -q -F -E `+MkfsExtraOptions+` -d "$1" "$3"`, "sh", stage, e.tools[toolMkfs], img)
			cmd.Stdin = bytes.NewReader(tarball)
			if out, err := cmd.CombinedOutput(); err != nil {
				b.Fatalf("fakeroot: %v %s", err, out)
			}
			b.StopTimer()
			removeAllForce(stage)
			os.Remove(img)
			b.StartTimer()
		}
	})
}

// seedTar is a /root with 200 files like a developer's dotfiles.
func seedTar(b testing.TB) []byte {
	rng := rand.New(rand.NewChaCha8([32]byte{2}))
	var ents []tarEnt
	ents = append(ents, dirEnt("./", 0o755, 0, 0), dirEnt("./root/", 0o700, 0, 0))
	for d := 0; d < 10; d++ {
		ents = append(ents, dirEnt(fmt.Sprintf("./root/.config/app%d/", d), 0o755, 0, 0))
	}
	for i := 0; i < 200; i++ {
		data := make([]byte, 100+rng.IntN(20<<10))
		for j := range data {
			data[j] = byte('a' + rng.IntN(26))
		}
		ents = append(ents, fileEnt(fmt.Sprintf("./root/.config/app%d/f%03d", i%10, i), 0o644, 0, 0, string(data)))
	}
	return buildTar(b, ents)
}

// BenchmarkWorkDisk builds an 8 GiB work disk from a 200-file seed, against
// the naive way: copy a 512 MiB seed image, e2fsck -fp, resize2fs to 8 GiB.
func BenchmarkWorkDisk(b *testing.B) {
	e := testExt4(b)
	ctx := context.Background()
	dir := b.TempDir()
	rootfs := filepath.Join(dir, "rootfs.ext4")
	if _, err := e.BuildExt4FromTar(ctx, rootfs, bytes.NewReader(seedTar(b)), 0); err != nil {
		b.Fatal(err)
	}
	seed := filepath.Join(dir, "work-seed.ext4")
	if _, err := e.BuildWorkSeed(ctx, rootfs, seed); err != nil {
		b.Fatal(err)
	}
	inject := []InjectedFile{{Path: ".ssh/authorized_keys", Data: []byte("ssh-ed25519 AAAA bench\n"), Mode: 0o600}}
	b.Run("banger", func(b *testing.B) {
		benchBuilds(b, e, filepath.Join(dir, "work.ext4"), func(disk string) error {
			_, err := e.BuildWorkDisk(ctx, WorkDiskSpec{Path: disk, SeedPath: seed, Inject: inject})
			return err
		})
	})
	b.Run("naive-copy512M-fsck-resize", func(b *testing.B) {
		// The old way: a 512 MiB seed image, copied whole then grown.
		seed512 := filepath.Join(dir, "seed512.ext4")
		stage := b.TempDir()
		if _, err := e.RdumpExt4Dir(ctx, seed, "/", stage); err != nil {
			b.Fatal(err)
		}
		if _, err := os.Stat(seed512); err != nil {
			if err := e.CreateExt4(ctx, seed512, 512<<20, CreateOptions{SourceDir: stage}); err != nil {
				b.Fatal(err)
			}
		}
		for i := 0; i < b.N; i++ {
			disk := filepath.Join(dir, "naive.ext4")
			in, _ := os.Open(seed512)
			out, _ := os.Create(disk)
			if _, err := io.Copy(out, in); err != nil {
				b.Fatal(err)
			}
			in.Close()
			out.Truncate(8 << 30)
			out.Close()
			if o, err := exec.Command(e.tools[toolE2fsck], "-fp", disk).CombinedOutput(); err != nil {
				b.Fatalf("e2fsck: %v %s", err, o)
			}
			if o, err := exec.Command(e.tools[toolResize2fs], disk).CombinedOutput(); err != nil {
				b.Fatalf("resize2fs: %v %s", err, o)
			}
			b.StopTimer()
			os.Remove(disk)
			b.StartTimer()
		}
	})
}

// benchBuilds times build making the image at img b.N times; the first image is checked
// with e2fsck, and each is removed (outside the timer) before the next.
func benchBuilds(b *testing.B, e *Toolkit, img string, build func(img string) error) {
	b.Helper()
	for i := 0; i < b.N; i++ {
		if err := build(img); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		if i == 0 {
			mustFsck(b, e, img)
		}
		os.Remove(img)
		b.StartTimer()
	}
}
