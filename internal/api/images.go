package api

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"time"
)

// Image is an image as the API shows it.
type Image struct {
	ID           string          `json:"id"`
	Name         string          `json:"name"`
	Source       string          `json:"source"`
	Digest       string          `json:"digest,omitempty"`
	RootfsPath   string          `json:"rootfs_path"`
	WorkSeedPath string          `json:"work_seed_path,omitempty"`
	Kernel       string          `json:"kernel,omitempty"`
	SizeBytes    int64           `json:"size_bytes"`
	CreatedAt    time.Time       `json:"created_at"`
	UpdatedAt    time.Time       `json:"updated_at"`
	Metadata     json.RawMessage `json:"metadata,omitempty"`
}

// ImagesResponse answers GET /v1/images.
type ImagesResponse struct {
	Images []Image `json:"images"`
}

// Package is one installed package of an image.
type Package struct {
	Name    string `json:"name"`
	Version string `json:"version"`
	Arch    string `json:"arch,omitempty"`
}

// ImageInspect answers GET /v1/images/inspect?name=NAME.
type ImageInspect struct {
	Image         Image           `json:"image"`
	PackageFormat string          `json:"package_format"`
	Packages      []Package       `json:"packages"`
	Kernel        json.RawMessage `json:"kernel,omitempty"`
	// Templates are the image's warm-start templates (booted snapshots new VMs restore).
	Templates []Template `json:"templates"`
}

// Template is a booted, paused snapshot of a fresh VM of an image, for one kernel, VMM and
// machine shape: VMs of that shape start as its clones.
type Template struct {
	Key       string    `json:"key"`
	Image     string    `json:"image"`
	Kernel    string    `json:"kernel"`
	Driver    string    `json:"driver"`
	Accel     string    `json:"accel,omitempty"`
	CPUs      int       `json:"cpus"`
	MemoryMiB int       `json:"memory_mib"`
	DiskBytes int64     `json:"disk_bytes"`
	Network   bool      `json:"network"`
	Dir       string    `json:"dir"`
	SizeBytes int64     `json:"size_bytes"`
	CreatedAt time.Time `json:"created_at"`
	BuildMS   float64   `json:"build_ms"`
	Clones    []string  `json:"clones,omitempty"` // running VMs that map its memory
	// Current is false for a template of older guest binaries or another VMM: no VM
	// restores it, and it is removed once no clone maps it.
	Current bool `json:"current"`
}

// ImageWarmRequest is POST /v1/images/warm: build (or confirm) the image's template for a
// machine shape; "" fields are the VM defaults.
type ImageWarmRequest struct {
	Name     string `json:"name"`
	CPUs     int    `json:"cpus,omitempty"`
	Memory   string `json:"memory,omitempty"`
	DiskSize string `json:"disk_size,omitempty"`
	// Rebuild replaces an existing template.
	Rebuild bool `json:"rebuild,omitempty"`
}

// ImagePullRequest is POST /v1/images/pull.
type ImagePullRequest struct {
	// Ref is a catalog name (debian-bookworm, ...) or an OCI reference; "" is the default image.
	Ref      string `json:"ref,omitempty"`
	Name     string `json:"name,omitempty"`
	Baseline bool   `json:"baseline,omitempty"`
	NoKernel bool   `json:"no_kernel,omitempty"`
}

// ImageImportRequest is POST /v1/images/import: Path is a tar (optionally compressed) or an
// ext4 file the daemon's user can read.
type ImageImportRequest struct {
	Name     string `json:"name"`
	Path     string `json:"path"`
	NoKernel bool   `json:"no_kernel,omitempty"`
}

// ImageBuildRequest is POST /v1/images/build (streamed). Paths are absolute paths the
// daemon's user can read (the CLI resolves them).
type ImageBuildRequest struct {
	Name string `json:"name"`
	From string `json:"from"`
	// Packages are installed with the guest's package manager: names, or paths of local
	// .deb files (installed from the file, without the network).
	Packages []string    `json:"packages,omitempty"`
	Copies   []BuildCopy `json:"copies,omitempty"`
	// Scripts run in order as root in the builder VM, from /root.
	Scripts []string `json:"scripts,omitempty"`
	Size    string   `json:"size,omitempty"` // grow the root filesystem to this size, like 4G
	Memory  string   `json:"memory,omitempty"`
	CPUs    int      `json:"cpus,omitempty"`
}

// BuildCopy copies a host file or directory into the image (under /root it lands in the
// work seed). A Dst ending in "/" is a directory to copy into.
type BuildCopy struct {
	Src string `json:"src"`
	Dst string `json:"dst"`
}

// ImageRemoveRequest is POST /v1/images/rm.
type ImageRemoveRequest struct {
	Name string `json:"name"`
}

// KernelPullRequest is POST /v1/kernels/pull.
type KernelPullRequest struct {
	Suite string `json:"suite,omitempty"` // default bookworm
}

