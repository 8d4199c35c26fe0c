//go:build linux

// Package fusemount is the guest side of a host folder: a FUSE filesystem whose every
// operation is a hostfs request to the host. It runs in the guest agent (as root, which
// mounts with mount(2) and needs no fusermount).
package fusemount

import (
	"context"
	"fmt"
	"os"
	"path"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/banger-vm/banger/internal/hostfs"
)

// cacheFor is how long the guest's kernel trusts names and attributes before asking the
// host again: long enough that a build's repeated stats stay local, short enough that a
// change made on the host shows soon.
const cacheFor = time.Second

// Mount mounts the share c serves at dir. Unmount the returned server to end it; it also
// ends when c's connection does (operations then fail with ENOTCONN).
func Mount(dir string, c *hostfs.Client, readOnly bool) (*fuse.Server, error) {
	timeout := cacheFor
	opts := &fs.Options{
		EntryTimeout: &timeout,
		AttrTimeout:  &timeout,
		MountOptions: fuse.MountOptions{
			FsName:        "banger-host",
			Name:          "hostfs",
			DirectMount:   true,
			AllowOther:    true,
			MaxWrite:      hostfs.MaxIO,
			MaxReadAhead:  hostfs.MaxIO,
			DisableXAttrs: true,
			Options:       []string{"default_permissions"},
		},
	}
	if readOnly {
		opts.MountOptions.Options = append(opts.MountOptions.Options, "ro")
	}
	srv, err := fs.Mount(dir, &node{c: c}, opts)
	if err != nil {
		return nil, err
	}
	// Best effort: a slower read ahead only costs throughput.
	_ = setReadAhead(dir, readAheadKB)
	return srv, nil
}

// readAheadKB is the read-ahead window of a share. The kernel caps a FUSE mount's at
// 128 KiB when it mounts, so sequential reads went one 128 KiB request at a time, each
// a round trip over the agent channel; a wider window keeps several requests of up to
// MaxIO in flight.
const readAheadKB = 4096

// setReadAhead sets the read-ahead window of the filesystem mounted at dir, through its
// backing device's sysfs entry (/sys/class/bdi/MAJOR:MINOR).
func setReadAhead(dir string, kb int) error {
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		return err
	}
	p := fmt.Sprintf("/sys/class/bdi/%d:%d/read_ahead_kb", unix.Major(st.Dev), unix.Minor(st.Dev))
	return os.WriteFile(p, []byte(strconv.Itoa(kb)), 0)
}

type node struct {
	fs.Inode
	c *hostfs.Client

	// listed are the attributes of this directory's entries from its last listing (a
	// readdir, or one made because names in it were looked up one after another), so the
	// kernel's per-name lookups cost no round trip to the host. A listing younger than
	// cacheFor also answers that a name absent from it does not exist, as the kernel's own
	// caches would; the guest's own changes to the directory drop it.
	mu       sync.Mutex
	listed   map[string]*hostfs.Attr // nil value: listed, but its attributes were used
	listedAt time.Time
	misses   int    // lookups the host answered since the last listing
	gen      uint64 // counts the guest's changes to the directory (forgetListed)
	tooBig   bool   // its listing would pass maxListed: lookups ask the host one by one
}

// maxListed bounds the names a directory keeps from a listing.
const maxListed = 1 << 16

// listMissThreshold is how many lookups in a row go to the host before the directory is
// listed instead (a git status or a build stats every file of a directory in turn).
const listMissThreshold = 3

// fromListing answers a lookup from a fresh listing: the attributes (each used once; the
// kernel caches them after) and how long they stay true (what is left of the listing's
// cacheFor, counted from when it was asked for), or known is false when the host must be
// asked. absent says the listing did not have the name.
func (n *node) fromListing(name string) (a *hostfs.Attr, absent, known bool, left time.Duration) {
	n.mu.Lock()
	defer n.mu.Unlock()
	left = cacheFor - time.Since(n.listedAt)
	if n.listed == nil || left <= 0 {
		n.listed = nil
		return nil, false, false, 0
	}
	a, ok := n.listed[name]
	if !ok {
		return nil, true, true, left
	}
	if a == nil {
		return nil, false, false, 0
	}
	n.listed[name] = nil
	return a, false, true, left
}

