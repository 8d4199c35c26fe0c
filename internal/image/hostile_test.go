package image

// Hostile inputs through the real ingestion paths (issue 14 items 1, 2 and 6): each test
// builds the attack itself and drives `image import` or an OCI pull end to end.

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/banger-vm/banger/internal/system/ext4/ext4test"
)

// sled makes the attack independent of where debugfs's 8 KiB fgets cuts the line: the
// tail after the cut starts with blanks, which debugfs skips before it sees the '!'.
var sled = strings.Repeat(" ", 8190)

// debugfsAttacks are tar entries that, on a builder which passes them to a debugfs script
// unbounded, make debugfs run `touch MARKER` through system(3).
// The command takes the marker's path from the environment: a '/' would split a tar name.
func debugfsAttacks() map[string][]ent {
	const cmd = "!touch $BANGER_TEST_MARKER #"
	return map[string][]ent{
		// Attack A: FIFOs and devices are never created on the host (so NAME_MAX never
		// bounds them); they are made by `mknod NAME` in the debugfs batch.
		"fifo-long-name": {dir("./", 0o755), dir("dev/", 0o755),
			{name: "dev/x" + sled + cmd, typ: tar.TypeFifo, mode: 0o644}},
		"chardev-long-name": {dir("./", 0o755), dir("dev/", 0o755),
			{name: "dev/y" + sled + cmd, typ: tar.TypeChar, mode: 0o600, major: 1, minor: 3}},
		// Attack B: an xattr name goes into an `ea_set` line.
		"xattr-long-name": {dir("./", 0o755), dir("etc/", 0o755),
			{name: "etc/f", body: "x", typ: tar.TypeReg, mode: 0o644,
				pax: map[string]string{"SCHILY.xattr.user." + sled + cmd: "v"}}},
	}
}

func TestIngestRefusesDebugfsInjection(t *testing.T) {
	ctx := context.Background()
	for _, via := range []string{"import", "oci"} {
		for _, name := range []string{"fifo-long-name", "chardev-long-name", "xattr-long-name"} {
			t.Run(via+"-"+name, func(t *testing.T) {
				m := newTestManager(t)
				marker := filepath.Join(t.TempDir(), "pwned")
				t.Setenv("BANGER_TEST_MARKER", marker)
				data := mkTar(t, debugfsAttacks()[name])
				var err error
				switch via {
				case "import":
					p := filepath.Join(t.TempDir(), "evil.tar")
					if werr := os.WriteFile(p, data, 0o600); werr != nil {
						t.Fatal(werr)
					}
					_, err = m.Import(ctx, ImportOptions{Name: "evil", Path: p, NoKernel: true})
				case "oci":
					ref, _ := pushImage(t, serveRegistry(t, nil), "evil/"+name+":v1", data)
					_, err = m.Pull(ctx, PullOptions{Ref: ref, NoKernel: true})
				}
				if _, serr := os.Lstat(marker); serr == nil {
					t.Fatalf("debugfs ran a command from the image: %s exists (err=%s)", marker, short(err))
				}
				if err == nil {
					t.Fatal("a tar entry with an over-long name was accepted")
				}
				if !strings.Contains(err.Error(), "longer than 255 bytes") {
					t.Errorf("error does not say what is wrong: %s", short(err))
				}
				assertNothingRegistered(t, m)
			})
		}
	}
}

// short keeps a test log readable when an error quotes an 8 KiB name.
func short(err error) string {
	s := fmt.Sprint(err)
	if len(s) > 400 {
		s = strings.Join(strings.Fields(s), " ")
	}
	if len(s) > 400 {
		s = s[:200] + " ... " + s[len(s)-200:]
	}
	return s
}

// paxRecord encodes one PAX record ("LEN key=value\n", LEN counting itself).
func paxRecord(k, v string) string {
	body := " " + k + "=" + v + "\n"
	n := len(body) + 1
	for len(fmt.Sprint(n))+len(body) != n {
		n = len(fmt.Sprint(n)) + len(body)
	}
	return fmt.Sprint(n) + body
}

