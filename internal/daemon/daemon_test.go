package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/banger-vm/banger/internal/api"
	"github.com/banger-vm/banger/internal/config"
	"github.com/banger-vm/banger/internal/paths"
)

func testLayout(t *testing.T) paths.Layout {
	t.Helper()
	// Unix socket paths are limited to 108 bytes; t.TempDir() under a long test name can
	// exceed that, so keep the runtime dir short.
	rt, err := os.MkdirTemp("", "bgr")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(rt) })
	home := t.TempDir()
	l, err := paths.Resolve(paths.Env{Home: home, XDGRuntimeDir: rt, UID: os.Getuid()})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func startDaemon(t *testing.T, l paths.Layout) *Daemon {
	t.Helper()
	d, err := Start(context.Background(), Options{Layout: l, Config: config.Defaults(), Version: "test"})
	if err != nil {
		t.Fatalf("start daemon: %v", err)
	}
	t.Cleanup(func() { _ = d.Shutdown(context.Background()) })
	return d
}

func TestStartServeStop(t *testing.T) {
	l := testLayout(t)
	d := startDaemon(t, l)
	c := api.NewClient(l.Socket, "test")
	st, err := c.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if st.PID != os.Getpid() || st.Version != "test" || st.APIVersion != "v1" || st.Socket != l.Socket {
		t.Fatalf("status = %+v", st)
	}
	var names []string
	for _, s := range st.Startup {
		names = append(names, s.Name)
	}
	if got := strings.Join(names, ","); got != "prepare directories,acquire lock,open store,listen,reconcile vms,clean leftovers" {
		t.Fatalf("startup stages = %s", got)
	}

	// The startup stages were persisted as lifecycle events once the store opened.
	events, err := c.Events(context.Background(), api.EventFilter{Operation: "daemon.start"})
	if err != nil {
		t.Fatal(err)
	}
	if len(events) != 6 || events[2].Stage != "open store" || events[2].DurationMS <= 0 {
		t.Fatalf("events = %+v", events)
	}

	if err := d.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(l.Socket); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("socket still there after shutdown: %v", err)
	}
	if _, err := c.Status(context.Background()); !api.IsDaemonNotRunning(err) {
		t.Fatalf("after shutdown: %v, want daemon_not_running", err)
	}
	// A second Shutdown is harmless.
	if err := d.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func TestSocketAndDirectoryPermissions(t *testing.T) {
	l := testLayout(t)
	startDaemon(t, l)
	for path, want := range map[string]os.FileMode{l.Socket: 0o600, l.RuntimeDir: 0o700, l.DataDir: 0o700, l.StateDB: 0o600} {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if got := fi.Mode().Perm(); got != want {
			t.Errorf("%s mode %o, want %o", path, got, want)
		}
	}
}

func TestSecondDaemonRefused(t *testing.T) {
	l := testLayout(t)
	startDaemon(t, l)
	_, err := Start(context.Background(), Options{Layout: l, Config: config.Defaults(), Version: "test"})
	var ar *AlreadyRunningError
	if !errors.As(err, &ar) {
		t.Fatalf("second start: %v, want AlreadyRunningError", err)
	}
	if ar.PID != os.Getpid() || !strings.Contains(err.Error(), "banger daemon stop") {
		t.Fatalf("error %q lacks pid %d or the way out", err, os.Getpid())
	}
	// The first daemon is untouched: its socket still answers.
	if _, err := api.NewClient(l.Socket, "test").Status(context.Background()); err != nil {
		t.Fatalf("first daemon broken by the refused second: %v", err)
	}
}

