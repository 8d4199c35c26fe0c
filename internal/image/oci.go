package image

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

// ociResult is what fetchOCI leaves in the staging dir.
type ociResult struct {
	Digest string   // manifest digest
	Layers []string // uncompressed layer tars, bottom first
	Bytes  int64    // compressed bytes downloaded
	Config *v1.ConfigFile
}

// fetchOCI resolves ref (linux/amd64 from an index), downloads every layer with credentials
// from the usual docker config (authn.DefaultKeychain), and writes each one uncompressed to
// dir, checking both the blob digest and the config's diff ID.
func (m *Manager) fetchOCI(ctx context.Context, ref string, dir string, progress ProgressFunc) (*ociResult, error) {
	r, err := name.ParseReference(ref)
	if err != nil {
		return nil, fmt.Errorf("OCI reference %q: %w", ref, err)
	}
	opts := []remote.Option{
		remote.WithContext(ctx),
		remote.WithAuthFromKeychain(authn.DefaultKeychain),
		remote.WithPlatform(v1.Platform{OS: "linux", Architecture: "amd64"}),
		remote.WithRetryBackoff(remote.Backoff{Duration: 200 * time.Millisecond, Factor: 2, Jitter: 0.1, Steps: 2}),
		remote.WithUserAgent("banger"),
	}
	if m.Transport != nil {
		opts = append(opts, remote.WithTransport(m.Transport))
	}
	progress.report(Progress{Stage: "resolving " + r.String()})
	img, err := remote.Image(r, opts...)
	if err != nil {
		return nil, explainRegistryError(r, err)
	}
	digest, err := img.Digest()
	if err != nil {
		return nil, err
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("read image config: %w", explainRegistryError(r, err))
	}
	if cfg.OS != "" && cfg.OS != "linux" {
		return nil, fmt.Errorf("image is for %s/%s, banger needs linux/amd64", cfg.OS, cfg.Architecture)
	}
	layers, err := img.Layers()
	if err != nil {
		return nil, explainRegistryError(r, err)
	}
	if len(cfg.RootFS.DiffIDs) != len(layers) {
		return nil, fmt.Errorf("the image config lists %d layers but the manifest %d: the image is corrupt", len(cfg.RootFS.DiffIDs), len(layers))
	}
	lim := m.limits()
	if len(layers) > lim.MaxLayers {
		return nil, fmt.Errorf("the image has %d layers, more than the %d banger accepts: refused (raise images.max_layers if it is meant to have that many)", len(layers), lim.MaxLayers)
	}
	var total int64
	for _, l := range layers {
		if s, err := l.Size(); err == nil {
			total += s
		}
	}
	if total > lim.MaxBytes {
		return nil, lim.tooBig("the compressed layers", total)
	}
	// Decompressed bytes of all layers, shared by the downloads: a small layer can
	// decompress to terabytes.
	budget := &layerBudget{lim: lim}
	res := &ociResult{Digest: digest.String(), Layers: make([]string, len(layers)), Config: cfg}
	var done atomic.Int64
	tick := func() {
		progress.report(Progress{Stage: fmt.Sprintf("downloading %d layers", len(layers)), Current: done.Load(), Total: total, Unit: "bytes"})
	}
	// A few layers at a time: a real registry serves them in parallel faster.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	sem := make(chan struct{}, 3)
	errs := make([]error, len(layers))
	var wg sync.WaitGroup
	for i, l := range layers {
		res.Layers[i] = filepath.Join(dir, fmt.Sprintf("layer-%03d.tar", i))
		wg.Add(1)
		go func() {
			defer wg.Done()
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				errs[i] = ctx.Err()
				return
			}
			defer func() { <-sem }()
			if err := fetchLayer(ctx, l, cfg.RootFS.DiffIDs[i], res.Layers[i], &done, tick, budget); err != nil {
				errs[i] = fmt.Errorf("layer %d of %d: %w", i+1, len(layers), explainRegistryError(r, err))
				cancel()
			}
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil && !errors.Is(err, context.Canceled) {
			return nil, err
		}
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	for _, err := range errs {
		if err != nil {
			return nil, err
		}
	}
	tick()
	res.Bytes = done.Load()
	return res, nil
}

// fetchLayer downloads one layer blob, verifies its digest, and writes it uncompressed to
// dst, verifying the uncompressed digest against the image config's diff ID.
func fetchLayer(ctx context.Context, l v1.Layer, diffID v1.Hash, dst string, done *atomic.Int64, tick func(), budget *layerBudget) error {
	want, err := l.Digest()
	if err != nil {
		return err
	}
	rc, err := l.Compressed()
	if err != nil {
		return err
	}
	defer rc.Close()
	blobHash := sha256.New()
	// The registry may send more than the manifest says; never read more than the cap.
	src := io.TeeReader(countingReader(io.LimitReader(rc, budget.lim.MaxBytes+1), done, tick), blobHash)
	plain, kind, closeDec, err := decompressed(src)
	if err != nil {
		return fmt.Errorf("blob %s is corrupt: %w", want, err)
	}
	defer closeDec()
	f, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	diffHash := sha256.New()
	_, err = io.CopyBuffer(io.MultiWriter(budget, f, diffHash), plain, make([]byte, 1<<20))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		var le *LimitError
		if isRegistryError(err) || errors.As(err, &le) {
			return err
		}
		return fmt.Errorf("blob %s is corrupt (%s): %w", want, kind, err)
	}
	// Drain what the decompressor did not need, so the digest covers the whole blob.
	if _, err := io.Copy(io.Discard, src); err != nil {
		return fmt.Errorf("blob %s: %w", want, err)
	}
	if got := "sha256:" + hex.EncodeToString(blobHash.Sum(nil)); want.Algorithm == "sha256" && got != want.String() {
		return fmt.Errorf("blob digest mismatch: the registry sent %s for %s: the layer is corrupt", got, want)
	}
	if got := "sha256:" + hex.EncodeToString(diffHash.Sum(nil)); diffID.Algorithm == "sha256" && got != diffID.String() {
		return fmt.Errorf("uncompressed layer is %s but the image config says %s: the layer is corrupt", got, diffID)
	}
	return nil
}

