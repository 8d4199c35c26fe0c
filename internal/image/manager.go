package image

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/banger-vm/banger/internal/store"
	"github.com/banger-vm/banger/internal/system"
	"github.com/banger-vm/banger/internal/system/ext4"
	"github.com/banger-vm/banger/internal/system/hosttools"
)

// Files of an image directory.
const (
	RootfsFile   = "rootfs.ext4"
	WorkSeedFile = "work-seed.ext4"
	PackagesFile = "packages.json"
)

// stagingPrefix marks work in progress under the images and kernels dirs; anything so named
// is removed by Cleanup at daemon start.
const stagingPrefix = ".staging-"

// DebianPackages are always installed into Debian images.
var DebianPackages = []string{"systemd-sysv", "openssh-server", "iproute2", "ca-certificates", "kmod"}

// BaselinePackages is the optional, language-agnostic developer baseline (--baseline).
var BaselinePackages = []string{"git", "curl", "wget", "build-essential", "vim", "less", "procps", "sudo", "unzip", "xz-utils", "jq", "man-db", "openssh-client", "gnupg"}

// Manager pulls, imports, lists and removes images and kernels.
type Manager struct {
	Store      *store.Store
	Ext4       *ext4.Toolkit
	ImagesDir  string
	KernelsDir string
	Catalog    Catalog
	Mirror     string // Debian mirror; "" = DefaultMirror
	Keyring    string // "" = DefaultKeyring
	// Transport is used for registries and downloads; nil = http.DefaultTransport.
	Transport http.RoundTripper
	Log       *slog.Logger
	// Limits bound image sizes and layer counts; the zero value means the defaults.
	Limits Limits

	mu      sync.Mutex
	pulling map[string]bool
}

// Metadata is stored as the image row's JSON metadata.
type Metadata struct {
	Kind          Kind     `json:"kind"`
	Ref           string   `json:"ref,omitempty"`
	Suite         string   `json:"suite,omitempty"`
	Baseline      bool     `json:"baseline,omitempty"`
	Dir           string   `json:"dir"`
	PackagesPath  string   `json:"packages_path"`
	PackageFormat string   `json:"package_format"`
	PackageCount  int      `json:"package_count"`
	RootfsBytes   int64    `json:"rootfs_bytes"` // apparent size of rootfs.ext4
	RootfsUsed    int64    `json:"rootfs_used"`  // allocated on disk
	WorkSeedBytes int64    `json:"work_seed_bytes"`
	ContentBytes  int64    `json:"content_bytes"` // regular file data in the image
	DownloadBytes int64    `json:"download_bytes,omitempty"`
	Kernel        *Kernel  `json:"kernel,omitempty"`
	Warnings      []string `json:"warnings,omitempty"`
	PullSeconds   float64  `json:"pull_seconds"`
}

// PullOptions say what to pull and how.
type PullOptions struct {
	// Ref is a catalog name or an OCI reference; "" is DefaultImage.
	Ref string
	// Name registers the image under another name (default: the catalog name or reference).
	Name string
	// Baseline adds BaselinePackages to Debian images.
	Baseline bool
	// NoKernel skips making sure a kernel is present (images.kernel = "none" or --no-kernel).
	NoKernel bool
	Progress ProgressFunc
}

// InUseError is returned when something still uses what is being removed.
type InUseError struct {
	What  string
	Kind  string // what the users are: "VM", "image"
	Users []string
}

func (e *InUseError) Error() string {
	return fmt.Sprintf("%s is in use by %s %s: remove those first", e.What, plural(e.Kind, len(e.Users)), strings.Join(e.Users, ", "))
}

func (e *InUseError) Unwrap() error { return store.ErrInUse }

func plural(s string, n int) string {
	if n == 1 {
		return s
	}
	return s + "s"
}

func (m *Manager) httpClient() *http.Client {
	return &http.Client{Transport: m.Transport}
}

func (m *Manager) archive() *archive {
	mirror := strings.TrimRight(m.Mirror, "/")
	if mirror == "" {
		mirror = DefaultMirror
	}
	kr := m.Keyring
	if kr == "" {
		kr = DefaultKeyring
	}
	return &archive{mirror: mirror, keyring: kr, client: m.httpClient()}
}

