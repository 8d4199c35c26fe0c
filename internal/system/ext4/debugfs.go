package ext4

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

// debugfs pitfalls handled here (e2fsprogs 1.47.0): it exits 0 when commands
// fail (we treat any stderr line but the banner as failure), mkdir has no -p
// and must never run on an existing directory, mknod/write with a full path
// create a bogus name (we cd to the parent and use the base name), and write
// refuses an existing name (we rm first when replacing).

// maxDebugfsLine bounds every line of a debugfs script. debugfs reads its -f script with
// an 8 KiB fgets: a longer line is cut and its tail runs as a command of its own (and a
// line starting with '!' runs a shell). Paths are at most MaxPathBytes and names at most
// MaxNameBytes, so legitimate lines stay far below this.
const maxDebugfsLine = 6 << 10

// dfScript accumulates a debugfs batch. It refuses, as an error, any line that debugfs
// could read as something other than the one command we meant: too long, holding a
// control character, starting with '!', or with an argument that looks like an option.
type dfScript struct {
	b   strings.Builder
	n   int
	err error
}

// dq quotes an argument for debugfs's parser: double quotes, with an inner quote
// doubled. Control characters cannot be expressed in a line-based script, and an
// argument starting with '-' would be parsed as an option by commands using getopt (an
// xattr name "-f/home/u/.ssh/id_ed25519" makes ea_set read that file).
func dq(s string) (string, error) {
	if hasControl(s) {
		return "", fmt.Errorf("name %s contains a control character (newline, NUL, ...), which a debugfs script cannot carry: refused", clip(s))
	}
	if strings.HasPrefix(s, "-") {
		return "", fmt.Errorf("name %s starts with '-', which debugfs would read as an option: refused", clip(s))
	}
	return `"` + strings.ReplaceAll(s, `"`, `""`) + `"`, nil
}

// line appends one finished command line after the checks above.
func (s *dfScript) line(l string) {
	switch {
	case s.err != nil:
	case len(l) > maxDebugfsLine:
		s.err = fmt.Errorf("debugfs command %s is %d bytes, longer than the %d a script line may hold: refused", clip(l), len(l), maxDebugfsLine)
	case hasControl(l):
		s.err = fmt.Errorf("debugfs command %s contains a control character: refused", clip(l))
	case strings.HasPrefix(strings.TrimLeft(l, " \t"), "!"):
		s.err = fmt.Errorf("debugfs command %s would run a shell: refused", clip(l))
	default:
		s.b.WriteString(l)
		s.b.WriteByte('\n')
		s.n++
	}
}

// add appends a command with quoted arguments.
func (s *dfScript) add(cmd string, qargs ...string) {
	if s.err != nil {
		return
	}
	var l strings.Builder
	l.WriteString(cmd)
	for _, a := range qargs {
		q, err := dq(a)
		if err != nil {
			s.err = err
			return
		}
		l.WriteByte(' ')
		l.WriteString(q)
	}
	s.line(l.String())
}

// addf appends a command with one quoted argument and unquoted trailing words (numbers,
// field names) that come from banger's code.
func (s *dfScript) addf(cmd string, qarg string, rest string) {
	if s.err != nil {
		return
	}
	q, err := dq(qarg)
	if err != nil {
		s.err = err
		return
	}
	s.line(cmd + " " + q + " " + rest)
}

// debugfsResult is the per-command stdout of a batch (debugfs echoes each
// command as "debugfs: CMD" when reading from -f).
type debugfsResult struct {
	sections []string
	stderr   string
}