// layerBudget counts decompressed layer bytes against Limits.MaxBytes; as the first
// writer of each layer's copy it stops a decompression bomb before the bytes hit the disk.
type layerBudget struct {
	lim  Limits
	used atomic.Int64
}

func (b *layerBudget) Write(p []byte) (int, error) {
	if n := b.used.Add(int64(len(p))); n > b.lim.MaxBytes {
		return 0, b.lim.tooBig("the decompressed layers (so far)", n)
	}
	return len(p), nil
}

func isRegistryError(err error) bool {
	var te *transport.Error
	return errors.As(err, &te)
}

// explainRegistryError turns transport failures into errors that say what to check.
func explainRegistryError(r name.Reference, err error) error {
	var te *transport.Error
	if errors.As(err, &te) {
		switch te.StatusCode {
		case 401, 403:
			return fmt.Errorf("registry %s refused access to %s (%d): log in with `docker login %s` (banger reads ~/.docker/config.json) or check the name: %w", r.Context().RegistryStr(), r, te.StatusCode, r.Context().RegistryStr(), err)
		case 404:
			return fmt.Errorf("%s not found in registry %s: check the repository, tag or digest: %w", r, r.Context().RegistryStr(), err)
		}
		return fmt.Errorf("registry %s: %w", r.Context().RegistryStr(), err)
	}
	var ne net.Error
	var oe *net.OpError
	if errors.As(err, &oe) || errors.As(err, &ne) || strings.Contains(err.Error(), "connection refused") {
		return fmt.Errorf("cannot reach registry %s: %w (check the reference and your network or proxy settings)", r.Context().RegistryStr(), err)
	}
	return err
}
