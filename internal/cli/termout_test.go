package cli

// Issue 14 item 7: guest (and image) bytes reach the user's terminal through vm logs, console
// tails in errors and image-build step output. On a terminal the CLI strips control
// sequences (a guest could set the window title, write the clipboard with OSC 52, clear the
// screen); --raw on vm logs keeps the bytes. These tests give the real CLI a real pty.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/creack/pty"

	"github.com/banger-vm/banger/internal/api"
)

// hostileGuestOutput is what a hostile guest writes to its console, between harmless text.
const hostileGuestOutput = "boot ok\n" +
	"\x1b]0;pwned\x07" + // window title
	"\x1b]52;c;cm0gLXJmIH4K\x07" + // OSC 52: set the clipboard
	"\x1b[2J\x1b[H" + // CSI: clear screen, cursor home
	"\x9b31m" + // 8-bit C1 CSI
	"\xc2\x9b32m" + // C1 CSI encoded as UTF-8 (U+009B)
	"\xc2\x9d0;title\xc2\x9c" + // C1 OSC ... ST, UTF-8
	"\x1bP1$qm\x1b\\" + // DCS query
	"\a\b\x7f" + // bell, backspace, DEL
	"after\tend\r\n"

// controlsIn lists the terminal controls left in b (besides \n, \r, \t).
func controlsIn(b []byte) []string {
	var found []string
	for len(b) > 0 {
		r, n := utf8.DecodeRune(b)
		switch {
		case r == utf8.RuneError && n == 1 && b[0] >= 0x80 && b[0] <= 0x9f:
			found = append(found, "raw C1 byte")
		case r == '\n' || r == '\r' || r == '\t':
		case r < 0x20 || (r >= 0x7f && r <= 0x9f):
			found = append(found, fmt.Sprintf("%U", r))
		}
		b = b[n:]
	}
	return found
}

func mustJSON(v any) []byte {
	b, _ := json.Marshal(v)
	return b
}

// withPTY runs fn with a pty's terminal end and returns everything the terminal received.
func withPTY(t *testing.T, fn func(tty *os.File)) []byte {
	t.Helper()
	master, tty, err := pty.Open()
	if err != nil {
		t.Skipf("no pty available (/dev/ptmx): %v", err)
	}
	defer master.Close()
	got := make(chan []byte, 1)
	go func() {
		b, _ := io.ReadAll(master) // ends with EIO once the terminal end is closed
		got <- b
	}()
	fn(tty)
	_ = tty.Close()
	return <-got
}

func logsRoute(body string) map[string]http.HandlerFunc {
	return map[string]http.HandlerFunc{"GET /v1/vms/logs": func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, body)
	}}
}

func TestGuestOutputOnATerminalIsStripped(t *testing.T) {
	cases := []struct {
		name   string
		routes map[string]http.HandlerFunc
		args   []string
		stderr bool // the guest bytes go to stderr
	}{
		{name: "vm logs", routes: logsRoute(hostileGuestOutput), args: []string{"vm", "logs", "dev"}},
		{
			name:   "console tail in an error",
			stderr: true,
			args:   []string{"vm", "start", "dev"},
			routes: map[string]http.HandlerFunc{
				"GET /v1/vms/inspect": func(w http.ResponseWriter, _ *http.Request) { _ = json.NewEncoder(w).Encode(api.VM{Name: "dev"}) },
				"POST /v1/vms/start": func(w http.ResponseWriter, _ *http.Request) {
					streamEvents(w, api.StreamEvent{Error: &api.Error{Code: api.CodeUnavailable,
						Message: "start VM \"dev\" failed at stage agent: no answer; console:\n" + hostileGuestOutput,
						Hint:    "see the console \x1b]0;hint\x07"}})
				},
			},
		},
		{
			name:   "image build step output",
			stderr: true,
			args:   []string{"image", "build", "new", "--from", "base"},
			routes: map[string]http.HandlerFunc{
				"POST /v1/images/build": func(w http.ResponseWriter, _ *http.Request) {
					var evs []api.StreamEvent
					for _, line := range strings.SplitAfter(hostileGuestOutput, "\n") {
						evs = append(evs, api.StreamEvent{Progress: &api.Progress{Stage: "run setup.sh \x1b[2J", Message: strings.TrimSuffix(line, "\n")}})
					}
					evs = append(evs, api.StreamEvent{Result: mustJSON(api.Image{Name: "new"})})
					streamEvents(w, evs...)
				},
			},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			w := newCLIWorld(t)
			serveFake(t, w.socket, tc.routes)
			out := withPTY(t, func(tty *os.File) {
				if tc.stderr {
					w.env.Stderr = tty
				} else {
					w.env.Stdout = tty
				}
				w.run(tc.args...)
			})
			if bad := controlsIn(out); len(bad) > 0 {
				t.Fatalf("terminal received controls %v:\n%q", bad, out)
			}
			for _, s := range []string{"boot ok", "after\tend"} {
				if !bytes.Contains(out, []byte(s)) {
					t.Errorf("terminal lacks the harmless text %q:\n%q", s, out)
				}
			}
		})
	}
}

func TestVMLogsRawKeepsBytes(t *testing.T) {
	w := newCLIWorld(t)
	serveFake(t, w.socket, logsRoute(hostileGuestOutput))
	var code int
	out := withPTY(t, func(tty *os.File) {
		w.env.Stdout = tty
		code = w.run("vm", "logs", "--raw", "dev")
	})
	if code != 0 {
		t.Fatalf("exit %d; stderr: %s", code, w.stderr)
	}
	if !bytes.Contains(out, []byte("\x1b]52;c;cm0gLXJmIH4K\x07")) || !bytes.Contains(out, []byte("\xc2\x9b32m")) {
		t.Fatalf("--raw changed the guest's bytes:\n%q", out)
	}
}

// Not a terminal (a pipe, a file): the bytes are passed on as they are, for tools.
func TestVMLogsToAPipeKeepsBytes(t *testing.T) {
	w := newCLIWorld(t)
	serveFake(t, w.socket, logsRoute(hostileGuestOutput))
	if code := w.run("vm", "logs", "dev"); code != 0 {
		t.Fatalf("exit %d; stderr: %s", code, w.stderr)
	}
	if w.stdout.String() != hostileGuestOutput {
		t.Fatalf("vm logs into a buffer changed the bytes: %q", w.stdout)
	}
}