// runDebugfs runs script against image. tolerate reports stderr lines that
// are not errors for this call (e.g. rdump's chown failures as non-root).
func (e *Toolkit) runDebugfs(ctx context.Context, image string, write bool, s *dfScript, tolerate func(string) bool) (*debugfsResult, error) {
	if s.err != nil {
		return nil, s.err
	}
	if err := checkExt4Image(image); err != nil {
		return nil, err
	}
	args := []string{"-f", "-"}
	if write {
		args = append([]string{"-w"}, args...)
	}
	args = append(args, image)
	out, errb, err := e.run(ctx, toolDebugfs, strings.NewReader(s.b.String()), args...)
	if err != nil {
		return nil, fmt.Errorf("debugfs on %s: %v: %s", image, err, strings.TrimSpace(string(errb)))
	}
	var bad []string
	for _, line := range strings.Split(string(errb), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "debugfs ") && strings.Contains(line, "(") && !strings.Contains(line, ":") {
			continue // version banner
		}
		if tolerate != nil && tolerate(line) {
			continue
		}
		bad = append(bad, line)
	}
	res := &debugfsResult{stderr: string(errb)}
	// Split at the echoed commands (always at a line start; names in ls
	// output start with "/", so they cannot fake an echo).
	parts := strings.Split("\n"+string(out), "\ndebugfs: ")
	res.sections = parts[1:] // parts[0] is text before the first echo
	if len(bad) > 0 {
		msg := strings.Join(bad, "; ")
		hint := ""
		if strings.Contains(msg, "Could not allocate") || strings.Contains(msg, "No free space") {
			hint = " (the filesystem is full: grow the image)"
		}
		return res, fmt.Errorf("debugfs on %s failed: %s%s", image, msg, hint)
	}
	return res, nil
}

// Ext4Stat is what StatExt4 reads from an inode.
type Ext4Stat struct {
	Inode      uint64
	Mode       fs.FileMode // type and permission bits, incl. setuid/setgid/sticky
	UID, GID   uint32
	Size       int64
	Links      int
	LinkTarget string            // symlinks only
	Major      uint32            // device nodes only
	Minor      uint32            // device nodes only
	Xattrs     map[string][]byte // extended attributes, nil if none
}

var (
	reInode  = regexp.MustCompile(`Inode:\s+(\d+)\s+Type:\s+(.+?)\s+Mode:\s+([0-7]+)`)
	reUser   = regexp.MustCompile(`User:\s+(\d+)\s+Group:\s+(\d+)(?:\s+Project:\s+\d+)?\s+Size:\s+(\d+)`)
	reLinks  = regexp.MustCompile(`Links:\s+(\d+)`)
	reFast   = regexp.MustCompile(`Fast link dest:\s+"(.*)"`)
	reDev    = regexp.MustCompile(`Device major/minor number:\s+([0-9a-fA-F]+):([0-9a-fA-F]+)`)
	reXattr  = regexp.MustCompile(`^\s+(\S+) \((\d+)\)(?: = (.*))?$`)
	reLsLine = regexp.MustCompile(`^/(\d+)/([0-7]+)/(\d+)/(\d+)/(.*)/(\d*)/$`)
)

func parseStat(text string) (*Ext4Stat, error) {
	m := reInode.FindStringSubmatch(text)
	if m == nil {
		return nil, errors.New("no inode in debugfs stat output")
	}
	st := &Ext4Stat{}
	st.Inode, _ = strconv.ParseUint(m[1], 10, 64)
	perm, _ := strconv.ParseUint(m[3], 8, 32)
	st.Mode = unixModeToFileMode(uint32(perm))
	switch m[2] {
	case "regular":
	case "directory":
		st.Mode |= fs.ModeDir
	case "symlink":
		st.Mode |= fs.ModeSymlink
	case "character special":
		st.Mode |= fs.ModeDevice | fs.ModeCharDevice
	case "block special":
		st.Mode |= fs.ModeDevice
	case "FIFO":
		st.Mode |= fs.ModeNamedPipe
	case "socket":
		st.Mode |= fs.ModeSocket
	default:
		st.Mode |= fs.ModeIrregular
	}
	if u := reUser.FindStringSubmatch(text); u != nil {
		uid, _ := strconv.ParseUint(u[1], 10, 32)
		gid, _ := strconv.ParseUint(u[2], 10, 32)
		st.UID, st.GID = uint32(uid), uint32(gid)
		st.Size, _ = strconv.ParseInt(u[3], 10, 64)
	}
	if l := reLinks.FindStringSubmatch(text); l != nil {
		st.Links, _ = strconv.Atoi(l[1])
	}
	if f := reFast.FindStringSubmatch(text); f != nil {
		st.LinkTarget = f[1]
	}
	if d := reDev.FindStringSubmatch(text); d != nil {
		ma, _ := strconv.ParseUint(d[1], 16, 32)
		mi, _ := strconv.ParseUint(d[2], 16, 32)
		st.Major, st.Minor = uint32(ma), uint32(mi)
	}
	if i := strings.Index(text, "Extended attributes:\n"); i >= 0 {
		for _, line := range strings.Split(text[i+len("Extended attributes:\n"):], "\n") {
			x := reXattr.FindStringSubmatch(line)
			if x == nil {
				break
			}
			n, _ := strconv.Atoi(x[2])
			v, err := parseXattrValue(x[3], n)
			if err != nil {
				return nil, fmt.Errorf("xattr %s: %w", x[1], err)
			}
			if st.Xattrs == nil {
				st.Xattrs = map[string][]byte{}
			}
			st.Xattrs[x[1]] = v
		}
	}
	return st, nil
}

