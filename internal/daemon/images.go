package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/banger-vm/banger/internal/api"
	"github.com/banger-vm/banger/internal/doctor"
	"github.com/banger-vm/banger/internal/image"
	"github.com/banger-vm/banger/internal/lifecycle"
	"github.com/banger-vm/banger/internal/store"
	"github.com/banger-vm/banger/internal/system/ext4"
)

// initImages sets up the image manager, removes what interrupted pulls left behind (no pull
// can be in flight: the API is not serving yet), and registers the image doctor checks.
func (d *Daemon) initImages(ctx context.Context) error {
	cfg := d.opts.Config.Images
	var extras []image.Entry
	for _, s := range cfg.Extra {
		e, err := image.ParseExtra(s)
		if err != nil {
			return fmt.Errorf("config images.extra: %w", err)
		}
		extras = append(extras, e)
	}
	d.images = &image.Manager{
		Store:      d.store,
		Ext4:       ext4.New(),
		ImagesDir:  d.opts.Layout.ImagesDir,
		KernelsDir: filepath.Join(d.opts.Layout.DataDir, "kernels"),
		Catalog:    image.NewCatalog(extras...),
		Mirror:     cfg.DebianMirror,
		Keyring:    cfg.DebianKeyring,
		Log:        d.log,
		Limits:     image.Limits{MaxBytes: cfg.MaxSize, MaxLayers: cfg.MaxLayers},
	}
	// Not a separate startup stage: it is a directory listing, normally with nothing to do.
	removed, err := d.images.Cleanup(ctx)
	if err != nil {
		return fmt.Errorf("clean up interrupted image pulls: %w", err)
	}
	removed = append(removed, image.CleanupTmpfs()...)
	for _, p := range removed {
		d.log.Warn("removed files of an interrupted or replaced image pull", "path", p)
	}
	d.doctor.Register("images", d.imagesCheck)
	return nil
}

func (d *Daemon) addImageRoutes(table map[string]map[string]handlerFunc) {
	table["/images"] = map[string]handlerFunc{http.MethodGet: d.handleImageList}
	table["/images/inspect"] = map[string]handlerFunc{http.MethodGet: d.handleImageInspect}
	table["/images/catalog"] = map[string]handlerFunc{http.MethodGet: d.handleImageCatalog}
	table["/images/pull"] = map[string]handlerFunc{http.MethodPost: d.handleImagePull}
	table["/images/import"] = map[string]handlerFunc{http.MethodPost: d.handleImageImport}
	table["/images/build"] = map[string]handlerFunc{http.MethodPost: d.handleImageBuild}
	table["/images/rm"] = map[string]handlerFunc{http.MethodPost: d.handleImageRemove}
	table["/images/warm"] = map[string]handlerFunc{http.MethodPost: d.handleImageWarm}
	table["/kernels"] = map[string]handlerFunc{http.MethodGet: d.handleKernelList}
	table["/kernels/pull"] = map[string]handlerFunc{http.MethodPost: d.handleKernelPull}
	table["/kernels/rm"] = map[string]handlerFunc{http.MethodPost: d.handleKernelRemove}
	table["/kernels/import"] = map[string]handlerFunc{http.MethodPost: d.handleKernelImport}
}

func imageToAPI(img store.Image) api.Image {
	return api.Image{ID: img.ID, Name: img.Name, Source: img.Source, Digest: img.Digest, RootfsPath: img.RootfsPath,
		WorkSeedPath: img.WorkSeedPath, Kernel: img.KernelRef, SizeBytes: img.SizeBytes, CreatedAt: img.CreatedAt,
		UpdatedAt: img.UpdatedAt, Metadata: img.Metadata}
}

