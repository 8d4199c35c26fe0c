package ext4

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/banger-vm/banger/internal/system"
)

// TarStats summarises a BuildExt4FromTar run.
type TarStats struct {
	Files, Dirs, Symlinks, Hardlinks, Specials int
	Bytes                                      int64 // regular file data
	Warnings                                   []string
}

// BuildExt4FromTar creates image (which must not exist) from a tar stream,
// keeping owner, group, mode (incl. setuid/setgid/sticky), symlinks, hard
// links, device nodes, FIFOs and xattrs (PAX SCHILY.xattr.*, e.g.
// security.capability) without root. sizeBytes 0 sizes the image from the
// contents. Entries with absolute paths, ".." components or paths through a
// symlink are refused. On any error nothing is left behind.
//
// How: the tar is extracted into a staging directory next to the image
// (inside an os.Root, so nothing can escape it), mkfs.ext4 -d copies it in
// one pass, and one debugfs batch sets what an unprivileged host cannot
// (owners, device nodes, security xattrs). See the package benchmarks.
func (e *Toolkit) BuildExt4FromTar(ctx context.Context, image string, r io.Reader, sizeBytes int64) (stats TarStats, err error) {
	return e.BuildExt4FromTarOpts(ctx, image, r, TarOptions{SizeBytes: sizeBytes})
}

// Defaults for TarOptions' bounds.
const (
	DefaultMaxTarBytes   int64 = 32 << 30
	DefaultMaxTarEntries       = 2 << 20
)

// TarOptions tune BuildExt4FromTarOpts.
type TarOptions struct {
	// SizeBytes is the image size; 0 sizes it from the contents.
	SizeBytes int64
	// MaxBytes caps the file data the tar may hold (0 = DefaultMaxTarBytes); MaxEntries
	// caps its entries (0 = DefaultMaxTarEntries). Both are checked before anything of an
	// entry is written.
	MaxBytes   int64
	MaxEntries int
	// LimitHint names the setting that raises MaxBytes, for the error message.
	LimitHint string
	// ContentBytes, when known (> 0), is how much file data the tar holds: staging goes
	// to tmpfs only when it fits there, and a tar holding more is refused. Unknown sizes
	// stage on disk, so an archive cannot fill RAM-backed /dev/shm.
	ContentBytes int64
}

// BuildExt4FromTarOpts is BuildExt4FromTar with bounds (see TarOptions).
func (e *Toolkit) BuildExt4FromTarOpts(ctx context.Context, image string, r io.Reader, o TarOptions) (stats TarStats, err error) {
	sizeBytes := o.SizeBytes
	if o.MaxBytes <= 0 {
		o.MaxBytes = DefaultMaxTarBytes
	}
	if o.MaxEntries <= 0 {
		o.MaxEntries = DefaultMaxTarEntries
	}
	for _, t := range []string{toolMkfs, toolDebugfs} {
		if _, err := e.tool(t); err != nil {
			return stats, fmt.Errorf("build %s from tar: %w", image, err)
		}
	}
	if _, err := os.Lstat(image); err == nil {
		return stats, fmt.Errorf("build %s from tar: %s already exists (remove it first)", image, image)
	}
	need := int64(-1) // unknown: stage on disk
	if o.ContentBytes > 0 {
		need = max(sizeBytes, o.ContentBytes+o.ContentBytes/8+64<<20)
	}
	work, err := e.newStaging(image, "tar", need)
	if err != nil {
		return stats, fmt.Errorf("build %s from tar: %w", image, err)
	}
	defer work.remove()
	stage, scratch := work.stage, work.scratch
	t := newStagedTree(stage)
	if err := e.extractTar(ctx, r, t, &stats, o); err != nil {
		return stats, fmt.Errorf("build %s from tar: %w", image, err)
	}
	if err := e.buildImage(ctx, image, sizeBytes, t, scratch); err != nil {
		return stats, err
	}
	return stats, nil
}