// parseXattrValue decodes debugfs's rendering: "text" or hex bytes.
func parseXattrValue(s string, n int) ([]byte, error) {
	s = strings.TrimSpace(s)
	if n == 0 {
		return []byte{}, nil
	}
	if strings.HasPrefix(s, `"`) && strings.HasSuffix(s, `"`) && len(s) >= 2 {
		v := s[1 : len(s)-1]
		if len(v) == n {
			return []byte(v), nil
		}
		if u, err := strconv.Unquote(s); err == nil && len(u) == n {
			return []byte(u), nil
		}
		return []byte(v), nil
	}
	b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
	if err != nil {
		return nil, err
	}
	return b, nil
}

func unixModeToFileMode(m uint32) fs.FileMode {
	fm := fs.FileMode(m & 0o777)
	if m&0o4000 != 0 {
		fm |= fs.ModeSetuid
	}
	if m&0o2000 != 0 {
		fm |= fs.ModeSetgid
	}
	if m&0o1000 != 0 {
		fm |= fs.ModeSticky
	}
	return fm
}

// fileModeToUnix converts to st_mode (type + permission bits).
// Raw unix bits 0o7000 (e.g. a literal 0o4755) are honoured too: Go's
// FileMode never uses them, so callers may pass either form.
func fileModeToUnix(fm fs.FileMode) uint32 {
	m := uint32(fm.Perm()) | uint32(fm)&0o7000
	if fm&fs.ModeSetuid != 0 {
		m |= 0o4000
	}
	if fm&fs.ModeSetgid != 0 {
		m |= 0o2000
	}
	if fm&fs.ModeSticky != 0 {
		m |= 0o1000
	}
	switch {
	case fm&fs.ModeDir != 0:
		m |= 0o040000
	case fm&fs.ModeSymlink != 0:
		m |= 0o120000
	case fm&fs.ModeNamedPipe != 0:
		m |= 0o010000
	case fm&fs.ModeSocket != 0:
		m |= 0o140000
	case fm&fs.ModeCharDevice != 0:
		m |= 0o020000
	case fm&fs.ModeDevice != 0:
		m |= 0o060000
	default:
		m |= 0o100000
	}
	return m
}

// cleanImagePath turns p into an absolute, clean path inside the image.
func cleanImagePath(p string) (string, error) {
	if p == "" {
		return "", errors.New("empty path")
	}
	c := path.Clean("/" + p)
	if strings.ContainsAny(c, "\n\r\x00") {
		return "", fmt.Errorf("path %q contains a newline or NUL", p)
	}
	return c, nil
}

// statMany stats several paths in one debugfs run; missing paths map to nil.
func (e *Toolkit) statMany(ctx context.Context, image string, paths []string) (map[string]*Ext4Stat, error) {
	s := &dfScript{}
	for _, p := range paths {
		s.add("stat", p)
	}
	notFound := func(line string) bool { return strings.Contains(line, "File not found by ext2_lookup") }
	res, err := e.runDebugfs(ctx, image, false, s, notFound)
	if err != nil {
		return nil, err
	}
	out := map[string]*Ext4Stat{}
	for i, p := range paths {
		if i >= len(res.sections) {
			break
		}
		if st, err := parseStat(res.sections[i]); err == nil {
			out[p] = st
		} else {
			out[p] = nil
		}
	}
	return out, nil
}

