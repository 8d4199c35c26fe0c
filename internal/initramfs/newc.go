package initramfs

import (
	"fmt"
	"io"
	"math"
)

// newc writes the SVR4 "newc" cpio format (magic 070701) that the Linux
// kernel unpacks into its rootfs at boot (init/initramfs.c).
//
// This is written here instead of using cavaliergopher/cpio's Writer because
// that writer never fills the rdevmajor/rdevminor fields, so it cannot produce
// the /dev/console and /dev/null nodes PID 1 needs before devtmpfs is mounted,
// and it assigns inode numbers itself. The format is 110 ASCII bytes of header
// per entry; owning those bytes is also what makes the output reproducible.
// The reader side of that library is still used by the tests as an
// independent check.

// File type bits as they appear in the cpio mode field (same as st_mode).
const (
	modeDir  = 0o040000
	modeChar = 0o020000
	modeReg  = 0o100000
)

// cpioEntry is one archive member. Names are relative ("dev/console"), the
// way gen_init_cpio and the kernel's own tooling write them.
type cpioEntry struct {
	name      string
	mode      uint32 // type bits | permission bits
	data      []byte // regular files only
	rdevMajor uint32 // device nodes only
	rdevMinor uint32
}

const newcTrailer = "TRAILER!!!"

// newcWriter streams entries; it tracks the offset so it can 4-byte align
// header+name and file data as the format requires.
type newcWriter struct {
	w   io.Writer
	off int64
}

func (n *newcWriter) write(p []byte) error {
	k, err := n.w.Write(p)
	n.off += int64(k)
	return err
}

func (n *newcWriter) pad() error {
	var zero [4]byte
	if r := n.off % 4; r != 0 {
		return n.write(zero[:4-r])
	}
	return nil
}

// writeEntry writes one member with the given inode number. uid/gid are
// always 0 and mtime is always 0: the archive must not depend on who built it
// or when (reproducible bytes), and the guest runs everything as root anyway.
func (n *newcWriter) writeEntry(e cpioEntry, ino uint32) error {
	if uint64(len(e.data)) > math.MaxUint32 {
		return fmt.Errorf("%s: %d bytes is larger than a newc cpio member can hold (4 GiB)", e.name, len(e.data))
	}
	nlink := uint32(1)
	if e.mode&0o170000 == modeDir {
		nlink = 2 // "." and the entry in the parent, as gen_init_cpio writes it
	}
	hdr := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		ino, e.mode, 0, 0, nlink, 0, len(e.data),
		0, 0, // devmajor/devminor of the (non-existent) source filesystem
		e.rdevMajor, e.rdevMinor,
		len(e.name)+1, // name size includes the trailing NUL
		0,             // checksum: always 0 for 070701
	)
	if err := n.write([]byte(hdr)); err != nil {
		return err
	}
	if err := n.write(append([]byte(e.name), 0)); err != nil {
		return err
	}
	if err := n.pad(); err != nil {
		return err
	}
	if len(e.data) > 0 {
		if err := n.write(e.data); err != nil {
			return err
		}
		if err := n.pad(); err != nil {
			return err
		}
	}
	return nil
}

// close writes the trailer entry that ends the archive.
func (n *newcWriter) close() error {
	return n.writeEntry(cpioEntry{name: newcTrailer}, 0)
}
