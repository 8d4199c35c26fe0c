package image

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/ProtonMail/go-crypto/openpgp/clearsign"
	"github.com/blakesmith/ar"
	"github.com/ulikunitz/xz"
)

const testRelease = "6.1.0-56-cloud-amd64"

var (
	debOnce  sync.Once
	debCache []byte
)

// fakeArchive serves a minimal signed Debian archive with one kernel package built from
// the real test kernel; tamper lets a test break one piece.
type fakeArchive struct {
	files   map[string][]byte
	keyring string
}

func sha(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }

func xzBytes(t *testing.T, b []byte) []byte {
	var out bytes.Buffer
	w, err := xz.NewWriter(&out)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = w.Write(b)
	_ = w.Close()
	return out.Bytes()
}

func buildDeb(t *testing.T, vmlinuz []byte) []byte {
	var data bytes.Buffer
	tw := tar.NewWriter(&data)
	add := func(h *tar.Header, body []byte) {
		h.Size = int64(len(body))
		h.ModTime = time.Unix(1700000000, 0)
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		_, _ = tw.Write(body)
	}
	add(&tar.Header{Name: "./", Typeflag: tar.TypeDir, Mode: 0o755}, nil)
	add(&tar.Header{Name: "./boot/", Typeflag: tar.TypeDir, Mode: 0o755}, nil)
	add(&tar.Header{Name: "./boot/vmlinuz-" + testRelease, Typeflag: tar.TypeReg, Mode: 0o644}, vmlinuz)
	add(&tar.Header{Name: "./lib/modules/" + testRelease + "/", Typeflag: tar.TypeDir, Mode: 0o755}, nil)
	add(&tar.Header{Name: "./lib/modules/" + testRelease + "/modules.dep", Typeflag: tar.TypeReg, Mode: 0o644}, []byte("kernel/x.ko:\n"))
	add(&tar.Header{Name: "./usr/share/doc/x", Typeflag: tar.TypeReg, Mode: 0o644}, []byte("not kept"))
	_ = tw.Close()
	var dataGZ bytes.Buffer
	zw := gzip.NewWriter(&dataGZ)
	_, _ = zw.Write(data.Bytes())
	_ = zw.Close()
	var deb bytes.Buffer
	w := ar.NewWriter(&deb)
	_ = w.WriteGlobalHeader()
	for _, m := range []struct {
		name string
		body []byte
	}{{"debian-binary", []byte("2.0\n")}, {"control.tar.xz", xzBytes(t, []byte{})}, {"data.tar.gz", dataGZ.Bytes()}} {
		_ = w.WriteHeader(&ar.Header{Name: m.name, Size: int64(len(m.body)), Mode: 0o644, ModTime: time.Unix(1700000000, 0)})
		_, _ = w.Write(m.body)
	}
	return deb.Bytes()
}