// StatExt4 reads an inode's metadata (owner, mode, link target, xattrs)
// without following a final symlink.
func (e *Toolkit) StatExt4(ctx context.Context, image, p string) (*Ext4Stat, error) {
	c, err := cleanImagePath(p)
	if err != nil {
		return nil, err
	}
	m, err := e.statMany(ctx, image, []string{c})
	if err != nil {
		return nil, err
	}
	if m[c] == nil {
		return nil, fmt.Errorf("stat %s in %s: %w", c, image, fs.ErrNotExist)
	}
	st := m[c]
	if st.Mode&fs.ModeSymlink != 0 && st.LinkTarget == "" && st.Size > 0 {
		// Slow symlinks (>= 60 bytes) keep the target in a data block.
		if st.Size > MaxLinkTargetBytes {
			return nil, fmt.Errorf("stat %s in %s: symlink target of %d bytes: refused", c, image, st.Size)
		}
		data, err := e.dumpToMemory(ctx, image, c, MaxLinkTargetBytes)
		if err != nil {
			return nil, err
		}
		st.LinkTarget = string(data)
	}
	return st, nil
}

// Ext4DirEntry is one entry of ListExt4Dir.
type Ext4DirEntry struct {
	Name     string
	Inode    uint64
	Mode     fs.FileMode
	UID, GID uint32
	Size     int64
}

// ListExt4Dir lists a directory (without "." and "..").
func (e *Toolkit) ListExt4Dir(ctx context.Context, image, dir string) ([]Ext4DirEntry, error) {
	c, err := cleanImagePath(dir)
	if err != nil {
		return nil, err
	}
	m, err := e.listMany(ctx, image, []string{c})
	if err != nil {
		return nil, err
	}
	ents, ok := m[c]
	if !ok {
		return nil, fmt.Errorf("list %s in %s: not found or not a directory", c, image)
	}
	return ents, nil
}

// listMany runs `ls -p` on several directories in one batch.
func (e *Toolkit) listMany(ctx context.Context, image string, dirs []string) (map[string][]Ext4DirEntry, error) {
	s := &dfScript{}
	for _, d := range dirs {
		s.add("ls -p", d)
	}
	res, err := e.runDebugfs(ctx, image, false, s, nil)
	if err != nil {
		return nil, err
	}
	out := map[string][]Ext4DirEntry{}
	for i, d := range dirs {
		if i >= len(res.sections) {
			break
		}
		lines := strings.Split(res.sections[i], "\n")
		ents := []Ext4DirEntry{}
		for _, line := range lines[1:] {
			m := reLsLine.FindStringSubmatch(line)
			if m == nil {
				continue
			}
			if m[5] == "." || m[5] == ".." {
				continue
			}
			ino, _ := strconv.ParseUint(m[1], 10, 64)
			mode, _ := strconv.ParseUint(m[2], 8, 32)
			uid, _ := strconv.ParseUint(m[3], 10, 32)
			gid, _ := strconv.ParseUint(m[4], 10, 32)
			size, _ := strconv.ParseInt(m[6], 10, 64)
			ents = append(ents, Ext4DirEntry{Name: m[5], Inode: ino, Mode: unixTypeMode(uint32(mode)), UID: uint32(uid), GID: uint32(gid), Size: size})
		}
		out[d] = ents
	}
	return out, nil
}

func unixTypeMode(m uint32) fs.FileMode {
	fm := unixModeToFileMode(m)
	switch m & 0o170000 {
	case 0o040000:
		fm |= fs.ModeDir
	case 0o120000:
		fm |= fs.ModeSymlink
	case 0o010000:
		fm |= fs.ModeNamedPipe
	case 0o140000:
		fm |= fs.ModeSocket
	case 0o020000:
		fm |= fs.ModeDevice | fs.ModeCharDevice
	case 0o060000:
		fm |= fs.ModeDevice
	}
	return fm
}

