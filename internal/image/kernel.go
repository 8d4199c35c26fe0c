package image

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"sync/atomic"
	"time"

	"github.com/blakesmith/ar"

	"github.com/banger-vm/banger/internal/initramfs"
	"github.com/banger-vm/banger/internal/kernelimage"
	"github.com/banger-vm/banger/internal/system/ext4"
)

// KernelPackage is the Debian package kernels come from.
const KernelPackage = "linux-image-cloud-amd64"

// Kernel is a kernel artifact: a directory under the kernels dir holding the package's
// boot/vmlinuz-* (bzImage) and lib/modules/<release>, plus the extracted ELF vmlinux
// (Firecracker on x86_64 loads only ELF). Any image can use any kernel.
type Kernel struct {
	ID          string    `json:"id"` // directory name: <release>_<package version>
	Release     string    `json:"release"`
	Package     string    `json:"package"`
	Version     string    `json:"version"`
	Suite       string    `json:"suite"`
	SHA256      string    `json:"sha256"` // of the .deb
	Dir         string    `json:"dir"`
	BzImage     string    `json:"bzimage"`
	Vmlinux     string    `json:"vmlinux"`
	ModulesDir  string    `json:"modules_dir"`
	SizeBytes   int64     `json:"size_bytes"`
	CreatedAt   time.Time `json:"created_at"`
	KernelBuild string    `json:"kernel_build,omitempty"` // the bzImage's version string
}

const kernelMeta = "kernel.json"

// Kernels lists the kernels present, newest first.
func (m *Manager) Kernels() ([]Kernel, error) {
	ents, err := os.ReadDir(m.KernelsDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []Kernel
	for _, e := range ents {
		if !e.IsDir() || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		k, err := readKernel(filepath.Join(m.KernelsDir, e.Name()))
		if err != nil {
			continue
		}
		out = append(out, k)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].CreatedAt.After(out[j].CreatedAt) })
	return out, nil
}

func readKernel(dir string) (Kernel, error) {
	data, err := os.ReadFile(filepath.Join(dir, kernelMeta))
	if err != nil {
		return Kernel{}, err
	}
	var k Kernel
	if err := json.Unmarshal(data, &k); err != nil {
		return Kernel{}, err
	}
	k.Dir = dir
	return k, nil
}

// Kernel returns the kernel with the given id.
func (m *Manager) Kernel(id string) (Kernel, error) {
	if id == "" || strings.ContainsAny(id, "/") || strings.HasPrefix(id, ".") {
		return Kernel{}, fmt.Errorf("kernel %q: %w", id, os.ErrNotExist)
	}
	return readKernel(filepath.Join(m.KernelsDir, id))
}

// EnsureKernel returns a kernel from suite: one already present is reused; otherwise (or
// with refresh) the newest linux-image-cloud-amd64 is fetched from the archive.
func (m *Manager) EnsureKernel(ctx context.Context, suite string, refresh bool, progress ProgressFunc) (Kernel, error) {
	if !refresh {
		ks, _ := m.Kernels()
		for _, k := range ks {
			if k.Suite == suite && k.Package != "" {
				return k, nil
			}
		}
	}
	return m.PullKernel(ctx, suite, progress)
}

