package hostfs

import (
	"context"
	"errors"
	"io"
	"io/fs"
	"os"
	"path"
	"sync"
	"syscall"
	"time"
)

// ServerOptions configures Serve.
type ServerOptions struct {
	// ReadOnly refuses every change with EROFS, whatever the guest mounted.
	ReadOnly bool
	// OwnerUID and OwnerGID own the share on the host (default: this process's); the guest
	// sees them as root, which is who it runs as, and its new files get them.
	OwnerUID, OwnerGID uint32
	// MaxHandles bounds the files and directories a guest holds open (default 1024).
	MaxHandles int
	// Mounted, when set, is told the guest's OpMounted notice: nil once its mount is up,
	// or why it failed.
	Mounted func(error)
}

// serverWorkers bounds the requests served at once.
const serverWorkers = 8

type server struct {
	root *os.Root
	opts ServerOptions
	conn io.ReadWriter

	writeMu sync.Mutex

	mu      sync.Mutex
	handles map[uint64]*os.File
	next    uint64
}

// Serve answers a guest's requests on conn from root until conn fails or ctx ends; it
// closes every file the guest left open. root stays open for the caller to close.
func Serve(ctx context.Context, conn io.ReadWriteCloser, root *os.Root, opts ServerOptions) error {
	if opts.OwnerUID == 0 && opts.OwnerGID == 0 {
		opts.OwnerUID, opts.OwnerGID = uint32(os.Getuid()), uint32(os.Getgid())
	}
	if opts.MaxHandles <= 0 {
		opts.MaxHandles = 1024
	}
	s := &server{root: root, opts: opts, conn: conn, handles: map[uint64]*os.File{}}
	stop := context.AfterFunc(ctx, func() { _ = conn.Close() })
	defer stop()
	var wg sync.WaitGroup
	sem := make(chan struct{}, serverWorkers)
	defer func() {
		wg.Wait()
		s.mu.Lock()
		for _, f := range s.handles {
			_ = f.Close()
		}
		s.handles = nil
		s.mu.Unlock()
	}()
	for {
		var req Request
		data, err := readFrame(conn, &req)
		if err != nil {
			_ = conn.Close()
			if errors.Is(err, io.EOF) || ctx.Err() != nil {
				return nil
			}
			return err
		}
		if req.Op == OpMounted {
			if opts.Mounted != nil {
				var merr error
				if req.Target != "" {
					merr = errors.New(sanitize(req.Target))
				}
				opts.Mounted(merr)
			}
			continue
		}
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			resp, out := s.handle(&req, data)
			resp.ID = req.ID
			s.writeMu.Lock()
			werr := writeFrame(conn, resp, out)
			s.writeMu.Unlock()
			if werr != nil {
				_ = conn.Close()
			}
		}()
	}
}

// mutating operations, refused on a read-only share.
var mutating = map[string]bool{
	OpCreate: true, OpWrite: true, OpMkdir: true, OpSymlink: true, OpLink: true,
	OpUnlink: true, OpRmdir: true, OpRename: true, OpSetattr: true,
}

func fail(err error) (*Response, []byte) { return &Response{Errno: errnoOf(err)}, nil }

