package client_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/banger-vm/banger/client"
	"github.com/banger-vm/banger/internal/agent"
	"github.com/banger-vm/banger/internal/api"
	"github.com/banger-vm/banger/internal/store"
)

// fakeGuest is a daemon whose exec relay plays a hostile guest: every exec request is
// recorded and answered by guest, which writes frames as the guest's agent would.
type fakeGuest struct {
	mu    sync.Mutex
	execs []api.VMExecRequest
}

func (f *fakeGuest) requests() []api.VMExecRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.execs)
}

// serveFakeGuest serves the exec relay on a socket in a private directory; guest writes
// the answer frames to the upgraded connection.
func serveFakeGuest(t *testing.T, guest func(fw *agent.FrameWriter)) (*fakeGuest, string) {
	t.Helper()
	dir, err := os.MkdirTemp("", "bgf")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "d.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeGuest{}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/vms/exec", func(w http.ResponseWriter, r *http.Request) {
		var req api.VMExecRequest
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		f.mu.Lock()
		f.execs = append(f.execs, req)
		f.mu.Unlock()
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: " + agent.ExecUpgradeProtocol + "\r\n\r\n")
		brw.Flush()
		// Drain the client's stdin frames so it never blocks.
		go func() { _, _ = bufio.NewReader(conn).WriteTo(discard{}) }()
		guest(agent.NewFrameWriter(conn))
	})
	srv := &http.Server{Handler: mux}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return f, sock
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }

func exitFrame(fw *agent.FrameWriter, code int) {
	data, _ := json.Marshal(agent.ExitStatus{Code: code})
	_ = fw.WriteFrame(agent.FrameExit, data)
}