// rawTarHeader is a ustar header block; archive/tar's writer refuses to emit the PAX
// GNU.sparse records an attacker would, so the test writes the blocks itself.
func rawTarHeader(name string, typ byte, size int64) []byte {
	h := make([]byte, 512)
	copy(h[0:], name)
	copy(h[100:], "0000644\x00")
	copy(h[108:], "0000000\x00")
	copy(h[116:], "0000000\x00")
	copy(h[124:], fmt.Sprintf("%011o\x00", size))
	copy(h[136:], fmt.Sprintf("%011o\x00", 1700000000))
	h[156] = typ
	copy(h[257:], "ustar\x0000")
	copy(h[148:], "        ")
	sum := 0
	for _, c := range h {
		sum += int(c)
	}
	copy(h[148:], fmt.Sprintf("%06o\x00 ", sum))
	return h
}

func pad512(b []byte) []byte {
	if r := len(b) % 512; r != 0 {
		b = append(b, make([]byte, 512-r)...)
	}
	return b
}

// sparseBomb is a ~3 KB PAX (GNU sparse 1.0) tar whose one file reads as 64 GiB of zeros.
func sparseBomb(t *testing.T) []byte {
	const claimed = 64 << 30
	recs := paxRecord("GNU.sparse.major", "1") + paxRecord("GNU.sparse.minor", "0") +
		paxRecord("GNU.sparse.name", "root/big") + paxRecord("GNU.sparse.realsize", fmt.Sprint(claimed))
	sparseMap := pad512([]byte(fmt.Sprintf("1\n%d\n512\n", claimed-512)))
	var b []byte
	b = append(b, rawTarHeader("./PaxHeaders/big", 'x', int64(len(recs)))...)
	b = append(b, pad512([]byte(recs))...)
	b = append(b, rawTarHeader("root/GNUSparseFile.0/big", '0', int64(len(sparseMap)+512))...)
	b = append(b, sparseMap...)
	b = append(b, bytes.Repeat([]byte("A"), 512)...)
	b = append(b, make([]byte, 1024)...)
	// Check the test builds what it means to: a reader sees a 64 GiB file.
	hdr, err := tar.NewReader(bytes.NewReader(b)).Next()
	if err != nil || hdr.Size != claimed || hdr.Name != "root/big" {
		t.Fatalf("sparse bomb does not read as intended: %+v, %v", hdr, err)
	}
	return b
}

func TestImportRefusesSparseBomb(t *testing.T) {
	m := newTestManager(t)
	bomb := sparseBomb(t)
	p := filepath.Join(t.TempDir(), "bomb.tar")
	if err := os.WriteFile(p, bomb, 0o600); err != nil {
		t.Fatal(err)
	}
	// The refusal must come before any of the 64 GiB is written: a context deadline stops
	// an expansion that would otherwise fill the disk (the error check below is what fails).
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	_, err := m.Import(ctx, ImportOptions{Name: "bomb", Path: p, NoKernel: true})
	if err == nil {
		t.Fatal("a sparse tar claiming a 64 GiB file was imported")
	}
	if !strings.Contains(err.Error(), "sparse") {
		t.Errorf("error does not name the sparse entry: %v", err)
	}
	assertNothingRegistered(t, m)
}

