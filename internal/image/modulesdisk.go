package image

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/banger-vm/banger/internal/initramfs"
	"github.com/banger-vm/banger/internal/system/ext4"
)

// ModulesDiskName is the kernel's modules disk inside its directory: a read-only ext4 image
// of lib/modules/<release> with depmod's indexes, which every VM on the kernel gets as an
// extra drive and banger-init mounts at /lib/modules/<release>, so modprobe works in the
// guest (Docker, filesystems, netfilter). One per kernel, shared by all its VMs.
const ModulesDiskName = "modules.ext4"

// ModulesDisk is the path of k's modules disk, or "" when the kernel has no modules.
func (k Kernel) ModulesDisk() string {
	if k.ModulesDir == "" || k.Dir == "" {
		return ""
	}
	return filepath.Join(k.Dir, ModulesDiskName)
}

// ModulesDiskStats describes one build.
type ModulesDiskStats struct {
	Modules  int
	Bytes    int64 // module and index data written
	Duration time.Duration
	Warnings []string
}

// EnsureModulesDisk returns k's modules disk, building it first when it is missing (kernels
// installed before banger built modules disks at pull and import). It returns "" with no
// error for a kernel without modules. Concurrent callers may both build; the last rename
// wins and both results are the same.
func (m *Manager) EnsureModulesDisk(ctx context.Context, k Kernel) (string, error) {
	disk := k.ModulesDisk()
	if disk == "" {
		return "", nil
	}
	if fi, err := os.Stat(disk); err == nil && fi.Mode().IsRegular() {
		return disk, nil
	}
	tmp, err := os.MkdirTemp(k.Dir, stagingPrefix+"modules-")
	if err != nil {
		return "", fmt.Errorf("kernel %s: modules disk: %w", k.ID, err)
	}
	defer os.RemoveAll(tmp)
	img := filepath.Join(tmp, ModulesDiskName)
	if _, err := BuildModulesDisk(ctx, m.Ext4, k.ModulesDir, img); err != nil {
		return "", fmt.Errorf("kernel %s: %w", k.ID, err)
	}
	if err := os.Rename(img, disk); err != nil {
		return "", fmt.Errorf("kernel %s: install modules disk: %w", k.ID, err)
	}
	return disk, nil
}

// BuildModulesDisk builds image (which must not exist) from a kernel's modules directory:
// the tree as it is, owned by root whoever builds it, plus the module indexes modprobe needs
// (computed by initramfs.Depmod unless the tree already has a depmod-written
// modules.dep.bin). On error nothing is left at image.
func BuildModulesDisk(ctx context.Context, e *ext4.Toolkit, modulesDir, image string) (ModulesDiskStats, error) {
	start := time.Now()
	var st ModulesDiskStats
	if e == nil {
		return st, errors.New("modules disk: no ext4 toolkit configured")
	}
	generated := map[string][]byte{}
	if _, err := os.Stat(filepath.Join(modulesDir, "modules.dep.bin")); errors.Is(err, fs.ErrNotExist) {
		res, err := initramfs.Depmod(ctx, modulesDir)
		if err != nil {
			return st, fmt.Errorf("modules disk: %w", err)
		}
		generated, st.Modules, st.Warnings = res.Files, res.Modules, res.Warnings
	} else if err != nil {
		return st, fmt.Errorf("modules disk: %w", err)
	}
	pr, pw := io.Pipe()
	written := make(chan int64, 1)
	go func() {
		var n int64
		pw.CloseWithError(writeModulesTar(ctx, pw, modulesDir, generated, &n))
		written <- n
	}()
	_, err := e.BuildExt4FromTar(ctx, image, pr, 0)
	pr.CloseWithError(errors.New("modules disk build ended")) // unblock the writer if the build stopped early
	st.Bytes = <-written
	if err != nil {
		return st, fmt.Errorf("modules disk from %s: %w", modulesDir, err)
	}
	st.Duration = time.Since(start)
	return st, nil
}

// writeModulesTar streams modulesDir as a tar with root owners, generated files replacing
// any of the same name.
func writeModulesTar(ctx context.Context, w io.Writer, modulesDir string, generated map[string][]byte, n *int64) error {
	tw := tar.NewWriter(w)
	mtime := time.Now().UTC().Truncate(time.Second)
	err := filepath.WalkDir(modulesDir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		rel, err := filepath.Rel(modulesDir, p)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		if rel == "." {
			return nil
		}
		if _, replaced := generated[rel]; replaced {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		hdr := &tar.Header{Name: rel, ModTime: info.ModTime(), Mode: int64(info.Mode().Perm())}
		switch {
		case d.IsDir():
			hdr.Typeflag, hdr.Name, hdr.Mode = tar.TypeDir, rel+"/", 0o755
		case d.Type()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			hdr.Typeflag, hdr.Linkname, hdr.Mode = tar.TypeSymlink, target, 0o777
		case d.Type().IsRegular():
			hdr.Typeflag, hdr.Size = tar.TypeReg, info.Size()
			hdr.Mode = int64(info.Mode().Perm()&0o755 | 0o644)
		default:
			return nil // nothing else belongs in a module tree
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if hdr.Typeflag != tar.TypeReg {
			return nil
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		c, err := io.Copy(tw, f)
		*n += c
		return err
	})
	if err != nil {
		return fmt.Errorf("read %s: %w", modulesDir, err)
	}
	names := make([]string, 0, len(generated))
	for name := range generated {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		data := generated[name]
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: int64(len(data)), ModTime: mtime}); err != nil {
			return err
		}
		if _, err := tw.Write(data); err != nil {
			return err
		}
		*n += int64(len(data))
	}
	return tw.Close()
}
