package system

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
)

// stageFromImage copies the contents of dir in image into t.dir and records
// their metadata in t (keys relative to dir). It needs two read-only debugfs
// runs: rdump for the data, then stat + ls -p of every directory for owners,
// modes and hard links (rdump cannot chown as non-root and does not keep hard
// links). Device nodes, FIFOs and sockets are skipped with a warning. xattrs
// are not carried over.
func (e *Ext4) stageFromImage(ctx context.Context, image, dir string, t *stagedTree) (warnings []string, err error) {
	if err := e.rdumpInto(ctx, image, dir, t.dir); err != nil {
		return nil, err
	}
	// Make the staged tree readable for mkfs -d; wanted modes are restored
	// by the fixup batch from the image metadata.
	var dirs []string
	err = filepath.WalkDir(t.dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(t.dir, p)
		if d.IsDir() {
			if !e.isRoot {
				if err := os.Chmod(p, 0o700); err != nil {
					return err
				}
			}
			if rel == "." {
				rel = ""
			}
			if dir == "/" && rel == "lost+found" {
				return filepath.SkipDir // mkfs makes its own
			}
			dirs = append(dirs, filepath.ToSlash(rel))
		} else if d.Type().IsRegular() && !e.isRoot {
			info, err := d.Info()
			if err != nil {
				return err
			}
			if info.Mode().Perm()&0o400 == 0 {
				if err := os.Chmod(p, info.Mode().Perm()|0o400); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("stage %s from %s: %w", dir, image, err)
	}
	imgPath := func(k string) string {
		if k == "" {
			return dir
		}
		return path.Join(dir, k)
	}
	s := &dfScript{}
	s.add("stat", dir)
	for _, d := range dirs {
		s.add("ls -p", imgPath(d))
	}
	res, err := e.runDebugfs(ctx, image, false, s, nil)
	if err != nil {
		return nil, fmt.Errorf("stage %s from %s: %w", dir, image, err)
	}
	if len(res.sections) != len(dirs)+1 {
		return nil, fmt.Errorf("stage %s from %s: debugfs returned %d results for %d commands", dir, image, len(res.sections), len(dirs)+1)
	}
	rootSt, err := parseStat(res.sections[0])
	if err != nil {
		return nil, fmt.Errorf("stage %s from %s: %w", dir, image, err)
	}
	t.meta[""] = &nodeMeta{mode: fileModeToUnix(rootSt.Mode), uid: rootSt.UID, gid: rootSt.GID}
	byInode := map[uint64]string{}
	for i, d := range dirs {
		for _, line := range strings.Split(res.sections[i+1], "\n")[1:] {
			m := reLsLine.FindStringSubmatch(line)
			if m == nil || m[5] == "." || m[5] == ".." {
				continue
			}
			var ino uint64
			var mode, uid, gid uint32
			fmt.Sscanf(m[1], "%d", &ino)
			fmt.Sscanf(m[2], "%o", &mode)
			fmt.Sscanf(m[3], "%d", &uid)
			fmt.Sscanf(m[4], "%d", &gid)
			if ino == 0 {
				continue // unused slot (lost+found is full of them)
			}
			k := path.Join(d, m[5])
			if d == "" && m[5] == "lost+found" && dir == "/" {
				continue // mkfs makes its own
			}
			switch mode & 0o170000 {
			case 0o100000, 0o040000, 0o120000:
			default:
				warnings = append(warnings, fmt.Sprintf("skipping special file %s (mode %o) in %s", imgPath(k), mode, image))
				continue
			}
			host := filepath.Join(t.dir, filepath.FromSlash(k))
			if mode&0o170000 == 0o100000 {
				// rdump writes each hard link as its own copy: relink.
				if first, ok := byInode[ino]; ok {
					if err := os.Remove(host); err != nil {
						return nil, fmt.Errorf("stage %s: %w", k, err)
					}
					if err := os.Link(filepath.Join(t.dir, filepath.FromSlash(first)), host); err != nil {
						return nil, fmt.Errorf("stage %s: %w", k, err)
					}
				} else {
					byInode[ino] = k
				}
			}
			t.meta[k] = &nodeMeta{mode: mode, uid: uid, gid: gid}
		}
	}
	// lost+found of the source is recreated by mkfs, never copied.
	if dir == "/" {
		if _, ok := t.meta["lost+found"]; !ok {
			removeAllForce(filepath.Join(t.dir, "lost+found"))
		}
	}
	return warnings, nil
}
