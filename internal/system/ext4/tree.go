package ext4

import (
	"context"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"syscall"
)

// A staged tree is a host directory that mkfs.ext4 -d copies in one pass,
// plus the metadata the image must end up with. Whatever the host could not
// represent without root (owners, device nodes, FIFOs, security xattrs,
// unreadable modes) is fixed afterwards by one debugfs batch. This keeps the
// data path in e2fsprogs' C code and costs one extra process per build.

// nodeMeta is the wanted metadata of one entry.
type nodeMeta struct {
	mode         uint32 // st_mode: type and permission bits
	uid, gid     uint32
	xattrs       map[string][]byte
	major, minor uint32
	special      bool // device node or FIFO: not on the host, made by mknod
}

type stagedTree struct {
	dir  string
	meta map[string]*nodeMeta // key: slash path relative to the root; "" is the root
}

func newStagedTree(dir string) *stagedTree {
	return &stagedTree{dir: dir, meta: map[string]*nodeMeta{"": {mode: 0o040755}}}
}

// buildImage creates image from t. size 0 sizes it from the tree.
func (e *Toolkit) buildImage(ctx context.Context, image string, size int64, t *stagedTree, scratch string) (err error) {
	inodes := int64(0)
	if size == 0 {
		data, entries, err := measureTree(t.dir)
		if err != nil {
			return fmt.Errorf("build %s: measure staging tree: %w", image, err)
		}
		entries += int64(len(t.meta)) // specials are not on the host
		size = autoSize(data, entries)
		inodes = autoInodes(entries)
	}
	if err := e.CreateExt4(ctx, image, size, CreateOptions{SourceDir: t.dir, MinInodes: inodes}); err != nil {
		return err
	}
	defer func() {
		if err != nil {
			_ = os.Remove(image)
		}
	}()
	s, err := t.fixupScript(scratch)
	if err != nil {
		return fmt.Errorf("build %s: %w", image, err)
	}
	if s.n == 0 {
		return nil
	}
	if _, err := e.runDebugfs(ctx, image, true, s, nil); err != nil {
		return fmt.Errorf("build %s: fix metadata: %w", image, err)
	}
	return nil
}

// fixupScript emits the debugfs commands that bring the mkfs -d result to
// the wanted metadata. Only differences are emitted, so a root build of a
// tree with matching owners needs almost nothing.
func (t *stagedTree) fixupScript(scratch string) (*dfScript, error) {
	s := &dfScript{}
	xattrN := 0
	for _, k := range sortedKeys(t.meta) {
		m := t.meta[k]
		ip := "/" + k
		var hostMode, hostUID, hostGID uint32
		switch {
		case k == "":
			// mkfs -d gives the root 0755 root:root (root_owner) whatever
			// the host dir is; set it explicitly anyway.
			hostMode, hostUID, hostGID = 0, 1<<31, 1<<31
		case m.special:
			s.add("cd", path.Dir(ip))
			switch m.mode & 0o170000 {
			case 0o010000:
				s.addf("mknod", path.Base(ip), "p")
			case 0o020000:
				s.addf("mknod", path.Base(ip), fmt.Sprintf("c %d %d", m.major, m.minor))
			case 0o060000:
				s.addf("mknod", path.Base(ip), fmt.Sprintf("b %d %d", m.major, m.minor))
			default:
				return nil, fmt.Errorf("%s: unsupported special file type %o", ip, m.mode&0o170000)
			}
			hostMode, hostUID, hostGID = 0, 1<<31, 1<<31
		default:
			var st syscall.Stat_t
			if err := syscall.Lstat(filepath.Join(t.dir, filepath.FromSlash(k)), &st); err != nil {
				return nil, fmt.Errorf("staging tree: %w", err)
			}
			hostMode, hostUID, hostGID = st.Mode, st.Uid, st.Gid
		}
		isLink := m.mode&0o170000 == 0o120000
		if !isLink && hostMode != m.mode {
			s.addf("sif", ip, fmt.Sprintf("mode 0%o", m.mode))
		}
		if hostUID != m.uid {
			s.addf("sif", ip, fmt.Sprintf("uid %d", m.uid))
		}
		if hostGID != m.gid {
			s.addf("sif", ip, fmt.Sprintf("gid %d", m.gid))
		}
		for _, name := range sortedKeys(m.xattrs) {
			xattrN++
			vf := filepath.Join(scratch, fmt.Sprintf("xattr-%d", xattrN))
			if err := os.WriteFile(vf, m.xattrs[name], 0o600); err != nil {
				return nil, err
			}
			s.add("ea_set -f", vf, ip, name)
		}
	}
	return s, s.err
}
