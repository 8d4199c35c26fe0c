// Package updatetest builds real banger releases and serves them from a real HTTP channel,
// for the tests of `banger update` (internal/update and test/e2e). Only tests import it.
package updatetest

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/banger-vm/banger/internal/api"
	"github.com/banger-vm/banger/internal/release"
	"github.com/banger-vm/banger/internal/system/proc"
	"github.com/banger-vm/banger/internal/update"
)

// Key is a release-signing key pair made for one test run.
type Key struct {
	Pub  ed25519.PublicKey
	Priv ed25519.PrivateKey
}

// NewKey makes a fresh key.
func NewKey(t testing.TB) Key {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return Key{pub, priv}
}

// Build is a directory holding banger, banger-init and banger-agent of one version.
type Build struct {
	Dir     string
	Version string
}

// Path returns the path of binary name in the build.
func (b Build) Path(name string) string { return filepath.Join(b.Dir, name) }

// BuildRelease builds the three binaries stamped with version, trusting keys for updates,
// with the comma-separated test hooks compiled in ("crash", "doctor-fail"). It is safe to
// call from several goroutines.
func BuildRelease(dir, version, hooks string, keys ...ed25519.PublicKey) (Build, error) {
	_, file, _, _ := runtime.Caller(0)
	root := filepath.Join(filepath.Dir(file), "..", "..", "..")
	var ks []string
	for _, k := range keys {
		ks = append(ks, base64.StdEncoding.EncodeToString(k))
	}
	const pkg = "github.com/banger-vm/banger/internal/buildinfo"
	ldflags := fmt.Sprintf("-s -w -X %s.version=%s -X %s.updateKeys=%s -X %s.testHooks=%s", pkg, version, pkg, strings.Join(ks, ","), pkg, hooks)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return Build{}, err
	}
	var wg sync.WaitGroup
	errs := make([]error, 3)
	for i, b := range update.Binaries() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, stderr, err := proc.RunBinary(context.Background(), "go",
				[]string{"build", "-C", root, "-trimpath", "-ldflags", ldflags, "-o", filepath.Join(dir, b), "./cmd/" + b},
				[]string{"CGO_ENABLED=0"})
			if err != nil {
				errs[i] = fmt.Errorf("build %s %s: %v\n%s", b, version, err, stderr)
			}
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return Build{}, err
		}
	}
	return Build{Dir: dir, Version: version}, nil
}

// Spec is one build for BuildReleases: built into the subdirectory Sub, stamped Version,
// with Hooks compiled in (see BuildRelease).
type Spec struct{ Sub, Version, Hooks string }

// BuildReleases builds specs concurrently under dir, each trusting keys, and returns the
// builds in the order of specs; the error is the first spec's (in that order) that failed.
func BuildReleases(dir string, specs []Spec, keys ...ed25519.PublicKey) ([]Build, error) {
	builds := make([]Build, len(specs))
	errs := make([]error, len(specs))
	var wg sync.WaitGroup
	for i, s := range specs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			builds[i], errs[i] = BuildRelease(filepath.Join(dir, s.Sub), s.Version, s.Hooks, keys...)
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return builds, err
		}
	}
	return builds, nil
}

// Shared makes a package's test releases once, the first time a test asks for them, in a
// directory outside any test's TempDir: the builds outlive the test that happens to make
// them. The package's TestMain calls Remove after m.Run.
type Shared struct {
	once sync.Once
	dir  string
	err  error
}

// Do skips the test in -short mode; otherwise the first call runs build in the shared
// directory, and every call fails its test if build failed.
func (s *Shared) Do(t *testing.T, build func(dir string) error) {
	t.Helper()
	if testing.Short() {
		t.Skip("builds banger releases: not in -short mode")
	}
	s.once.Do(func() {
		if s.dir, s.err = os.MkdirTemp("", "bg-builds-"); s.err == nil {
			s.err = build(s.dir)
		}
	})
	if s.err != nil {
		t.Fatal(s.err)
	}
}

// Remove deletes the shared directory, if a test made it.
func (s *Shared) Remove() {
	if s.dir != "" {
		os.RemoveAll(s.dir)
	}
}