// changed drops this node's entry from its directory's listing: the guest changed it (a
// write, a chmod, a truncate), so the attributes listed before are no longer true. A
// listing under way meanwhile is not kept either (its change count moves).
func (n *node) changed() {
	name, p := n.Parent()
	if p == nil {
		return
	}
	if pn, ok := p.Operations().(*node); ok {
		pn.mu.Lock()
		pn.gen++
		if _, listed := pn.listed[name]; listed {
			pn.listed[name] = nil
		}
		pn.mu.Unlock()
	}
}

// missed counts a lookup the host answered and says whether to list the directory now.
func (n *node) missed() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.tooBig {
		return false
	}
	n.misses++
	return n.misses >= listMissThreshold
}

// listStart is where a listing begins: the directory's change count and the time, which
// its answers' freshness counts from.
type listStart struct {
	gen uint64
	at  time.Time
}

// startListing is taken before a listing is asked for.
func (n *node) startListing() listStart {
	n.mu.Lock()
	defer n.mu.Unlock()
	return listStart{gen: n.gen, at: time.Now()}
}

// setListed keeps a listing begun at st, unless the guest changed the directory while it
// was under way (the listing may predate that change). A nil listing (too many names to
// keep) stops listing this directory for lookups.
func (n *node) setListed(st listStart, m map[string]*hostfs.Attr) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if m == nil {
		n.tooBig = true
	}
	if st.gen != n.gen {
		return
	}
	n.listed, n.listedAt, n.misses = m, st.at, 0
}

// forgetListed drops the listing's attributes once this directory changes.
func (n *node) forgetListed() {
	n.mu.Lock()
	n.gen++
	n.listed, n.misses = nil, 0
	n.mu.Unlock()
}

var (
	_ fs.NodeLookuper   = (*node)(nil)
	_ fs.NodeGetattrer  = (*node)(nil)
	_ fs.NodeSetattrer  = (*node)(nil)
	_ fs.NodeReaddirer  = (*node)(nil)
	_ fs.NodeReadlinker = (*node)(nil)
	_ fs.NodeOpener     = (*node)(nil)
	_ fs.NodeCreater    = (*node)(nil)
	_ fs.NodeMkdirer    = (*node)(nil)
	_ fs.NodeSymlinker  = (*node)(nil)
	_ fs.NodeLinker     = (*node)(nil)
	_ fs.NodeUnlinker   = (*node)(nil)
	_ fs.NodeRmdirer    = (*node)(nil)
	_ fs.NodeRenamer    = (*node)(nil)
	_ fs.NodeStatfser   = (*node)(nil)
)

// rel is the node's path in the share ("." for its top).
func (n *node) rel() string {
	if p := n.Path(n.Root()); p != "" {
		return p
	}
	return "."
}

func (n *node) child(name string) string { return path.Join(n.rel(), name) }

func (n *node) call(req hostfs.Request, data []byte) (*hostfs.Response, []byte, syscall.Errno) {
	resp, out, err := n.c.Call(req, data)
	if err != nil {
		if en, ok := err.(syscall.Errno); ok {
			return nil, nil, en
		}
		return nil, nil, syscall.EIO
	}
	return resp, out, 0
}