// Bounds on names from tar archives and images. Linux's own limits (NAME_MAX, PATH_MAX,
// XATTR_NAME_MAX, XATTR_SIZE_MAX): nothing legitimate exceeds them, and every name that
// reaches a debugfs script is checked against them first (see dfScript).
const (
	MaxNameBytes       = 255
	MaxPathBytes       = 4096
	MaxLinkTargetBytes = 4095
	MaxXattrNameBytes  = 255
	MaxXattrValueBytes = 64 << 10
)

// clip renders an untrusted name for an error message: quoted, and cut short so an 8 KiB
// name does not flood the log.
func clip(s string) string {
	if len(s) <= 80 {
		return fmt.Sprintf("%q", s)
	}
	return fmt.Sprintf("%q... (%d bytes)", s[:60], len(s))
}

// hasControl reports a C0 control character or DEL.
func hasControl(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] == 0x7f {
			return true
		}
	}
	return false
}

// CleanTarName validates a tar entry name: relative, no "..", no control characters,
// components of at most MaxNameBytes and a path of at most MaxPathBytes, so nothing built
// from a tar can escape its root or overflow a debugfs command line. It returns "" for
// the root itself.
func CleanTarName(name string) (string, error) {
	if strings.HasPrefix(name, "/") {
		return "", fmt.Errorf("tar entry %s has an absolute path: refused (no path escape)", clip(name))
	}
	if hasControl(name) {
		return "", fmt.Errorf("tar entry %s contains a control character (newline, NUL, ...): refused", clip(name))
	}
	for _, part := range strings.Split(name, "/") {
		if part == ".." {
			return "", fmt.Errorf("tar entry %s contains '..': refused (no path escape)", clip(name))
		}
		if len(part) > MaxNameBytes {
			return "", fmt.Errorf("tar entry %s: a name component is %d bytes, longer than %d bytes: refused", clip(name), len(part), MaxNameBytes)
		}
	}
	if len(name) > MaxPathBytes {
		return "", fmt.Errorf("tar entry %s: path is %d bytes, longer than %d bytes: refused", clip(name), len(name), MaxPathBytes)
	}
	c := path.Clean(name)
	if c == "." {
		return "", nil
	}
	return c, nil
}

// CheckTarHeader validates everything of hdr that banger uses, and returns the clean
// name. Every tar reader in banger (image import, OCI layers, rootfs tarballs, kernel
// packages) calls it on each header before acting on it.
func CheckTarHeader(hdr *tar.Header) (string, error) {
	k, err := CleanTarName(hdr.Name)
	if err != nil {
		return "", err
	}
	if hdr.Typeflag == tar.TypeGNUSparse {
		return "", sparseRefused(hdr.Name)
	}
	for key := range hdr.PAXRecords {
		if strings.HasPrefix(key, "GNU.sparse.") {
			return "", sparseRefused(hdr.Name)
		}
	}
	if hdr.Size < 0 || hdr.Uid < 0 || hdr.Gid < 0 || hdr.Devmajor < 0 || hdr.Devminor < 0 {
		return "", fmt.Errorf("tar entry %s: negative size, owner or device number: refused", clip(hdr.Name))
	}
	switch hdr.Typeflag {
	case tar.TypeSymlink:
		if len(hdr.Linkname) > MaxLinkTargetBytes || strings.ContainsRune(hdr.Linkname, 0) {
			return "", fmt.Errorf("tar entry %s: symlink target %s is longer than %d bytes or holds a NUL: refused", clip(hdr.Name), clip(hdr.Linkname), MaxLinkTargetBytes)
		}
	case tar.TypeLink:
		if _, err := CleanTarName(hdr.Linkname); err != nil {
			return "", fmt.Errorf("hard link %s: %w", clip(hdr.Name), err)
		}
	}
	for key, v := range hdr.PAXRecords {
		name, ok := strings.CutPrefix(key, "SCHILY.xattr.")
		if !ok {
			continue
		}
		if err := checkXattrName(name); err != nil {
			return "", fmt.Errorf("tar entry %s: %w", clip(hdr.Name), err)
		}
		if len(v) > MaxXattrValueBytes {
			return "", fmt.Errorf("tar entry %s: xattr %s value is %d bytes, more than %d: refused", clip(hdr.Name), clip(name), len(v), MaxXattrValueBytes)
		}
	}
	return k, nil
}