// PullKernel fetches Debian's linux-image-cloud-amd64 for suite from the archive, in Go:
// verified InRelease -> verified Packages.xz -> the versioned image package -> its .deb
// (SHA256 from Packages) -> ar + data.tar.* unpacked, keeping boot/ and lib/modules/ ->
// vmlinux extracted. The kernel directory is built in staging and renamed into place.
func (m *Manager) PullKernel(ctx context.Context, suite string, progress ProgressFunc) (Kernel, error) {
	progress = serialised(progress)
	a := m.archive()
	progress.report(Progress{Stage: "reading the " + suite + " archive index"})
	index, err := a.packagesIndex(ctx, suite)
	if err != nil {
		return Kernel{}, fmt.Errorf("kernel: %w", err)
	}
	pkg, err := resolvePackage(index, KernelPackage)
	if err != nil {
		return Kernel{}, fmt.Errorf("kernel: %w", err)
	}
	name, version, file, sum := pkg["Package"], pkg["Version"], pkg["Filename"], pkg["SHA256"]
	if file == "" || sum == "" {
		return Kernel{}, fmt.Errorf("kernel: package %s has no Filename/SHA256 in the index", name)
	}
	id := sanitizeID(strings.TrimPrefix(name, "linux-image-") + "_" + version)
	installed, stage, err := m.kernelStage(id)
	if stage == "" {
		return installed, err
	}
	defer os.RemoveAll(stage)
	debPath := filepath.Join(stage, "kernel.deb")
	u := a.mirror + "/" + file
	if err := m.download(ctx, u, debPath, sum, progress, "downloading "+name+" "+version); err != nil {
		return Kernel{}, fmt.Errorf("kernel: %w", err)
	}
	root := filepath.Join(stage, "root")
	progress.report(Progress{Stage: "unpacking " + name})
	if err := unpackDeb(ctx, debPath, root, func(p string) bool {
		return strings.HasPrefix(p, "boot/") || strings.HasPrefix(p, "lib/modules/") || strings.HasPrefix(p, "usr/lib/modules/")
	}); err != nil {
		return Kernel{}, fmt.Errorf("kernel: unpack %s: %w", path.Base(file), err)
	}
	kinfo, err := initramfs.FindKernel(root)
	if err != nil {
		return Kernel{}, fmt.Errorf("kernel: %s: %w", name, err)
	}
	progress.report(Progress{Stage: "extracting vmlinux"})
	vmlinux, info, err := kernelimage.ExtractFile(kinfo.Image)
	if err != nil {
		return Kernel{}, fmt.Errorf("kernel: extract vmlinux from %s: %w", kinfo.Image, err)
	}
	if err := os.WriteFile(filepath.Join(root, "vmlinux"), vmlinux, 0o644); err != nil {
		return Kernel{}, err
	}
	_ = os.Remove(debPath)
	final := filepath.Join(m.KernelsDir, id)
	rel := func(p string) string { r, _ := filepath.Rel(root, p); return filepath.Join(final, r) }
	k := Kernel{ID: id, Release: kinfo.Release, Package: name, Version: version, Suite: suite, SHA256: sum,
		Dir: final, BzImage: rel(kinfo.Image), Vmlinux: filepath.Join(final, "vmlinux"), CreatedAt: time.Now().UTC(),
		KernelBuild: info.Version}
	if kinfo.ModulesDir != "" {
		k.ModulesDir = rel(kinfo.ModulesDir)
	}
	if k.ModulesDir != "" {
		progress.report(Progress{Stage: "building the kernel's modules disk"})
	}
	return m.installKernel(ctx, root, k)
}

// kernelStage returns kernel id when it is already installed; otherwise it makes a private
// staging directory for it inside the kernels dir (so the finished tree can be renamed
// into place on the same filesystem), which the caller removes. stage is "" when there is
// nothing to build: the kernel is there, or err says why no stage was made.
func (m *Manager) kernelStage(id string) (k Kernel, stage string, err error) {
	if k, err := m.Kernel(id); err == nil {
		return k, "", nil
	}
	if err := os.MkdirAll(m.KernelsDir, 0o700); err != nil {
		return Kernel{}, "", err
	}
	stage, err = os.MkdirTemp(m.KernelsDir, stagingPrefix)
	if err != nil {
		return Kernel{}, "", err
	}
	return Kernel{}, stage, nil
}

// installKernel builds the kernel's modules disk in the staged tree root, records k's
// metadata there and renames it to k.Dir. If a concurrent pull or import installed the same
// kernel first, that one is returned.
func (m *Manager) installKernel(ctx context.Context, root string, k Kernel) (Kernel, error) {
	if k.ModulesDir != "" {
		rel, err := filepath.Rel(k.Dir, k.ModulesDir)
		if err != nil || strings.HasPrefix(rel, "..") {
			return Kernel{}, fmt.Errorf("kernel: modules dir %s is outside %s", k.ModulesDir, k.Dir)
		}
		if _, err := BuildModulesDisk(ctx, m.Ext4, filepath.Join(root, rel), filepath.Join(root, ModulesDiskName)); err != nil {
			return Kernel{}, fmt.Errorf("kernel %s: %w", k.ID, err)
		}
	}
	k.SizeBytes = dirSize(root)
	data, _ := json.MarshalIndent(k, "", "  ")
	if err := os.WriteFile(filepath.Join(root, kernelMeta), data, 0o644); err != nil {
		return Kernel{}, err
	}
	if err := os.Rename(root, k.Dir); err != nil {
		if k2, e2 := m.Kernel(k.ID); e2 == nil {
			return k2, nil
		}
		return Kernel{}, fmt.Errorf("kernel: install %s: %w", k.Dir, err)
	}
	return k, nil
}

