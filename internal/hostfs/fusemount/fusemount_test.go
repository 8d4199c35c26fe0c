//go:build linux

package fusemount

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"net"
	"os"
	"path/filepath"
	"sort"
	"syscall"
	"testing"

	"github.com/banger-vm/banger/internal/hostfs"
)

// mounted serves dir through hostfs and mounts it with the real kernel FUSE at a new
// directory, as the guest agent does.
func mounted(t *testing.T, dir string, readOnly bool) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: mount(2) of a FUSE filesystem without fusermount")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skip("no /dev/fuse (load the fuse module)")
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		t.Fatal(err)
	}
	hostSide, guestSide := net.Pipe()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- hostfs.Serve(ctx, hostSide, root, hostfs.ServerOptions{ReadOnly: readOnly}) }()
	c := hostfs.NewClient(guestSide)
	mnt := t.TempDir()
	srv, err := Mount(mnt, c, readOnly)
	if err != nil {
		t.Fatalf("mount: %v", err)
	}
	t.Cleanup(func() {
		if err := srv.Unmount(); err != nil {
			t.Errorf("unmount: %v", err)
		}
		cancel()
		<-done
		root.Close()
	})
	return mnt
}

func TestMountReadWrite(t *testing.T) {
	host := t.TempDir()
	mnt := mounted(t, host, false)
	big := make([]byte, 3<<20+17)
	rand.Read(big)
	if err := os.WriteFile(filepath.Join(mnt, "guest.bin"), big, 0o644); err != nil {
		t.Fatal(err)
	}
	if got, err := os.ReadFile(filepath.Join(host, "guest.bin")); err != nil || !bytes.Equal(got, big) {
		t.Fatalf("host sees a different guest.bin (%v)", err)
	}
	if err := os.WriteFile(filepath.Join(host, "host.txt"), []byte("from the host\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if got, err := os.ReadFile(filepath.Join(mnt, "host.txt")); err != nil || string(got) != "from the host\n" {
		t.Fatalf("guest reads %q (%v)", got, err)
	}
	if err := os.MkdirAll(filepath.Join(mnt, "a/b/c"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("../guest.bin", filepath.Join(mnt, "a/link")); err != nil {
		t.Fatal(err)
	}
	if got, err := os.ReadFile(filepath.Join(mnt, "a/link")); err != nil || !bytes.Equal(got, big) {
		t.Fatalf("read through the symlink (%v)", err)
	}
	if err := os.Rename(filepath.Join(mnt, "host.txt"), filepath.Join(mnt, "a/b/moved.txt")); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Join(mnt, "a/b/moved.txt"), 0o640); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(filepath.Join(host, "a/b/moved.txt")); err != nil || fi.Mode().Perm() != 0o640 {
		t.Fatalf("host sees %v (%v)", fi.Mode(), err)
	}
	f, err := os.OpenFile(filepath.Join(mnt, "a/b/moved.txt"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString("appended\n"); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if got, _ := os.ReadFile(filepath.Join(host, "a/b/moved.txt")); string(got) != "from the host\nappended\n" {
		t.Fatalf("append: host has %q", got)
	}
	ents, err := os.ReadDir(filepath.Join(mnt, "a"))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	sort.Strings(names)
	if len(names) != 2 || names[0] != "b" || names[1] != "link" {
		t.Fatalf("ls a: %v", names)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(filepath.Join(mnt, "guest.bin"), &st); err != nil || st.Uid != 0 {
		t.Fatalf("the share owner's file should look root's in the guest: uid %d (%v)", st.Uid, err)
	}
	if err := os.RemoveAll(filepath.Join(mnt, "a")); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(host, "a")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a still on the host: %v", err)
	}
}

func TestMountReadOnly(t *testing.T) {
	host := t.TempDir()
	if err := os.WriteFile(filepath.Join(host, "keep.txt"), []byte("keep"), 0o644); err != nil {
		t.Fatal(err)
	}
	mnt := mounted(t, host, true)
	if got, err := os.ReadFile(filepath.Join(mnt, "keep.txt")); err != nil || string(got) != "keep" {
		t.Fatalf("read %q (%v)", got, err)
	}
	if err := os.WriteFile(filepath.Join(mnt, "new.txt"), []byte("x"), 0o644); !errors.Is(err, syscall.EROFS) {
		t.Fatalf("write on a read-only share: %v, want EROFS", err)
	}
	if err := os.Remove(filepath.Join(mnt, "keep.txt")); !errors.Is(err, syscall.EROFS) {
		t.Fatalf("remove on a read-only share: %v, want EROFS", err)
	}
}
