// Package tarcopy packs local files into a tar stream and extracts a tar stream into a
// local directory, keeping modes, mtimes and symlinks, for `banger vm cp`. A stream from a
// guest is hostile: extraction never writes outside the destination, never follows a
// symlink it did not check, and makes no device, setuid or setgid file.
package tarcopy

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Pack writes srcs to w as a tar stream, each under its base name (or under rename, when
// there is one src and rename is set). Directories need recursive.
func Pack(w io.Writer, srcs []string, rename string, recursive bool) error {
	tw := tar.NewWriter(w)
	for _, src := range srcs {
		fi, err := os.Lstat(src)
		if err != nil {
			return err
		}
		if fi.IsDir() && !recursive {
			return fmt.Errorf("%s is a directory: pass -r to copy it", src)
		}
		name := filepath.Base(filepath.Clean(src))
		if rename != "" {
			name = rename
		}
		root := filepath.Clean(src)
		err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			rel, err := filepath.Rel(root, p)
			if err != nil {
				return err
			}
			entry := name
			if rel != "." {
				entry = path.Join(name, filepath.ToSlash(rel))
			}
			return addEntry(tw, p, entry)
		})
		if err != nil {
			return err
		}
	}
	return tw.Close()
}

func addEntry(tw *tar.Writer, p, name string) error {
	fi, err := os.Lstat(p)
	if err != nil {
		return err
	}
	link := ""
	if fi.Mode()&fs.ModeSymlink != 0 {
		if link, err = os.Readlink(p); err != nil {
			return err
		}
	}
	hdr, err := tar.FileInfoHeader(fi, link)
	if err != nil {
		return fmt.Errorf("%s: %w", p, err)
	}
	hdr.Name = name
	if fi.IsDir() {
		hdr.Name += "/"
	}
	// Copies into a VM belong to its root, as docker cp makes them.
	hdr.Uname, hdr.Gname, hdr.Uid, hdr.Gid = "", "", 0, 0
	if !fi.Mode().IsRegular() && !fi.IsDir() && fi.Mode()&fs.ModeSymlink == 0 {
		return nil // sockets, fifos and devices are not copied
	}
	if err := tw.WriteHeader(hdr); err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return nil
	}
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := io.CopyN(tw, f, hdr.Size); err != nil {
		return fmt.Errorf("%s: %w", p, err)
	}
	return nil
}

// Options shape an extraction.
type Options struct {
	// Rename gives the stream's top-level entry another name (vm cp NAME:SRC NEWNAME).
	Rename string
	// Skipped is told about each entry that is not extracted, and why.
	Skipped func(name, why string)
}

// Extract writes the tar stream r into the directory dst, which must exist. Entries are
// confined to dst: names are cleaned and must stay below it, no entry is written through a
// symlink, files are created without following one, and modes keep only permission and
// sticky bits. Devices, fifos and sockets are skipped.
func Extract(r io.Reader, dst string, o Options) error {
	root, err := filepath.Abs(dst)
	if err != nil {
		return err
	}
	if fi, err := os.Stat(root); err != nil || !fi.IsDir() {
		return fmt.Errorf("%s is not a directory", dst)
	}
	skip := o.Skipped
	if skip == nil {
		skip = func(string, string) {}
	}
	type dirTime struct {
		path  string
		mode  fs.FileMode
		mtime time.Time
	}
	var dirs []dirTime
	tr := tar.NewReader(r)
	top := ""
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("read the copy's stream: %w", err)
		}
		rel, err := entryPath(hdr.Name)
		if err != nil {
			skip(hdr.Name, err.Error())
			continue
		}
		first, rest, _ := strings.Cut(rel, "/")
		if top == "" {
			top = first
		}
		if o.Rename != "" && first == top {
			rel = path.Join(o.Rename, rest)
		}
		target := filepath.Join(root, filepath.FromSlash(rel))
		if err := noSymlinkBetween(root, filepath.Dir(target)); err != nil {
			skip(hdr.Name, err.Error())
			continue
		}
		mode := fs.FileMode(hdr.Mode).Perm()
		if hdr.Mode&0o1000 != 0 {
			mode |= fs.ModeSticky
		}
		switch hdr.Typeflag {
		case tar.TypeDir:
			if err := os.Mkdir(target, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
				return err
			}
			if fi, err := os.Lstat(target); err != nil || !fi.IsDir() {
				skip(hdr.Name, "a non-directory is in the way")
				continue
			}
			if err := os.Chmod(target, mode|0o700); err != nil {
				return err
			}
			// Writable until its entries are in; its own mode and mtime at the end.
			dirs = append(dirs, dirTime{target, mode, hdr.ModTime})
		case tar.TypeReg:
			if err := writeFile(target, tr, mode, hdr.Size); err != nil {
				return fmt.Errorf("%s: %w", rel, err)
			}
			_ = os.Chtimes(target, hdr.ModTime, hdr.ModTime)
		case tar.TypeSymlink:
			if err := removeNonDir(target); err != nil {
				return err
			}
			if err := os.Symlink(hdr.Linkname, target); err != nil {
				return fmt.Errorf("%s: %w", rel, err)
			}
			ts := []unix.Timespec{unix.NsecToTimespec(hdr.ModTime.UnixNano()), unix.NsecToTimespec(hdr.ModTime.UnixNano())}
			_ = unix.UtimesNanoAt(unix.AT_FDCWD, target, ts, unix.AT_SYMLINK_NOFOLLOW)
		case tar.TypeLink:
			lrel, err := entryPath(hdr.Linkname)
			if err != nil {
				skip(hdr.Name, "hard link "+err.Error())
				continue
			}
			src := filepath.Join(root, filepath.FromSlash(lrel))
			if fi, err := os.Lstat(src); err != nil || !fi.Mode().IsRegular() || !realDirs(root, filepath.Dir(src)) {
				skip(hdr.Name, "hard link to something not extracted here")
				continue
			}
			if err := removeNonDir(target); err != nil {
				return err
			}
			if err := os.Link(src, target); err != nil {
				return fmt.Errorf("%s: %w", rel, err)
			}
		default:
			skip(hdr.Name, fmt.Sprintf("type %q is not copied (devices, fifos and sockets are not)", hdr.Typeflag))
		}
	}
	for i := len(dirs) - 1; i >= 0; i-- {
		_ = os.Chmod(dirs[i].path, dirs[i].mode)
		_ = os.Chtimes(dirs[i].path, dirs[i].mtime, dirs[i].mtime)
	}
	return nil
}

