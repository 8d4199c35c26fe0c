package guestinit

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// inRoot returns the host path of p inside root, following symlinks as the guest will see
// them once root is "/": absolute targets are taken from root, and ".." stops at root, so
// an image's /lib -> /usr/lib (or a hostile link) never leads out of it. Components that do
// not exist yet are appended as they are.
func inRoot(root, p string) (string, error) {
	resolved := "" // clean, relative to root; "" is root itself
	rest := splitPath(p)
	missing := false // once a component is missing, the rest is taken literally
	for links := 0; len(rest) > 0; {
		c := rest[0]
		rest = rest[1:]
		switch c {
		case "", ".":
			continue
		case "..":
			resolved = strings.TrimPrefix(path.Dir("/"+resolved), "/")
			continue
		}
		next := path.Join(resolved, c)
		if missing {
			resolved = next
			continue
		}
		fi, err := os.Lstat(filepath.Join(root, next))
		if errors.Is(err, fs.ErrNotExist) {
			resolved, missing = next, true
			continue
		}
		if err != nil {
			return "", err
		}
		if fi.Mode()&fs.ModeSymlink == 0 {
			resolved = next
			continue
		}
		if links++; links > 40 {
			return "", fmt.Errorf("%s: too many levels of symbolic links", p)
		}
		target, err := os.Readlink(filepath.Join(root, next))
		if err != nil {
			return "", err
		}
		if path.IsAbs(target) {
			resolved = ""
		}
		rest = append(splitPath(target), rest...)
	}
	return filepath.Join(root, resolved), nil
}

func splitPath(p string) []string { return strings.Split(strings.Trim(p, "/"), "/") }

func kernelRelease() (string, error) {
	var uts unix.Utsname
	if err := unix.Uname(&uts); err != nil {
		return "", err
	}
	return unix.ByteSliceToString(uts.Release[:]), nil
}

// mountModules mounts the kernel's modules disk read-only at /lib/modules/<release> in the
// new root. A VM without it still boots (modprobe then fails in the guest), so a problem is
// a warning, not a reason to power off.
func (b *boot) mountModules() error {
	if b.cfg.Modules == "" {
		return nil
	}
	if err := mountModulesAt(b, newRoot); err != nil {
		b.logf("warning: kernel modules are not available in the guest (modprobe will fail): %v", err)
	}
	return nil
}

func mountModulesAt(b *boot, root string) error {
	release, err := kernelRelease()
	if err != nil {
		return err
	}
	dev, err := b.resolveDevice(b.cfg.Modules)
	if err != nil {
		return err
	}
	target, err := inRoot(root, "/lib/modules/"+release)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(target, 0o755); err != nil {
		return fmt.Errorf("create /lib/modules/%s in the image: %w", release, err)
	}
	if err := unix.Mount(dev, target, "ext4", unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV, ""); err != nil {
		return fmt.Errorf("mount modules disk %s (%s) on /lib/modules/%s: %w", dev, b.cfg.Modules, release, err)
	}
	b.debugf("kernel modules mounted at /lib/modules/%s", release)
	return nil
}

// rootDotfiles are what root's login bash reads; a work disk without them gets the
// image's /etc/skel versions, so the shell is the distribution's usual one.
var rootDotfiles = []string{".bashrc", ".profile"}

// seedRootDotfiles copies each missing root dotfile from root's /etc/skel into its /root,
// owned by uid:gid, never replacing anything present (a file, a link, even a broken one).
// It returns the names it copied.
func seedRootDotfiles(root string, uid, gid int) ([]string, error) {
	home := filepath.Join(root, "root")
	var copied []string
	for _, name := range rootDotfiles {
		dst := filepath.Join(home, name)
		if _, err := os.Lstat(dst); !errors.Is(err, fs.ErrNotExist) {
			continue
		}
		src, err := inRoot(root, "/etc/skel/"+name)
		if err != nil {
			return copied, err
		}
		fi, err := os.Stat(src)
		if err != nil || !fi.Mode().IsRegular() {
			continue // the image has no such skeleton file
		}
		data, err := os.ReadFile(src)
		if err != nil {
			return copied, err
		}
		f, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, fi.Mode().Perm())
		if err != nil {
			return copied, err
		}
		_, err = f.Write(data)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err == nil {
			err = os.Chown(dst, uid, gid)
		}
		if err != nil {
			_ = os.Remove(dst)
			return copied, fmt.Errorf("copy /etc/skel/%s to /root: %w", name, err)
		}
		copied = append(copied, name)
	}
	return copied, nil
}