// dumpToMemory dumps an inode's data through a temp file and reads at most max bytes
// of it (the caller checked the inode's size; this holds even if it lied).
func (e *Toolkit) dumpToMemory(ctx context.Context, image, p string, max int64) ([]byte, error) {
	tmp, err := os.CreateTemp("", "banger-dump-")
	if err != nil {
		return nil, err
	}
	name := tmp.Name()
	tmp.Close()
	defer os.Remove(name)
	s := &dfScript{}
	s.add("dump", p, name)
	if _, err := e.runDebugfs(ctx, image, false, s, nil); err != nil {
		return nil, err
	}
	f, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, max+1))
	if err == nil && int64(len(data)) > max {
		err = fmt.Errorf("%w: more than %d bytes", ErrTooLarge, max)
	}
	return data, err
}

// DefaultMaxReadBytes bounds ReadExt4File: files read from images (package databases,
// authorized_keys) are small, and an image or a guest may plant a huge one.
const DefaultMaxReadBytes = 64 << 20

// ReadExt4File returns the contents of a regular file in image, refusing files over
// DefaultMaxReadBytes.
func (e *Toolkit) ReadExt4File(ctx context.Context, image, p string) ([]byte, error) {
	return e.ReadExt4FileMax(ctx, image, p, DefaultMaxReadBytes)
}

// ReadExt4FileMax returns the contents of a regular file in image, refusing (before
// reading anything) a file larger than max bytes.
func (e *Toolkit) ReadExt4FileMax(ctx context.Context, image, p string, max int64) ([]byte, error) {
	c, err := cleanImagePath(p)
	if err != nil {
		return nil, err
	}
	st, err := e.StatExt4(ctx, image, c)
	if err != nil {
		return nil, err
	}
	if !st.Mode.IsRegular() {
		return nil, fmt.Errorf("read %s in %s: not a regular file (%v)", c, image, st.Mode.Type())
	}
	if st.Size > max {
		return nil, fmt.Errorf("read %s in %s: %w: it is %d bytes, more than the %d banger reads", c, image, ErrTooLarge, st.Size, max)
	}
	data, err := e.dumpToMemory(ctx, image, c, max)
	if err != nil {
		return nil, fmt.Errorf("read %s in %s: %w", c, image, err)
	}
	return data, nil
}

// ErrTooLarge marks a file refused for its size.
var ErrTooLarge = errors.New("file too large")

// MkdirExt4 creates dir and any missing parents, owned uid:gid with mode.
// Existing directories are left alone (debugfs mkdir on an existing
// directory corrupts the image, so we check first).
func (e *Toolkit) MkdirExt4(ctx context.Context, image, dir string, uid, gid uint32, mode fs.FileMode) error {
	c, err := cleanImagePath(dir)
	if err != nil {
		return err
	}
	s := &dfScript{}
	if _, err := e.planParents(ctx, image, c, uid, gid, mode, true, s); err != nil {
		return fmt.Errorf("mkdir %s in %s: %w", c, image, err)
	}
	if s.n == 0 {
		return nil
	}
	if _, err := e.runDebugfs(ctx, image, true, s, nil); err != nil {
		return fmt.Errorf("mkdir %s in %s: %w", c, image, err)
	}
	return nil
}

// planParents stats every prefix of p (including p itself when inclusive)
// and appends mkdir+chown commands for missing ones. It returns the stat of
// p (nil if missing).
func (e *Toolkit) planParents(ctx context.Context, image, p string, uid, gid uint32, mode fs.FileMode, inclusive bool, s *dfScript) (*Ext4Stat, error) {
	var prefixes []string
	for q := p; q != "/"; q = path.Dir(q) {
		prefixes = append([]string{q}, prefixes...)
	}
	stats, err := e.statMany(ctx, image, prefixes)
	if err != nil {
		return nil, err
	}
	missing := false
	for i, q := range prefixes {
		last := i == len(prefixes)-1
		if last && !inclusive {
			break
		}
		st := stats[q]
		if st != nil && !missing {
			if !st.Mode.IsDir() {
				return nil, fmt.Errorf("%s exists and is not a directory", q)
			}
			continue
		}
		missing = true
		s.add("cd", path.Dir(q))
		s.add("mkdir", path.Base(q))
		s.addf("sif", q, fmt.Sprintf("mode 0%o", fileModeToUnix(mode.Perm()|mode&(fs.ModeSetgid|fs.ModeSetuid|fs.ModeSticky)|fs.ModeDir)))
		s.addf("sif", q, fmt.Sprintf("uid %d", uid))
		s.addf("sif", q, fmt.Sprintf("gid %d", gid))
	}
	return stats[p], nil
}

