package ext4

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
)

// Copying a tree out of an ext4 image that may be hostile (an imported FILE.ext4, or a root
// filesystem a builder guest wrote). debugfs rdump would join the raw on-disk names onto
// host paths, and a dirent named "../../home/u/.bashrc" would land there. Instead the tree
// is listed (ls -p, parsed strictly), every name is checked, each file's data is dumped by
// inode number into a fresh file of a private directory, and that file is moved into place
// through an os.Root: a name never reaches a host path join, and nothing can leave the
// staging area.

// Bounds on a tree copied out of an image (the work seed holds the image's /root and is
// copied into every new work disk).
const (
	MaxTreeEntries = 1 << 20
	MaxTreeBytes   = 16 << 30
)

// treeEntry is one entry listed from an image.
type treeEntry struct {
	rel            string // slash path relative to the listed directory
	ino            uint64
	mode, uid, gid uint32
	size           int64
}

// imageTree is a checked listing of a directory in an image.
type imageTree struct {
	image, dir string
	root       treeEntry   // the directory itself (rel "")
	entries    []treeEntry // parents before children
	bytes      int64       // regular file data
	warnings   []string
}

// badName says why a directory entry name from an image cannot be staged ("" if it can).
func badName(name string) string {
	switch {
	case name == "":
		return "empty name"
	case len(name) > MaxNameBytes:
		return fmt.Sprintf("name longer than %d bytes", MaxNameBytes)
	case strings.ContainsRune(name, '/'):
		return "name contains '/'"
	case hasControl(name):
		return "name contains a control character"
	}
	return ""
}

// listTree lists dir of image recursively (one debugfs run per tree level). Entries whose
// names could not be staged safely, special files and directory loops are skipped with a
// warning; a listing that does not parse (names with newlines can fake lines) is refused.
func (e *Toolkit) listTree(ctx context.Context, image, dir string) (*imageTree, error) {
	tr := &imageTree{image: image, dir: dir}
	imgPath := func(k string) string {
		if k == "" {
			return dir
		}
		return path.Join(dir, k)
	}
	s := &dfScript{}
	s.add("stat", dir)
	res, err := e.runDebugfs(ctx, image, false, s, nil)
	if err != nil {
		return nil, fmt.Errorf("list %s in %s: %w", dir, image, err)
	}
	if len(res.sections) != 1 {
		return nil, fmt.Errorf("list %s in %s: unexpected debugfs output", dir, image)
	}
	st, err := parseStat(res.sections[0])
	if err != nil {
		return nil, fmt.Errorf("list %s in %s: %w", dir, image, err)
	}
	if !st.Mode.IsDir() {
		return nil, fmt.Errorf("list %s in %s: not a directory", dir, image)
	}
	tr.root = treeEntry{ino: st.Inode, mode: fileModeToUnix(st.Mode), uid: st.UID, gid: st.GID}
	seenDir := map[uint64]bool{st.Inode: true}
	warn := func(k, why string) {
		tr.warnings = append(tr.warnings, fmt.Sprintf("skipping %s in %s: %s", clip(imgPath(k)), image, why))
	}
	for level := []string{""}; len(level) > 0; {
		s := &dfScript{}
		for _, d := range level {
			s.add("ls -p", imgPath(d))
		}
		res, err := e.runDebugfs(ctx, image, false, s, nil)
		if err != nil {
			return nil, fmt.Errorf("list %s in %s: %w", dir, image, err)
		}
		if len(res.sections) != len(level) {
			return nil, fmt.Errorf("list %s in %s: debugfs returned %d listings for %d directories (a file name holding a newline?): refused", dir, image, len(res.sections), len(level))
		}
		var next []string
		for i, d := range level {
			seen := map[string]bool{}
			for _, line := range strings.Split(res.sections[i], "\n")[1:] {
				if line == "" {
					continue
				}
				m := reLsLine.FindStringSubmatch(line)
				if m == nil {
					return nil, fmt.Errorf("list %s in %s: unparseable entry %s (a file name holding a newline?): refused", imgPath(d), image, clip(line))
				}
				name := m[5]
				ino, _ := strconv.ParseUint(m[1], 10, 64)
				if name == "." || name == ".." || ino == 0 {
					continue // self, parent, unused slots (lost+found is full of them)
				}
				k := path.Join(d, name)
				if d == "" && dir == "/" && name == "lost+found" {
					continue // mkfs makes its own
				}
				if why := badName(name); why != "" {
					warn(k, why)
					continue
				}
				if len(imgPath(k)) > MaxPathBytes {
					warn(k, fmt.Sprintf("path longer than %d bytes", MaxPathBytes))
					continue
				}
				if seen[name] {
					warn(k, "duplicate name")
					continue
				}
				seen[name] = true
				mode, _ := strconv.ParseUint(m[2], 8, 32)
				uid, _ := strconv.ParseUint(m[3], 10, 32)
				gid, _ := strconv.ParseUint(m[4], 10, 32)
				size, _ := strconv.ParseInt(m[6], 10, 64)
				en := treeEntry{rel: k, ino: ino, mode: uint32(mode), uid: uint32(uid), gid: uint32(gid), size: size}
				switch en.mode & 0o170000 {
				case 0o040000:
					if seenDir[ino] {
						warn(k, "directory linked twice (a loop)")
						continue
					}
					seenDir[ino] = true
					next = append(next, k)
				case 0o100000:
					if size < 0 || tr.bytes+size > MaxTreeBytes {
						return nil, fmt.Errorf("list %s in %s: its files hold more than %d GiB: refused (move large data out of %s)", dir, image, MaxTreeBytes>>30, dir)
					}
					tr.bytes += size
				case 0o120000:
					if size > MaxLinkTargetBytes {
						warn(k, "symlink target too long")
						continue
					}
				default:
					// The name passed badName, so it prints as it is.
					tr.warnings = append(tr.warnings, fmt.Sprintf("skipping special file %s (mode %o) in %s", imgPath(k), en.mode, image))
					continue
				}
				if len(tr.entries) >= MaxTreeEntries {
					return nil, fmt.Errorf("list %s in %s: more than %d entries: refused", dir, image, MaxTreeEntries)
				}
				tr.entries = append(tr.entries, en)
			}
		}
		level = next
	}
	return tr, nil
}

