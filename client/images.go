package client

import (
	"context"
	"encoding/json"
)

// Images lists the registered images.
func (c *Client) Images(ctx context.Context) ([]Image, error) { return c.api.Images(ctx) }

// InspectImage returns an image with its package manifest and warm-start templates.
func (c *Client) InspectImage(ctx context.Context, name string) (ImageInspect, error) {
	return c.api.InspectImage(ctx, name)
}

// RemoveImage deletes an image; it is refused (CodeConflict) while a VM uses it.
func (c *Client) RemoveImage(ctx context.Context, name string) error {
	return c.api.RemoveImage(ctx, name)
}

// Catalog lists the named images the daemon can pull (JSON objects, one per entry).
func (c *Client) Catalog(ctx context.Context) ([]json.RawMessage, error) {
	return c.api.Catalog(ctx)
}

// PullImage pulls an image (a catalog name or an OCI reference), reporting progress;
// cancel ctx to abort it.
func (c *Client) PullImage(ctx context.Context, req ImagePullRequest, progress func(Progress)) (Image, error) {
	return c.api.PullImage(ctx, req, progress)
}

// ImportImage imports a tar (optionally compressed) or ext4 file the daemon's user can
// read as an image.
func (c *Client) ImportImage(ctx context.Context, req ImageImportRequest, progress func(Progress)) (Image, error) {
	return c.api.ImportImage(ctx, req, progress)
}

// BuildImage builds a new image by provisioning a copy of another in a builder VM; the
// provisioning output comes as progress messages.
func (c *Client) BuildImage(ctx context.Context, req ImageBuildRequest, progress func(Progress)) (Image, error) {
	return c.api.BuildImage(ctx, req, progress)
}

// WarmImage builds (or finds) an image's warm-start template for a machine shape.
func (c *Client) WarmImage(ctx context.Context, req ImageWarmRequest, progress func(Progress)) (Template, error) {
	return c.api.WarmImage(ctx, req, progress)
}

// Kernels lists the kernels (JSON objects, one per kernel).
func (c *Client) Kernels(ctx context.Context) ([]json.RawMessage, error) {
	return c.api.Kernels(ctx)
}

// PullKernel fetches Debian's linux-image-cloud-amd64 of a suite and registers it.
func (c *Client) PullKernel(ctx context.Context, req KernelPullRequest, progress func(Progress)) (json.RawMessage, error) {
	return c.api.PullKernel(ctx, req, progress)
}

// ImportKernel registers an unpacked kernel package directory as a kernel.
func (c *Client) ImportKernel(ctx context.Context, req KernelImportRequest) (json.RawMessage, error) {
	return c.api.ImportKernel(ctx, req)
}

// RemoveKernel deletes a kernel no image uses.
func (c *Client) RemoveKernel(ctx context.Context, id string) error {
	return c.api.RemoveKernel(ctx, id)
}
