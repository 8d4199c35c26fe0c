package update

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/banger-vm/banger/internal/paths"
)

func artifactFor(data []byte) Artifact {
	sum := sha256.Sum256(data)
	return Artifact{URL: "x", Size: int64(len(data)), SHA256: hex.EncodeToString(sum[:])}
}

func TestDownloadVerifies(t *testing.T) {
	good := bytes.Repeat([]byte("banger"), 100000)
	serve := func(body []byte, announce, send int) *httptest.Server {
		return httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Length", strconv.Itoa(announce))
			w.Write(body[:send])
			if send < announce {
				conn, _, _ := w.(http.Hijacker).Hijack()
				conn.Close()
			}
		}))
	}
	wrong := append([]byte{}, good...)
	wrong[1000] ^= 1
	for name, tc := range map[string]struct {
		body           []byte
		announce, send int
		want           string
	}{
		"ok":         {good, len(good), len(good), ""},
		"wrong hash": {wrong, len(wrong), len(wrong), "SHA-256"},
		"truncated":  {good, len(good), len(good) / 2, "unexpected EOF"},
		"longer":     {append(append([]byte{}, good...), 'x'), len(good) + 1, len(good) + 1, "announces"},
	} {
		srv := serve(tc.body, tc.announce, tc.send)
		defer srv.Close()
		dst := filepath.Join(t.TempDir(), "a.tar.gz")
		var last int64
		err := Source{}.Download(context.Background(), srv.URL, artifactFor(good), dst, func(done, _ int64) { last = done })
		if tc.want == "" {
			if err != nil || last != int64(len(good)) {
				t.Errorf("%s: err %v, last progress %d", name, err, last)
			}
			if got, _ := os.ReadFile(dst); !bytes.Equal(got, good) {
				t.Errorf("%s: downloaded bytes differ", name)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err %v, want one mentioning %q", name, err, tc.want)
		}
		// Nothing unverified may be left under either name.
		for _, p := range []string{dst, dst + ".part"} {
			if _, err := os.Stat(p); err == nil {
				t.Errorf("%s: %s left behind", name, p)
			}
		}
	}
}

