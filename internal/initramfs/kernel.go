package initramfs

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// Kernel is a kernel package unpacked into a directory (e.g. with
// dpkg-deb -x), not installed: the files banger needs from it.
type Kernel struct {
	Root    string // the unpacked directory
	Release string // uname -r, e.g. 6.1.0-56-cloud-amd64
	// Image is boot/vmlinuz-<kver> (a bzImage) or boot/vmlinux-<kver> (ELF).
	Image string
	// ModulesDir is .../lib/modules/<kver>; empty for a kernel without modules.
	ModulesDir string
	// Config is boot/config-<kver> when the package ships it, else empty.
	Config string
}

// modulesRoots are where kernel packages put lib/modules: Debian 12 ships
// lib/modules, merged-/usr packages (Debian 13+) ship usr/lib/modules.
var modulesRoots = []string{"lib/modules", "usr/lib/modules"}

// FindKernel locates the kernel image and modules in an unpacked kernel
// package at root. The release is the single directory under lib/modules
// (or usr/lib/modules); a package without modules is identified by its
// single boot/vmlinuz-* or boot/vmlinux-* file.
func FindKernel(root string) (Kernel, error) {
	k := Kernel{Root: root}
	for _, mr := range modulesRoots {
		dir := filepath.Join(root, filepath.FromSlash(mr))
		if _, err := os.Stat(dir); err != nil {
			continue
		}
		rel, err := KernelRelease(dir)
		if err != nil {
			return Kernel{}, err
		}
		k.Release, k.ModulesDir = rel, filepath.Join(dir, rel)
		break
	}
	if k.Release == "" {
		rel, err := releaseFromBoot(root)
		if err != nil {
			return Kernel{}, err
		}
		k.Release = rel
	}
	img, err := KernelImage(root, k.Release)
	if err != nil {
		return Kernel{}, err
	}
	k.Image = img
	if cfg := filepath.Join(root, "boot", "config-"+k.Release); fileExists(cfg) {
		k.Config = cfg
	}
	return k, nil
}

// KernelRelease returns the name of the single kernel release directory in
// modulesRoot (an unpacked .../lib/modules). Several releases are an error:
// the caller must then say which one it means.
func KernelRelease(modulesRoot string) (string, error) {
	ents, err := os.ReadDir(modulesRoot)
	if err != nil {
		return "", fmt.Errorf("kernel release: %w", err)
	}
	var rels []string
	for _, e := range ents {
		if e.IsDir() {
			rels = append(rels, e.Name())
		}
	}
	switch len(rels) {
	case 0:
		return "", fmt.Errorf("kernel release: no kernel release directory in %s", modulesRoot)
	case 1:
		return rels[0], nil
	default:
		sort.Strings(rels)
		return "", fmt.Errorf("kernel release: %s holds several kernels (%s): unpack one kernel per directory", modulesRoot, strings.Join(rels, ", "))
	}
}

// KernelImage returns boot/vmlinuz-<release> (or boot/vmlinux-<release>)
// under root.
func KernelImage(root, release string) (string, error) {
	var tried []string
	for _, name := range []string{"vmlinuz-" + release, "vmlinux-" + release} {
		p := filepath.Join(root, "boot", name)
		if fileExists(p) {
			return p, nil
		}
		tried = append(tried, p)
	}
	return "", fmt.Errorf("kernel image for %s not found (tried %s)", release, strings.Join(tried, ", "))
}

func releaseFromBoot(root string) (string, error) {
	ents, err := os.ReadDir(filepath.Join(root, "boot"))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return "", fmt.Errorf("no kernel in %s: neither lib/modules/<release> nor boot/vmlinuz-<release> exists", root)
		}
		return "", err
	}
	seen := map[string]bool{}
	var rels []string
	for _, e := range ents {
		for _, pre := range []string{"vmlinuz-", "vmlinux-"} {
			if rel, ok := strings.CutPrefix(e.Name(), pre); ok && rel != "" && !seen[rel] {
				seen[rel] = true
				rels = append(rels, rel)
			}
		}
	}
	switch len(rels) {
	case 0:
		return "", fmt.Errorf("no kernel in %s: neither lib/modules/<release> nor boot/vmlinuz-<release> exists", root)
	case 1:
		return rels[0], nil
	default:
		sort.Strings(rels)
		return "", fmt.Errorf("%s/boot holds several kernels (%s): unpack one kernel per directory", root, strings.Join(rels, ", "))
	}
}

func fileExists(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.Mode().IsRegular()
}
