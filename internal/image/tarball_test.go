package image

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func serveTarball(t *testing.T, body []byte) string {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/rootfs.tar.gz":
			_, _ = w.Write(body)
		case "/sha256sum.txt":
			sum := sha256.Sum256(body)
			_, _ = w.Write([]byte(hex.EncodeToString(sum[:]) + "  rootfs.tar.gz\n"))
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

func gz(t *testing.T, data []byte) []byte {
	var b bytes.Buffer
	w := gzip.NewWriter(&b)
	_, _ = w.Write(data)
	_ = w.Close()
	return b.Bytes()
}

func TestTarballPull(t *testing.T) {
	ctx := context.Background()
	body := gz(t, mkTar(t, []ent{dir("./", 0o755), dir("./root/", 0o700), file("./root/.profile", "hi\n", 0o644),
		dir("./var/", 0o755), dir("./var/lib/", 0o755), dir("./var/lib/dpkg/", 0o755),
		file("./var/lib/dpkg/status", "Package: bash\nStatus: install ok installed\nVersion: 5.2-1\nArchitecture: amd64\n\nPackage: gone\nStatus: deinstall ok config-files\nVersion: 1\n", 0o644)}))
	base := serveTarball(t, body)
	sum := sha256.Sum256(body)
	good := hex.EncodeToString(sum[:])

	t.Run("checksum ok", func(t *testing.T) {
		m := newTestManager(t)
		m.Catalog = NewCatalog(Entry{Name: "tb", Kind: KindTarball, Ref: base + "/rootfs.tar.gz", SHA256: good})
		img, err := m.Pull(ctx, PullOptions{Ref: "tb", NoKernel: true})
		if err != nil {
			t.Fatal(err)
		}
		if img.Digest != "sha256:"+good {
			t.Errorf("digest %s", img.Digest)
		}
		man, err := Manifest(img)
		if err != nil || man.Format != "dpkg" || len(man.Packages) != 1 || man.Packages[0] != (Package{"bash", "5.2-1", "amd64"}) {
			t.Errorf("manifest %+v %v", man, err)
		}
		if err := m.Ext4.FsckExt4(ctx, img.RootfsPath); err != nil {
			t.Error(err)
		}
	})
	t.Run("checksum from sums file", func(t *testing.T) {
		m := newTestManager(t)
		m.Catalog = NewCatalog(Entry{Name: "tb", Kind: KindTarball, Ref: base + "/rootfs.tar.gz", SHA256URL: base + "/sha256sum.txt"})
		if _, err := m.Pull(ctx, PullOptions{Ref: "tb", NoKernel: true}); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("wrong checksum", func(t *testing.T) {
		m := newTestManager(t)
		m.Catalog = NewCatalog(Entry{Name: "tb", Kind: KindTarball, Ref: base + "/rootfs.tar.gz", SHA256: strings.Repeat("0", 64)})
		_, err := m.Pull(ctx, PullOptions{Ref: "tb", NoKernel: true})
		if err == nil || !strings.Contains(err.Error(), "checksum mismatch") {
			t.Fatalf("got %v", err)
		}
		t.Logf("error: %v", err)
		assertNothingRegistered(t, m)
	})
	t.Run("no checksum", func(t *testing.T) {
		m := newTestManager(t)
		m.Catalog = NewCatalog(Entry{Name: "tb", Kind: KindTarball, Ref: base + "/rootfs.tar.gz"})
		if _, err := m.Pull(ctx, PullOptions{Ref: "tb", NoKernel: true}); err == nil || !strings.Contains(err.Error(), "no checksum") {
			t.Fatalf("got %v", err)
		}
		assertNothingRegistered(t, m)
	})
	t.Run("import tar and ext4", func(t *testing.T) {
		m := newTestManager(t)
		p := t.TempDir() + "/rootfs.tar.gz"
		if err := os.WriteFile(p, body, 0o644); err != nil {
			t.Fatal(err)
		}
		img, err := m.Import(ctx, ImportOptions{Name: "local", Path: p, NoKernel: true})
		if err != nil {
			t.Fatal(err)
		}
		img2, err := m.Import(ctx, ImportOptions{Name: "local-ext4", Path: img.RootfsPath, NoKernel: true})
		if err != nil {
			t.Fatal(err)
		}
		if data, err := m.Ext4.ReadExt4File(ctx, img2.RootfsPath, "/root/.profile"); err != nil || string(data) != "hi\n" {
			t.Errorf("imported ext4: %q %v", data, err)
		}
		if _, err := m.Import(ctx, ImportOptions{Name: "bad", Path: "/nonexistent.tar", NoKernel: true}); err == nil {
			t.Error("import of a missing file succeeded")
		}
	})
	t.Run("disk full", func(t *testing.T) {
		if os.Geteuid() != 0 {
			t.Skip("needs root to mount a small tmpfs to fill")
		}
		m := newTestManager(t)
		m.ImagesDir = t.TempDir()
		if err := unix.Mount("tmpfs", m.ImagesDir, "tmpfs", 0, "size=6m,mode=0700"); err != nil {
			t.Skipf("cannot mount a tmpfs: %v", err)
		}
		t.Cleanup(func() { _ = unix.Unmount(m.ImagesDir, unix.MNT_DETACH) })
		big := make([]byte, 12<<20)
		for i := range big {
			big[i] = byte(i * 7 >> 3)
		}
		body := mkTar(t, []ent{dir("./", 0o755), file("big", string(big), 0o644)})
		sum := sha256.Sum256(body)
		m.Catalog = NewCatalog(Entry{Name: "tb", Kind: KindTarball, Ref: serveTarball(t, body) + "/rootfs.tar.gz", SHA256: hex.EncodeToString(sum[:])})
		_, err := m.Pull(ctx, PullOptions{Ref: "tb", NoKernel: true})
		if err == nil || !strings.Contains(strings.ToLower(err.Error()), "no space") {
			t.Fatalf("got %v", err)
		}
		t.Logf("error: %v", err)
		assertNothingRegistered(t, m)
	})
}

func TestParseExtra(t *testing.T) {
	for _, c := range []struct {
		in   string
		kind Kind
		ok   bool
	}{
		{"alp=docker.io/library/alpine:3.20", KindOCI, true},
		{"sid=debian:sid", KindDebian, true},
		{"v=https://x/y.tar.xz#sha256=abc", KindTarball, true},
		{"v=https://x/y.tar.xz", "", false},
		{"noequals", "", false},
	} {
		e, err := ParseExtra(c.in)
		if (err == nil) != c.ok || (c.ok && e.Kind != c.kind) {
			t.Errorf("%s: %+v %v", c.in, e, err)
		}
	}
}
