package image

import (
	"archive/tar"
	"bytes"
	"context"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/banger-vm/banger/internal/store"
	"github.com/banger-vm/banger/internal/system/ext4"
	"github.com/banger-vm/banger/internal/system/hosttools"
)

type ent struct {
	name, link, body string
	typ              byte
	mode             int64
	uid, gid         int
	major, minor     int64
	pax              map[string]string
}

func file(n, body string, mode int64) ent {
	return ent{name: n, body: body, typ: tar.TypeReg, mode: mode}
}
func dir(n string, mode int64) ent { return ent{name: n, typ: tar.TypeDir, mode: mode} }
func symlink(n, target string) ent {
	return ent{name: n, link: target, typ: tar.TypeSymlink, mode: 0o777}
}
func hardlink(n, target string) ent {
	return ent{name: n, link: target, typ: tar.TypeLink, mode: 0o644}
}

func mkTar(t testing.TB, ents []ent) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range ents {
		h := &tar.Header{Name: e.name, Linkname: e.link, Typeflag: e.typ, Mode: e.mode, Uid: e.uid, Gid: e.gid,
			Devmajor: e.major, Devminor: e.minor, PAXRecords: e.pax, ModTime: time.Unix(1700000000, 0), Format: tar.FormatPAX}
		if e.typ == tar.TypeReg {
			h.Size = int64(len(e.body))
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if e.typ == tar.TypeReg {
			if _, err := io.WriteString(tw, e.body); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func layerOf(t testing.TB, data []byte) v1.Layer {
	t.Helper()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil })
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// serveRegistry starts an in-process registry; wrap may alter its handler.
func serveRegistry(t testing.TB, wrap func(http.Handler) http.Handler) string {
	t.Helper()
	var h http.Handler = registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	if wrap != nil {
		h = wrap(h)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

func pushImage(t testing.TB, host, repo string, layers ...[]byte) (string, v1.Image) {
	t.Helper()
	var ls []v1.Layer
	for _, d := range layers {
		ls = append(ls, layerOf(t, d))
	}
	img, err := mutate.AppendLayers(empty.Image, ls...)
	if err != nil {
		t.Fatal(err)
	}
	img, err = mutate.ConfigFile(img, &v1.ConfigFile{OS: "linux", Architecture: "amd64", RootFS: mustConfig(t, img).RootFS})
	if err != nil {
		t.Fatal(err)
	}
	ref := host + "/" + repo
	r, err := name.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(r, img); err != nil {
		t.Fatal(err)
	}
	return ref, img
}

func mustConfig(t testing.TB, img v1.Image) *v1.ConfigFile {
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	return cf
}

func newTestManager(t testing.TB) *Manager {
	t.Helper()
	for _, tool := range []string{"mkfs.ext4", "debugfs", "e2fsck"} {
		if hosttools.LookPathIn(tool, "/usr/sbin:/sbin:/usr/bin:/bin") == "" {
			t.Skipf("%s not installed (apt-get install e2fsprogs)", tool)
		}
	}
	dir := t.TempDir()
	st, err := store.Open(context.Background(), filepath.Join(dir, "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return &Manager{Store: st, Ext4: ext4.New(), ImagesDir: filepath.Join(dir, "images"),
		KernelsDir: filepath.Join(dir, "kernels"), Catalog: NewCatalog()}
}

// assertNothingRegistered checks no image row and no file under the images dir.
func assertNothingRegistered(t *testing.T, m *Manager) {
	t.Helper()
	imgs, err := m.Store.ListImages(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(imgs) != 0 {
		t.Errorf("images registered after a failed pull: %+v", imgs)
	}
	ents, _ := os.ReadDir(m.ImagesDir)
	for _, e := range ents {
		t.Errorf("stray file left in the images dir: %s", e.Name())
	}
}

func closedPort(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}