func sparseRefused(name string) error {
	return fmt.Errorf("tar entry %s is a sparse file: refused (a sparse entry can claim far more data than the archive holds); re-create the archive without --sparse", clip(name))
}

// checkXattrName accepts "namespace.name" in the namespaces Linux knows, bounded and
// free of control characters (the name goes into an ea_set command).
func checkXattrName(name string) error {
	if len(name) > MaxXattrNameBytes {
		return fmt.Errorf("xattr name %s is %d bytes, longer than %d bytes: refused", clip(name), len(name), MaxXattrNameBytes)
	}
	if hasControl(name) {
		return fmt.Errorf("xattr name %s contains a control character: refused", clip(name))
	}
	for _, ns := range []string{"security.", "trusted.", "user.", "system."} {
		if strings.HasPrefix(name, ns) && len(name) > len(ns) {
			return nil
		}
	}
	return fmt.Errorf("xattr name %s is not in the security, trusted, user or system namespace: refused", clip(name))
}

type extractState struct {
	root    *os.Root
	t       *stagedTree
	asRoot  bool
	buf     []byte
	dirs    []string // staged dirs, to chmod/chtime after their children
	mtimes  map[string]time.Time
	hostDir map[string]bool
	opts    TarOptions
}

func (e *Toolkit) extractTar(ctx context.Context, r io.Reader, t *stagedTree, stats *TarStats, o TarOptions) error {
	root, err := os.OpenRoot(t.dir)
	if err != nil {
		return err
	}
	defer root.Close()
	x := &extractState{root: root, t: t, asRoot: e.isRoot, buf: make([]byte, 1<<20), mtimes: map[string]time.Time{}, opts: o}
	tr := tar.NewReader(r)
	for n := 0; ; n++ {
		if n%256 == 0 && ctx.Err() != nil {
			return ctx.Err()
		}
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("read tar: %w (is the input a complete, uncompressed tar?)", err)
		}
		if n >= o.MaxEntries {
			return fmt.Errorf("the archive has more than %d entries: refused", o.MaxEntries)
		}
		if err := x.entry(hdr, tr, stats); err != nil {
			return err
		}
	}
	// Directory modes and times last: children changed them.
	sort.Sort(sort.Reverse(sort.StringSlice(x.dirs)))
	for _, d := range x.dirs {
		m := t.meta[d]
		if m == nil || m.mode&0o170000 != 0o040000 {
			continue
		}
		if err := x.setHostMeta(d, m, 0o700); err != nil {
			return err
		}
		if mt, ok := x.mtimes[d]; ok {
			_ = root.Chtimes(hostName(d), mt, mt)
		}
	}
	return nil
}

func hostName(k string) string {
	if k == "" {
		return "."
	}
	return filepath.FromSlash(k)
}

// setHostMeta makes the staged file carry as much of m as the host allows,
// so the debugfs fixup stays small. mustHave keeps the owner able to read
// (and for dirs traverse/clean up) the staging tree.
func (x *extractState) setHostMeta(k string, m *nodeMeta, mustHave os.FileMode) error {
	name := hostName(k)
	if x.asRoot {
		if err := x.root.Lchown(name, int(m.uid), int(m.gid)); err != nil {
			return fmt.Errorf("stage %s: %w", k, err)
		}
		mustHave = 0 // root reads and removes anything
	}
	// Chmod after chown: chown clears setuid/setgid.
	perm := unixModeToFileMode(m.mode&0o7777) | mustHave
	if err := x.root.Chmod(name, perm); err != nil {
		return fmt.Errorf("stage %s: %w", k, err)
	}
	return nil
}