func TestStaleSocketIsReplaced(t *testing.T) {
	l := testLayout(t)
	if err := l.EnsureRuntimeDir(); err != nil {
		t.Fatal(err)
	}
	// A crashed daemon leaves its socket file behind with nobody listening.
	ln, err := net.Listen("unix", l.Socket)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
	if _, err := os.Stat(l.Socket); err != nil {
		t.Fatalf("stale socket not created: %v", err)
	}
	startDaemon(t, l)
	if _, err := api.NewClient(l.Socket, "test").Status(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func TestNonSocketAtSocketPathRefused(t *testing.T) {
	l := testLayout(t)
	if err := l.EnsureRuntimeDir(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(l.Socket, []byte("precious"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Start(context.Background(), Options{Layout: l, Config: config.Defaults(), Version: "test"})
	if err == nil || !strings.Contains(err.Error(), "is not a socket") {
		t.Fatalf("start over a regular file: %v", err)
	}
	if data, _ := os.ReadFile(l.Socket); string(data) != "precious" {
		t.Fatal("the file at the socket path was clobbered")
	}
	// The failed start released its lock: a start after fixing the problem works.
	os.Remove(l.Socket)
	startDaemon(t, l)
}

func TestRuntimeDirOwnedByOtherUserOrSymlinkRefused(t *testing.T) {
	l := testLayout(t)
	target := t.TempDir()
	if err := os.Symlink(target, l.RuntimeDir); err != nil {
		t.Fatal(err)
	}
	_, err := Start(context.Background(), Options{Layout: l, Config: config.Defaults(), Version: "test"})
	if err == nil || !strings.Contains(err.Error(), "not a directory") {
		t.Fatalf("start with a symlinked runtime dir: %v", err)
	}
}

func TestConcurrentClients(t *testing.T) {
	l := testLayout(t)
	startDaemon(t, l)
	const clients, calls = 16, 20
	var wg sync.WaitGroup
	errs := make(chan error, clients*calls)
	for i := 0; i < clients; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := api.NewClient(l.Socket, "test")
			for j := 0; j < calls; j++ {
				var err error
				if j%2 == 0 {
					_, err = c.Status(context.Background())
				} else {
					_, err = c.Events(context.Background(), api.EventFilter{Limit: 10})
				}
				if err != nil {
					errs <- err
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestMalformedRequestsGetTypedErrors(t *testing.T) {
	l := testLayout(t)
	startDaemon(t, l)
	c := api.NewClient(l.Socket, "test")
	cases := []struct {
		method, path, body string
		status             int
		code               api.ErrorCode
		msg                string
	}{
		{"GET", "/v1/nope", "", 404, api.CodeNotFound, "no API endpoint GET /v1/nope"},
		{"GET", "/v2/status", "", 404, api.CodeNotFound, "no API endpoint"},
		{"GET", "/", "", 404, api.CodeNotFound, "no API endpoint"},
		{"DELETE", "/v1/status", "", 405, api.CodeMethodNotAllowed, "DELETE is not allowed on /v1/status"},
		{"POST", "/v1/shutdown", "{not json", 400, api.CodeBadRequest, "malformed JSON body"},
		{"POST", "/v1/shutdown", `{"reason":"x","bogus":1}`, 400, api.CodeBadRequest, `unknown field "bogus"`},
		{"POST", "/v1/shutdown", `{"reason":"x"} {}`, 400, api.CodeBadRequest, "trailing data"},
		{"POST", "/v1/shutdown", `{"reason":` + strings.Repeat(" ", 2<<20) + `"x"}`, 400, api.CodeBadRequest, "larger than"},
		{"POST", "/v1/shutdown", `["reason"]`, 400, api.CodeBadRequest, "malformed JSON body"},
		{"GET", "/v1/events?limit=ten", "", 400, api.CodeBadRequest, `limit="ten"`},
		{"GET", "/v1/events?after=-3", "", 400, api.CodeBadRequest, `after="-3"`},
	}
	for _, tc := range cases {
		status, body, err := c.Raw(context.Background(), tc.method, tc.path, []byte(tc.body))
		if err != nil {
			t.Fatalf("%s %s: %v", tc.method, tc.path, err)
		}
		var eb api.ErrorBody
		if err := json.Unmarshal(body, &eb); err != nil || eb.Error == nil {
			t.Errorf("%s %s: body %q is not a typed error", tc.method, tc.path, body)
			continue
		}
		if status != tc.status || eb.Error.Code != tc.code || !strings.Contains(eb.Error.Message, tc.msg) {
			t.Errorf("%s %s: got %d %s %q, want %d %s containing %q", tc.method, tc.path, status, eb.Error.Code, eb.Error.Message, tc.status, tc.code, tc.msg)
		}
		if status == http.StatusMethodNotAllowed && eb.Error.Hint == "" {
			t.Errorf("%s %s: no hint", tc.method, tc.path)
		}
	}
	// Still serving after all that.
	if _, err := c.Status(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func TestShutdownRequestStopsRun(t *testing.T) {
	l := testLayout(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	cfg := config.Defaults()
	go func() { done <- Run(ctx, Options{Layout: l, Config: cfg, Version: "test"}) }()
	c := api.NewClient(l.Socket, "test")
	waitFor(t, func() bool { _, err := c.Status(ctx); return err == nil })
	if err := c.Shutdown(ctx, "test"); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run returned %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("Run did not return after a shutdown request")
	}
	if _, err := os.Stat(filepath.Join(l.RuntimeDir, "banger.sock")); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("socket left behind")
	}
}

func TestContextCancelStopsRunGracefully(t *testing.T) {
	l := testLayout(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, Options{Layout: l, Config: config.Defaults(), Version: "test"}) }()
	c := api.NewClient(l.Socket, "test")
	waitFor(t, func() bool { _, err := c.Status(context.Background()); return err == nil })
	cancel() // what SIGTERM does through signal.NotifyContext
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run returned %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	// The lock was released: a new daemon starts on the same paths.
	startDaemon(t, l)
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 10s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}