// WriteExt4FileOwned writes data to p in image, owned uid:gid with mode,
// replacing an existing regular file. Missing parents are created root:root
// 0755.
func (e *Toolkit) WriteExt4FileOwned(ctx context.Context, image, p string, data []byte, uid, gid uint32, mode fs.FileMode) error {
	return e.WriteExt4Files(ctx, image, []Ext4Entry{{Path: p, Data: data, UID: uid, GID: gid, Mode: mode}})
}

// Ext4Entry is a directory or regular file for WriteExt4Files.
type Ext4Entry struct {
	Path     string
	Dir      bool
	Data     []byte // file contents
	UID, GID uint32
	Mode     fs.FileMode // permission bits (and setuid/setgid/sticky)
}

// WriteExt4Files puts directories and files into image in one debugfs pass (plus one to
// look): entries apply in order; a missing parent is created root:root 0755; an existing
// directory entry is left as it is; an existing regular file is replaced.
func (e *Toolkit) WriteExt4Files(ctx context.Context, image string, entries []Ext4Entry) error {
	if len(entries) == 0 {
		return nil
	}
	clean := make([]string, len(entries))
	seen := map[string]bool{}
	var lookup []string
	for i, en := range entries {
		c, err := cleanImagePath(en.Path)
		if err != nil {
			return err
		}
		if c == "/" {
			return fmt.Errorf("write %s in %s: cannot write the root directory", c, image)
		}
		clean[i] = c
		for q := c; q != "/"; q = path.Dir(q) {
			if !seen[q] {
				seen[q] = true
				lookup = append(lookup, q)
			}
		}
	}
	stats, err := e.statMany(ctx, image, lookup)
	if err != nil {
		return fmt.Errorf("write files in %s: %w", image, err)
	}
	tmpDir, err := os.MkdirTemp(e.tmpRoot, "banger-write-")
	if err != nil {
		return fmt.Errorf("write files in %s: %w", image, err)
	}
	defer os.RemoveAll(tmpDir)
	isDir := map[string]bool{}
	s := &dfScript{}
	mkdir := func(q string, uid, gid uint32, mode fs.FileMode) {
		s.add("cd", path.Dir(q))
		s.add("mkdir", path.Base(q))
		s.addf("sif", q, fmt.Sprintf("mode 0%o", fileModeToUnix(mode.Perm()|mode&(fs.ModeSetgid|fs.ModeSetuid|fs.ModeSticky)|fs.ModeDir)))
		s.addf("sif", q, fmt.Sprintf("uid %d", uid))
		s.addf("sif", q, fmt.Sprintf("gid %d", gid))
		isDir[q] = true
	}
	exists := func(q string) (dir, ok bool) {
		if d, ok := isDir[q]; ok {
			return d, true
		}
		if st := stats[q]; st != nil {
			return st.Mode.IsDir(), true
		}
		return false, false
	}
	for i, en := range entries {
		c := clean[i]
		var parents []string
		for q := path.Dir(c); q != "/"; q = path.Dir(q) {
			parents = append([]string{q}, parents...)
		}
		for _, q := range parents {
			if dir, ok := exists(q); !ok {
				mkdir(q, 0, 0, 0o755)
			} else if !dir {
				return fmt.Errorf("write %s in %s: %s exists and is not a directory", c, image, q)
			}
		}
		dir, ok := exists(c)
		if en.Dir {
			if !ok {
				mkdir(c, en.UID, en.GID, en.Mode)
			} else if !dir {
				return fmt.Errorf("mkdir %s in %s: a file is in the way", c, image)
			}
			continue
		}
		if ok && dir {
			return fmt.Errorf("write %s in %s: a directory is in the way", c, image)
		}
		src := filepath.Join(tmpDir, strconv.Itoa(i))
		if err := os.WriteFile(src, en.Data, 0o600); err != nil {
			return fmt.Errorf("write %s in %s: temp file: %w", c, image, err)
		}
		s.add("cd", path.Dir(c))
		if ok {
			s.add("rm", path.Base(c))
		}
		s.add("write", src, path.Base(c))
		s.addf("sif", c, fmt.Sprintf("mode 0%o", fileModeToUnix(en.Mode&^fs.ModeType)))
		s.addf("sif", c, fmt.Sprintf("uid %d", en.UID))
		s.addf("sif", c, fmt.Sprintf("gid %d", en.GID))
		isDir[c] = false
	}
	if _, err := e.runDebugfs(ctx, image, true, s, nil); err != nil {
		return fmt.Errorf("write files in %s: %w", image, err)
	}
	return nil
}