func fill(a *hostfs.Attr, out *fuse.Attr) {
	if a == nil {
		return
	}
	out.Ino = a.Ino
	out.Mode = a.Mode
	out.Size = uint64(max(a.Size, 0))
	out.Blocks = uint64(max(a.Blocks, 0))
	out.Nlink = a.Nlink
	out.Uid, out.Gid = a.UID, a.GID
	out.Blksize = a.Blksize
	out.Atime, out.Atimensec = split(a.Atime)
	out.Mtime, out.Mtimensec = split(a.Mtime)
	out.Ctime, out.Ctimensec = split(a.Ctime)
}

func split(ns int64) (uint64, uint32) {
	if ns < 0 {
		return 0, 0
	}
	return uint64(ns / 1e9), uint32(ns % 1e9)
}

// entry makes the child inode for a fresh answer.
func (n *node) entry(ctx context.Context, a *hostfs.Attr, out *fuse.EntryOut) *fs.Inode {
	fill(a, &out.Attr)
	out.SetEntryTimeout(cacheFor)
	out.SetAttrTimeout(cacheFor)
	return n.NewInode(ctx, &node{c: n.c}, fs.StableAttr{Mode: a.Mode & syscall.S_IFMT, Ino: a.Ino})
}

func (n *node) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	a, absent, known, left := n.fromListing(name)
	if !known && n.missed() {
		st := n.startListing()
		if _, attrs, en := n.list(); en == 0 {
			n.setListed(st, attrs)
			a, absent, known, left = n.fromListing(name)
		}
	}
	switch {
	case absent:
		return nil, syscall.ENOENT
	case a != nil:
		ch := n.entry(ctx, a, out)
		// No longer than the listing itself stays true.
		out.SetEntryTimeout(left)
		out.SetAttrTimeout(left)
		return ch, 0
	}
	resp, _, en := n.call(hostfs.Request{Op: hostfs.OpLstat, Path: n.child(name)}, nil)
	if en != 0 {
		return nil, en
	}
	if resp.Attr == nil {
		return nil, syscall.EIO
	}
	return n.entry(ctx, resp.Attr, out), 0
}

func (n *node) Getattr(ctx context.Context, _ fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	resp, _, en := n.call(hostfs.Request{Op: hostfs.OpLstat, Path: n.rel()}, nil)
	if en != 0 {
		return en
	}
	fill(resp.Attr, &out.Attr)
	out.SetTimeout(cacheFor)
	return 0
}

func (n *node) Setattr(ctx context.Context, f fs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	n.changed()
	defer n.changed()
	set := &hostfs.SetAttr{}
	if m, ok := in.GetMode(); ok {
		m &= 0o7777
		set.Mode = &m
	}
	if s, ok := in.GetSize(); ok {
		sz := int64(s)
		set.Size = &sz
	}
	if u, ok := in.GetUID(); ok {
		set.UID = &u
	}
	if g, ok := in.GetGID(); ok {
		set.GID = &g
	}
	if t, ok := in.GetATime(); ok {
		ns := t.UnixNano()
		set.Atime = &ns
	}
	if t, ok := in.GetMTime(); ok {
		ns := t.UnixNano()
		set.Mtime = &ns
	}
	req := hostfs.Request{Op: hostfs.OpSetattr, Path: n.rel(), Set: set}
	if h, ok := f.(*handle); ok {
		req.Handle = h.id
	}
	resp, _, en := n.call(req, nil)
	if en != 0 {
		return en
	}
	fill(resp.Attr, &out.Attr)
	out.SetTimeout(cacheFor)
	return 0
}

func (n *node) Readdir(ctx context.Context) (fs.DirStream, syscall.Errno) {
	st := n.startListing()
	list, attrs, en := n.list()
	if en != 0 {
		return nil, en
	}
	n.setListed(st, attrs)
	return fs.NewListDirStream(list), 0
}

