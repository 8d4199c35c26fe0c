package ext4

import (
	"archive/tar"
	"bytes"
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// rootfsWithRoot builds a small rootfs image whose /root has everything a
// seed must keep or skip.
func rootfsWithRoot(t testing.TB, e *Toolkit, dir string) string {
	t.Helper()
	ents := []tarEnt{
		dirEnt("./", 0o755, 0, 0),
		dirEnt("./etc/", 0o755, 0, 0),
		fileEnt("./etc/hostname", 0o644, 0, 0, "rootfs\n"),
		dirEnt("./root/", 0o700, 0, 0),
		fileEnt("./root/.bashrc", 0o644, 0, 0, "PS1='# '\n"),
		fileEnt("./root/.profile", 0o600, 0, 0, "profile\n"),
		dirEnt("./root/.ssh/", 0o700, 0, 0),
		fileEnt("./root/.ssh/config", 0o600, 0, 0, "Host *\n"),
		linkEnt("./root/.vimrc", ".config/vim/vimrc"),
		dirEnt("./root/.config/vim/", 0o755, 0, 0),
		fileEnt("./root/.config/vim/vimrc", 0o644, 0, 0, "set nu\n"),
		dirEnt("./root/user owned/", 0o750, 1000, 1000),
		fileEnt("./root/user owned/locked", 0o000, 1000, 1000, "locked"),
		{hdr: tar.Header{Typeflag: tar.TypeLink, Name: "./root/.bashrc.hard", Linkname: "./root/.bashrc"}},
		{hdr: tar.Header{Typeflag: tar.TypeFifo, Name: "./root/pipe", Mode: 0o600}},
		fileEnt("./root/suid", 0o4750, 0, 0, "s"),
	}
	img := filepath.Join(dir, "rootfs.ext4")
	if _, err := e.BuildExt4FromTar(context.Background(), img, bytes.NewReader(buildTar(t, ents)), 0); err != nil {
		t.Fatal(err)
	}
	return img
}

func TestWorkSeedAndWorkDisk(t *testing.T) {
	e := testExt4(t)
	ctx := context.Background()
	dir := t.TempDir()
	rootfs := rootfsWithRoot(t, e, dir)
	seed := filepath.Join(dir, "work-seed.ext4")
	warns, err := e.BuildWorkSeed(ctx, rootfs, seed)
	if err != nil {
		t.Fatal(err)
	}
	if !contains(warns, "skipping special file /root/pipe") {
		t.Errorf("want a warning about /root/pipe, got %q", warns)
	}
	mustFsck(t, e, seed)
	check := func(img string, rootMode fs.FileMode) {
		t.Helper()
		wantMeta(t, e, img, "/", 0, 0, fs.ModeDir|rootMode)
		wantMeta(t, e, img, "/.bashrc", 0, 0, 0o644)
		wantMeta(t, e, img, "/.ssh", 0, 0, fs.ModeDir|0o700)
		wantMeta(t, e, img, "/.ssh/config", 0, 0, 0o600)
		if st := wantMeta(t, e, img, "/.vimrc", 0, 0, fs.ModeSymlink|0o777); st.LinkTarget != ".config/vim/vimrc" {
			t.Errorf(".vimrc -> %q", st.LinkTarget)
		}
		wantMeta(t, e, img, "/user owned", 1000, 1000, fs.ModeDir|0o750)
		wantMeta(t, e, img, "/user owned/locked", 1000, 1000, 0)
		wantMeta(t, e, img, "/suid", 0, 0, fs.ModeSetuid|0o750)
		a, b := mustStat(t, e, img, "/.bashrc"), mustStat(t, e, img, "/.bashrc.hard")
		if a.Inode != b.Inode || a.Links != 2 {
			t.Errorf("hard link not kept: %d/%d links %d", a.Inode, b.Inode, a.Links)
		}
		if _, err := e.StatExt4(ctx, img, "/pipe"); err == nil {
			t.Error("special file copied")
		}
		if got, err := e.ReadExt4File(ctx, img, "/user owned/locked"); err != nil || string(got) != "locked" {
			t.Errorf("locked: %q %v", got, err)
		}
	}
	check(seed, 0o700)

	disk := filepath.Join(dir, "work.ext4")
	key := []byte("ssh-ed25519 AAAA test@host\n")
	warns, err = e.BuildWorkDisk(ctx, WorkDiskSpec{Path: disk, SeedPath: seed, Inject: []InjectedFile{
		{Path: ".ssh/authorized_keys", Data: key, Mode: 0o600},
		{Path: "/.config/banger/new/id", Data: []byte("x"), Mode: 0o644, UID: 1000, GID: 1000},
		{Path: ".profile", Data: []byte("replaced"), Mode: 0o640},
	}})
	if err != nil {
		t.Fatal(err)
	}
	if len(warns) != 0 {
		t.Errorf("unexpected warnings %q", warns)
	}
	mustFsck(t, e, disk)
	check(disk, 0o700)
	var st syscall.Stat_t
	if err := syscall.Stat(disk, &st); err != nil {
		t.Fatal(err)
	}
	if st.Size != DefaultWorkDiskSize || st.Blocks*512 > 512<<20 {
		t.Errorf("work disk size %d allocated %d: want 8 GiB sparse", st.Size, st.Blocks*512)
	}
	wantMeta(t, e, disk, "/.ssh/authorized_keys", 0, 0, 0o600)
	if got, _ := e.ReadExt4File(ctx, disk, "/.ssh/authorized_keys"); !bytes.Equal(got, key) {
		t.Errorf("authorized_keys %q", got)
	}
	wantMeta(t, e, disk, "/.config/banger", 1000, 1000, fs.ModeDir|0o700)
	wantMeta(t, e, disk, "/.config/banger/new/id", 1000, 1000, 0o644)
	wantMeta(t, e, disk, "/.profile", 0, 0, 0o640)
	if got, _ := e.ReadExt4File(ctx, disk, "/.profile"); string(got) != "replaced" {
		t.Errorf(".profile %q", got)
	}
	// The seed is untouched.
	mustFsck(t, e, seed)
	check(seed, 0o700)
	noLeftovers(t, dir, "rootfs.ext4", "work-seed.ext4", "work.ext4")

	// Existing disk is refused and left alone.
	if _, err := e.BuildWorkDisk(ctx, WorkDiskSpec{Path: disk, SeedPath: seed}); err == nil {
		t.Error("overwrote an existing work disk")
	}
	// Bad injects fail and leave nothing.
	bad := filepath.Join(dir, "bad.ext4")
	for _, inj := range []InjectedFile{{Path: "../escape"}, {Path: ".bashrc/x"}, {Path: ".ssh"}} {
		if _, err := e.BuildWorkDisk(ctx, WorkDiskSpec{Path: bad, SeedPath: seed, Inject: []InjectedFile{inj}}); err == nil {
			t.Errorf("inject %q accepted", inj.Path)
		}
	}
	noLeftovers(t, dir, "rootfs.ext4", "work-seed.ext4", "work.ext4")
}

func TestWorkDiskWithoutSeed(t *testing.T) {
	e := testExt4(t)
	ctx := context.Background()
	dir := t.TempDir()
	disk := filepath.Join(dir, "work.ext4")
	warns, err := e.BuildWorkDisk(ctx, WorkDiskSpec{Path: disk, SizeBytes: 1 << 30, SeedPath: filepath.Join(dir, "missing.ext4"),
		Inject: []InjectedFile{{Path: ".ssh/authorized_keys", Data: []byte("k"), Mode: 0o600}}})
	if err != nil {
		t.Fatal(err)
	}
	if !contains(warns, "not found") {
		t.Errorf("want a missing-seed warning, got %q", warns)
	}
	mustFsck(t, e, disk)
	wantMeta(t, e, disk, "/", 0, 0, fs.ModeDir|0o700)
	wantMeta(t, e, disk, "/.ssh", 0, 0, fs.ModeDir|0o700)
	wantMeta(t, e, disk, "/.ssh/authorized_keys", 0, 0, 0o600)
	if fi, _ := os.Stat(disk); fi.Size() != 1<<30 {
		t.Errorf("size %d", fi.Size())
	}
	// A disk too small for its contents fails cleanly.
	small := filepath.Join(dir, "small.ext4")
	_, err = e.BuildWorkDisk(ctx, WorkDiskSpec{Path: small, SizeBytes: 2 << 20, Inject: []InjectedFile{{Path: "big", Data: bytes.Repeat([]byte{7}, 8<<20), Mode: 0o644}}})
	if err == nil || !strings.Contains(err.Error(), "too small") {
		t.Fatalf("want too-small error, got %v", err)
	}
	noLeftovers(t, dir, "work.ext4")
}

func TestWorkSeedWithoutRootDir(t *testing.T) {
	e := testExt4(t)
	dir := t.TempDir()
	img := filepath.Join(dir, "rootfs.ext4")
	if _, err := e.BuildExt4FromTar(context.Background(), img, bytes.NewReader(buildTar(t, []tarEnt{fileEnt("etc/os-release", 0o644, 0, 0, "x")})), 0); err != nil {
		t.Fatal(err)
	}
	seed := filepath.Join(dir, "seed.ext4")
	warns, err := e.BuildWorkSeed(context.Background(), img, seed)
	if err != nil {
		t.Fatal(err)
	}
	if !contains(warns, "no /root") {
		t.Errorf("warnings %q", warns)
	}
	mustFsck(t, e, seed)
	wantMeta(t, e, seed, "/", 0, 0, fs.ModeDir|0o700)
}