func (m *Manager) log() *slog.Logger {
	if m.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return m.Log
}

// lockName serialises pulls of one name.
func (m *Manager) lockName(name string) (func(), error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.pulling == nil {
		m.pulling = map[string]bool{}
	}
	if m.pulling[name] {
		return nil, fmt.Errorf("image %q is already being pulled or imported: wait for that to finish", name)
	}
	m.pulling[name] = true
	return func() { m.mu.Lock(); delete(m.pulling, name); m.mu.Unlock() }, nil
}

// build is one image build in a staging directory.
type build struct {
	m     *Manager
	dir   string // staging dir under ImagesDir
	meta  Metadata
	start time.Time
	prog  ProgressFunc
}

// startBuild takes name for a build (lockName) and opens the build's staging directory.
// The caller defers end: it removes the staging directory unless finish installed it,
// then gives the name back.
func (m *Manager) startBuild(name string, prog ProgressFunc) (b *build, end func(), err error) {
	unlock, err := m.lockName(name)
	if err != nil {
		return nil, nil, err
	}
	if err := os.MkdirAll(m.ImagesDir, 0o700); err != nil {
		unlock()
		return nil, nil, err
	}
	dir, err := os.MkdirTemp(m.ImagesDir, stagingPrefix)
	if err != nil {
		unlock()
		return nil, nil, fmt.Errorf("staging directory: %w", err)
	}
	b = &build{m: m, dir: dir, start: time.Now(), prog: prog}
	return b, func() { b.abort(); unlock() }, nil
}

func (b *build) rootfs() string { return filepath.Join(b.dir, RootfsFile) }

// fromTar builds rootfs.ext4 from a tar stream. contentBytes is how much file data it
// holds when known (0 = unknown).
func (b *build) fromTar(ctx context.Context, r io.Reader, what string, contentBytes int64) error {
	var n atomic.Int64
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		t := time.NewTicker(250 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				b.prog.report(Progress{Stage: "converting " + what + " to ext4", Current: n.Load(), Unit: "bytes"})
			}
		}
	}()
	st, err := b.m.Ext4.BuildExt4FromTarOpts(ctx, b.rootfs(), countingReader(r, &n, nil), ext4.TarOptions{
		MaxBytes: b.m.limits().MaxBytes, LimitHint: "images.max_size", ContentBytes: contentBytes})
	if err != nil {
		return err
	}
	b.meta.ContentBytes = st.Bytes
	b.meta.Warnings = append(b.meta.Warnings, st.Warnings...)
	return nil
}

