package ext4

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// smallTmpfs mounts a tmpfs of size bytes: a real full filesystem to write images onto.
func smallTmpfs(t *testing.T, size string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a small tmpfs to fill (the other tests cover the unprivileged paths)")
	}
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size="+size+",mode=0755"); err != nil {
		t.Skipf("cannot mount a tmpfs here: %v", err)
	}
	t.Cleanup(func() { _ = unix.Unmount(dir, unix.MNT_DETACH) })
	return dir
}

func TestFullHostFilesystem(t *testing.T) {
	e := testExt4(t)
	ctx := context.Background()
	full := smallTmpfs(t, "4m")
	e.SetTempDir(full) // staging on the full filesystem too

	// A work disk whose seed content cannot fit in the space the host has left.
	src := t.TempDir()
	seedDir := filepath.Join(src, "seed")
	if err := os.MkdirAll(seedDir, 0o755); err != nil {
		t.Fatal(err)
	}
	big := bytes.Repeat([]byte("x"), 8<<20)
	if err := os.WriteFile(filepath.Join(seedDir, "big"), big, 0o644); err != nil {
		t.Fatal(err)
	}
	seed := filepath.Join(src, "seed.ext4")
	if err := e.BuildExt4FromDir(ctx, seed, seedDir, 64<<20); err != nil {
		t.Fatal(err)
	}
	_, err := e.BuildWorkDisk(ctx, WorkDiskSpec{Path: filepath.Join(full, "work.ext4"), SizeBytes: 256 << 20, SeedPath: seed})
	if err == nil {
		t.Fatal("work disk on a full filesystem succeeded")
	}
	if !strings.Contains(strings.ToLower(err.Error()), "no space") {
		t.Errorf("error does not say the disk is full: %v", err)
	}
	noLeftovers(t, full)

	// tar -> ext4 onto the full filesystem.
	tarData := buildTar(t, []tarEnt{dirEnt("./", 0o755, 0, 0), fileEnt("./big", 0o644, 0, 0, string(big))})
	_, err = e.BuildExt4FromTar(ctx, filepath.Join(full, "rootfs.ext4"), bytes.NewReader(tarData), 0)
	if err == nil {
		t.Fatal("tar -> ext4 on a full filesystem succeeded")
	}
	if !strings.Contains(strings.ToLower(err.Error()), "no space") {
		t.Errorf("error does not say the disk is full: %v", err)
	}
	noLeftovers(t, full)
}