func TestImportExt4WithEscapingDirent(t *testing.T) {
	m := newTestManager(t)
	outside := t.TempDir()
	mkfs := "/usr/sbin/mkfs.ext4"
	if _, err := os.Stat(mkfs); err != nil {
		t.Skip("mkfs.ext4 not installed (apt-get install e2fsprogs)")
	}
	img := ext4test.HostileImage(t, mkfs, outside)
	_, err := m.Import(context.Background(), ImportOptions{Name: "evil", Path: img, NoKernel: true})
	ents, _ := os.ReadDir(outside)
	for _, e := range ents {
		t.Errorf("importing the image wrote %s outside banger's directories", filepath.Join(outside, e.Name()))
	}
	if err == nil {
		t.Fatal("an ext4 with a dirent named ../../... was imported")
	}
	if errors.Is(err, context.DeadlineExceeded) {
		t.Fatal(err)
	}
	assertNothingRegistered(t, m)
}

func TestOCIPullRefusesTooManyLayers(t *testing.T) {
	m := newTestManager(t)
	layers := make([][]byte, DefaultMaxLayers+1)
	for i := range layers {
		layers[i] = mkTar(t, []ent{file(fmt.Sprintf("f%d", i), "x", 0o644)})
	}
	ref, _ := pushImage(t, serveRegistry(t, nil), "evil/layers:v1", layers...)
	_, err := m.Pull(context.Background(), PullOptions{Ref: ref, NoKernel: true})
	if err == nil {
		t.Fatalf("an image with %d layers was pulled", len(layers))
	}
	if !strings.Contains(err.Error(), "images.max_layers") {
		t.Errorf("error does not say what to change: %v", err)
	}
	assertNothingRegistered(t, m)
}

func TestOCIPullRefusesDecompressionBomb(t *testing.T) {
	m := newTestManager(t)
	m.Limits.MaxBytes = 16 << 20
	// 64 MiB of zeros: a few dozen KiB once gzipped by the registry push.
	bomb := mkTar(t, []ent{file("zeros", strings.Repeat("\x00", 64<<20), 0o644)})
	ref, _ := pushImage(t, serveRegistry(t, nil), "evil/bomb:v1", bomb)
	_, err := m.Pull(context.Background(), PullOptions{Ref: ref, NoKernel: true})
	if err == nil {
		t.Fatal("a layer decompressing past the limit was pulled")
	}
	if !strings.Contains(err.Error(), "images.max_size") || strings.Contains(err.Error(), "corrupt") {
		t.Errorf("error does not say what to change: %v", err)
	}
	assertNothingRegistered(t, m)
}

func TestImportRefusesTarOverLimit(t *testing.T) {
	m := newTestManager(t)
	m.Limits.MaxBytes = 1 << 20
	p := filepath.Join(t.TempDir(), "big.tar")
	if err := os.WriteFile(p, mkTar(t, []ent{dir("./", 0o755), file("big", strings.Repeat("b", 2<<20), 0o644)}), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := m.Import(context.Background(), ImportOptions{Name: "big", Path: p, NoKernel: true})
	if err == nil || !strings.Contains(err.Error(), "images.max_size") {
		t.Fatalf("a tar over the size limit: %v", err)
	}
	assertNothingRegistered(t, m)
}

// TestImportBoundsPackageDatabase imports an ext4 whose dpkg status claims 100 MiB (a sparse
// file, so the test costs nothing): banger must refuse it without reading it.
func TestImportBoundsPackageDatabase(t *testing.T) {
	m := newTestManager(t)
	src := t.TempDir()
	status := filepath.Join(src, "var", "lib", "dpkg", "status")
	if err := os.MkdirAll(filepath.Dir(status), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(status, []byte("Package: a\nStatus: install ok installed\n\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(status, 100<<20); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(t.TempDir(), "big-status.ext4")
	if err := m.Ext4.BuildExt4FromDir(context.Background(), img, src, 0); err != nil {
		t.Fatal(err)
	}
	_, err := m.Import(context.Background(), ImportOptions{Name: "status", Path: img, NoKernel: true})
	if err == nil {
		t.Fatal("a 100 MiB dpkg status was read whole")
	}
	if !strings.Contains(err.Error(), "more than") {
		t.Errorf("error does not say the file is too large: %v", err)
	}
	assertNothingRegistered(t, m)
}