// entryPath cleans a tar name into a relative slash path that stays below the root.
func entryPath(name string) (string, error) {
	if strings.ContainsRune(name, 0) {
		return "", errors.New("a name with a NUL byte")
	}
	p := path.Clean("/" + strings.TrimPrefix(name, "./"))
	if p == "/" || strings.HasPrefix(name, "/") || strings.Contains("/"+name+"/", "/../") {
		return "", errors.New("a name outside the destination")
	}
	return strings.TrimPrefix(p, "/"), nil
}

// noSymlinkBetween makes sure every path component from root down to dir is a real
// directory, creating missing ones (a stream may leave out its parent entries): an entry
// is never written through a symlink, which the stream itself may have made.
func noSymlinkBetween(root, dir string) error {
	rel, err := filepath.Rel(root, dir)
	if err != nil || rel == ".." || strings.HasPrefix(rel, ".."+string(filepath.Separator)) {
		return errors.New("outside the destination")
	}
	p := root
	for _, c := range strings.Split(rel, string(filepath.Separator)) {
		if c == "." || c == "" {
			continue
		}
		p = filepath.Join(p, c)
		fi, err := os.Lstat(p)
		if errors.Is(err, fs.ErrNotExist) {
			if err := os.Mkdir(p, 0o755); err != nil {
				return err
			}
			continue
		}
		if err != nil {
			return err
		}
		if !fi.IsDir() {
			return fmt.Errorf("%s is not a directory (a symlink is never followed)", p)
		}
	}
	return nil
}

// realDirs says every component from root down to dir exists and is a directory.
func realDirs(root, dir string) bool {
	rel, err := filepath.Rel(root, dir)
	if err != nil || rel == ".." || strings.HasPrefix(rel, ".."+string(filepath.Separator)) {
		return false
	}
	p := root
	for _, c := range strings.Split(rel, string(filepath.Separator)) {
		if c == "." || c == "" {
			continue
		}
		p = filepath.Join(p, c)
		if fi, err := os.Lstat(p); err != nil || !fi.IsDir() {
			return false
		}
	}
	return true
}

// removeNonDir removes what is at p unless it is a directory.
func removeNonDir(p string) error {
	fi, err := os.Lstat(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if fi.IsDir() {
		return fmt.Errorf("%s is a directory", p)
	}
	return os.Remove(p)
}

// writeFile writes size bytes of r to a new file at p (replacing a file or symlink there,
// never following one).
func writeFile(p string, r io.Reader, mode fs.FileMode, size int64) error {
	if err := removeNonDir(p); err != nil {
		return err
	}
	fd, err := unix.Open(p, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, uint32(mode.Perm()))
	if err != nil {
		return err
	}
	f := os.NewFile(uintptr(fd), p)
	if _, err := io.CopyN(f, r, size); err != nil {
		f.Close()
		return err
	}
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