func (s *server) handle(req *Request, data []byte) (*Response, []byte) {
	if s.opts.ReadOnly && (mutating[req.Op] || (req.Op == OpOpen && req.Flags&(syscall.O_ACCMODE|syscall.O_TRUNC) != syscall.O_RDONLY)) {
		return fail(syscall.EROFS)
	}
	if !validPath(req.Path) || (req.Path2 != "" && !validPath(req.Path2)) {
		return fail(syscall.EINVAL)
	}
	switch req.Op {
	case OpLstat:
		return s.attrResponse(req.Path)
	case OpReadlink:
		t, err := s.root.Readlink(req.Path)
		if err != nil {
			return fail(err)
		}
		return &Response{Target: t}, nil
	case OpOpendir:
		f, err := s.root.Open(req.Path)
		if err != nil {
			return fail(err)
		}
		if req.List {
			return s.openList(f)
		}
		return s.newHandle(f)
	case OpReaddir:
		return s.readdir(req.Handle)
	case OpOpen:
		f, err := s.root.OpenFile(req.Path, openFlags(req.Flags), 0)
		if err != nil {
			return fail(err)
		}
		return s.newHandle(f)
	case OpCreate:
		flags := openFlags(req.Flags) | os.O_CREATE
		if req.Flags&syscall.O_EXCL != 0 {
			flags |= os.O_EXCL
		}
		f, err := s.root.OpenFile(req.Path, flags, fs.FileMode(safeMode(req.Mode)))
		if err != nil {
			return fail(err)
		}
		// The host's umask must not change the mode the guest asked for.
		_ = f.Chmod(fs.FileMode(safeMode(req.Mode)))
		return s.newHandle(f)
	case OpRead:
		f := s.file(req.Handle)
		if f == nil {
			return fail(syscall.EBADF)
		}
		size := min(max(req.Size, 0), MaxIO)
		buf := make([]byte, size)
		n, err := f.ReadAt(buf, req.Offset)
		if err != nil && !errors.Is(err, io.EOF) {
			return fail(err)
		}
		return &Response{}, buf[:n]
	case OpWrite:
		f := s.file(req.Handle)
		if f == nil {
			return fail(syscall.EBADF)
		}
		n, err := f.WriteAt(data, req.Offset)
		if err != nil {
			return fail(err)
		}
		return &Response{Written: int64(n)}, nil
	case OpFsync:
		f := s.file(req.Handle)
		if f == nil {
			return fail(syscall.EBADF)
		}
		if err := f.Sync(); err != nil {
			return fail(err)
		}
		return &Response{}, nil
	case OpClose:
		s.mu.Lock()
		f := s.handles[req.Handle]
		delete(s.handles, req.Handle)
		s.mu.Unlock()
		if f == nil {
			return fail(syscall.EBADF)
		}
		_ = f.Close()
		return &Response{}, nil
	case OpMkdir:
		if err := s.root.Mkdir(req.Path, fs.FileMode(safeMode(req.Mode))); err != nil {
			return fail(err)
		}
		_ = s.root.Chmod(req.Path, modeBits(safeMode(req.Mode)))
		return s.attrResponse(req.Path)
	case OpSymlink:
		if req.Target == "" || len(req.Target) > 4096 {
			return fail(syscall.EINVAL)
		}
		if err := s.root.Symlink(req.Target, req.Path); err != nil {
			return fail(err)
		}
		return s.attrResponse(req.Path)
	case OpLink:
		if err := s.root.Link(req.Path, req.Path2); err != nil {
			return fail(err)
		}
		return s.attrResponse(req.Path2)
	case OpUnlink:
		fi, err := s.root.Lstat(req.Path)
		if err != nil {
			return fail(err)
		}
		if fi.IsDir() {
			return fail(syscall.EISDIR)
		}
		if err := s.root.Remove(req.Path); err != nil {
			return fail(err)
		}
		return &Response{}, nil
	case OpRmdir:
		fi, err := s.root.Lstat(req.Path)
		if err != nil {
			return fail(err)
		}
		if !fi.IsDir() {
			return fail(syscall.ENOTDIR)
		}
		if req.Path == "." {
			return fail(syscall.EBUSY)
		}
		if err := s.root.Remove(req.Path); err != nil {
			return fail(err)
		}
		return &Response{}, nil
	case OpRename:
		if req.Flags != 0 || req.Path == "." || req.Path2 == "." {
			return fail(syscall.EINVAL)
		}
		if err := s.root.Rename(req.Path, req.Path2); err != nil {
			return fail(err)
		}
		return &Response{}, nil
	case OpSetattr:
		return s.setattr(req)
	case OpStatfs:
		return s.statfs()
	}
	return fail(syscall.ENOSYS)
}

func (s *server) newHandle(f *os.File) (*Response, []byte) {
	s.mu.Lock()
	if len(s.handles) >= s.opts.MaxHandles {
		s.mu.Unlock()
		_ = f.Close()
		return fail(syscall.EMFILE)
	}
	s.next++
	id := s.next
	s.handles[id] = f
	s.mu.Unlock()
	resp := &Response{Handle: id}
	if fi, err := f.Stat(); err == nil {
		resp.Attr = s.attr(fi)
	}
	return resp, nil
}

func (s *server) file(id uint64) *os.File {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.handles[id]
}

// dirBatch is how many names one readdir answer carries at most: with each entry's
// attributes and a worst-case JSON-escaped 255-byte name it stays well under maxHeader.
const dirBatch = 128

func (s *server) readdir(id uint64) (*Response, []byte) {
	f := s.file(id)
	if f == nil {
		return fail(syscall.EBADF)
	}
	entries, _, err := s.batch(f)
	if err != nil {
		return fail(err)
	}
	return &Response{Entries: entries}, nil
}

