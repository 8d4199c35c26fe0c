// Package hostfs shares a host directory with a guest over one byte stream (an agent
// connection): the guest's agent mounts a FUSE filesystem whose operations travel as
// requests to the host, and the host answers them from the directory through an os.Root,
// so nothing a guest asks for can reach outside the shared directory.
//
// The guest is hostile: the host bounds every frame it reads, validates every path,
// refuses writes on a read-only share and never creates setuid/setgid files or devices.
//
// Wire format, both directions, one frame per message:
//
//	+-------------------------+-------------------------+-------------+-------------+
//	| length: 4, big-endian   | header length: 4        | JSON header | data bytes  |
//	+-------------------------+-------------------------+-------------+-------------+
//
// length counts everything after itself and is at most maxFrame. A request's header is a
// Request, a response's a Response; file data (write requests, read answers) is the data
// part. Requests carry an ID, and responses may come in any order.
package hostfs

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
)

// MaxIO is the largest read or write one request moves.
const MaxIO = 512 << 10

// maxHeader bounds a frame's JSON header (a directory batch is the largest).
const maxHeader = 512 << 10

// maxFrame bounds a whole frame.
const maxFrame = 8 + maxHeader + MaxIO

// Operations.
const (
	OpLstat    = "lstat"
	OpOpendir  = "opendir"
	OpReaddir  = "readdir"
	OpReadlink = "readlink"
	OpOpen     = "open"
	OpCreate   = "create"
	OpRead     = "read"
	OpWrite    = "write"
	OpFsync    = "fsync"
	OpClose    = "close"
	OpMkdir    = "mkdir"
	OpSymlink  = "symlink"
	OpLink     = "link"
	OpUnlink   = "unlink"
	OpRmdir    = "rmdir"
	OpRename   = "rename"
	OpSetattr  = "setattr"
	OpStatfs   = "statfs"
	// OpMounted is the guest's one-way notice that its mount is up (Target empty) or
	// failed (Target says why). It gets no answer; requests may come before it.
	OpMounted = "mounted"
)

// Request is a guest's request. Path and Path2 are slash-separated and relative to the
// share ("." is its top).
type Request struct {
	ID     uint64   `json:"id"`
	Op     string   `json:"op"`
	Path   string   `json:"path,omitempty"`
	Path2  string   `json:"path2,omitempty"`  // rename's and link's new name
	Target string   `json:"target,omitempty"` // symlink's target
	Handle uint64   `json:"fh,omitempty"`
	Offset int64    `json:"off,omitempty"`
	Size   int64    `json:"size,omitempty"`
	Flags  int      `json:"flags,omitempty"`
	Mode   uint32   `json:"mode,omitempty"`
	Set    *SetAttr `json:"set,omitempty"`
	// List asks opendir for the directory's first batch of entries too; a directory that
	// fits in it is closed again at once (no handle), which saves a listing two round trips.
	List bool `json:"list,omitempty"`
}

// SetAttr names what a setattr changes; nil fields stay.
type SetAttr struct {
	Mode  *uint32 `json:"mode,omitempty"`
	Size  *int64  `json:"size,omitempty"`
	UID   *uint32 `json:"uid,omitempty"`
	GID   *uint32 `json:"gid,omitempty"`
	Atime *int64  `json:"atime_ns,omitempty"` // Unix nanoseconds
	Mtime *int64  `json:"mtime_ns,omitempty"`
}

// Attr is a file's attributes as the guest sees them (ownership already mapped).
type Attr struct {
	Ino     uint64 `json:"ino"`
	Mode    uint32 `json:"mode"` // st_mode: type and permission bits
	Size    int64  `json:"size"`
	Blocks  int64  `json:"blocks"`
	Nlink   uint32 `json:"nlink"`
	UID     uint32 `json:"uid"`
	GID     uint32 `json:"gid"`
	Atime   int64  `json:"atime_ns"`
	Mtime   int64  `json:"mtime_ns"`
	Ctime   int64  `json:"ctime_ns"`
	Blksize uint32 `json:"blksize"`
}

// DirEntry is one name in a directory batch.
type DirEntry struct {
	Name string `json:"name"`
	Mode uint32 `json:"mode"` // type bits
	Ino  uint64 `json:"ino"`
	// Attr is the entry's lstat, so that listing a directory does not cost the guest one
	// round trip per name (the kernel's readdirplus looks up every entry).
	Attr *Attr `json:"attr,omitempty"`
}

// Statfs is the shared filesystem's usage.
type Statfs struct {
	Blocks  uint64 `json:"blocks"`
	Bfree   uint64 `json:"bfree"`
	Bavail  uint64 `json:"bavail"`
	Files   uint64 `json:"files"`
	Ffree   uint64 `json:"ffree"`
	Bsize   uint32 `json:"bsize"`
	NameLen uint32 `json:"namelen"`
}

// Response answers the request with the same ID. Errno 0 is success.
type Response struct {
	ID      uint64     `json:"id"`
	Errno   int        `json:"errno,omitempty"`
	Attr    *Attr      `json:"attr,omitempty"`
	Handle  uint64     `json:"fh,omitempty"`
	Entries []DirEntry `json:"entries,omitempty"`
	Target  string     `json:"target,omitempty"`
	Written int64      `json:"written,omitempty"`
	Statfs  *Statfs    `json:"statfs,omitempty"`
}

// errFrameTooLarge is a frame past maxFrame: the peer is broken or hostile.
var errFrameTooLarge = errors.New("hostfs: frame too large")

// writeFrame writes one message; callers serialize writers.
func writeFrame(w io.Writer, header any, data []byte) error {
	h, err := json.Marshal(header)
	if err != nil {
		return err
	}
	if len(h) > maxHeader || len(data) > MaxIO {
		return errFrameTooLarge
	}
	buf := make([]byte, 8, 8+len(h)+len(data))
	binary.BigEndian.PutUint32(buf[0:4], uint32(4+len(h)+len(data)))
	binary.BigEndian.PutUint32(buf[4:8], uint32(len(h)))
	buf = append(append(buf, h...), data...)
	_, err = w.Write(buf)
	return err
}

// readFrame reads one message into header and returns its data.
func readFrame(r io.Reader, header any) ([]byte, error) {
	var pre [8]byte
	if _, err := io.ReadFull(r, pre[:4]); err != nil {
		return nil, err
	}
	n := binary.BigEndian.Uint32(pre[:4])
	if n < 4 || n > maxFrame {
		return nil, fmt.Errorf("%w: %d bytes", errFrameTooLarge, n)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return nil, fmt.Errorf("hostfs: short frame: %w", err)
	}
	hl := binary.BigEndian.Uint32(body[:4])
	if hl > n-4 || hl > maxHeader {
		return nil, fmt.Errorf("hostfs: header of %d bytes in a %d-byte frame", hl, n)
	}
	if err := json.Unmarshal(body[4:4+hl], header); err != nil {
		return nil, fmt.Errorf("hostfs: malformed header: %w", err)
	}
	return body[4+hl:], nil
}
