package cli

// A fake owner daemon on a real Unix socket, for driving the real CLI (Execute) against
// answers a test chooses: hostile sockets, hostile guest output, slow calls.

import (
	"bytes"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/banger-vm/banger/internal/api"
	"github.com/banger-vm/banger/internal/paths"
)

// fakeDaemon records every byte any client sent it.
type fakeDaemon struct {
	mu  sync.Mutex
	got bytes.Buffer
}

func (f *fakeDaemon) received() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.got.String()
}

type recordingListener struct {
	net.Listener
	f *fakeDaemon
}

func (l recordingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &recordingConn{Conn: c, f: l.f}, nil
}

type recordingConn struct {
	net.Conn
	f *fakeDaemon
}

func (c *recordingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.f.mu.Lock()
	c.f.got.Write(p[:n])
	c.f.mu.Unlock()
	return n, err
}

// serveFake serves h on socket until the test ends. Without a handler for it, GET
// /v1/status answers like a healthy daemon.
func serveFake(t *testing.T, socket string, routes map[string]http.HandlerFunc) *fakeDaemon {
	t.Helper()
	ln, err := net.Listen("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeDaemon{}
	mux := http.NewServeMux()
	if _, ok := routes["GET /v1/status"]; !ok {
		mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, _ *http.Request) {
			_ = json.NewEncoder(w).Encode(api.StatusResponse{Version: "test", PID: os.Getpid(), UID: os.Getuid()})
		})
	}
	for pattern, h := range routes {
		mux.HandleFunc(pattern, h)
	}
	srv := &http.Server{Handler: mux}
	go func() { _ = srv.Serve(recordingListener{Listener: ln, f: f}) }()
	t.Cleanup(func() { _ = srv.Close() })
	return f
}

// streamEvents writes NDJSON stream events, flushing each.
func streamEvents(w http.ResponseWriter, evs ...api.StreamEvent) {
	w.Header().Set("Content-Type", "application/x-ndjson")
	for _, ev := range evs {
		_ = json.NewEncoder(w).Encode(ev)
	}
	if fl, ok := w.(http.Flusher); ok {
		fl.Flush()
	}
}

// cliWorld is one user's banger environment for in-process Execute: its own HOME and a
// short runtime dir (socket paths are limited to 108 bytes), private (0700) like the
// daemon makes it.
type cliWorld struct {
	env        Env
	runtimeDir string // $XDG_RUNTIME_DIR/banger
	socket     string
	stdout     *bytes.Buffer
	stderr     *bytes.Buffer
}

func newCLIWorld(t *testing.T) *cliWorld {
	t.Helper()
	rt, err := os.MkdirTemp("", "bgr")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(rt) })
	dir := filepath.Join(rt, "banger")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	w := &cliWorld{runtimeDir: dir, socket: filepath.Join(dir, "banger.sock"), stdout: &bytes.Buffer{}, stderr: &bytes.Buffer{}}
	home := t.TempDir()
	w.env = Env{
		Paths:  paths.Env{Home: home, XDGRuntimeDir: rt, UID: os.Getuid(), TempDir: os.TempDir()},
		Stdout: w.stdout,
		Stderr: w.stderr,
		Getenv: func(string) string { return "" },
		// No executable: a CLI that finds no daemon says so instead of starting one.
	}
	return w
}

func (w *cliWorld) run(args ...string) int { return Execute(w.env, args) }