// AddExt4Files writes new regular files into existing directories of image in one debugfs
// pass, without looking first: for images banger made itself (a copy of a template), whose
// parent directories are known to exist and names known to be free. Anything debugfs
// complains about (a missing parent, a name already taken) fails it.
func (e *Toolkit) AddExt4Files(ctx context.Context, image string, entries []Ext4Entry) error {
	if len(entries) == 0 {
		return nil
	}
	tmpDir, err := os.MkdirTemp(e.tmpRoot, "banger-write-")
	if err != nil {
		return fmt.Errorf("add files to %s: %w", image, err)
	}
	defer os.RemoveAll(tmpDir)
	s := &dfScript{}
	for i, en := range entries {
		c, err := cleanImagePath(en.Path)
		if err != nil {
			return err
		}
		if en.Dir || c == "/" {
			return fmt.Errorf("add %s to %s: only regular files can be added", c, image)
		}
		src := filepath.Join(tmpDir, strconv.Itoa(i))
		if err := os.WriteFile(src, en.Data, 0o600); err != nil {
			return fmt.Errorf("add %s to %s: temp file: %w", c, image, err)
		}
		s.add("cd", path.Dir(c))
		s.add("write", src, path.Base(c))
		s.addf("sif", c, fmt.Sprintf("mode 0%o", fileModeToUnix(en.Mode&^fs.ModeType)))
		s.addf("sif", c, fmt.Sprintf("uid %d", en.UID))
		s.addf("sif", c, fmt.Sprintf("gid %d", en.GID))
	}
	if _, err := e.runDebugfs(ctx, image, true, s, nil); err != nil {
		return fmt.Errorf("add files to %s: %w", image, err)
	}
	return nil
}

// RdumpExt4Dir copies the contents of dir in image (recursively) into the host directory
// hostDst, which is created if needed. Regular files, directories and symlinks are copied
// with their modes; device nodes, FIFOs and entries whose names cannot be copied safely are
// skipped (the warnings say which); ownership is not kept. It never uses debugfs rdump, so
// a hostile image cannot write outside hostDst.
func (e *Toolkit) RdumpExt4Dir(ctx context.Context, image, dir, hostDst string) (warnings []string, err error) {
	c, err := cleanImagePath(dir)
	if err != nil {
		return nil, err
	}
	tr, err := e.listTree(ctx, image, c)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(hostDst, 0o755); err != nil {
		return tr.warnings, fmt.Errorf("copy %s out of %s: %w", c, image, err)
	}
	root, err := os.OpenRoot(hostDst)
	if err != nil {
		return tr.warnings, err
	}
	defer root.Close()
	dump, err := os.MkdirTemp(hostDst, ".banger-dump-")
	if err != nil {
		return tr.warnings, err
	}
	defer os.RemoveAll(dump)
	err = e.copyOut(ctx, tr, root, ".", filepath.Base(dump), nil)
	return tr.warnings, err
}

// sortedKeys returns map keys in lexical order (parents before children).
func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