func newFakeArchive(t *testing.T, tamper string) (*fakeArchive, string) {
	matches, _ := filepath.Glob("/var/cache/banger-test/kernel/boot/vmlinuz-*")
	if len(matches) == 0 {
		t.Skip("no test kernel: run scripts/fetch-test-assets.sh")
	}
	vmlinuz, err := os.ReadFile(matches[0])
	if err != nil {
		t.Skip(err)
	}
	signer, err := openpgp.NewEntity("test archive", "", "archive@test.invalid", nil)
	if err != nil {
		t.Fatal(err)
	}
	trusted := signer
	if tamper == "signature" {
		if trusted, err = openpgp.NewEntity("other", "", "other@test.invalid", nil); err != nil {
			t.Fatal(err)
		}
	}
	var kr bytes.Buffer
	if err := trusted.Serialize(&kr); err != nil {
		t.Fatal(err)
	}
	keyring := filepath.Join(t.TempDir(), "keyring.gpg")
	if err := os.WriteFile(keyring, kr.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	debOnce.Do(func() { debCache = buildDeb(t, vmlinuz) })
	deb := debCache
	debSum := sha(deb)
	if tamper == "deb" {
		debSum = strings.Repeat("1", 64)
	}
	packages := fmt.Sprintf(`Package: linux-image-cloud-amd64
Version: 6.1.1-1
Depends: linux-image-%[1]s (= 6.1.1-1)
Filename: pool/main/l/meta.deb
SHA256: %[2]s

Package: linux-image-%[1]s
Version: 6.1.1-1
Filename: pool/main/l/linux/kernel.deb
Size: %[3]d
SHA256: %[4]s
`, testRelease, strings.Repeat("0", 64), len(deb), debSum)
	pxz := xzBytes(t, []byte(packages))
	psum := sha(pxz)
	if tamper == "packages" {
		psum = strings.Repeat("2", 64)
	}
	release := fmt.Sprintf("Origin: Debian\nSuite: bookworm\nSHA256:\n %s %d main/binary-amd64/Packages.xz\n", psum, len(pxz))
	var signed bytes.Buffer
	w, err := clearsign.Encode(&signed, signer.PrivateKey, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = w.Write([]byte(release))
	_ = w.Close()
	fa := &fakeArchive{keyring: keyring, files: map[string][]byte{
		"/dists/bookworm/InRelease":                     signed.Bytes(),
		"/dists/bookworm/main/binary-amd64/Packages.xz": pxz,
		"/pool/main/l/linux/kernel.deb":                 deb,
	}}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if b, ok := fa.files[r.URL.Path]; ok {
			_, _ = w.Write(b)
			return
		}
		http.NotFound(w, r)
	}))
	t.Cleanup(srv.Close)
	return fa, srv.URL
}

func TestPullKernelFromArchive(t *testing.T) {
	ctx := context.Background()
	fa, mirror := newFakeArchive(t, "")
	m := newTestManager(t)
	m.Mirror, m.Keyring = mirror, fa.keyring
	k, err := m.PullKernel(ctx, "bookworm", nil)
	if err != nil {
		t.Fatal(err)
	}
	if k.Release != testRelease || k.ID != testRelease+"_6.1.1-1" {
		t.Errorf("kernel %+v", k)
	}
	data, err := os.ReadFile(k.Vmlinux)
	if err != nil || !bytes.HasPrefix(data, []byte("\x7fELF")) {
		t.Fatalf("vmlinux: %v", err)
	}
	if _, err := os.Stat(filepath.Join(k.ModulesDir, "modules.dep")); err != nil {
		t.Error(err)
	}
	if _, err := os.Stat(filepath.Join(k.Dir, "usr")); err == nil {
		t.Error("files outside boot/ and lib/modules/ were kept")
	}
	// EnsureKernel reuses it; RemoveKernel removes it.
	k2, err := m.EnsureKernel(ctx, "bookworm", false, nil)
	if err != nil || k2.ID != k.ID {
		t.Fatalf("ensure: %+v %v", k2, err)
	}
	if err := m.RemoveKernel(ctx, k.ID); err != nil {
		t.Fatal(err)
	}
	if ks, _ := m.Kernels(); len(ks) != 0 {
		t.Errorf("kernels after rm: %v", ks)
	}

	for _, c := range []struct{ tamper, want string }{
		{"signature", "signature"},
		{"packages", "SHA256"},
		{"deb", "checksum mismatch"},
	} {
		t.Run(c.tamper, func(t *testing.T) {
			fa, mirror := newFakeArchive(t, c.tamper)
			m := newTestManager(t)
			m.Mirror, m.Keyring = mirror, fa.keyring
			_, err := m.PullKernel(ctx, "bookworm", nil)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v, want %q", err, c.want)
			}
			t.Logf("error: %v", err)
			if ents, _ := os.ReadDir(m.KernelsDir); len(ents) != 0 {
				t.Errorf("left %d entries in the kernels dir", len(ents))
			}
		})
	}
}