// openList answers an opendir that asked for the first batch: a directory that fits is
// closed again, a longer one keeps a handle for the readdirs that follow.
func (s *server) openList(f *os.File) (*Response, []byte) {
	entries, more, err := s.batch(f)
	if err != nil {
		_ = f.Close()
		return fail(err)
	}
	if !more {
		_ = f.Close()
		return &Response{Entries: entries}, nil
	}
	resp, _ := s.newHandle(f)
	if resp.Errno == 0 {
		resp.Entries = entries
	}
	return resp, nil
}

// batch reads f's next dirBatch entries with their attributes; more is false once the
// directory has ended (ReadDir returns fewer than asked only at its end).
func (s *server) batch(f *os.File) (_ []DirEntry, more bool, _ error) {
	ents, err := f.ReadDir(dirBatch)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, false, err
	}
	out := make([]DirEntry, 0, len(ents))
	for _, e := range ents {
		de := DirEntry{Name: e.Name(), Mode: typeBits(e.Type())}
		// Info is an lstat of the name in the open directory (fstatat): it cannot follow a
		// path out of the share. A name gone since the listing just has no attributes.
		if fi, err := e.Info(); err == nil {
			de.Attr = s.attr(fi)
			de.Ino = de.Attr.Ino
		}
		out = append(out, de)
	}
	return out, len(ents) == dirBatch, nil
}

func (s *server) attrResponse(p string) (*Response, []byte) {
	fi, err := s.root.Lstat(p)
	if err != nil {
		return fail(err)
	}
	return &Response{Attr: s.attr(fi)}, nil
}

func (s *server) attr(fi fs.FileInfo) *Attr {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return &Attr{Mode: typeBits(fi.Mode().Type()) | uint32(fi.Mode().Perm()), Size: fi.Size(), Nlink: 1, Mtime: fi.ModTime().UnixNano()}
	}
	a := &Attr{
		Ino: st.Ino, Mode: st.Mode, Size: st.Size, Blocks: st.Blocks, Nlink: uint32(st.Nlink),
		UID: st.Uid, GID: st.Gid, Blksize: uint32(st.Blksize),
		Atime: st.Atim.Nano(), Mtime: st.Mtim.Nano(), Ctime: st.Ctim.Nano(),
	}
	if a.UID == s.opts.OwnerUID {
		a.UID = 0
	}
	if a.GID == s.opts.OwnerGID {
		a.GID = 0
	}
	return a
}

func (s *server) setattr(req *Request) (*Response, []byte) {
	set := req.Set
	if set == nil {
		return s.attrResponse(req.Path)
	}
	// Ownership: the guest's root is the share's owner; anyone else is not ours to give.
	if (set.UID != nil && *set.UID != 0 && *set.UID != s.opts.OwnerUID) ||
		(set.GID != nil && *set.GID != 0 && *set.GID != s.opts.OwnerGID) {
		return fail(syscall.EPERM)
	}
	if set.Size != nil {
		if *set.Size < 0 {
			return fail(syscall.EINVAL)
		}
		f := s.file(req.Handle)
		if f == nil {
			var err error
			if f, err = s.root.OpenFile(req.Path, os.O_WRONLY, 0); err != nil {
				return fail(err)
			}
			defer f.Close()
		}
		if err := f.Truncate(*set.Size); err != nil {
			return fail(err)
		}
	}
	if set.Mode != nil {
		if err := s.root.Chmod(req.Path, modeBits(safeMode(*set.Mode))); err != nil {
			return fail(err)
		}
	}
	if set.Atime != nil || set.Mtime != nil {
		fi, err := s.root.Lstat(req.Path)
		if err != nil {
			return fail(err)
		}
		atime, mtime := time.Time{}, time.Time{}
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			atime = time.Unix(0, st.Atim.Nano())
		}
		mtime = fi.ModTime()
		if set.Atime != nil {
			atime = time.Unix(0, *set.Atime)
		}
		if set.Mtime != nil {
			mtime = time.Unix(0, *set.Mtime)
		}
		if fi.Mode()&fs.ModeSymlink == 0 {
			if err := s.root.Chtimes(req.Path, atime, mtime); err != nil {
				return fail(err)
			}
		}
	}
	return s.attrResponse(req.Path)
}

func (s *server) statfs() (*Response, []byte) {
	f, err := s.root.Open(".")
	if err != nil {
		return fail(err)
	}
	defer f.Close()
	var st syscall.Statfs_t
	if err := syscall.Fstatfs(int(f.Fd()), &st); err != nil {
		return fail(err)
	}
	return &Response{Statfs: &Statfs{
		Blocks: st.Blocks, Bfree: st.Bfree, Bavail: st.Bavail, Files: st.Files, Ffree: st.Ffree,
		Bsize: uint32(st.Bsize), NameLen: uint32(st.Namelen),
	}}, nil
}

