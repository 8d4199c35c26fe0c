package daemon

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"log"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/banger-vm/banger/internal/api"
	"github.com/banger-vm/banger/internal/config"
	"github.com/banger-vm/banger/internal/store"
)

func pushTestImage(t *testing.T) string {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, h := range []*tar.Header{
		{Name: "./", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: "root/", Typeflag: tar.TypeDir, Mode: 0o700},
		{Name: "root/.bashrc", Typeflag: tar.TypeReg, Mode: 0o644, Size: 3},
	} {
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Size > 0 {
			_, _ = tw.Write([]byte("hi\n"))
		}
	}
	_ = tw.Close()
	data := buf.Bytes()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil })
	if err != nil {
		t.Fatal(err)
	}
	img, err := mutate.AppendLayers(empty.Image, l)
	if err != nil {
		t.Fatal(err)
	}
	img, _ = mutate.ConfigFile(img, &v1.ConfigFile{OS: "linux", Architecture: "amd64", RootFS: v1.RootFS{Type: "layers", DiffIDs: []v1.Hash{must(l.DiffID())}}})
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	t.Cleanup(srv.Close)
	ref := strings.TrimPrefix(srv.URL, "http://") + "/t/img:1"
	if err := remote.Write(must(name.ParseReference(ref)), img); err != nil {
		t.Fatal(err)
	}
	return ref
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

func TestImageAPI(t *testing.T) {
	for _, tool := range []string{"/usr/sbin/mkfs.ext4", "/usr/sbin/debugfs"} {
		if _, err := os.Stat(tool); err != nil {
			t.Skip("e2fsprogs not installed")
		}
	}
	ctx := context.Background()
	l := testLayout(t)
	// Leftovers of an interrupted pull are removed when the daemon starts.
	stray := filepath.Join(l.ImagesDir, ".staging-42")
	if err := os.MkdirAll(stray, 0o700); err != nil {
		t.Fatal(err)
	}
	cfg := config.Defaults()
	cfg.Images.Kernel = "none"
	d, err := Start(ctx, Options{Layout: l, Config: cfg, Version: "test"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Shutdown(ctx) })
	if _, err := os.Stat(stray); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stray staging dir survived daemon start: %v", err)
	}
	c := api.NewClient(l.Socket, "test")

	// Unknown names are a plain 404 before anything starts.
	_, err = c.PullImage(ctx, api.ImagePullRequest{Ref: "nope"}, nil)
	var ae *api.Error
	if !errors.As(err, &ae) || ae.Code != api.CodeNotFound {
		t.Fatalf("pull unknown: %v", err)
	}

	ref := pushTestImage(t)
	var progress int
	img, err := c.PullImage(ctx, api.ImagePullRequest{Ref: ref, Name: "tiny"}, func(api.Progress) { progress++ })
	if err != nil {
		t.Fatal(err)
	}
	if img.Name != "tiny" || progress == 0 {
		t.Fatalf("pulled %+v with %d progress events", img, progress)
	}
	imgs, err := c.Images(ctx)
	if err != nil || len(imgs) != 1 {
		t.Fatalf("ls: %v %v", imgs, err)
	}
	in, err := c.InspectImage(ctx, "tiny")
	if err != nil || in.PackageFormat != "none" || in.Image.ID != img.ID {
		t.Fatalf("inspect: %+v %v", in, err)
	}
	if _, err := c.InspectImage(ctx, "missing"); !errors.As(err, &ae) || ae.Code != api.CodeNotFound {
		t.Fatalf("inspect missing: %v", err)
	}

	check := func(want api.CheckStatus) api.CheckResult {
		t.Helper()
		res, err := c.Doctor(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range res.Checks {
			if r.Name == "images" {
				if r.Status != want {
					t.Errorf("images check = %+v, want %s", r, want)
				}
				return r
			}
		}
		t.Fatal("no images check")
		return api.CheckResult{}
	}
	check(api.Pass)

	// rm is refused while a VM uses the image, naming it.
	if err := d.store.PutVM(ctx, store.VM{ID: "v1", Name: "dev", ImageID: img.ID, State: store.VMStopped}); err != nil {
		t.Fatal(err)
	}
	err = c.RemoveImage(ctx, "tiny")
	if !errors.As(err, &ae) || ae.Code != api.CodeConflict || !strings.Contains(ae.Message, "dev") {
		t.Fatalf("rm in use: %v", err)
	}
	_ = d.store.DeleteVM(ctx, "v1")

	// Doctor: WARN without a work seed, FAIL with the rootfs gone.
	if err := os.Remove(img.WorkSeedPath); err != nil {
		t.Fatal(err)
	}
	if r := check(api.Warn); !strings.Contains(r.Hint, "/root would start empty") {
		t.Errorf("hint: %q", r.Hint)
	}
	if err := os.Remove(img.RootfsPath); err != nil {
		t.Fatal(err)
	}
	check(api.Fail)

	if err := c.RemoveImage(ctx, "tiny"); err != nil {
		t.Fatal(err)
	}
	if imgs, _ := c.Images(ctx); len(imgs) != 0 {
		t.Fatalf("after rm: %v", imgs)
	}
	if ents, _ := os.ReadDir(l.ImagesDir); len(ents) != 0 {
		t.Errorf("files left after rm: %d", len(ents))
	}
}