// stageNeed is how much staging space copying tr takes (for stagingDir's choice).
func (tr *imageTree) stageNeed() int64 { return tr.bytes + int64(len(tr.entries)+1)*4096 }

// rdumpTolerate ignores dump -p's ownership errors as non-root: the caller restores
// ownership from the image metadata instead.
func rdumpTolerate(line string) bool {
	return strings.Contains(line, "while changing ownership of")
}

// copyOut copies the listed tree into destRel (an existing directory) under root, using
// dumpRel (an existing, empty directory under root that only banger writes) for debugfs's
// output files. Modes, owners and hard links are recorded in t (when not nil); on the host
// files get their image permissions (readable by the owner) and mtimes.
func (e *Toolkit) copyOut(ctx context.Context, tr *imageTree, root *os.Root, destRel, dumpRel string, t *stagedTree) error {
	fail := func(err error) error { return fmt.Errorf("copy %s out of %s: %w", tr.dir, tr.image, err) }
	dumpAbs := filepath.Join(root.Name(), dumpRel)
	host := func(k string) string { return filepath.Join(destRel, filepath.FromSlash(k)) }
	s := &dfScript{}
	type job struct {
		en   treeEntry
		dump string // dump file under dumpRel ("" none)
		stat bool   // a section with the stat output follows
	}
	var jobs []job
	byInode := map[uint64]string{}
	var links [][2]string
	for _, en := range tr.entries {
		if t != nil {
			t.meta[en.rel] = &nodeMeta{mode: en.mode, uid: en.uid, gid: en.gid}
		}
		switch en.mode & 0o170000 {
		case 0o040000:
			if err := root.Mkdir(host(en.rel), 0o700); err != nil {
				return fail(err)
			}
		case 0o100000:
			if first, ok := byInode[en.ino]; ok {
				links = append(links, [2]string{first, en.rel}) // after the first is in place
				continue
			}
			byInode[en.ino] = en.rel
			j := job{en: en, dump: strconv.Itoa(len(jobs))}
			s.add("dump -p", fmt.Sprintf("<%d>", en.ino), filepath.Join(dumpAbs, j.dump))
			jobs = append(jobs, j)
		case 0o120000:
			j := job{en: en, stat: true}
			s.add("stat", fmt.Sprintf("<%d>", en.ino))
			if en.size >= 60 { // slow symlink: the target is in a data block
				j.dump = strconv.Itoa(len(jobs))
				s.add("dump", fmt.Sprintf("<%d>", en.ino), filepath.Join(dumpAbs, j.dump))
			}
			jobs = append(jobs, j)
		}
	}
	if s.n > 0 {
		res, err := e.runDebugfs(ctx, tr.image, false, s, rdumpTolerate)
		if err != nil {
			return fail(err)
		}
		if len(res.sections) != s.n {
			return fail(fmt.Errorf("debugfs returned %d results for %d commands (a symlink target holding a newline?): refused", len(res.sections), s.n))
		}
		sec := 0
		for _, j := range jobs {
			var st *Ext4Stat
			if j.stat {
				if st, err = parseStat(res.sections[sec]); err != nil {
					return fail(fmt.Errorf("%s: %w", j.en.rel, err))
				}
				sec++
			}
			if j.dump != "" {
				sec++
			}
			if j.en.mode&0o170000 == 0o100000 {
				if err := root.Rename(filepath.Join(dumpRel, j.dump), host(j.en.rel)); err != nil {
					return fail(err)
				}
				if !e.isRoot {
					// mkfs -d must read it; the wanted mode is restored from t.meta.
					if err := root.Chmod(host(j.en.rel), unixModeToFileMode(j.en.mode&0o7777)|0o400); err != nil {
						return fail(err)
					}
				}
				continue
			}
			target := st.LinkTarget
			if j.dump != "" {
				b, err := readCapped(root, filepath.Join(dumpRel, j.dump), MaxLinkTargetBytes)
				if err != nil {
					return fail(fmt.Errorf("symlink %s: %w", j.en.rel, err))
				}
				_ = root.Remove(filepath.Join(dumpRel, j.dump))
				target = string(b)
			}
			if int64(len(target)) != j.en.size || target == "" || strings.ContainsRune(target, 0) {
				tr.warnings = append(tr.warnings, fmt.Sprintf("skipping symlink %s in %s: unreadable target", clip(path.Join(tr.dir, j.en.rel)), tr.image))
				if t != nil {
					delete(t.meta, j.en.rel)
				}
				continue
			}
			if err := root.Symlink(target, host(j.en.rel)); err != nil {
				return fail(err)
			}
		}
	}
	for _, l := range links {
		if err := root.Link(host(l[0]), host(l[1])); err != nil {
			return fail(err)
		}
	}
	return nil
}

