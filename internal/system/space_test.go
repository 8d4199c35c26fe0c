package system

import (
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

func TestFreeBytes(t *testing.T) {
	dir := t.TempDir()
	if os.Geteuid() == 0 {
		// A filesystem of known size: free space is what is left of it.
		if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=8m"); err == nil {
			defer unix.Unmount(dir, unix.MNT_DETACH)
			before, err := FreeBytes(dir)
			if err != nil || before != 8<<20 {
				t.Fatalf("empty 8 MiB tmpfs: %d free, %v", before, err)
			}
			if err := os.WriteFile(dir+"/f", make([]byte, 3<<20), 0o600); err != nil {
				t.Fatal(err)
			}
			if after, _ := FreeBytes(dir); after != 5<<20 {
				t.Fatalf("after writing 3 MiB: %d free", after)
			}
		}
	}
	if n, err := FreeBytes(dir); err != nil || n == 0 {
		t.Fatalf("FreeBytes(%s) = %d, %v", dir, n, err)
	}
	if _, err := FreeBytes(dir + "/missing"); err == nil {
		t.Fatal("no error for a missing path")
	}
}