// checkParents refuses entries whose parent is a symlink or not a
// directory, and creates missing parents as root:root 0755 (what tar does).
func (x *extractState) checkParents(k string, stats *TarStats) error {
	parts := strings.Split(k, "/")
	for i := 1; i < len(parts); i++ {
		p := strings.Join(parts[:i], "/")
		m, ok := x.t.meta[p]
		if !ok {
			if err := x.root.Mkdir(hostName(p), 0o700); err != nil && !errors.Is(err, os.ErrExist) {
				return fmt.Errorf("stage %s: %w", p, err)
			}
			x.t.meta[p] = &nodeMeta{mode: 0o040755}
			x.dirs = append(x.dirs, p)
			stats.Dirs++
			continue
		}
		if m.mode&0o170000 == 0o120000 {
			return fmt.Errorf("tar entry %q goes through symlink %q: refused (no path escape)", k, p)
		}
		if m.mode&0o170000 != 0o040000 {
			return fmt.Errorf("tar entry %q: parent %q is not a directory", k, p)
		}
	}
	return nil
}

// replace removes an earlier non-directory entry of the same name (later
// tar entries win, as with GNU tar).
func (x *extractState) replace(k string) error {
	m, ok := x.t.meta[k]
	if !ok {
		return nil
	}
	if m.mode&0o170000 == 0o040000 {
		return fmt.Errorf("tar entry %q replaces a directory: refused", k)
	}
	delete(x.t.meta, k)
	if m.special {
		return nil
	}
	if err := x.root.Remove(hostName(k)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("stage %s: %w", k, err)
	}
	return nil
}

func xattrsOf(hdr *tar.Header) map[string][]byte {
	var xs map[string][]byte
	for k, v := range hdr.PAXRecords {
		if name, ok := strings.CutPrefix(k, "SCHILY.xattr."); ok {
			if xs == nil {
				xs = map[string][]byte{}
			}
			xs[name] = []byte(v)
		}
	}
	return xs
}