// finish builds the work seed and manifest, then registers the image atomically: the
// staging dir is renamed to its final name, then the store row is written (one
// transaction). A crash before the row leaves an unreferenced dir that Cleanup removes.
func (b *build) finish(ctx context.Context, name, source, digest string, kernel *Kernel) (store.Image, error) {
	m := b.m
	// Check first: an imported ext4 or a builder guest's root filesystem is untrusted, and
	// a crafted one is refused before anything else parses it.
	b.prog.report(Progress{Stage: "checking the root filesystem"})
	if err := m.Ext4.FsckExt4(ctx, b.rootfs()); err != nil {
		return store.Image{}, fmt.Errorf("the root filesystem does not check clean: %w", err)
	}
	b.prog.report(Progress{Stage: "building the work seed from /root"})
	seed := filepath.Join(b.dir, WorkSeedFile)
	w, err := m.Ext4.BuildWorkSeed(ctx, b.rootfs(), seed)
	if err != nil {
		return store.Image{}, err
	}
	for _, s := range w {
		b.meta.Warnings = append(b.meta.Warnings, strings.ReplaceAll(s, b.rootfs(), "the image"))
	}
	b.prog.report(Progress{Stage: "writing the package manifest"})
	man, err := readManifest(ctx, m.Ext4, b.rootfs())
	if err != nil {
		return store.Image{}, fmt.Errorf("read package database: %w", err)
	}
	data, _ := json.MarshalIndent(man, "", " ")
	if err := os.WriteFile(filepath.Join(b.dir, PackagesFile), data, 0o600); err != nil {
		return store.Image{}, err
	}
	b.meta.PackageFormat, b.meta.PackageCount = man.Format, len(man.Packages)
	if err := system.SyncDir(b.dir); err != nil {
		return store.Image{}, err
	}

	old, err := m.Store.GetImageByName(ctx, name)
	id := old.ID
	switch {
	case errors.Is(err, store.ErrNotFound):
		id = newID()
	case err != nil:
		return store.Image{}, err
	}
	final := filepath.Join(m.ImagesDir, id+"-"+time.Now().UTC().Format("20060102T150405.000000000"))
	if err := os.Rename(b.dir, final); err != nil {
		return store.Image{}, fmt.Errorf("install image: %w", err)
	}
	_ = system.SyncDir(m.ImagesDir)
	b.dir = final
	b.meta.Dir = final
	b.meta.PackagesPath = filepath.Join(final, PackagesFile)
	b.meta.RootfsBytes, b.meta.RootfsUsed = fileSizes(filepath.Join(final, RootfsFile))
	b.meta.WorkSeedBytes, _ = fileSizes(filepath.Join(final, WorkSeedFile))
	b.meta.Kernel = kernel
	b.meta.PullSeconds = time.Since(b.start).Seconds()
	metaJSON, _ := json.Marshal(b.meta)
	img := store.Image{ID: id, Name: name, Source: source, Digest: digest,
		RootfsPath: filepath.Join(final, RootfsFile), WorkSeedPath: filepath.Join(final, WorkSeedFile),
		SizeBytes: b.meta.RootfsUsed, Metadata: metaJSON, CreatedAt: time.Now()}
	if kernel != nil {
		img.KernelRef = kernel.ID
	}
	if err := m.Store.PutImage(ctx, img); err != nil {
		_ = os.RemoveAll(final)
		return store.Image{}, fmt.Errorf("register image: %w", err)
	}
	// The old files go unless a VM still refers to them; Cleanup retries later.
	if old.ID != "" {
		if oldDir := filepath.Dir(old.RootfsPath); oldDir != final {
			m.removeIfUnused(ctx, oldDir)
		}
	}
	return m.Store.GetImage(ctx, id)
}

func (b *build) abort() {
	if strings.HasPrefix(filepath.Base(b.dir), stagingPrefix) {
		_ = os.RemoveAll(b.dir)
	}
}

// Pull pulls or builds an image and registers it. On any error, or if ctx is cancelled,
// nothing is registered and the staging files are removed.
func (m *Manager) Pull(ctx context.Context, o PullOptions) (store.Image, error) {
	o.Progress = serialised(o.Progress)
	e, err := m.Catalog.Resolve(o.Ref)
	if err != nil {
		return store.Image{}, err
	}
	name := o.Name
	if name == "" {
		name = e.Name
	}
	b, end, err := m.startBuild(name, o.Progress)
	if err != nil {
		return store.Image{}, err
	}
	defer end()
	b.meta.Kind, b.meta.Ref, b.meta.Suite = e.Kind, e.Ref, e.Suite
	source, digest := e.Source(), ""
	switch e.Kind {
	case KindOCI:
		digest, err = m.pullOCI(ctx, b, e)
		if err == nil {
			source = "oci:" + e.Ref
		}
	case KindTarball:
		digest, err = m.pullTarball(ctx, b, e)
	case KindDebian:
		err = m.pullDebian(ctx, b, e, o.Baseline)
		b.meta.Baseline = o.Baseline
	default:
		err = fmt.Errorf("image %q: unsupported kind %q", e.Name, e.Kind)
	}
	if err != nil {
		return store.Image{}, fmt.Errorf("pull %s: %w", e.Name, err)
	}
	var k *Kernel
	if !o.NoKernel {
		kk, err := m.EnsureKernel(ctx, e.KernelSuite, false, o.Progress)
		if err != nil {
			return store.Image{}, fmt.Errorf("pull %s: %w (pass --no-kernel to skip)", e.Name, err)
		}
		k = &kk
	}
	img, err := b.finish(ctx, name, source, digest, k)
	if err != nil {
		return store.Image{}, fmt.Errorf("pull %s: %w", e.Name, err)
	}
	return img, nil
}

