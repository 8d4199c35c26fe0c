package cli

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/banger-vm/banger/internal/api"
	"github.com/banger-vm/banger/internal/paths"
)

// startZombie starts a child that exits at once and is not reaped until the test ends: the
// state a detached daemon is in between its exit and a slow PID 1 reaping it.
func startZombie(t *testing.T) int {
	t.Helper()
	cmd := exec.Command("true")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Wait() })
	pid := cmd.Process.Pid
	deadline := time.Now().Add(10 * time.Second)
	for {
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			t.Fatalf("the unreaped child %d has no /proc entry: %v", pid, err)
		}
		if processState(string(stat)) == "Z" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("child %d did not become a zombie: %s", pid, stat)
		}
		time.Sleep(5 * time.Millisecond)
	}
	// What made `daemon stop` wait: a zombie still answers kill(pid, 0).
	if err := syscall.Kill(pid, 0); err != nil {
		t.Fatalf("kill(%d, 0) on a zombie: %v", pid, err)
	}
	return pid
}

func TestProcessExited(t *testing.T) {
	live := exec.Command("sleep", "60")
	if err := live.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = live.Process.Kill(); _ = live.Wait() }()
	if processExited(live.Process.Pid) {
		t.Errorf("a running process (sleep, pid %d) counts as exited", live.Process.Pid)
	}
	if z := startZombie(t); !processExited(z) {
		t.Errorf("an exited, unreaped process (pid %d) does not count as exited", z)
	}
	reaped := exec.Command("true")
	if err := reaped.Run(); err != nil {
		t.Fatal(err)
	}
	if !processExited(reaped.Process.Pid) {
		t.Errorf("a reaped process (pid %d) does not count as exited", reaped.Process.Pid)
	}
}

// TestDaemonStopDoesNotWaitForTheReap: a daemon that shut down but whose parent has not
// reaped it yet is stopped; `daemon stop` must return at once instead of waiting for the
// reap (or, as before, until its timeout: shutdown_timeout + 5 s).
func TestDaemonStopDoesNotWaitForTheReap(t *testing.T) {
	pid := startZombie(t)
	home := t.TempDir()
	rt, err := os.MkdirTemp("", "bgd") // short: sun_path is 108 bytes
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(rt)
	socket := filepath.Join(rt, "banger", "banger.sock")
	if err := os.MkdirAll(filepath.Dir(socket), 0o700); err != nil {
		t.Fatal(err)
	}
	// A stand-in daemon: its status names the zombie, and it accepts the shutdown.
	var shutdowns atomic.Int32
	mux := http.NewServeMux()
	mux.HandleFunc("GET /"+api.Version+"/status", func(w http.ResponseWriter, _ *http.Request) {
		_ = json.NewEncoder(w).Encode(api.StatusResponse{Version: "test", PID: pid})
	})
	mux.HandleFunc("POST /"+api.Version+"/shutdown", func(w http.ResponseWriter, _ *http.Request) {
		shutdowns.Add(1)
		_, _ = w.Write([]byte("{}"))
	})
	l, err := net.Listen("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: mux}
	go func() { _ = srv.Serve(l) }()
	defer srv.Close()

	cfgDir := filepath.Join(home, "cfg", "banger")
	if err := os.MkdirAll(cfgDir, 0o700); err != nil {
		t.Fatal(err)
	}
	// A short timeout, so that the old behaviour fails in 6 s rather than 15 s.
	if err := os.WriteFile(filepath.Join(cfgDir, "config.toml"), []byte("[daemon]\nshutdown_timeout = \"1s\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var out, errb bytes.Buffer
	env := Env{Stdout: &out, Stderr: &errb, Getenv: func(string) string { return "" },
		Paths: paths.Env{Home: home, XDGRuntimeDir: rt, XDGConfigHome: filepath.Join(home, "cfg"), UID: os.Getuid()}}
	start := time.Now()
	code := Execute(env, []string{"daemon", "stop"})
	took := time.Since(start)
	if code != 0 {
		t.Fatalf("daemon stop: exit %d after %s\nstdout: %s\nstderr: %s", code, took, out.String(), errb.String())
	}
	if shutdowns.Load() != 1 {
		t.Errorf("daemon stop sent %d shutdown requests, want 1", shutdowns.Load())
	}
	if want := fmt.Sprintf("stopped banger daemon (pid %d)", pid); !strings.Contains(out.String(), want) {
		t.Errorf("stdout %q does not say %q", out.String(), want)
	}
	// Generous for a loaded machine; waiting for the reap would never end here (the test
	// reaps the child only at cleanup).
	if took > 2*time.Second {
		t.Errorf("daemon stop took %s for a daemon that had already exited", took)
	}
	t.Logf("daemon stop of an exited, unreaped daemon took %s", took)
}