func tarGz(t *testing.T, files map[string]string, typ byte) string {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	for n, d := range files {
		tw.WriteHeader(&tar.Header{Name: n, Mode: 0o755, Size: int64(len(d)), Typeflag: typ})
		tw.Write([]byte(d))
	}
	tw.Close()
	zw.Close()
	p := filepath.Join(t.TempDir(), "a.tar.gz")
	if err := os.WriteFile(p, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestExtract(t *testing.T) {
	three := map[string]string{"banger": "b", "banger-init": "i", "./banger-agent": "a"}
	dir := t.TempDir()
	if err := Extract(tarGz(t, three, tar.TypeReg), dir); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(filepath.Join(dir, "banger-agent")); err != nil || st.Mode().Perm() != 0o755 {
		t.Fatalf("banger-agent: %v %v", st, err)
	}
	for name, files := range map[string]map[string]string{
		"missing agent": {"banger": "b", "banger-init": "i"},
		"path escape":   {"banger": "b", "banger-init": "i", "banger-agent": "a", "../evil": "x"},
		"extra file":    {"banger": "b", "banger-init": "i", "banger-agent": "a", "README": "x"},
	} {
		if err := Extract(tarGz(t, files, tar.TypeReg), t.TempDir()); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if err := Extract(tarGz(t, three, tar.TypeSymlink), t.TempDir()); err == nil {
		t.Error("symlinks accepted")
	}
}

// fakeInstall makes an install of "old" binaries and a staged "new" set.
func fakeInstall(t *testing.T) (Install, string, Journal) {
	t.Helper()
	root := t.TempDir()
	in := Install{Dir: filepath.Join(root, "bin"), Staging: filepath.Join(root, "staging")}
	staged := filepath.Join(in.Staging, "v2", "bin")
	for _, d := range []string{in.Dir, staged} {
		os.MkdirAll(d, 0o755)
	}
	j := Journal{From: "v1.0.0", To: "v2.0.0", Phase: PhaseSwapping}
	for _, n := range Binaries() {
		os.WriteFile(in.Path(n), []byte("old "+n), 0o755)
		os.WriteFile(filepath.Join(staged, n), []byte("new "+n), 0o755)
		o, _ := FileSHA256(in.Path(n))
		nw, _ := FileSHA256(filepath.Join(staged, n))
		j.Files = append(j.Files, JournalFile{Name: n, Old: o, New: nw})
	}
	if err := in.WriteJournal(j); err != nil {
		t.Fatal(err)
	}
	return in, staged, j
}

func readAll(t *testing.T, in Install) string {
	var b []string
	for _, n := range Binaries() {
		d, _ := os.ReadFile(in.Path(n))
		b = append(b, string(d))
	}
	return strings.Join(b, ",")
}

const allOld = "old banger-init,old banger-agent,old banger"

// TestRepairAfterInterruption interrupts the swap at every named point (the hook panics,
// standing in for kill -9: nothing after the point runs) and checks that the installed
// banger is always whole, and that Repair brings back the old set and leaves nothing behind.
func TestRepairAfterInterruption(t *testing.T) {
	points := []string{}
	for _, n := range Binaries() {
		points = append(points, "before-final-rename:"+n, "swapped:"+n)
	}
	for _, point := range points {
		t.Run(point, func(t *testing.T) {
			in, staged, _ := fakeInstall(t)
			func() {
				defer func() { recover() }()
				in.Swap(staged, func(p string) {
					if p == point {
						panic("killed")
					}
				})
			}()
			if d, err := os.ReadFile(in.Path("banger")); err != nil || (string(d) != "old banger" && string(d) != "new banger") {
				t.Fatalf("after interruption banger is %q (%v)", d, err)
			}
			rep, err := Repair(in)
			if err != nil {
				t.Fatal(err)
			}
			if rep.Interrupted == nil || rep.Interrupted.To != "v2.0.0" {
				t.Fatalf("repair did not see the interrupted update: %+v", rep)
			}
			if got := readAll(t, in); got != allOld {
				t.Fatalf("after repair: %s", got)
			}
			ents, _ := os.ReadDir(in.Staging)
			for _, e := range ents {
				if e.Name() != "update.lock" {
					t.Errorf("staging leftover %s", e.Name())
				}
			}
			if tmps, _ := filepath.Glob(filepath.Join(in.Dir, "*.tmp")); len(tmps) > 0 {
				t.Errorf("tmp leftovers %v", tmps)
			}
			// A second repair finds nothing.
			if rep, err := Repair(in); err != nil || !rep.Empty() {
				t.Errorf("second repair: %+v %v", rep, err)
			}
		})
	}
}

func TestRestoreRefusesUnknownContent(t *testing.T) {
	in, staged, j := fakeInstall(t)
	if err := in.Swap(staged, nil); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(in.Path("banger"), []byte("edited by hand"), 0o755)
	if _, err := in.Restore(j); err == nil || !strings.Contains(err.Error(), "neither") {
		t.Fatalf("restore over unknown content: %v", err)
	}
}

func TestLockIsExclusive(t *testing.T) {
	in, _, _ := fakeInstall(t)
	l, err := in.TryLock()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := in.TryLock(); !errors.Is(err, ErrLocked) {
		t.Fatalf("second lock: %v", err)
	}
	if rep, err := Repair(in); err != nil || !rep.InProgress {
		t.Fatalf("repair while locked: %+v %v", rep, err)
	}
	if readAll(t, in) != allOld {
		t.Fatal("repair touched a locked install")
	}
	l.Unlock()
	l2, err := in.TryLock()
	if err != nil {
		t.Fatalf("lock after unlock: %v", err)
	}
	l2.Unlock()
}

func TestLocate(t *testing.T) {
	root := t.TempDir()
	home := filepath.Join(root, "home")
	bin := filepath.Join(home, ".local/bin")
	os.MkdirAll(bin, 0o755)
	os.WriteFile(filepath.Join(bin, "banger"), []byte("x"), 0o755)
	os.Symlink(filepath.Join(bin, "banger"), filepath.Join(root, "link"))
	in, err := Locate(filepath.Join(root, "link"), paths.Env{Home: home, XDGCacheHome: filepath.Join(root, "cache")})
	if err != nil {
		t.Fatal(err)
	}
	if in.Dir != bin || in.System || in.Staging != filepath.Join(root, "cache/banger/update") {
		t.Fatalf("user install: %+v", in)
	}
	// A cache on another filesystem: staging falls back to next to the binary.
	var a, b unix.Stat_t
	if unix.Stat("/dev/shm", &a) != nil || unix.Stat(root, &b) != nil || a.Dev == b.Dev {
		t.Skip("cross-filesystem fallback not tested: needs /dev/shm on a filesystem other than " + root)
	}
	shm, err := os.MkdirTemp("/dev/shm", "bgu-cache-")
	if err != nil {
		t.Skipf("cross-filesystem fallback not tested: cannot write /dev/shm: %v", err)
	}
	defer os.RemoveAll(shm)
	in, err = Locate(filepath.Join(bin, "banger"), paths.Env{Home: home, XDGCacheHome: shm})
	if err != nil {
		t.Fatal(err)
	}
	if in.Staging != filepath.Join(bin, ".banger-update") {
		t.Fatalf("cross-filesystem cache: staging %s, want next to the binary", in.Staging)
	}
}

func TestManifestURL(t *testing.T) {
	for _, tc := range [][3]string{
		{"https://r.example/banger/stable", "", "https://r.example/banger/stable/latest.json"},
		{"https://r.example/banger/stable/", "v1.2.3", "https://r.example/banger/stable/v1.2.3/manifest.json"},
	} {
		got, err := ManifestURL(tc[0], tc[1])
		if err != nil || got != tc[2] {
			t.Errorf("ManifestURL(%q, %q) = %q, %v; want %q", tc[0], tc[1], got, err, tc[2])
		}
	}
	if _, err := ManifestURL("", ""); err == nil || !strings.Contains(err.Error(), "--from") {
		t.Errorf("no channel: %v", err)
	}
	if got, _ := ResolveArtifact("https://r.example/s/latest.json", "v1/a.tar.gz"); got != "https://r.example/s/v1/a.tar.gz" {
		t.Errorf("resolve url: %s", got)
	}
	if got, _ := ResolveArtifact("/media/usb/v1/manifest.json", "a.tar.gz"); got != "/media/usb/v1/a.tar.gz" {
		t.Errorf("resolve path: %s", got)
	}
}
