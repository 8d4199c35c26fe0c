package hostfs

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
)

// share serves dir over an in-memory connection and returns a client of it.
func share(t *testing.T, dir string, opts ServerOptions) *Client {
	t.Helper()
	root, err := os.OpenRoot(dir)
	if err != nil {
		t.Fatal(err)
	}
	hostSide, guestSide := net.Pipe()
	done := make(chan error, 1)
	go func() { done <- Serve(context.Background(), hostSide, root, opts) }()
	c := NewClient(guestSide)
	t.Cleanup(func() {
		c.Close()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
		root.Close()
	})
	return c
}

func mustCall(t *testing.T, c *Client, req Request, data []byte) (*Response, []byte) {
	t.Helper()
	resp, out, err := c.Call(req, data)
	if err != nil {
		t.Fatalf("%s %q: %v", req.Op, req.Path, err)
	}
	return resp, out
}

func wantErrno(t *testing.T, c *Client, req Request, want syscall.Errno) {
	t.Helper()
	_, _, err := c.Call(req, nil)
	if !errors.Is(err, want) {
		t.Fatalf("%s %q: got %v, want %v", req.Op, req.Path, err, want)
	}
}

func TestRoundTrip(t *testing.T) {
	dir := t.TempDir()
	c := share(t, dir, ServerOptions{})
	r, _ := mustCall(t, c, Request{Op: OpMkdir, Path: "src", Mode: 0o755}, nil)
	if r.Attr.Mode&syscall.S_IFMT != syscall.S_IFDIR || r.Attr.UID != 0 {
		t.Fatalf("mkdir attr %+v: want a directory the guest sees as root's", r.Attr)
	}
	r, _ = mustCall(t, c, Request{Op: OpCreate, Path: "src/a.txt", Flags: os.O_WRONLY, Mode: 0o640}, nil)
	fh := r.Handle
	payload := bytes.Repeat([]byte("banger"), 100000)
	for off := 0; off < len(payload); off += MaxIO {
		chunk := payload[off:min(off+MaxIO, len(payload))]
		w, _ := mustCall(t, c, Request{Op: OpWrite, Handle: fh, Offset: int64(off)}, chunk)
		if w.Written != int64(len(chunk)) {
			t.Fatalf("wrote %d of %d", w.Written, len(chunk))
		}
	}
	mustCall(t, c, Request{Op: OpClose, Handle: fh}, nil)
	got, err := os.ReadFile(filepath.Join(dir, "src/a.txt"))
	if err != nil || !bytes.Equal(got, payload) {
		t.Fatalf("host file differs (%v)", err)
	}
	if fi, _ := os.Stat(filepath.Join(dir, "src/a.txt")); fi.Mode().Perm() != 0o640 {
		t.Fatalf("mode %v, want 0640 whatever the umask", fi.Mode())
	}
	r, _ = mustCall(t, c, Request{Op: OpOpen, Path: "src/a.txt"}, nil)
	_, data := mustCall(t, c, Request{Op: OpRead, Handle: r.Handle, Offset: 6, Size: 12}, nil)
	if string(data) != "bangerbanger" {
		t.Fatalf("read %q", data)
	}
	mustCall(t, c, Request{Op: OpClose, Handle: r.Handle}, nil)
	mustCall(t, c, Request{Op: OpSymlink, Path: "src/link", Target: "a.txt"}, nil)
	r, _ = mustCall(t, c, Request{Op: OpReadlink, Path: "src/link"}, nil)
	if r.Target != "a.txt" {
		t.Fatalf("readlink %q", r.Target)
	}
	mustCall(t, c, Request{Op: OpRename, Path: "src/a.txt", Path2: "src/b.txt"}, nil)
	size := int64(3)
	r, _ = mustCall(t, c, Request{Op: OpSetattr, Path: "src/b.txt", Set: &SetAttr{Size: &size}}, nil)
	if r.Attr.Size != 3 {
		t.Fatalf("truncate: size %d", r.Attr.Size)
	}
	r, _ = mustCall(t, c, Request{Op: OpOpendir, Path: "src"}, nil)
	b, _ := mustCall(t, c, Request{Op: OpReaddir, Handle: r.Handle}, nil)
	if len(b.Entries) != 2 {
		t.Fatalf("readdir %+v, want b.txt and link", b.Entries)
	}
	mustCall(t, c, Request{Op: OpClose, Handle: r.Handle}, nil)
	wantErrno(t, c, Request{Op: OpRmdir, Path: "src"}, syscall.ENOTEMPTY)
	wantErrno(t, c, Request{Op: OpUnlink, Path: "src"}, syscall.EISDIR)
	mustCall(t, c, Request{Op: OpUnlink, Path: "src/b.txt"}, nil)
	mustCall(t, c, Request{Op: OpUnlink, Path: "src/link"}, nil)
	mustCall(t, c, Request{Op: OpRmdir, Path: "src"}, nil)
	if r, _ := mustCall(t, c, Request{Op: OpStatfs}, nil); r.Statfs == nil || r.Statfs.Bsize == 0 {
		t.Fatalf("statfs %+v", r.Statfs)
	}
}