func (m *Manager) pullOCI(ctx context.Context, b *build, e Entry) (string, error) {
	layersDir := filepath.Join(b.dir, "layers")
	if err := os.Mkdir(layersDir, 0o700); err != nil {
		return "", err
	}
	res, err := m.fetchOCI(ctx, e.Ref, layersDir, b.prog)
	if err != nil {
		return "", err
	}
	b.meta.DownloadBytes = res.Bytes
	b.prog.report(Progress{Stage: fmt.Sprintf("flattening %d layers", len(res.Layers))})
	plan, err := planFlatten(res.Layers)
	if err != nil {
		return "", err
	}
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(writeFlattened(res.Layers, plan, pw)) }()
	err = b.fromTar(ctx, pr, "layers", plan.contentBytes)
	pr.CloseWithError(errors.New("conversion stopped"))
	if err != nil {
		return "", err
	}
	_ = os.RemoveAll(layersDir)
	return res.Digest, nil
}

func (m *Manager) pullTarball(ctx context.Context, b *build, e Entry) (string, error) {
	want := strings.ToLower(e.SHA256)
	if want == "" && e.SHA256URL != "" {
		var err error
		if want, err = m.lookupSum(ctx, e.SHA256URL, e.Ref); err != nil {
			return "", err
		}
	}
	if want == "" {
		return "", fmt.Errorf("%s has no checksum configured: refusing an unverified download", e.Ref)
	}
	tarPath := filepath.Join(b.dir, "rootfs.tar")
	if err := m.download(ctx, e.Ref, tarPath, want, b.prog, "downloading "+filepath.Base(e.Ref)); err != nil {
		return "", err
	}
	if err := b.fromTarFile(ctx, tarPath); err != nil {
		return "", err
	}
	_ = os.Remove(tarPath)
	return "sha256:" + want, nil
}

// lookupSum reads a sha256sum-style file and returns the entry for the base name of target.
func (m *Manager) lookupSum(ctx context.Context, sumsURL, target string) (string, error) {
	data, err := (&archive{client: m.httpClient()}).get(ctx, sumsURL, 1<<20)
	if err != nil {
		return "", err
	}
	base := filepath.Base(target)
	sc := bufio.NewScanner(strings.NewReader(string(data)))
	for sc.Scan() {
		line := sc.Text()
		if f := strings.Fields(line); len(f) == 2 && strings.TrimPrefix(f[1], "*") == base {
			return strings.ToLower(f[0]), nil
		}
		// BSD style: SHA256 (name) = hex
		if strings.HasPrefix(line, "SHA256 ("+base+") = ") {
			return strings.ToLower(strings.TrimPrefix(line, "SHA256 ("+base+") = ")), nil
		}
	}
	return "", fmt.Errorf("%s lists no checksum for %s", sumsURL, base)
}

func (b *build) fromTarFile(ctx context.Context, p string) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	plain, _, closeDec, err := decompressed(f)
	if err != nil {
		return err
	}
	defer closeDec()
	return b.fromTar(ctx, plain, "tarball", 0)
}

func (m *Manager) pullDebian(ctx context.Context, b *build, e Entry, baseline bool) error {
	include := append([]string{}, DebianPackages...)
	if baseline {
		include = append(include, BaselinePackages...)
	}
	a := m.archive()
	b.prog.report(Progress{Stage: "bootstrapping Debian " + e.Suite + " from " + a.mirror + " (mmdebstrap)"})
	return hosttools.Debootstrap(ctx, hosttools.DebootstrapSpec{Suite: e.Suite, Mirror: a.mirror, Variant: "apt",
		Include: include, Keyring: a.keyring,
		// openssh-server generated host keys while installing; every VM from the image would
		// share them. banger gives each VM its own key instead (in the VM's layer).
		CustomizeHooks: []string{`rm -f "$1"/etc/ssh/ssh_host_*_key "$1"/etc/ssh/ssh_host_*_key.pub`}}, func(r io.Reader) error {
		return b.fromTar(ctx, r, "Debian "+e.Suite, 0)
	})
}