// KernelRemoveRequest is POST /v1/kernels/rm.
type KernelRemoveRequest struct {
	ID string `json:"id"`
}

// KernelsResponse answers GET /v1/kernels.
type KernelsResponse struct {
	Kernels []json.RawMessage `json:"kernels"`
}

// CatalogResponse answers GET /v1/images/catalog.
type CatalogResponse struct {
	Entries []json.RawMessage `json:"entries"`
}

// Progress reports a long step of a streamed operation.
type Progress struct {
	Stage   string `json:"stage"`
	Current int64  `json:"current,omitempty"`
	Total   int64  `json:"total,omitempty"`
	Unit    string `json:"unit,omitempty"`
	Message string `json:"message,omitempty"`
}

// StreamEvent is one line of a streamed answer (application/x-ndjson): progress lines, then
// exactly one line with Result or Error. A client that disconnects cancels the operation.
type StreamEvent struct {
	Progress *Progress       `json:"progress,omitempty"`
	Result   json.RawMessage `json:"result,omitempty"`
	Error    *Error          `json:"error,omitempty"`
}

// Images lists the registered images.
func (c *Client) Images(ctx context.Context) ([]Image, error) {
	out, err := get[ImagesResponse](ctx, c, "/images", nil)
	return out.Images, err
}

// InspectImage returns an image with its package manifest.
func (c *Client) InspectImage(ctx context.Context, name string) (ImageInspect, error) {
	return get[ImageInspect](ctx, c, "/images/inspect", url.Values{"name": {name}})
}

// RemoveImage deletes an image; it is a conflict while a VM uses it.
func (c *Client) RemoveImage(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodPost, "/images/rm", nil, ImageRemoveRequest{Name: name}, nil)
}

// Catalog lists the named images the daemon knows.
func (c *Client) Catalog(ctx context.Context) ([]json.RawMessage, error) {
	out, err := get[CatalogResponse](ctx, c, "/images/catalog", nil)
	return out.Entries, err
}

// PullImage pulls an image, calling progress for each report; cancel ctx to abort it.
func (c *Client) PullImage(ctx context.Context, req ImagePullRequest, progress func(Progress)) (Image, error) {
	return streamed[Image](ctx, c, "/images/pull", req, progress)
}

// WarmImage builds (or finds) an image's warm-start template for a machine shape.
func (c *Client) WarmImage(ctx context.Context, req ImageWarmRequest, progress func(Progress)) (Template, error) {
	return streamed[Template](ctx, c, "/images/warm", req, progress)
}

// ImportImage imports a local tar or ext4 file as an image.
func (c *Client) ImportImage(ctx context.Context, req ImageImportRequest, progress func(Progress)) (Image, error) {
	return streamed[Image](ctx, c, "/images/import", req, progress)
}

// BuildImage builds a new image by provisioning a copy of another in a builder VM; the
// provisioning output comes as progress messages.
func (c *Client) BuildImage(ctx context.Context, req ImageBuildRequest, progress func(Progress)) (Image, error) {
	return streamed[Image](ctx, c, "/images/build", req, progress)
}

// Kernels lists the kernel artifacts.
func (c *Client) Kernels(ctx context.Context) ([]json.RawMessage, error) {
	out, err := get[KernelsResponse](ctx, c, "/kernels", nil)
	return out.Kernels, err
}

// PullKernel fetches linux-image-cloud-amd64 of a Debian suite.
func (c *Client) PullKernel(ctx context.Context, req KernelPullRequest, progress func(Progress)) (json.RawMessage, error) {
	return streamed[json.RawMessage](ctx, c, "/kernels/pull", req, progress)
}

// RemoveKernel deletes a kernel no image uses.
func (c *Client) RemoveKernel(ctx context.Context, id string) error {
	return c.do(ctx, http.MethodPost, "/kernels/rm", nil, KernelRemoveRequest{ID: id}, nil)
}

// stream POSTs in and reads an NDJSON answer of StreamEvents.
func (c *Client) stream(ctx context.Context, path string, in any, progress func(Progress), out any) error {
	data, err := json.Marshal(in)
	if err != nil {
		return err
	}
	req, err := c.newRequest(ctx, http.MethodPost, path, nil, bytes.NewReader(data))
	if err != nil {
		return err
	}
	resp, err := c.send(req)
	if err != nil {
		return err
	}
	if err := errorOf(resp, "POST "+path); err != nil {
		return err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	for sc.Scan() {
		var ev StreamEvent
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			return fmt.Errorf("decode daemon stream for %s: %w", path, err)
		}
		switch {
		case ev.Error != nil:
			return ev.Error
		case ev.Result != nil:
			if out == nil {
				return nil
			}
			return json.Unmarshal(ev.Result, out)
		case ev.Progress != nil && progress != nil:
			progress(*ev.Progress)
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("daemon stream for %s ended: %w", path, err)
	}
	return fmt.Errorf("daemon stream for %s ended without a result (did the daemon stop? see its log)", path)
}