// Tarball returns the release artifact of b, packed by update.WriteArtifact as
// banger-release does. It is written once per build directory (as b.Dir + ".tar.gz"):
// compressing ~40 MB under the race detector takes seconds.
func Tarball(t testing.TB, b Build) []byte {
	t.Helper()
	cached := filepath.Clean(b.Dir) + ".tar.gz"
	if data, err := os.ReadFile(cached); err == nil {
		return data
	}
	var buf bytes.Buffer
	if err := update.WriteArtifact(&buf, b.Dir, gzip.BestSpeed); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cached, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// ManifestFor describes tarball as version's artifact for this platform at url.
func ManifestFor(version, url string, tarball []byte) update.Manifest {
	a, _ := release.DescribeArtifact(bytes.NewReader(tarball), url) // a bytes.Reader does not fail
	return release.NewManifest(version, time.Now(), map[string]update.Artifact{update.Platform(): a})
}

// Channel is a release channel directory, laid out by internal/release, served over real
// HTTP.
type Channel struct {
	t    testing.TB
	srv  *httptest.Server
	dir  string
	root *os.Root
	mu   sync.Mutex
	// cut maps a path to how many bytes of it to send before dropping the connection
	// (with the full Content-Length announced): a truncated download.
	cut map[string]int
}

// NewChannel starts a channel; it is closed when the test ends.
func NewChannel(t testing.TB) *Channel {
	dir := t.TempDir()
	root, err := os.OpenRoot(dir)
	if err != nil {
		t.Fatal(err)
	}
	c := &Channel{t: t, dir: dir, root: root, cut: map[string]int{}}
	c.srv = httptest.NewServer(http.HandlerFunc(c.serve))
	t.Cleanup(func() {
		c.srv.Close()
		root.Close()
	})
	return c
}

// URL is the channel URL for update.channel_url.
func (c *Channel) URL() string { return c.srv.URL + "/stable/" }

// Dir is the channel directory served at URL.
func (c *Channel) Dir() string { return c.dir }

func (c *Channel) serve(w http.ResponseWriter, r *http.Request) {
	p := strings.TrimPrefix(r.URL.Path, "/stable/")
	c.mu.Lock()
	cut, isCut := c.cut[p]
	c.mu.Unlock()
	data, err := c.root.ReadFile(p)
	if err != nil {
		http.NotFound(w, r)
		return
	}
	w.Header().Set("Content-Length", strconv.Itoa(len(data)))
	if isCut {
		w.Write(data[:cut])
		// Drop the connection mid-body, as a broken network would.
		if hj, ok := w.(http.Hijacker); ok {
			if conn, _, err := hj.Hijack(); err == nil {
				conn.Close()
			}
		}
		return
	}
	w.Write(data)
}

// Put serves data at path (relative to the channel URL), replacing what was there.
func (c *Channel) Put(path string, data []byte) {
	c.t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.root.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		c.t.Fatal(err)
	}
	if err := c.root.WriteFile(path, data, 0o644); err != nil {
		c.t.Fatal(err)
	}
	delete(c.cut, path)
}

// Cut makes path stop after n bytes.
func (c *Channel) Cut(path string, n int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.cut[path] = n
}

// ArtifactName is the file name of version's artifact for this platform.
func ArtifactName(version string) string { return update.ArtifactName(version, update.Platform()) }

// Publish publishes tarball as release version with release.Publish, as banger-release
// make does: the artifact, <version>/manifest.json and, unless the channel has a newer
// release, latest.json, each signed by signers. It returns the version's manifest.
func (c *Channel) Publish(t testing.TB, version string, tarball []byte, signers ...ed25519.PrivateKey) update.Manifest {
	t.Helper()
	c.Put(version+"/"+ArtifactName(version), tarball)
	res, err := release.Publish(release.PublishOptions{ChannelDir: c.dir, Version: version, Keys: signers})
	if err != nil {
		t.Fatal(err)
	}
	return res.Manifest
}