// ImportOptions import a local file as an image.
type ImportOptions struct {
	Name     string
	Path     string // a tar (optionally compressed) or an ext4 image
	NoKernel bool
	Progress ProgressFunc
}

// Import registers a local tar or ext4 file as an image.
func (m *Manager) Import(ctx context.Context, o ImportOptions) (store.Image, error) {
	o.Progress = serialised(o.Progress)
	if o.Name == "" || strings.ContainsAny(o.Name, "\n\x00") {
		return store.Image{}, errors.New("import: give the image a name")
	}
	f, err := os.Open(o.Path)
	if err != nil {
		return store.Image{}, fmt.Errorf("import %s: %w", o.Path, err)
	}
	head := make([]byte, 1082)
	n, _ := io.ReadFull(f, head)
	f.Close()
	b, end, err := m.startBuild(o.Name, o.Progress)
	if err != nil {
		return store.Image{}, err
	}
	defer end()
	b.meta.Kind, b.meta.Ref = KindImport, o.Path
	if n >= 1082 && head[1080] == 0x53 && head[1081] == 0xEF {
		if size, _ := fileSizes(o.Path); size > m.limits().MaxBytes {
			return store.Image{}, fmt.Errorf("import %s: %w", o.Path, m.limits().tooBig("the ext4 image", size))
		}
		b.prog.report(Progress{Stage: "copying " + o.Path})
		if _, err := system.CloneFile(ctx, o.Path, b.rootfs()); err != nil {
			return store.Image{}, fmt.Errorf("import %s: %w", o.Path, err)
		}
	} else if err := b.fromTarFile(ctx, o.Path); err != nil {
		return store.Image{}, fmt.Errorf("import %s: %w", o.Path, err)
	}
	var k *Kernel
	if !o.NoKernel {
		kk, err := m.EnsureKernel(ctx, "bookworm", false, o.Progress)
		if err != nil {
			return store.Image{}, fmt.Errorf("import %s: %w (pass --no-kernel to skip)", o.Path, err)
		}
		k = &kk
	}
	abs, _ := filepath.Abs(o.Path)
	return b.finish(ctx, o.Name, "import:"+abs, "", k)
}

// Remove deletes an image, refused while a VM uses it (naming the VMs).
func (m *Manager) Remove(ctx context.Context, name string) error {
	img, err := m.Store.GetImageByName(ctx, name)
	if errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("image %q not found: %w", name, store.ErrNotFound)
	}
	if err != nil {
		return err
	}
	if users := m.vmsUsing(ctx, img.ID); len(users) > 0 {
		return &InUseError{What: "image " + name, Kind: "VM", Users: users}
	}
	if err := m.Store.DeleteImage(ctx, img.ID); err != nil {
		if errors.Is(err, store.ErrInUse) {
			return &InUseError{What: "image " + name, Kind: "VM", Users: m.vmsUsing(ctx, img.ID)}
		}
		return err
	}
	m.removeIfUnused(ctx, filepath.Dir(img.RootfsPath))
	return nil
}

func (m *Manager) vmsUsing(ctx context.Context, imageID string) []string {
	vms, _ := m.Store.ListVMs(ctx)
	var out []string
	for _, v := range vms {
		if v.ImageID == imageID {
			out = append(out, v.Name)
		}
	}
	return out
}

// removeIfUnused deletes an image directory no image row and no VM spec refers to.
func (m *Manager) removeIfUnused(ctx context.Context, dir string) {
	if filepath.Dir(dir) != filepath.Clean(m.ImagesDir) {
		return // never outside the images dir
	}
	refs, err := m.referenced(ctx)
	if err != nil || refs(dir) {
		return
	}
	tmp := filepath.Join(m.ImagesDir, stagingPrefix+"rm-"+filepath.Base(dir))
	if err := os.Rename(dir, tmp); err == nil {
		_ = os.RemoveAll(tmp)
	}
}

