//go:build linux

package fusemount

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/banger-vm/banger/internal/hostfs"
)

// mounted serves dir through hostfs and mounts it with the real kernel FUSE at a new
// directory, as the guest agent does.
func mounted(t *testing.T, dir string, readOnly bool) string {
	t.Helper()
	mnt, _ := mountedCounting(t, dir, readOnly)
	return mnt
}

// countingConn counts the frames the guest side sends: hostfs writes one per request.
type countingConn struct {
	net.Conn
	writes *atomic.Int64
}

func (c countingConn) Write(p []byte) (int, error) {
	c.writes.Add(1)
	return c.Conn.Write(p)
}

// mountedCounting is mounted that also counts the guest's requests to the host.
func mountedCounting(t *testing.T, dir string, readOnly bool) (string, *atomic.Int64) {
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
	requests := new(atomic.Int64)
	c := hostfs.NewClient(countingConn{guestSide, requests})
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
	return mnt, requests
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

// TestListingCarriesAttributes: stat-ing every entry of a listed tree (ls -lR, find, git
// status) is answered from the listing's attributes, not one host round trip per name.
func TestListingCarriesAttributes(t *testing.T) {
	host := t.TempDir()
	const dirs, perDir = 4, 150
	for d := range dirs {
		dir := filepath.Join(host, "tree", "d"+strconv.Itoa(d))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for f := range perDir {
			if err := os.WriteFile(filepath.Join(dir, "f"+strconv.Itoa(f)), []byte(strconv.Itoa(f)), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	mnt, requests := mountedCounting(t, host, false)
	before := requests.Load()
	files := 0
	err := filepath.WalkDir(filepath.Join(mnt, "tree"), func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		if fi.Mode().IsRegular() {
			files++
			if want := int64(len(strings.TrimPrefix(filepath.Base(p), "f"))); fi.Size() != want {
				t.Errorf("%s: size %d, want %d", p, fi.Size(), want)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if files != dirs*perDir {
		t.Fatalf("walked %d files, want %d", files, dirs*perDir)
	}
	// Each directory costs a lookup, an opendir, its batches and a close; its files none.
	if n := requests.Load() - before; n > int64(dirs*12) {
		t.Fatalf("walking %d files in %d directories took %d requests to the host: entries are looked up one by one", files, dirs, n)
	}
}

// TestLookupsListTheDirectory: stat-ing names of a directory one after another without
// listing it (git status walking its index) lists it after a few, and answers the rest
// from that listing; a name made on the host shows once the listing is older than the
// cache time, one made in the guest at once.
func TestLookupsListTheDirectory(t *testing.T) {
	host := t.TempDir()
	const files = 300
	for f := range files {
		if err := os.WriteFile(filepath.Join(host, "f"+strconv.Itoa(f)), []byte(strconv.Itoa(f)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	mnt, requests := mountedCounting(t, host, false)
	before := requests.Load()
	for f := range files {
		fi, err := os.Lstat(filepath.Join(mnt, "f"+strconv.Itoa(f)))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Size() != int64(len(strconv.Itoa(f))) {
			t.Fatalf("f%d: size %d", f, fi.Size())
		}
	}
	if n := requests.Load() - before; n > 20 {
		t.Fatalf("stat of %d files of one directory took %d requests to the host", files, n)
	}
	if _, err := os.Lstat(filepath.Join(mnt, "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("stat of a missing name: %v", err)
	}
	if err := os.WriteFile(filepath.Join(mnt, "made-in-guest"), []byte("g"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(filepath.Join(mnt, "made-in-guest")); err != nil {
		t.Fatalf("a file the guest just made: %v", err)
	}
	if err := os.WriteFile(filepath.Join(host, "made-on-host"), []byte("h"), 0o644); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * cacheFor)
	for {
		_, err := os.Lstat(filepath.Join(mnt, "made-on-host"))
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a file made on the host is still not seen after %v: %v", 5*cacheFor, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestMountWidensReadAhead: the share's read-ahead window is raised past the kernel's
// 128 KiB FUSE default, so a sequential read keeps several requests in flight.
func TestMountWidensReadAhead(t *testing.T) {
	mnt := mounted(t, t.TempDir(), true)
	var st syscall.Stat_t
	if err := syscall.Stat(mnt, &st); err != nil {
		t.Fatal(err)
	}
	p := fmt.Sprintf("/sys/class/bdi/%d:%d/read_ahead_kb", st.Dev>>8&0xfff, st.Dev&0xff|(st.Dev>>12)&0xfff00)
	got, err := os.ReadFile(p)
	if err != nil {
		t.Skipf("no sysfs entry for the mount's device: %v", err)
	}
	if strings.TrimSpace(string(got)) != strconv.Itoa(readAheadKB) {
		t.Fatalf("%s is %q, want %d", p, strings.TrimSpace(string(got)), readAheadKB)
	}
}

// TestListingRacingAChange: a listing that was under way while the guest changed the
// directory is not kept, so the new name is never answered as absent.
func TestListingRacingAChange(t *testing.T) {
	n := &node{}
	st := n.startListing()
	n.forgetListed() // the guest's mkdir, while the listing was on its way
	n.setListed(st, map[string]*hostfs.Attr{"old": {Mode: syscall.S_IFREG}})
	if _, absent, known, _ := n.fromListing("new"); known || absent {
		t.Fatalf("a stale listing answered for a name made after it: absent %v known %v", absent, known)
	}
	st = n.startListing()
	n.setListed(st, map[string]*hostfs.Attr{"old": {Mode: syscall.S_IFREG}})
	if _, absent, known, left := n.fromListing("new"); !known || !absent || left <= 0 || left > cacheFor {
		t.Fatalf("a fresh listing should answer absent: absent %v known %v, for %v", absent, known, left)
	}
	// Freshness counts from when the listing was asked for, not when it came back.
	n.setListed(listStart{gen: n.gen, at: time.Now().Add(-cacheFor)}, map[string]*hostfs.Attr{"old": {Mode: syscall.S_IFREG}})
	if _, _, known, _ := n.fromListing("old"); known {
		t.Fatal("a listing asked for cacheFor ago still answers")
	}
	// A directory too big to keep is not listed again for lookups.
	big := &node{}
	big.setListed(big.startListing(), nil)
	for range listMissThreshold + 2 {
		if big.missed() {
			t.Fatal("a directory too big to keep is listed again for a lookup")
		}
	}
}

// TestGuestChangeDropsListedAttr: a file the guest writes or chmods after its directory
// was listed is looked up on the host again, not answered with the listed attributes.
func TestGuestChangeDropsListedAttr(t *testing.T) {
	host := t.TempDir()
	if err := os.WriteFile(filepath.Join(host, "f"), []byte("1"), 0o644); err != nil {
		t.Fatal(err)
	}
	mnt := mounted(t, host, false)
	if _, err := os.ReadDir(mnt); err != nil { // the listing
		t.Fatal(err)
	}
	f, err := os.OpenFile(filepath.Join(mnt, "f"), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString("2345"); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if err := os.Chmod(filepath.Join(mnt, "f"), 0o600); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(mnt, "f"))
	if err != nil || fi.Size() != 5 || fi.Mode().Perm() != 0o600 {
		t.Fatalf("after the guest's write and chmod: %v %v", fi, err)
	}
}
