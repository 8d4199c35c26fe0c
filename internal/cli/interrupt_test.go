package cli

// Issue 15: Ctrl-C during `vm run` printed "banger: context canceled" and exited 1. It must
// say what was interrupted and what was cleaned, and exit 130 like a shell does.

import (
	"encoding/json"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/banger-vm/banger/internal/api"
)

// interruptWhen sends this process SIGINT once arrived is closed (the CLI is then inside the
// call the test wants interrupted, with its signal handler installed).
func interruptWhen(t *testing.T, arrived <-chan struct{}) {
	t.Helper()
	go func() {
		<-arrived
		_ = syscall.Kill(os.Getpid(), syscall.SIGINT)
	}()
}

// hangGuard fails the test instead of hanging it when ch never closes.
func hangGuard(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(30 * time.Second):
		t.Fatalf("%s never happened", what)
	}
}

// seenWriter collects what the CLI writes and closes seen once it has written want.
type seenWriter struct {
	mu   sync.Mutex
	buf  strings.Builder
	want string
	seen chan struct{}
}

func (s *seenWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.buf.Write(p)
	if s.want != "" && strings.Contains(s.buf.String(), s.want) {
		close(s.seen)
		s.want = ""
	}
	return len(p), nil
}

func (s *seenWriter) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.String()
}

func TestVMRunCtrlCDuringCreate(t *testing.T) {
	w := newCLIWorld(t)
	hungUp := make(chan struct{})
	serveFake(t, w.socket, map[string]http.HandlerFunc{
		"POST /v1/vms/create": func(rw http.ResponseWriter, r *http.Request) {
			streamEvents(rw, api.StreamEvent{Progress: &api.Progress{Stage: "disks", Message: "work disk ready"}},
				api.StreamEvent{Progress: &api.Progress{Stage: "agent", Message: "waiting for the guest agent"}})
			<-r.Context().Done() // a slow boot, until the CLI hangs up
			close(hungUp)
		},
	})
	// Interrupt once the CLI has shown the stage it is in.
	stderr := &seenWriter{want: "waiting for the guest agent", seen: make(chan struct{})}
	w.env.Stderr = stderr
	interruptWhen(t, stderr.seen)
	code := w.run("vm", "run", "dev", "--", "make", "test")
	hangGuard(t, hungUp, "the CLI hanging up on the daemon")
	msg := stderr.String()
	if code != 130 {
		t.Fatalf("exit %d, want 130; stderr:\n%s", code, msg)
	}
	for _, s := range []string{"interrupted", `VM "dev"`, "at stage agent", "the daemon removes"} {
		if !strings.Contains(msg, s) {
			t.Errorf("stderr lacks %q:\n%s", s, msg)
		}
	}
	if strings.Contains(msg, "context canceled") {
		t.Errorf("stderr has the bare context error:\n%s", msg)
	}
}

func TestVMRunCtrlCDuringCommand(t *testing.T) {
	for _, keep := range []bool{false, true} {
		name := "throwaway"
		if keep {
			name = "keep"
		}
		t.Run(name, func(t *testing.T) {
			w := newCLIWorld(t)
			arrived := make(chan struct{})
			var mu sync.Mutex
			var calls []string
			record := func(s string) { mu.Lock(); calls = append(calls, s); mu.Unlock() }
			vm := api.VM{ID: "0123456789ab", Name: "dev", State: "running", Driver: "qemu"}
			serveFake(t, w.socket, map[string]http.HandlerFunc{
				"POST /v1/vms/create": func(rw http.ResponseWriter, _ *http.Request) {
					b, _ := json.Marshal(vm)
					streamEvents(rw, api.StreamEvent{Result: b})
				},
				"POST /v1/vms/exec": func(rw http.ResponseWriter, _ *http.Request) {
					conn, bw, err := rw.(http.Hijacker).Hijack()
					if err != nil {
						return
					}
					defer conn.Close()
					_, _ = bw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: banger-exec.v1\r\n\r\n")
					_ = bw.Flush()
					close(arrived)
					_, _ = io.Copy(io.Discard, conn) // the command runs until the CLI hangs up
				},
				"POST /v1/vms/stop": func(rw http.ResponseWriter, _ *http.Request) {
					record("stop")
					_ = json.NewEncoder(rw).Encode(vm)
				},
				"POST /v1/vms/rm": func(rw http.ResponseWriter, _ *http.Request) {
					record("rm")
					_, _ = io.WriteString(rw, "{}")
				},
			})
			interruptWhen(t, arrived)
			args := []string{"vm", "run", "dev", "--", "sleep", "1000"}
			if keep {
				args = []string{"vm", "run", "dev", "--keep", "--", "sleep", "1000"}
			}
			code := w.run(args...)
			msg := w.stderr.String()
			if code != 130 {
				t.Fatalf("exit %d, want 130; stderr:\n%s", code, msg)
			}
			want := []string{"interrupted", "sleep", "killed", "VM dev was removed"}
			wantCalls := "stop,rm"
			if keep {
				want = []string{"interrupted", "sleep", "killed", "VM dev is kept", "banger vm rm --force dev"}
				wantCalls = ""
			}
			for _, s := range want {
				if !strings.Contains(msg, s) {
					t.Errorf("stderr lacks %q:\n%s", s, msg)
				}
			}
			mu.Lock()
			defer mu.Unlock()
			if got := strings.Join(calls, ","); got != wantCalls {
				t.Errorf("daemon calls after the interrupt: %q, want %q", got, wantCalls)
			}
		})
	}
}