// list reads the whole directory from the host, with each entry's attributes.
func (n *node) list() ([]fuse.DirEntry, map[string]*hostfs.Attr, syscall.Errno) {
	var list []fuse.DirEntry
	attrs := map[string]*hostfs.Attr{}
	add := func(entries []hostfs.DirEntry) {
		for _, e := range entries {
			if e.Name == "" || e.Name == "." || e.Name == ".." || len(e.Name) > 255 || strings.ContainsRune(e.Name, '/') {
				continue
			}
			list = append(list, fuse.DirEntry{Name: e.Name, Mode: e.Mode, Ino: e.Ino})
			// An attribute must agree with the entry's type, or the kernel would be told
			// two things about one name.
			// Without one (the name vanished on the host mid-listing), the host is asked.
			if len(attrs) < maxListed {
				if e.Attr != nil && e.Attr.Mode&syscall.S_IFMT == e.Mode&syscall.S_IFMT {
					attrs[e.Name] = e.Attr
				} else {
					attrs[e.Name] = nil
				}
			}
		}
	}
	resp, _, en := n.call(hostfs.Request{Op: hostfs.OpOpendir, Path: n.rel(), List: true}, nil)
	if en != 0 {
		return nil, nil, en
	}
	add(resp.Entries)
	if fh := resp.Handle; fh != 0 {
		defer n.call(hostfs.Request{Op: hostfs.OpClose, Handle: fh}, nil)
		for {
			batch, _, en := n.call(hostfs.Request{Op: hostfs.OpReaddir, Handle: fh}, nil)
			if en != 0 {
				return nil, nil, en
			}
			if len(batch.Entries) == 0 {
				break
			}
			add(batch.Entries)
		}
	}
	if len(attrs) >= maxListed {
		// Too many to keep: an incomplete listing must not answer "absent".
		attrs = nil
	}
	return list, attrs, 0
}

func (n *node) Readlink(ctx context.Context) ([]byte, syscall.Errno) {
	resp, _, en := n.call(hostfs.Request{Op: hostfs.OpReadlink, Path: n.rel()}, nil)
	if en != 0 {
		return nil, en
	}
	return []byte(resp.Target), 0
}

func (n *node) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	resp, _, en := n.call(hostfs.Request{Op: hostfs.OpOpen, Path: n.rel(), Flags: int(flags)}, nil)
	if en != 0 {
		return nil, 0, en
	}
	return &handle{n: n, id: resp.Handle}, 0, 0
}

func (n *node) Create(ctx context.Context, name string, flags, mode uint32, out *fuse.EntryOut) (*fs.Inode, fs.FileHandle, uint32, syscall.Errno) {
	n.forgetListed()
	defer n.forgetListed() // and a listing under way meanwhile is not kept
	resp, _, en := n.call(hostfs.Request{Op: hostfs.OpCreate, Path: n.child(name), Flags: int(flags), Mode: mode & 0o7777}, nil)
	if en != 0 {
		return nil, nil, 0, en
	}
	if resp.Attr == nil {
		return nil, nil, 0, syscall.EIO
	}
	ch := n.entry(ctx, resp.Attr, out)
	return ch, &handle{n: n, id: resp.Handle}, 0, 0
}

func (n *node) Mkdir(ctx context.Context, name string, mode uint32, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	return n.made(ctx, hostfs.Request{Op: hostfs.OpMkdir, Path: n.child(name), Mode: mode & 0o7777}, out)
}

func (n *node) Symlink(ctx context.Context, target, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	return n.made(ctx, hostfs.Request{Op: hostfs.OpSymlink, Path: n.child(name), Target: target}, out)
}

func (n *node) Link(ctx context.Context, target fs.InodeEmbedder, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	t, ok := target.(*node)
	if !ok {
		return nil, syscall.EXDEV
	}
	return n.made(ctx, hostfs.Request{Op: hostfs.OpLink, Path: t.rel(), Path2: n.child(name)}, out)
}

func (n *node) made(ctx context.Context, req hostfs.Request, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	n.forgetListed()
	defer n.forgetListed() // and a listing under way meanwhile is not kept
	resp, _, en := n.call(req, nil)
	if en != 0 {
		return nil, en
	}
	if resp.Attr == nil {
		return nil, syscall.EIO
	}
	return n.entry(ctx, resp.Attr, out), 0
}

