package helper

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"net/netip"
)

// rawCall sends one line and reads one response line.
func rawCall(t testing.TB, socket, line string) Response {
	t.Helper()
	c, err := net.Dial("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	// A refused peer gets its answer before it writes, and the write may then fail: the
	// answer is still there to read.
	_, _ = io.WriteString(c, line+"\n")
	resp, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatalf("read response to %s: %v", line, err)
	}
	var r Response
	if err := json.Unmarshal([]byte(resp), &r); err != nil {
		t.Fatalf("response %q: %v", resp, err)
	}
	return r
}

// serve starts a helper server on a socket in a fresh root-owned 0755 directory.
func serve(t testing.TB, o *Ops, log *slog.Logger) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "banger-helper-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	socket := filepath.Join(dir, "helper.sock")
	srv, err := Listen(socket, o, log)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	return socket
}

// snapshot is everything a refused request must leave unchanged.
func snapshot(t testing.TB, o *Ops) string {
	t.Helper()
	devs := do(t, o, Request{Op: OpList}).Devices
	st := do(t, o, Request{Op: OpStatus}).Status
	b, _ := json.Marshal([]any{devs, st})
	return string(b)
}

func TestRefusedRequestsChangeNothing(t *testing.T) {
	needRoot(t)
	ns := newNS(t)
	o := newTestOps(t, ns, os.Getuid(), true)
	do(t, o, Request{Op: OpEnsureBridge})
	do(t, o, Request{Op: OpCreateTAP, Name: "tap-pool-0"})
	var logs strings.Builder
	socket := serve(t, o, slog.New(slog.NewTextHandler(&syncWriter{w: &logs}, nil)))
	before := snapshot(t, o)

	cases := []struct{ name, line, want string }{
		{"non-banger name", `{"op":"create_tap","name":"eth0"}`, `"eth0" is not a banger TAP name`},
		{"delete non-banger", `{"op":"delete_tap","name":"banger0"}`, `"banger0" is not a banger TAP name`},
		{"injected name", `{"op":"create_tap","name":"bgr-a/../x"}`, `is not a banger TAP name`},
		{"pool name with letters", `{"op":"create_tap","name":"tap-pool-x"}`, `is not a banger TAP name`},
		{"address outside subnet", `{"op":"create_tap","name":"bgr-abc","ip":"10.99.0.5"}`, `outside the subnet 10.213.66.0/24`},
		{"gateway address", `{"op":"create_tap","name":"bgr-abc","ip":"10.213.66.1"}`, `network, gateway or broadcast`},
		{"not an address", `{"op":"create_tap","name":"bgr-abc","ip":"ten"}`, `is not an address`},
		{"other subnet", `{"op":"ensure_nat","subnet":"10.99.0.0/24"}`, `is not the helper's subnet`},
		{"malformed JSON", `{"op": "list"`, `malformed request`},
		{"unknown field", `{"op":"list","cmd":"rm -rf /"}`, `malformed request: json: unknown field "cmd"`},
		{"trailing data", `{"op":"list"} {"op":"list"}`, `trailing data`},
		{"unknown op", `{"op":"exec"}`, `unknown operation "exec"`},
		{"no op", `{}`, `request has no op`},
		{"field not taken", `{"op":"list","name":"tap-pool-0"}`, `got fields it does not take`},
		{"too long", `{"op":"list","name":"` + strings.Repeat("a", MaxRequestBytes) + `"}`, `longer than`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := rawCall(t, socket, tc.line)
			if r.OK || r.Code != CodeRefused || !strings.Contains(r.Error, tc.want) || r.Hint == "" {
				t.Errorf("got %+v, want a refusal containing %q with a hint", r, tc.want)
			}
		})
	}
	if after := snapshot(t, o); after != before {
		t.Errorf("refused requests changed the network:\nbefore %s\nafter  %s", before, after)
	}
	if n := strings.Count(logs.String(), "refused request"); n < len(cases) {
		t.Errorf("%d refusals logged, want %d:\n%s", n, len(cases), logs.String())
	}
	// A well-formed request on the same socket still works.
	if r := rawCall(t, socket, `{"op":"list"}`); !r.OK {
		t.Errorf("list after refusals: %+v", r)
	}
}

type syncWriter struct {
	mu chan struct{}
	w  io.Writer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	if s.mu == nil {
		s.mu = make(chan struct{}, 1)
	}
	s.mu <- struct{}{}
	defer func() { <-s.mu }()
	return s.w.Write(p)
}

// TestPeerCredCheck needs no root: both ends of a socketpair carry this process's uid.
func TestPeerCredCheck(t *testing.T) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fds[0]), "a")
	defer f.Close()
	defer unix.Close(fds[1])
	fc, err := net.FileConn(f)
	if err != nil {
		t.Fatal(err)
	}
	defer fc.Close()
	uc := fc.(*net.UnixConn)
	if cred, err := CheckPeer(uc, os.Getuid()); err != nil || int(cred.Pid) != os.Getpid() {
		t.Fatalf("own uid refused: %v (%+v)", err, cred)
	}
	_, err = CheckPeer(uc, os.Getuid()+1)
	if err == nil || !strings.Contains(err.Error(), "may not use the banger helper") || !strings.Contains(err.Error(), "--owner-uid") {
		t.Fatalf("other uid: %v", err)
	}
}