// RemoveKernel deletes a kernel no image uses.
func (m *Manager) RemoveKernel(ctx context.Context, id string) error {
	k, err := m.Kernel(id)
	if err != nil {
		return fmt.Errorf("kernel %q not found", id)
	}
	imgs, err := m.Store.ListImages(ctx)
	if err != nil {
		return err
	}
	var users []string
	for _, img := range imgs {
		if img.KernelRef == id {
			users = append(users, img.Name)
		}
	}
	if len(users) > 0 {
		return &InUseError{What: "kernel " + id, Users: users, Kind: "image"}
	}
	tmp := filepath.Join(m.KernelsDir, stagingPrefix+"rm-"+id)
	if err := os.Rename(k.Dir, tmp); err != nil {
		return err
	}
	return os.RemoveAll(tmp)
}

func sanitizeID(s string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '.', r == '-', r == '_', r == '+':
			return r
		}
		return '_'
	}, s)
}

func dirSize(dir string) int64 {
	var n int64
	_ = filepath.Walk(dir, func(_ string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() {
			n += fi.Size()
		}
		return nil
	})
	return n
}

// download fetches u to dst (which must not exist), verifying its SHA256 when wantHex is set,
// and reports byte progress. It returns the hex SHA256.
func (m *Manager) download(ctx context.Context, u, dst, wantHex string, progress ProgressFunc, stage string) error {
	got, err := m.downloadSum(ctx, u, dst, progress, stage)
	if err != nil {
		return err
	}
	if wantHex != "" && !strings.EqualFold(got, wantHex) {
		_ = os.Remove(dst)
		return fmt.Errorf("%s: checksum mismatch: SHA256 %s, expected %s (refusing the download)", u, got, strings.ToLower(wantHex))
	}
	return nil
}

func (m *Manager) downloadSum(ctx context.Context, u, dst string, progress ProgressFunc, stage string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return "", fmt.Errorf("download %s: %w", u, err)
	}
	resp, err := m.httpClient().Do(req)
	if err != nil {
		return "", fmt.Errorf("download %s: %w (check the URL and your network)", u, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("download %s: %s", u, resp.Status)
	}
	f, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return "", err
	}
	var n atomic.Int64
	tick := func() {
		progress.report(Progress{Stage: stage, Current: n.Load(), Total: resp.ContentLength, Unit: "bytes"})
	}
	h := sha256.New()
	_, err = io.CopyBuffer(io.MultiWriter(f, h), countingReader(resp.Body, &n, tick), make([]byte, 1<<20))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		_ = os.Remove(dst)
		return "", fmt.Errorf("download %s: %w", u, err)
	}
	tick()
	return hex.EncodeToString(h.Sum(nil)), nil
}

// unpackDeb extracts the data.tar.* member of a .deb (an ar archive) into dst, keeping only
// entries keep accepts. Regular files, dirs and symlinks only: that is all a kernel ships.
func unpackDeb(ctx context.Context, deb, dst string, keep func(string) bool) error {
	f, err := os.Open(deb)
	if err != nil {
		return err
	}
	defer f.Close()
	rd := ar.NewReader(f)
	for {
		hdr, err := rd.Next()
		if err == io.EOF {
			return fmt.Errorf("no data.tar member: not a Debian package")
		}
		if err != nil {
			return fmt.Errorf("read ar archive: %w", err)
		}
		if !strings.HasPrefix(strings.TrimRight(hdr.Name, "/ "), "data.tar") {
			continue
		}
		plain, _, closeDec, err := decompressed(rd)
		if err != nil {
			return err
		}
		defer closeDec()
		if err := os.MkdirAll(dst, 0o755); err != nil {
			return err
		}
		root, err := os.OpenRoot(dst)
		if err != nil {
			return err
		}
		defer root.Close()
		tr := tar.NewReader(plain)
		for {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			th, err := tr.Next()
			if err == io.EOF {
				return nil
			}
			if err != nil {
				return fmt.Errorf("read data.tar: %w", err)
			}
			k, err := ext4.CheckTarHeader(th)
			if err != nil {
				return err
			}
			if k == "" || !keep(k) {
				continue
			}
			if err := root.MkdirAll(filepath.Dir(k), 0o755); err != nil {
				return err
			}
			switch th.Typeflag {
			case tar.TypeDir:
				if err := root.MkdirAll(k, 0o755); err != nil {
					return err
				}
			case tar.TypeReg:
				w, err := root.OpenFile(k, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, os.FileMode(th.Mode)&0o755|0o600)
				if err != nil {
					return err
				}
				_, err = io.Copy(w, tr)
				if cerr := w.Close(); err == nil {
					err = cerr
				}
				if err != nil {
					return err
				}
			case tar.TypeSymlink:
				_ = root.Remove(k)
				if err := root.Symlink(th.Linkname, k); err != nil {
					return err
				}
			}
		}
	}
}