// A hostile guest: paths out of the share, symlinks that lead out, set-ID modes, chown to
// someone else, unknown handles and a read-only share.
func TestHostileRequests(t *testing.T) {
	parent := t.TempDir()
	dir := filepath.Join(parent, "share")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(parent, "secret"), []byte("host only"), 0o600); err != nil {
		t.Fatal(err)
	}
	c := share(t, dir, ServerOptions{})
	for _, p := range []string{"../secret", "/etc/passwd", "a/../../secret", "a//b", "./x", "a/"} {
		wantErrno(t, c, Request{Op: OpLstat, Path: p}, syscall.EINVAL)
		wantErrno(t, c, Request{Op: OpOpen, Path: p}, syscall.EINVAL)
	}
	wantErrno(t, c, Request{Op: OpRename, Path: "x", Path2: "../escaped"}, syscall.EINVAL)
	// A symlink the guest plants pointing out of the share must not be followed on the host.
	mustCall(t, c, Request{Op: OpSymlink, Path: "out", Target: "../secret"}, nil)
	if _, _, err := c.Call(Request{Op: OpOpen, Path: "out"}, nil); err == nil {
		t.Fatal("opened a file outside the share through a symlink")
	}
	mustCall(t, c, Request{Op: OpSymlink, Path: "outdir", Target: ".."}, nil)
	if _, _, err := c.Call(Request{Op: OpCreate, Path: "outdir/planted", Flags: os.O_WRONLY, Mode: 0o644}, nil); err == nil {
		t.Fatal("created a file outside the share through a symlinked directory")
	}
	if _, err := os.Lstat(filepath.Join(parent, "planted")); err == nil {
		t.Fatal("a file appeared outside the share")
	}
	r, _ := mustCall(t, c, Request{Op: OpCreate, Path: "suid", Flags: os.O_WRONLY, Mode: 0o6755}, nil)
	mustCall(t, c, Request{Op: OpClose, Handle: r.Handle}, nil)
	mode := uint32(0o4755)
	mustCall(t, c, Request{Op: OpSetattr, Path: "suid", Set: &SetAttr{Mode: &mode}}, nil)
	if fi, _ := os.Stat(filepath.Join(dir, "suid")); fi.Mode()&(os.ModeSetuid|os.ModeSetgid) != 0 {
		t.Fatalf("a set-ID file was created on the host: %v", fi.Mode())
	}
	other := uint32(12345)
	wantErrno(t, c, Request{Op: OpSetattr, Path: "suid", Set: &SetAttr{UID: &other}}, syscall.EPERM)
	wantErrno(t, c, Request{Op: OpRead, Handle: 999, Size: 10}, syscall.EBADF)
	wantErrno(t, c, Request{Op: "mknod", Path: "dev"}, syscall.ENOSYS)

	ro := share(t, dir, ServerOptions{ReadOnly: true})
	wantErrno(t, ro, Request{Op: OpCreate, Path: "new", Flags: os.O_WRONLY, Mode: 0o644}, syscall.EROFS)
	wantErrno(t, ro, Request{Op: OpOpen, Path: "suid", Flags: os.O_RDWR}, syscall.EROFS)
	wantErrno(t, ro, Request{Op: OpOpen, Path: "suid", Flags: os.O_TRUNC}, syscall.EROFS)
	wantErrno(t, ro, Request{Op: OpUnlink, Path: "suid"}, syscall.EROFS)
	mustCall(t, ro, Request{Op: OpLstat, Path: "suid"}, nil)
}

// A frame larger than the bound ends the connection instead of being allocated.
func TestOversizedFrame(t *testing.T) {
	root, err := os.OpenRoot(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	hostSide, guestSide := net.Pipe()
	done := make(chan error, 1)
	go func() { done <- Serve(context.Background(), hostSide, root, ServerOptions{}) }()
	var pre [4]byte
	binary.BigEndian.PutUint32(pre[:], 1<<31)
	go guestSide.Write(pre[:])
	if err := <-done; !errors.Is(err, errFrameTooLarge) {
		t.Fatalf("Serve: %v, want a frame-too-large error", err)
	}
	guestSide.Close()
}

// TestOpendirList: an opendir that asks for the first batch gets it with each entry's
// attributes; a short directory is closed again (no handle), a long one keeps a handle for
// the rest. A hostile entry name on the host (a symlink out) is listed, not followed.
func TestOpendirList(t *testing.T) {
	dir := t.TempDir()
	if err := os.Symlink("/etc/shadow", filepath.Join(dir, "out")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "x"), []byte("12345"), 0o644); err != nil {
		t.Fatal(err)
	}
	c := share(t, dir, ServerOptions{})
	r, _ := mustCall(t, c, Request{Op: OpOpendir, Path: ".", List: true}, nil)
	if r.Handle != 0 || len(r.Entries) != 2 {
		t.Fatalf("short listing: handle %d, %d entries", r.Handle, len(r.Entries))
	}
	for _, e := range r.Entries {
		switch {
		case e.Attr == nil:
			t.Fatalf("%s has no attributes", e.Name)
		case e.Name == "out" && e.Attr.Mode&syscall.S_IFMT != syscall.S_IFLNK:
			t.Fatalf("the symlink was followed: mode %o", e.Attr.Mode)
		case e.Name == "x" && e.Attr.Size != 5:
			t.Fatalf("x: size %d", e.Attr.Size)
		}
	}
	long := filepath.Join(dir, "long")
	if err := os.Mkdir(long, 0o755); err != nil {
		t.Fatal(err)
	}
	for i := range dirBatch + 5 {
		if err := os.WriteFile(filepath.Join(long, strconv.Itoa(i)), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	r, _ = mustCall(t, c, Request{Op: OpOpendir, Path: "long", List: true}, nil)
	if r.Handle == 0 || len(r.Entries) != dirBatch {
		t.Fatalf("long listing: handle %d, %d entries", r.Handle, len(r.Entries))
	}
	rest, _ := mustCall(t, c, Request{Op: OpReaddir, Handle: r.Handle}, nil)
	if len(rest.Entries) != 5 {
		t.Fatalf("the rest of the listing: %d entries", len(rest.Entries))
	}
	mustCall(t, c, Request{Op: OpClose, Handle: r.Handle}, nil)
	wantErrno(t, c, Request{Op: OpOpendir, Path: "../", List: true}, syscall.EINVAL)
}