// referenced returns a predicate: is dir used by an image row or named in a VM's spec?
func (m *Manager) referenced(ctx context.Context) (func(string) bool, error) {
	imgs, err := m.Store.ListImages(ctx)
	if err != nil {
		return nil, err
	}
	vms, err := m.Store.ListVMs(ctx)
	if err != nil {
		return nil, err
	}
	used := map[string]bool{}
	for _, img := range imgs {
		used[filepath.Dir(img.RootfsPath)] = true
		used[filepath.Dir(img.WorkSeedPath)] = true
	}
	return func(dir string) bool {
		if used[dir] {
			return true
		}
		for _, v := range vms {
			if strings.Contains(string(v.Spec), dir) {
				return true
			}
		}
		return false
	}, nil
}

// Cleanup removes what interrupted pulls left behind (staging dirs, image dirs no row
// refers to) under the images and kernels dirs. The daemon runs it at start, before it
// accepts requests, so no pull is in flight.
func (m *Manager) Cleanup(ctx context.Context) ([]string, error) {
	var removed []string
	refs, err := m.referenced(ctx)
	if err != nil {
		return nil, err
	}
	for _, d := range []string{m.ImagesDir, m.KernelsDir} {
		ents, err := os.ReadDir(d)
		if err != nil {
			continue
		}
		for _, e := range ents {
			p := filepath.Join(d, e.Name())
			stray := strings.HasPrefix(e.Name(), stagingPrefix)
			if !stray && d == m.ImagesDir {
				stray = !refs(p)
			}
			if stray {
				if err := os.RemoveAll(p); err == nil {
					removed = append(removed, p)
				}
			}
		}
	}
	return removed, nil
}

// CleanupTmpfs removes the ext4 builder's staging trees that a killed build of ours left in
// /dev/shm (the builder stages there when it has room: it is ~10x faster than disk). Only
// entries owned by this user, named like the builder's and over an hour old are touched (so
// builds of other processes of the same user, such as tests, are left alone); the daemon
// calls it at start, holding its lock.
func CleanupTmpfs() []string {
	var removed []string
	for _, pat := range []string{"." + RootfsFile + ".tar-*", "." + WorkSeedFile + ".seed-*"} {
		matches, _ := filepath.Glob(filepath.Join("/dev/shm", pat))
		for _, p := range matches {
			fi, err := os.Lstat(p)
			if err != nil || !fi.IsDir() || !ownedByMe(fi) || time.Since(fi.ModTime()) < time.Hour {
				continue
			}
			_ = filepath.WalkDir(p, func(q string, d os.DirEntry, err error) error {
				if err == nil && d.IsDir() {
					_ = os.Chmod(q, 0o700)
				}
				return nil
			})
			if os.RemoveAll(p) == nil {
				removed = append(removed, p)
			}
		}
	}
	return removed
}

// Manifest reads an image's package manifest sidecar.
func Manifest(img store.Image) (PackageManifest, error) {
	var md Metadata
	_ = json.Unmarshal(img.Metadata, &md)
	p := md.PackagesPath
	if p == "" {
		p = filepath.Join(filepath.Dir(img.RootfsPath), PackagesFile)
	}
	f, err := os.Open(p)
	if err != nil {
		return PackageManifest{}, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, ext4.DefaultMaxReadBytes+1))
	if err != nil {
		return PackageManifest{}, err
	}
	if len(data) > ext4.DefaultMaxReadBytes {
		return PackageManifest{}, fmt.Errorf("package manifest %s is larger than %d bytes: refused", p, ext4.DefaultMaxReadBytes)
	}
	var man PackageManifest
	return man, json.Unmarshal(data, &man)
}

// ImageMetadata decodes an image's metadata.
func ImageMetadata(img store.Image) Metadata {
	var md Metadata
	_ = json.Unmarshal(img.Metadata, &md)
	return md
}

func newID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return "img-" + hex.EncodeToString(b[:])
}

func fileSizes(p string) (apparent, used int64) {
	st, err := os.Stat(p)
	if err != nil {
		return 0, 0
	}
	apparent = st.Size()
	used = apparent
	if s, ok := statBlocks(st); ok {
		used = s
	}
	return apparent, used
}