// ImportKernel registers an unpacked kernel package (a directory holding boot/vmlinuz-* and
// lib/modules/<release>, e.g. from `dpkg-deb -x linux-image-cloud-amd64_*.deb DIR`) as a
// kernel, copied into the kernels dir. Suite is recorded so image pulls and imports of that
// suite use it instead of fetching one.
func (m *Manager) ImportKernel(ctx context.Context, dir, suite string) (Kernel, error) {
	kinfo, err := initramfs.FindKernel(dir)
	if err != nil {
		return Kernel{}, fmt.Errorf("kernel import %s: %w", dir, err)
	}
	id := sanitizeID(kinfo.Release + "_imported")
	installed, stage, err := m.kernelStage(id)
	if stage == "" {
		return installed, err
	}
	defer os.RemoveAll(stage)
	root := filepath.Join(stage, "root")
	copyIn := func(src string) (string, error) {
		rel, err := filepath.Rel(dir, src)
		if err != nil || strings.HasPrefix(rel, "..") {
			return "", fmt.Errorf("%s is outside %s", src, dir)
		}
		return filepath.Join(root, rel), copyTree(ctx, src, filepath.Join(root, rel))
	}
	bz, err := copyIn(kinfo.Image)
	if err != nil {
		return Kernel{}, fmt.Errorf("kernel import: %w", err)
	}
	var modules string
	if kinfo.ModulesDir != "" {
		if modules, err = copyIn(kinfo.ModulesDir); err != nil {
			return Kernel{}, fmt.Errorf("kernel import: %w", err)
		}
	}
	final := filepath.Join(m.KernelsDir, id)
	rel := func(p string) string { r, _ := filepath.Rel(root, p); return filepath.Join(final, r) }
	k := Kernel{ID: id, Release: kinfo.Release, Package: "imported", Version: kinfo.Release, Suite: suite,
		Dir: final, BzImage: rel(bz), CreatedAt: time.Now().UTC()}
	if modules != "" {
		k.ModulesDir = rel(modules)
	}
	// Firecracker needs the ELF; QEMU does not, so a kernel it cannot be extracted from is
	// still usable there.
	if vmlinux, info, err := kernelimage.ExtractFile(bz); err == nil {
		if err := os.WriteFile(filepath.Join(root, "vmlinux"), vmlinux, 0o644); err != nil {
			return Kernel{}, err
		}
		k.Vmlinux, k.KernelBuild = filepath.Join(final, "vmlinux"), info.Version
	}
	return m.installKernel(ctx, root, k)
}

// copyTree copies a file or directory tree (regular files, dirs, symlinks).
func copyTree(ctx context.Context, src, dst string) error {
	return filepath.Walk(src, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		target := filepath.Join(dst, rel)
		switch {
		case fi.IsDir():
			return os.MkdirAll(target, 0o755)
		case fi.Mode()&os.ModeSymlink != 0:
			l, err := os.Readlink(p)
			if err != nil {
				return err
			}
			return os.Symlink(l, target)
		case fi.Mode().IsRegular():
			if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
				return err
			}
			in, err := os.Open(p)
			if err != nil {
				return err
			}
			defer in.Close()
			out, err := os.OpenFile(target, os.O_CREATE|os.O_EXCL|os.O_WRONLY, fi.Mode().Perm())
			if err != nil {
				return err
			}
			if _, err := io.Copy(out, in); err != nil {
				out.Close()
				return err
			}
			return out.Close()
		}
		return nil
	})
}