// validPath accepts a share-relative slash path with no "..", no empty or absolute parts.
func validPath(p string) bool {
	if p == "" {
		return true // ops that take no path
	}
	if len(p) > 4096 || !fs.ValidPath(p) {
		return false
	}
	for _, el := range splitPath(p) {
		if len(el) > 255 {
			return false
		}
	}
	return true
}

func splitPath(p string) []string {
	var out []string
	for p != "" && p != "." {
		dir, file := path.Split(p)
		out = append(out, file)
		p = path.Clean(dir)
		if p == "/" {
			break
		}
	}
	return out
}

// openFlags keeps the access mode and O_TRUNC. O_APPEND is dropped: the guest's kernel
// sends each write's offset, and a host file in append mode would ignore it.
func openFlags(f int) int {
	return f&syscall.O_ACCMODE | f&syscall.O_TRUNC
}

// safeMode drops setuid and setgid: a guest must not plant a set-ID program owned by the
// host user.
func safeMode(m uint32) uint32 { return m & 0o1777 }

func modeBits(m uint32) fs.FileMode {
	out := fs.FileMode(m & 0o777)
	if m&0o1000 != 0 {
		out |= fs.ModeSticky
	}
	return out
}

func typeBits(t fs.FileMode) uint32 {
	switch {
	case t&fs.ModeDir != 0:
		return syscall.S_IFDIR
	case t&fs.ModeSymlink != 0:
		return syscall.S_IFLNK
	case t&fs.ModeNamedPipe != 0:
		return syscall.S_IFIFO
	case t&fs.ModeSocket != 0:
		return syscall.S_IFSOCK
	case t&fs.ModeCharDevice != 0:
		return syscall.S_IFCHR
	case t&fs.ModeDevice != 0:
		return syscall.S_IFBLK
	}
	return syscall.S_IFREG
}

// errnoOf maps a host error to the errno the guest gets.
func errnoOf(err error) int {
	var en syscall.Errno
	switch {
	case errors.As(err, &en):
		return int(en)
	case errors.Is(err, fs.ErrNotExist):
		return int(syscall.ENOENT)
	case errors.Is(err, fs.ErrExist):
		return int(syscall.EEXIST)
	case errors.Is(err, fs.ErrPermission):
		return int(syscall.EACCES)
	}
	// os.Root's "path escapes from parent": a symlink pointing out of the share.
	return int(syscall.EACCES)
}

// sanitize keeps a guest's message printable and short: it ends up in a terminal.
func sanitize(msg string) string {
	out := make([]rune, 0, len(msg))
	for _, r := range msg {
		if len(out) >= 300 {
			break
		}
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) {
			r = '?'
		}
		out = append(out, r)
	}
	return string(out)
}

// Share is a guest's mount being served.
type Share struct {
	conn   io.Closer
	cancel context.CancelFunc
	done   chan struct{}
	err    error
}

// Start serves conn (a mount stream from the guest's agent) from root and waits for the
// guest's notice that its mount is up: the error is the guest's reason when it is not, or
// ctx's end. The share then runs until Close, the guest hanging up or parent ending.
func Start(ctx, parent context.Context, conn io.ReadWriteCloser, root *os.Root, opts ServerOptions) (*Share, error) {
	mounted := make(chan error, 1)
	user := opts.Mounted
	opts.Mounted = func(err error) {
		select {
		case mounted <- err:
		default:
		}
		if user != nil {
			user(err)
		}
	}
	sctx, cancel := context.WithCancel(parent)
	s := &Share{conn: conn, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		s.err = Serve(sctx, conn, root, opts)
	}()
	select {
	case err := <-mounted:
		if err == nil {
			return s, nil
		}
		s.Close()
		return nil, err
	case <-s.done:
		return nil, errors.Join(errors.New("the guest hung up before its mount was up"), s.err)
	case <-ctx.Done():
		s.Close()
		return nil, context.Cause(ctx)
	}
}

// Done is closed when the share has ended.
func (s *Share) Done() <-chan struct{} { return s.done }

// Close hangs up (the guest unmounts) and waits for the requests in flight.
func (s *Share) Close() {
	s.cancel()
	_ = s.conn.Close()
	<-s.done
}