func (d *Daemon) handleImageList(w http.ResponseWriter, r *http.Request) error {
	imgs, err := d.store.ListImages(r.Context())
	if err != nil {
		return err
	}
	out := api.ImagesResponse{Images: make([]api.Image, 0, len(imgs))}
	for _, img := range imgs {
		out.Images = append(out.Images, imageToAPI(img))
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (d *Daemon) imageByName(ctx context.Context, name string) (store.Image, error) {
	if name == "" {
		return store.Image{}, api.Errorf(api.CodeBadRequest, "pass ?name=IMAGE", "missing image name")
	}
	img, err := d.store.GetImageByName(ctx, name)
	if errors.Is(err, store.ErrNotFound) {
		return img, api.Errorf(api.CodeNotFound, "list images with `banger image ls`, pull one with `banger image pull`", "image %q not found", name)
	}
	return img, err
}

func (d *Daemon) handleImageInspect(w http.ResponseWriter, r *http.Request) error {
	img, err := d.imageByName(r.Context(), r.URL.Query().Get("name"))
	if err != nil {
		return err
	}
	out := api.ImageInspect{Image: imageToAPI(img), Packages: []api.Package{}}
	if man, err := image.Manifest(img); err == nil {
		out.PackageFormat = man.Format
		for _, p := range man.Packages {
			out.Packages = append(out.Packages, api.Package(p))
		}
	} else {
		out.PackageFormat = "missing"
	}
	if img.KernelRef != "" {
		if k, err := d.images.Kernel(img.KernelRef); err == nil {
			out.Kernel, _ = json.Marshal(k)
		}
	}
	out.Templates = d.templatesToAPI(r.Context(), img)
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (d *Daemon) handleImageCatalog(w http.ResponseWriter, _ *http.Request) error {
	out := api.CatalogResponse{Entries: []json.RawMessage{}}
	for _, e := range d.images.Catalog.Entries() {
		b, _ := json.Marshal(e)
		out.Entries = append(out.Entries, b)
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (d *Daemon) handleImageRemove(w http.ResponseWriter, r *http.Request) error {
	var req api.ImageRemoveRequest
	if err := decodeBody(r, &req); err != nil {
		return err
	}
	img, err := d.imageByName(r.Context(), req.Name)
	if err != nil {
		return err
	}
	if err := d.images.Remove(r.Context(), req.Name); err != nil {
		return imageAPIError(err)
	}
	d.vms.disks.forgetImage(img.ID)
	d.removeTemplatesOf(img.ID)
	writeJSON(w, http.StatusOK, map[string]string{"removed": req.Name})
	return nil
}

func imageAPIError(err error) error {
	var inUse *image.InUseError
	switch {
	case errors.As(err, &inUse):
		return api.Errorf(api.CodeConflict, "delete or stop using those first", "%s", err.Error())
	case errors.Is(err, store.ErrNotFound):
		return api.Errorf(api.CodeNotFound, "", "%s", err.Error())
	case errors.Is(err, context.Canceled):
		return api.Errorf(api.CodeUnavailable, "", "cancelled: %v", err)
	}
	return api.Errorf(api.CodeBadRequest, "", "%s", err.Error())
}

// streamer writes NDJSON StreamEvents, flushing each line so the client sees progress live.
type streamer struct {
	mu      sync.Mutex
	w       http.ResponseWriter
	enc     *json.Encoder
	flusher http.Flusher
}

func newStreamer(w http.ResponseWriter) *streamer {
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	f, _ := w.(http.Flusher)
	return &streamer{w: w, enc: json.NewEncoder(w), flusher: f}
}

func (s *streamer) send(ev api.StreamEvent) {
	s.mu.Lock()
	defer s.mu.Unlock()
	_ = s.enc.Encode(ev)
	if s.flusher != nil {
		s.flusher.Flush()
	}
}

func (s *streamer) progress(p image.Progress) {
	ap := api.Progress(p)
	s.send(api.StreamEvent{Progress: &ap})
}

// runStreamed runs op, streaming its progress and then its result or error. The request's
// context is the operation's: a client that disconnects (Ctrl-C) cancels it, and the
// manager then removes its staging files.
func (d *Daemon) runStreamed(w http.ResponseWriter, r *http.Request, operation, subject string, op func(context.Context, image.ProgressFunc) (any, error)) {
	s := newStreamer(w)
	rec := lifecycle.New(operation, subject, d.log, d.store)
	var result any
	err := rec.Run(r.Context(), operation, func(ctx context.Context) error {
		var err error
		result, err = op(ctx, s.progress)
		return err
	})
	if err != nil {
		var ae *api.Error
		if !errors.As(imageAPIError(err), &ae) {
			ae = api.Errorf(api.CodeInternal, "", "%v", err)
		}
		d.log.Warn(operation+" failed", "subject", subject, "err", err)
		s.send(api.StreamEvent{Error: ae})
		return
	}
	b, _ := json.Marshal(result)
	s.send(api.StreamEvent{Result: b})
}

func (d *Daemon) noKernel(req bool) bool {
	return req || d.opts.Config.Images.Kernel == "none"
}

func (d *Daemon) handleImagePull(w http.ResponseWriter, r *http.Request) error {
	var req api.ImagePullRequest
	if err := decodeBody(r, &req); err != nil {
		return err
	}
	if req.Ref == "" {
		req.Ref = d.opts.Config.Images.Default
	}
	// Resolve before streaming so an unknown name is a plain 4xx.
	if _, err := d.images.Catalog.Resolve(req.Ref); err != nil {
		return api.Errorf(api.CodeNotFound, "see `banger image pull --help` for the catalog", "%v", err)
	}
	d.runStreamed(w, r, "image.pull", req.Ref, func(ctx context.Context, p image.ProgressFunc) (any, error) {
		img, err := d.images.Pull(ctx, image.PullOptions{Ref: req.Ref, Name: req.Name, Baseline: req.Baseline, NoKernel: d.noKernel(req.NoKernel), Progress: p})
		if err != nil {
			return nil, err
		}
		return d.imageAdded(ctx, img, p), nil
	})
	return nil
}

func (d *Daemon) handleImageImport(w http.ResponseWriter, r *http.Request) error {
	var req api.ImageImportRequest
	if err := decodeBody(r, &req); err != nil {
		return err
	}
	if req.Name == "" || req.Path == "" {
		return api.Errorf(api.CodeBadRequest, "banger image import FILE --name NAME", "import needs a name and a path")
	}
	if !filepath.IsAbs(req.Path) {
		return api.Errorf(api.CodeBadRequest, "the CLI sends absolute paths", "import path %q is not absolute", req.Path)
	}
	if _, err := os.Stat(req.Path); err != nil {
		return api.Errorf(api.CodeBadRequest, "the daemon reads the file as your user: check it exists and is readable", "import %s: %v", req.Path, err)
	}
	d.runStreamed(w, r, "image.import", req.Name, func(ctx context.Context, p image.ProgressFunc) (any, error) {
		img, err := d.images.Import(ctx, image.ImportOptions{Name: req.Name, Path: req.Path, NoKernel: d.noKernel(req.NoKernel), Progress: p})
		if err != nil {
			return nil, err
		}
		return d.imageAdded(ctx, img, p), nil
	})
	return nil
}

func (d *Daemon) handleKernelList(w http.ResponseWriter, _ *http.Request) error {
	ks, err := d.images.Kernels()
	if err != nil {
		return err
	}
	out := api.KernelsResponse{Kernels: []json.RawMessage{}}
	for _, k := range ks {
		b, _ := json.Marshal(k)
		out.Kernels = append(out.Kernels, b)
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (d *Daemon) handleKernelPull(w http.ResponseWriter, r *http.Request) error {
	var req api.KernelPullRequest
	if err := decodeBody(r, &req); err != nil {
		return err
	}
	if req.Suite == "" {
		req.Suite = "bookworm"
	}
	d.runStreamed(w, r, "kernel.pull", req.Suite, func(ctx context.Context, p image.ProgressFunc) (any, error) {
		return d.images.PullKernel(ctx, req.Suite, p)
	})
	return nil
}

func (d *Daemon) handleKernelRemove(w http.ResponseWriter, r *http.Request) error {
	var req api.KernelRemoveRequest
	if err := decodeBody(r, &req); err != nil {
		return err
	}
	if err := d.images.RemoveKernel(r.Context(), req.ID); err != nil {
		var inUse *image.InUseError
		if errors.As(err, &inUse) {
			return api.Errorf(api.CodeConflict, "remove those images first", "%s", err.Error())
		}
		return api.Errorf(api.CodeNotFound, "list kernels with `banger kernel ls`", "%s", err.Error())
	}
	writeJSON(w, http.StatusOK, map[string]string{"removed": req.ID})
	return nil
}

// imagesCheck: FAIL for an image whose files are missing, WARN for one without a work seed.
func (d *Daemon) imagesCheck(ctx context.Context) api.CheckResult {
	imgs, err := d.store.ListImages(ctx)
	if err != nil {
		return doctor.Failf("see the daemon log", "cannot list images: %v", err)
	}
	if len(imgs) == 0 {
		return doctor.Warnf("pull one with `banger image pull` (default "+image.DefaultImage+")", "no images yet")
	}
	var missing, noSeed []string
	for _, img := range imgs {
		if _, err := os.Stat(img.RootfsPath); err != nil {
			missing = append(missing, fmt.Sprintf("%s (%s)", img.Name, img.RootfsPath))
			continue
		}
		if img.KernelRef != "" {
			if _, err := d.images.Kernel(img.KernelRef); err != nil {
				missing = append(missing, fmt.Sprintf("%s (kernel %s)", img.Name, img.KernelRef))
				continue
			}
		}
		if img.WorkSeedPath == "" {
			noSeed = append(noSeed, img.Name)
		} else if _, err := os.Stat(img.WorkSeedPath); err != nil {
			noSeed = append(noSeed, img.Name)
		}
	}
	switch {
	case len(missing) > 0:
		return doctor.Failf("re-pull them with `banger image pull NAME`, or remove them with `banger image rm NAME`",
			"image files missing: %s", strings.Join(missing, ", "))
	case len(noSeed) > 0:
		return doctor.Warnf("/root would start empty: re-pull it with `banger image pull NAME`",
			"image without a work seed: %s", strings.Join(noSeed, ", "))
	}
	return doctor.Pass("%d image(s), all files present", len(imgs))
}

func (d *Daemon) handleKernelImport(w http.ResponseWriter, r *http.Request) error {
	var req api.KernelImportRequest
	if err := decodeBody(r, &req); err != nil {
		return err
	}
	if !filepath.IsAbs(req.Path) {
		return api.Errorf(api.CodeBadRequest, "the CLI sends absolute paths", "kernel import path %q is not absolute", req.Path)
	}
	if req.Suite == "" {
		req.Suite = "bookworm"
	}
	d.runStreamed(w, r, "kernel.import", req.Path, func(ctx context.Context, _ image.ProgressFunc) (any, error) {
		return d.images.ImportKernel(ctx, req.Path, req.Suite)
	})
	return nil
}