func newClient(t *testing.T, sock string) *client.Client {
	t.Helper()
	c, err := client.New(client.WithSocket(sock), client.WithClientVersion("test"))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// A guest that answers ReadFile without end: the read stops at MaxReadFile with an error
// instead of filling memory.
func TestReadFileBoundsAHostileGuest(t *testing.T) {
	_, sock := serveFakeGuest(t, func(fw *agent.FrameWriter) {
		chunk := make([]byte, agent.MaxFramePayload)
		for fw.WriteFrame(agent.FrameStdout, chunk) == nil {
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	data, err := newClient(t, sock).ReadFile(ctx, "vm", "/root/f")
	if err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Fatalf("ReadFile of an endless file: %d bytes, err %v; want a size refusal", len(data), err)
	}
	if ctx.Err() != nil {
		t.Fatal("ReadFile did not stop on its own")
	}
}

// Paths reach the guest as arguments of a fixed script, never as shell text, and what
// the guest writes to stderr comes back in the error without terminal controls.
func TestFilePathsAreArgumentsAndGuestErrorsAreCleaned(t *testing.T) {
	f, sock := serveFakeGuest(t, func(fw *agent.FrameWriter) {
		_ = fw.WriteFrame(agent.FrameStderr, []byte("\x1b]0;owned\x07sh: can't create\x1b[2J: nope\n"))
		exitFrame(fw, 1)
	})
	c := newClient(t, sock)
	hostile := "/root/$(reboot); rm -rf / #\n`id`"
	err := c.WriteFile(context.Background(), "vm", hostile, []byte("x"), 0o600)
	if err == nil || strings.ContainsAny(err.Error(), "\x1b\x07") || !strings.Contains(err.Error(), "can't create") || !strings.Contains(err.Error(), "exit 1") {
		t.Fatalf("WriteFile error %q: want the guest's words, cleaned, and the exit code", err)
	}
	if _, err := c.ReadFile(context.Background(), "vm", hostile); err == nil || strings.ContainsRune(err.Error(), '\x1b') {
		t.Fatalf("ReadFile error %q: want a cleaned refusal", err)
	}
	reqs := f.requests()
	if len(reqs) != 2 {
		t.Fatalf("%d exec requests, want 2", len(reqs))
	}
	for _, r := range reqs {
		if len(r.Argv) < 5 || r.Argv[0] != "sh" || r.Argv[1] != "-c" || strings.Contains(r.Argv[2], "reboot") || strings.Contains(r.Argv[2], "rm -rf") || r.Argv[4] != hostile {
			t.Fatalf("argv %q: want the path as its own argument of a fixed script", r.Argv)
		}
	}
	if got := reqs[0].Argv[5]; got != "600" {
		t.Fatalf("WriteFile mode argument %q, want 600", got)
	}
}

// Bad arguments are refused before anything reaches the daemon.
func TestBadArgumentsRefusedLocally(t *testing.T) {
	f, sock := serveFakeGuest(t, func(fw *agent.FrameWriter) { exitFrame(fw, 0) })
	c := newClient(t, sock)
	ctx := context.Background()
	for name, err := range map[string]error{
		"ReadFile relative":  func() error { _, err := c.ReadFile(ctx, "vm", "etc/passwd"); return err }(),
		"WriteFile relative": c.WriteFile(ctx, "vm", "notes", nil, 0o644),
		"WriteFile dir":      c.WriteFile(ctx, "vm", "/root/", nil, 0o644),
		"CopyIn relative":    c.CopyIn(ctx, "vm", []string{"."}, "root", client.CopyInOptions{}),
		"CopyIn nothing":     c.CopyIn(ctx, "vm", nil, "/root", client.CopyInOptions{}),
		"CopyIn both":        c.CopyIn(ctx, "vm", []string{"."}, "/root", client.CopyInOptions{Tar: strings.NewReader("")}),
		"CopyOut root":       c.CopyOut(ctx, "vm", "/", t.TempDir(), client.CopyOutOptions{}),
		"CopyOut relative":   c.CopyOut(ctx, "vm", "root/x", t.TempDir(), client.CopyOutOptions{}),
		"Exec no argv":       func() error { _, err := c.Exec(ctx, "vm", client.Command{}); return err }(),
	} {
		if err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if n := len(f.requests()); n != 0 {
		t.Fatalf("%d requests reached the daemon", n)
	}
}

// Exec passes the command's fields through and returns the exit status with a nil error.
func TestExecStreamsAndExitCode(t *testing.T) {
	f, sock := serveFakeGuest(t, func(fw *agent.FrameWriter) {
		_ = fw.WriteFrame(agent.FrameStdout, []byte("out"))
		_ = fw.WriteFrame(agent.FrameStderr, []byte("err"))
		exitFrame(fw, 3)
	})
	var out, errb strings.Builder
	st, err := newClient(t, sock).Exec(context.Background(), "vm", client.Command{Argv: []string{"prog", "a b"},
		Env: []string{"K=V"}, Dir: "/tmp", Stdout: &out, Stderr: &errb})
	if err != nil || st.Code != 3 || out.String() != "out" || errb.String() != "err" {
		t.Fatalf("Exec: status %+v err %v stdout %q stderr %q", st, err, out.String(), errb.String())
	}
	r := f.requests()[0]
	if r.Name != "vm" || !slices.Equal(r.Argv, []string{"prog", "a b"}) || !slices.Equal(r.Env, []string{"K=V"}) || r.Cwd != "/tmp" {
		t.Fatalf("request %+v", r)
	}
}

// A socket in a directory other users can write is refused before a byte is sent.
func TestUnsafeSocketRefused(t *testing.T) {
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "banger.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan struct{}, 1)
	go func() {
		if c, err := ln.Accept(); err == nil {
			accepted <- struct{}{}
			c.Close()
		}
	}()
	_, err = newClient(t, sock).Status(context.Background())
	if client.ErrorCodeOf(err) != client.CodeUnsafeSocket {
		t.Fatalf("status through a world-writable directory: %v, want %s", err, client.CodeUnsafeSocket)
	}
	select {
	case <-accepted:
		t.Fatal("the client connected to the unsafe socket")
	default:
	}
}

// No daemon: a typed error the caller can branch on, naming the socket.
func TestNoDaemon(t *testing.T) {
	dir := t.TempDir()
	os.Chmod(dir, 0o700)
	sock := filepath.Join(dir, "none.sock")
	_, err := newClient(t, sock).VMs(context.Background())
	if !client.IsDaemonNotRunning(err) || !strings.Contains(err.Error(), sock) {
		t.Fatalf("VMs with no daemon: %v", err)
	}
	var e *client.Error
	if !errors.As(err, &e) || e.Hint == "" {
		t.Fatalf("no hint in %#v", err)
	}
}

// The dialer's own failure reaches the caller.
func TestDialerErrorSurfaces(t *testing.T) {
	boom := errors.New("ssh: connect to host build-box: connection timed out")
	c, err := client.New(client.WithTarget("ssh://build-box"), client.WithDialer(func(context.Context) (net.Conn, error) { return nil, boom }))
	if err != nil {
		t.Fatal(err)
	}
	if c.Target() != "ssh://build-box" {
		t.Fatalf("target %q", c.Target())
	}
	if _, err := c.Status(context.Background()); !errors.Is(err, boom) || !strings.Contains(err.Error(), "ssh://build-box") {
		t.Fatalf("status through a failing dialer: %v", err)
	}
}

// Against the real in-process daemon: codes for missing things, and Fork's snapshot
// failure is its error, not a ForkError.
func TestErrorsFromTheDaemon(t *testing.T) {
	c, err := client.Default()
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := c.InspectSnapshot(ctx, "nope"); !client.IsNotFound(err) {
		t.Fatalf("inspect missing snapshot: %v", err)
	}
	if err := c.RemoveVM(ctx, client.VMRemoveRequest{Name: "nope"}); !client.IsNotFound(err) {
		t.Fatalf("remove missing VM: %v", err)
	}
	if _, err := c.CreateVM(ctx, client.VMCreateRequest{Name: "Bad_Name"}, nil); !client.IsBadRequest(err) {
		t.Fatalf("create with a bad name: %v", err)
	}
	_, err = c.Fork(ctx, "nope", "snap", []string{"a", "b"}, nil)
	var fe *client.ForkError
	if !client.IsNotFound(err) || errors.As(err, &fe) {
		t.Fatalf("fork of a missing VM: %v", err)
	}
	if _, err := c.AddPorts(ctx, "nope", "8080"); !client.IsNotFound(err) {
		t.Fatalf("ports of a missing VM: %v", err)
	}
}

// The state constants are the store's states.
func TestStatesMatchTheStore(t *testing.T) {
	var want []string
	for _, s := range store.VMStates() {
		want = append(want, string(s))
	}
	got := []string{client.StateCreated, client.StateStarting, client.StateRunning, client.StateStopping,
		client.StateStopped, client.StatePaused, client.StateCrashed, client.StateError}
	slices.Sort(want)
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Fatalf("client states %v, store states %v", got, want)
	}
}
