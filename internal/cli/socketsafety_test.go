package cli

// Issue 14 item 5: without XDG_RUNTIME_DIR the socket lives in /tmp/banger-<uid>, where
// another local user can pre-create it. The CLI must refuse a socket whose directory is not
// private to us, or whose listener is another user, before it sends a single byte (vm exec
// would send its arguments, -e values and stdin).

import (
	"bufio"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// execSecrets is what a hostile listener would harvest from `vm exec`.
var execSecrets = []string{"vm", "exec", "dev", "-e", "TOKEN=hunter2", "--", "cat"}

func TestCLIRefusesSocketDirNotPrivate(t *testing.T) {
	cases := []struct {
		name    string
		setup   func(t *testing.T, w *cliWorld) // leaves a listening fake daemon behind w.socket
		want    []string
		needRoo bool
	}{
		{
			name: "group and other bits",
			setup: func(t *testing.T, w *cliWorld) {
				if err := os.Chmod(w.runtimeDir, 0o755); err != nil {
					t.Fatal(err)
				}
			},
			want: []string{"mode 0755", "0700"},
		},
		{
			name:    "owned by another user",
			needRoo: true,
			setup: func(t *testing.T, w *cliWorld) {
				if err := os.Chown(w.runtimeDir, 65534, 65534); err != nil {
					t.Fatal(err)
				}
			},
			want: []string{"owned by uid 65534"},
		},
		{
			name: "symlink to another directory",
			setup: func(t *testing.T, w *cliWorld) {
				// The attacker's directory: private, ours even, but reached through a link.
				real := filepath.Join(filepath.Dir(w.runtimeDir), "elsewhere")
				if err := os.Rename(w.runtimeDir, real); err != nil { // the socket moves along
					t.Fatal(err)
				}
				if err := os.Symlink(real, w.runtimeDir); err != nil {
					t.Fatal(err)
				}
			},
			want: []string{"symlink"},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if tc.needRoo && os.Geteuid() != 0 {
				t.Skip("needs root to chown the socket directory to another uid (65534)")
			}
			w := newCLIWorld(t)
			// Listen first (through the directory, whatever it is), then make it hostile.
			fake := serveFake(t, w.socket, nil)
			tc.setup(t, w)
			w.env.Stdin = strings.NewReader("stdin secret")
			code := w.run(execSecrets...)
			if got := fake.received(); got != "" {
				t.Fatalf("the CLI sent %d bytes to a socket in an unsafe directory:\n%s", len(got), got)
			}
			if code == 0 {
				t.Fatalf("exit 0 against an unsafe socket directory; stderr: %s", w.stderr)
			}
			msg := w.stderr.String()
			for _, s := range append(tc.want, w.runtimeDir) {
				if !strings.Contains(msg, s) {
					t.Errorf("error lacks %q:\n%s", s, msg)
				}
			}
		})
	}
}

// TestCLITalksToItsOwnDaemon is the control: a private directory and our own listener work.
func TestCLITalksToItsOwnDaemon(t *testing.T) {
	w := newCLIWorld(t)
	fake := serveFake(t, w.socket, nil)
	if code := w.run("daemon", "status"); code != 0 {
		t.Fatalf("exit %d; stderr: %s", code, w.stderr)
	}
	if !strings.Contains(fake.received(), "GET /v1/status") || !strings.Contains(w.stdout.String(), "banger daemon test running") {
		t.Fatalf("status not asked or not printed: sent %q, printed %q", fake.received(), w.stdout)
	}
}

// peerChildEnv makes the test binary a fake daemon run as another user (see TestMain).
const peerChildEnv = "BANGER_TEST_PEER_LISTENER"

// TestCLIRefusesDaemonOfAnotherUser runs a fake daemon as uid 65534 on a socket inside our
// own private directory (the socket was bound by us, but listened on by the other user,
// which is who SO_PEERCRED reports), and checks the CLI hangs up without sending anything.
func TestCLIRefusesDaemonOfAnotherUser(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run the fake daemon as another uid (setuid child, uid 65534)")
	}
	w := newCLIWorld(t)
	fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	sock := os.NewFile(uintptr(fd), "socket")
	defer sock.Close()
	if err := syscall.Bind(fd, &syscall.SockaddrUnix{Name: w.socket}); err != nil {
		t.Fatal(err)
	}
	// The test binary sits in a 0700 build directory: give uid 65534 a copy it can run.
	exe := copyTestBinary(t)
	child := exec.Command(exe, "-test.run=^$")
	child.Env = append(os.Environ(), peerChildEnv+"=1")
	child.ExtraFiles = []*os.File{sock}
	child.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	child.Stderr = os.Stderr
	out, err := child.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(out)
	if line, err := br.ReadString('\n'); err != nil || line != "ready\n" {
		_ = child.Process.Kill()
		_ = child.Wait()
		t.Fatalf("fake daemon as uid 65534 did not start: %q %v", line, err)
	}
	w.env.Stdin = strings.NewReader("stdin secret")
	code := w.run(execSecrets...)
	_ = child.Process.Kill()
	rest, _ := io.ReadAll(br)
	_ = child.Wait()
	if len(rest) != 0 {
		t.Fatalf("the CLI sent data to a daemon run by uid 65534; it logged:\n%s", rest)
	}
	if code == 0 {
		t.Fatalf("exit 0 against another user's daemon; stderr: %s", w.stderr)
	}
	for _, s := range []string{w.socket, "uid 65534"} {
		if !strings.Contains(w.stderr.String(), s) {
			t.Errorf("error lacks %q:\n%s", s, w.stderr)
		}
	}
}

func copyTestBinary(t *testing.T) string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "bgrexe")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(dir, "cli.test")
	if err := os.WriteFile(dst, data, 0o755); err != nil {
		t.Fatal(err)
	}
	return dst
}