func (n *node) Unlink(ctx context.Context, name string) syscall.Errno {
	n.forgetListed()
	defer n.forgetListed() // and a listing under way meanwhile is not kept
	_, _, en := n.call(hostfs.Request{Op: hostfs.OpUnlink, Path: n.child(name)}, nil)
	return en
}

func (n *node) Rmdir(ctx context.Context, name string) syscall.Errno {
	n.forgetListed()
	defer n.forgetListed() // and a listing under way meanwhile is not kept
	_, _, en := n.call(hostfs.Request{Op: hostfs.OpRmdir, Path: n.child(name)}, nil)
	return en
}

func (n *node) Rename(ctx context.Context, name string, newParent fs.InodeEmbedder, newName string, flags uint32) syscall.Errno {
	n.forgetListed()
	defer n.forgetListed() // and a listing under way meanwhile is not kept
	p, ok := newParent.(*node)
	if !ok {
		return syscall.EXDEV
	}
	p.forgetListed()
	defer p.forgetListed()
	_, _, en := n.call(hostfs.Request{Op: hostfs.OpRename, Path: n.child(name), Path2: p.child(newName), Flags: int(flags)}, nil)
	return en
}

func (n *node) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	resp, _, en := n.call(hostfs.Request{Op: hostfs.OpStatfs}, nil)
	if en != 0 {
		return en
	}
	if st := resp.Statfs; st != nil {
		out.Blocks, out.Bfree, out.Bavail = st.Blocks, st.Bfree, st.Bavail
		out.Files, out.Ffree = st.Files, st.Ffree
		out.Bsize, out.NameLen, out.Frsize = st.Bsize, st.NameLen, st.Bsize
	}
	return 0
}

// handle is an open file on the host.
type handle struct {
	n  *node
	id uint64
}

var (
	_ fs.FileReader   = (*handle)(nil)
	_ fs.FileWriter   = (*handle)(nil)
	_ fs.FileFsyncer  = (*handle)(nil)
	_ fs.FileReleaser = (*handle)(nil)
	_ fs.FileFlusher  = (*handle)(nil)
)

func (h *handle) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	size := min(len(dest), hostfs.MaxIO)
	_, data, en := h.n.call(hostfs.Request{Op: hostfs.OpRead, Handle: h.id, Offset: off, Size: int64(size)}, nil)
	if en != 0 {
		return nil, en
	}
	if len(data) > size {
		data = data[:size]
	}
	return fuse.ReadResultData(data), 0
}

func (h *handle) Write(ctx context.Context, data []byte, off int64) (uint32, syscall.Errno) {
	h.n.changed()
	defer h.n.changed()
	var done uint32
	for len(data) > 0 {
		chunk := data[:min(len(data), hostfs.MaxIO)]
		resp, _, en := h.n.call(hostfs.Request{Op: hostfs.OpWrite, Handle: h.id, Offset: off}, chunk)
		if en != 0 {
			if done > 0 {
				return done, 0
			}
			return 0, en
		}
		w := max(min(resp.Written, int64(len(chunk))), 0)
		done += uint32(w)
		off += w
		data = data[w:]
		if w < int64(len(chunk)) {
			break
		}
	}
	return done, 0
}

func (h *handle) Flush(ctx context.Context) syscall.Errno { return 0 }

func (h *handle) Fsync(ctx context.Context, flags uint32) syscall.Errno {
	_, _, en := h.n.call(hostfs.Request{Op: hostfs.OpFsync, Handle: h.id}, nil)
	return en
}

func (h *handle) Release(ctx context.Context) syscall.Errno {
	_, _, en := h.n.call(hostfs.Request{Op: hostfs.OpClose, Handle: h.id}, nil)
	return en
}