// readCapped reads at most max bytes of name under root.
func readCapped(root *os.Root, name string, max int64) ([]byte, error) {
	f, err := root.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, max+1))
	if err == nil && int64(len(b)) > max {
		err = fmt.Errorf("longer than %d bytes", max)
	}
	return b, err
}

// stageFromImage copies the listed tree into work's stage directory and records its
// metadata in t (keys relative to the listed directory). Device nodes, FIFOs and sockets
// are skipped with a warning. xattrs are not carried over.
func (e *Toolkit) stageFromImage(ctx context.Context, tr *imageTree, work staging, t *stagedTree) (warnings []string, err error) {
	root, err := os.OpenRoot(work.dir)
	if err != nil {
		return nil, err
	}
	defer root.Close()
	if err := root.Mkdir("dump", 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return nil, err
	}
	t.meta[""] = &nodeMeta{mode: tr.root.mode, uid: tr.root.uid, gid: tr.root.gid}
	if err := e.copyOut(ctx, tr, root, filepath.Base(work.stage), "dump", t); err != nil {
		return tr.warnings, err
	}
	return tr.warnings, nil
}

// stageWork stages the /root tree tr (nil for none) in work for a work disk or seed: a
// private root directory holding tr's files, with their metadata recorded in t.
func (e *Toolkit) stageWork(ctx context.Context, tr *imageTree, work staging) (t *stagedTree, warnings []string, err error) {
	t = newStagedTree(work.stage)
	t.meta[""] = &nodeMeta{mode: 0o040700}
	if tr != nil {
		warnings, err = e.stageFromImage(ctx, tr, work, t)
	}
	return t, warnings, err
}