func (x *extractState) entry(hdr *tar.Header, tr *tar.Reader, stats *TarStats) error {
	k, err := CheckTarHeader(hdr)
	if err != nil {
		return err
	}
	o := x.opts
	if hdr.Size > 0 && (hdr.Typeflag == tar.TypeReg || hdr.Typeflag == tar.TypeRegA) {
		switch total := stats.Bytes + hdr.Size; {
		case total > o.MaxBytes:
			hint := ""
			if o.LimitHint != "" {
				hint = " (raise " + o.LimitHint + " if the image is meant to be this big)"
			}
			return fmt.Errorf("tar entry %s: the archive holds more than %d MiB of file data, the limit: refused%s", clip(hdr.Name), o.MaxBytes>>20, hint)
		case o.ContentBytes > 0 && total > o.ContentBytes:
			return fmt.Errorf("tar entry %s: the archive holds more file data than the %d bytes announced: refused", clip(hdr.Name), o.ContentBytes)
		}
	}
	perm := uint32(hdr.Mode) & 0o7777
	m := &nodeMeta{uid: uint32(hdr.Uid), gid: uint32(hdr.Gid), xattrs: xattrsOf(hdr)}
	if k == "" {
		if hdr.Typeflag == tar.TypeDir {
			m.mode = 0o040000 | perm
			x.t.meta[""] = m
			x.mtimes[""] = hdr.ModTime
		}
		return nil
	}
	if err := x.checkParents(k, stats); err != nil {
		return err
	}
	name := hostName(k)
	switch hdr.Typeflag {
	case tar.TypeDir:
		m.mode = 0o040000 | perm
		if old, ok := x.t.meta[k]; ok {
			if old.mode&0o170000 != 0o040000 {
				if err := x.replace(k); err != nil {
					return err
				}
			}
		}
		if err := x.root.Mkdir(name, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
			return fmt.Errorf("stage %s: %w", k, err)
		}
		if _, ok := x.t.meta[k]; !ok {
			x.dirs = append(x.dirs, k)
			stats.Dirs++
		}
		x.t.meta[k] = m
		x.mtimes[k] = hdr.ModTime
	case tar.TypeReg, tar.TypeRegA:
		if err := x.replace(k); err != nil {
			return err
		}
		m.mode = 0o100000 | perm
		f, err := x.root.OpenFile(name, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
		if err != nil {
			return fmt.Errorf("stage %s: %w", k, err)
		}
		n, cerr := io.CopyBuffer(system.OnlyWriter{W: f}, tr, x.buf)
		if err := f.Close(); cerr == nil {
			cerr = err
		}
		if cerr != nil {
			return fmt.Errorf("stage %s: %w", k, cerr)
		}
		stats.Files++
		stats.Bytes += n
		x.t.meta[k] = m
		if err := x.setHostMeta(k, m, 0o400); err != nil {
			return err
		}
		_ = x.root.Chtimes(name, hdr.ModTime, hdr.ModTime)
	case tar.TypeSymlink:
		if err := x.replace(k); err != nil {
			return err
		}
		m.mode = 0o120777
		if err := x.root.Symlink(hdr.Linkname, name); err != nil {
			return fmt.Errorf("stage symlink %s: %w", k, err)
		}
		if x.asRoot {
			if err := x.root.Lchown(name, int(m.uid), int(m.gid)); err != nil {
				return fmt.Errorf("stage %s: %w", k, err)
			}
		}
		stats.Symlinks++
		x.t.meta[k] = m
	case tar.TypeLink:
		target, err := CleanTarName(hdr.Linkname)
		if err != nil {
			return fmt.Errorf("hard link %q: %w", hdr.Name, err)
		}
		tm, ok := x.t.meta[target]
		if !ok || target == "" {
			return fmt.Errorf("tar entry %q: hard link target %q is not earlier in the archive", hdr.Name, hdr.Linkname)
		}
		if tm.mode&0o170000 == 0o040000 {
			return fmt.Errorf("tar entry %q: hard link to directory %q refused", hdr.Name, hdr.Linkname)
		}
		if tm.special {
			// Device/FIFO hard links are rare; make an equal node instead.
			stats.Warnings = append(stats.Warnings, fmt.Sprintf("%s: hard link to special file %s stored as a separate node", k, target))
			if err := x.replace(k); err != nil {
				return err
			}
			c := *tm
			x.t.meta[k] = &c
			stats.Specials++
			return nil
		}
		if k == target {
			return nil
		}
		if err := x.replace(k); err != nil {
			return err
		}
		if err := x.root.Link(hostName(target), name); err != nil {
			return fmt.Errorf("stage hard link %s: %w", k, err)
		}
		x.t.meta[k] = tm // same inode, same metadata
		stats.Hardlinks++
	case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
		if err := x.replace(k); err != nil {
			return err
		}
		switch hdr.Typeflag {
		case tar.TypeChar:
			m.mode = 0o020000 | perm
		case tar.TypeBlock:
			m.mode = 0o060000 | perm
		default:
			m.mode = 0o010000 | perm
		}
		m.major, m.minor = uint32(hdr.Devmajor), uint32(hdr.Devminor)
		m.special = true
		x.t.meta[k] = m
		stats.Specials++
	case tar.TypeXGlobalHeader:
		// PAX global headers carry no file.
	default:
		stats.Warnings = append(stats.Warnings, fmt.Sprintf("%s: unsupported tar entry type %q skipped", k, hdr.Typeflag))
	}
	return nil
}