// Sign signs m or fails the test.
func Sign(t testing.TB, m update.Manifest, signers ...ed25519.PrivateKey) []byte {
	t.Helper()
	data, err := update.Sign(m, signers...)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// Sandbox is a user install of banger (HOME/.local/bin) with its own XDG directories.
type Sandbox struct {
	t    testing.TB
	Dir  string
	Bin  string // the install dir
	Vars []string
}

// Result of one banger run.
type Result struct {
	Stdout, Stderr string
	Code           int // -1: killed by a signal
}

// NewSandbox installs b into a fresh HOME and writes a config using channel (may be "")
// plus extraConfig. The daemon, if started, is stopped when the test ends.
func NewSandbox(t testing.TB, b Build, channel, extraConfig string) *Sandbox {
	t.Helper()
	// Short: sockets live under XDG_RUNTIME_DIR and sun_path is 108 bytes.
	dir, err := os.MkdirTemp("", "bgu-")
	if err != nil {
		t.Fatal(err)
	}
	s := &Sandbox{t: t, Dir: dir, Bin: filepath.Join(dir, "home/.local/bin")}
	for _, d := range []string{"home/.local/bin", "run", "cfg/banger"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	for _, name := range update.Binaries() {
		data, err := os.ReadFile(b.Path(name))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(s.Bin, name), data, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// No root helper: a socket nobody listens on, so the test never touches the host's.
	cfg := fmt.Sprintf("[network]\nhelper_socket = %q\n[update]\nchannel_url = %q\nverify_timeout = \"60s\"\n%s", filepath.Join(dir, "no-helper.sock"), channel, extraConfig)
	if err := os.WriteFile(filepath.Join(dir, "cfg/banger/config.toml"), []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	s.Vars = []string{"HOME=" + filepath.Join(dir, "home"), "XDG_RUNTIME_DIR=" + filepath.Join(dir, "run"),
		"XDG_CONFIG_HOME=" + filepath.Join(dir, "cfg"), "XDG_DATA_HOME=" + filepath.Join(dir, "data"),
		"XDG_STATE_HOME=" + filepath.Join(dir, "state"), "XDG_CACHE_HOME=" + filepath.Join(dir, "cache"), "BANGER_CONFIG=",
		"BANGER_UPDATE_CRASH_AT="}
	t.Cleanup(func() {
		if t.Failed() {
			if log, err := os.ReadFile(filepath.Join(dir, "state/banger/daemon.log")); err == nil {
				t.Logf("daemon log (tail):\n%s", tail(string(log), 30))
			}
		}
		s.StopDaemon()
		os.RemoveAll(dir)
	})
	return s
}

// Path is the installed path of binary name.
func (s *Sandbox) Path(name string) string { return filepath.Join(s.Bin, name) }

// Run runs the installed banger with extra environment variables (NAME=VALUE) and args.
func (s *Sandbox) Run(env []string, args ...string) Result {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	out, errb, err := proc.RunBinary(ctx, s.Path("banger"), args, append(append([]string{}, s.Vars...), env...))
	r := Result{Stdout: string(out), Stderr: string(errb)}
	if err != nil {
		r.Code = proc.ExitCode(err)
		if r.Code == 0 {
			s.t.Fatalf("banger %s: %v", strings.Join(args, " "), err)
		}
	}
	return r
}

// Must runs banger and fails the test unless it exits 0.
func (s *Sandbox) Must(args ...string) Result {
	s.t.Helper()
	r := s.Run(nil, args...)
	if r.Code != 0 {
		s.t.Fatalf("banger %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), r.Code, r.Stdout, r.Stderr)
	}
	return r
}

// Status returns the running daemon's status.
func (s *Sandbox) Status() api.StatusResponse {
	s.t.Helper()
	var st api.StatusResponse
	if err := json.Unmarshal([]byte(s.Must("daemon", "status", "--json").Stdout), &st); err != nil {
		s.t.Fatal(err)
	}
	return st
}

// StopDaemon stops the sandbox's daemon whatever binary runs it: through the API, else
// by the pid in its lock file.
func (s *Sandbox) StopDaemon() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := api.NewClient(filepath.Join(s.Dir, "run/banger/banger.sock"), "test")
	st, err := c.Status(ctx)
	if err != nil {
		return
	}
	_ = c.Shutdown(ctx, "test cleanup")
	for syscall.Kill(st.PID, 0) == nil && ctx.Err() == nil {
		time.Sleep(50 * time.Millisecond)
	}
	if syscall.Kill(st.PID, 0) == nil {
		_ = syscall.Kill(st.PID, syscall.SIGKILL)
	}
}

// Install returns the sandbox's install as update.Locate sees it.
func (s *Sandbox) Install() update.Install {
	s.t.Helper()
	return update.Install{Dir: s.Bin, Staging: filepath.Join(s.Dir, "cache/banger/update")}
}

// SameFile reports whether the files at a and b have the same bytes.
func SameFile(t testing.TB, a, b string) bool {
	t.Helper()
	x, err := update.FileSHA256(a)
	if err != nil {
		t.Fatal(err)
	}
	y, err := update.FileSHA256(b)
	if err != nil {
		t.Fatal(err)
	}
	return x != "" && x == y
}

// InstalledIs fails the test unless all three installed binaries are exactly b's.
func (s *Sandbox) InstalledIs(b Build) {
	s.t.Helper()
	for _, name := range update.Binaries() {
		if !SameFile(s.t, s.Path(name), b.Path(name)) {
			s.t.Errorf("installed %s is not %s's", name, b.Version)
		}
	}
}

// Leftovers lists what is in the staging dir besides the lock file.
func (s *Sandbox) Leftovers() []string {
	ents, _ := os.ReadDir(s.Install().Staging)
	var out []string
	for _, e := range ents {
		if e.Name() != "update.lock" {
			out = append(out, e.Name())
		}
	}
	tmps, _ := filepath.Glob(filepath.Join(s.Bin, "*.tmp"))
	return append(out, tmps...)
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