func TestValidationWithoutRoot(t *testing.T) {
	o, err := NewOps(NetConfig{OwnerUID: 1000, Bridge: "banger0", Subnet: testSubnet}, -1)
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	for _, req := range []Request{
		{Op: OpCreateTAP, Name: "veth0"}, {Op: OpDeleteTAP, Name: "lo"}, {Op: OpCreateTAP, Name: "bgr-TOOLONGNAME123"},
		{Op: OpCreateTAP, Name: "bgr-x", IP: "10.213.66.255"}, {Op: OpRemoveNAT, Subnet: "0.0.0.0/0"}, {Op: "teardown"},
	} {
		if r := o.Do(req); r.OK || r.Code != CodeRefused {
			t.Errorf("%+v = %+v, want refused", req, r)
		}
	}
	for _, bad := range []NetConfig{
		{OwnerUID: -1, Bridge: "banger0", Subnet: testSubnet},
		{OwnerUID: 1, Bridge: "tap-pool-1", Subnet: testSubnet},
		{OwnerUID: 1, Bridge: "banger0", Subnet: netip.MustParsePrefix("10.213.66.5/24")},
		{OwnerUID: 1, Bridge: "banger0", Subnet: netip.MustParsePrefix("10.0.0.0/8")},
	} {
		if err := bad.Validate(); err == nil {
			t.Errorf("%+v accepted", bad)
		}
	}
}

const childEnv = "BANGER_HELPER_TEST_CHILD"

// TestUnprivilegedClientEndToEnd runs the helper as root (in a test namespace) and clients
// as unprivileged uids in separate processes, as the daemon runs in CI: the owner may create
// a TAP (which it then owns), any other uid is refused.
func TestUnprivilegedClientEndToEnd(t *testing.T) {
	needRoot(t)
	const owner, stranger = 65534, 65533
	ns := newNS(t)
	o := newTestOps(t, ns, owner, true)
	socket := serve(t, o, nil)
	if fi, err := os.Stat(socket); err != nil || fi.Mode().Perm() != 0o600 || fi.Sys().(*syscall.Stat_t).Uid != owner {
		t.Fatalf("socket %v (%v): want mode 0600 owned by %d", fi.Mode(), err, owner)
	}
	// The test binary must be reachable by the unprivileged uids: copy it next to the socket.
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(filepath.Dir(socket), "helper.test")
	data, err := os.ReadFile(exe)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, data, 0o755); err != nil {
		t.Fatal(err)
	}
	run := func(uid uint32, mode string) string {
		cmd := exec.Command(bin, "-test.run=^TestHelperChild$", "-test.v")
		cmd.Env = append(os.Environ(), childEnv+"="+mode, "BANGER_HELPER_TEST_SOCKET="+socket)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid}}
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("child as uid %d (%s): %v\n%s", uid, mode, err, out)
		}
		return string(out)
	}
	run(owner, "owner")
	run(stranger, "stranger")
	// The socket's mode stopped the stranger at connect(). Open the door to prove the second
	// lock, the SO_PEERCRED check, refuses it on its own.
	if err := os.Chmod(socket, 0o666); err != nil {
		t.Fatal(err)
	}
	run(stranger, "stranger-open")
	devs := deviceMap(t, o)
	if d := devs["tap-pool-0"]; d.Owner != owner || d.Master != "banger0" {
		t.Fatalf("the owner's TAP = %+v, want owned by %d on banger0", d, owner)
	}
	if _, ok := devs["tap-pool-1"]; ok {
		t.Fatal("a stranger's request created tap-pool-1")
	}
}

// TestHelperChild is the unprivileged side of TestUnprivilegedClientEndToEnd.
func TestHelperChild(t *testing.T) {
	mode := os.Getenv(childEnv)
	if mode == "" {
		t.Skip("only runs as the child process of TestUnprivilegedClientEndToEnd")
	}
	socket := os.Getenv("BANGER_HELPER_TEST_SOCKET")
	switch mode {
	case "owner":
		if os.Getuid() == 0 {
			t.Fatal("child runs as root")
		}
		if r := rawCall(t, socket, `{"op":"create_tap","name":"tap-pool-0"}`); !r.OK {
			t.Fatalf("owner create_tap: %+v", r)
		}
		if r := rawCall(t, socket, `{"op":"list"}`); !r.OK || len(r.Devices) != 2 {
			t.Fatalf("owner list: %+v", r)
		}
		if r := rawCall(t, socket, `{"op":"create_tap","name":"eth0"}`); r.OK || r.Code != CodeRefused {
			t.Fatalf("owner with a bad name: %+v", r)
		}
	case "stranger":
		_, err := net.Dial("unix", socket)
		if err == nil || !strings.Contains(err.Error(), "permission denied") {
			t.Fatalf("stranger connected to a 0600 socket of another uid: %v", err)
		}
	case "stranger-open":
		r := rawCall(t, socket, `{"op":"create_tap","name":"tap-pool-1"}`)
		if r.OK || r.Code != CodeRefused {
			t.Fatalf("stranger: %+v", r)
		}
		t.Logf("refused as expected: %s", r.Error)
	}
}
