package agentserver

import (
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/banger-vm/banger/internal/agent"
	"github.com/banger-vm/banger/internal/sshkeys"
)

// TestIdentityRejectsBadRequests: a request with any bad field (hostile hostnames, keys,
// addresses, sizes) is refused whole, before anything changes. Only refusals are sent
// here: a valid request would set this host's clock and hostname (the real guest test,
// TestSnapshotAndClones in internal/vmm/qemu, sends valid ones).
func TestIdentityRejectsBadRequests(t *testing.T) {
	root := t.TempDir()
	s := New(Config{IdentityRoot: root, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	hostBefore, _ := os.Hostname()
	priv, pub, err := sshkeys.NewKey("banger vm clone-1")
	if err != nil {
		t.Fatal(err)
	}
	good := func() agent.IdentityRequest {
		return agent.IdentityRequest{
			Hostname: "clone-1", Entropy: bytes.Repeat([]byte{7}, 64), UnixNano: time.Now().UnixNano(),
			Network:    &agent.IdentityNetwork{Address: "172.30.0.5/24", Gateway: "172.30.0.1", DNS: []string{"172.30.0.1"}, MAC: "02:bb:00:00:00:05"},
			SSHHostKey: &agent.SSHHostKey{Private: string(priv), Public: string(pub)},
		}
	}
	// Each case below breaks one field of a request that passes the checks.
	if _, err := checkIdentity(good()); err != nil {
		t.Fatalf("the good request is refused: %v", err)
	}
	cases := []struct {
		name   string
		mutate func(*agent.IdentityRequest)
		want   string
	}{
		{"hostname with a shell", func(r *agent.IdentityRequest) { r.Hostname = "x;reboot" }, "hostname"},
		{"hostname with a newline", func(r *agent.IdentityRequest) { r.Hostname = "a\n127.0.0.1 evil" }, "hostname"},
		{"hostname too long", func(r *agent.IdentityRequest) { r.Hostname = strings.Repeat("a", 64) }, "hostname"},
		{"no entropy", func(r *agent.IdentityRequest) { r.Entropy = nil }, "entropy"},
		{"too much entropy", func(r *agent.IdentityRequest) { r.Entropy = make([]byte, agent.MaxIdentityEntropy+1) }, "entropy"},
		{"clock at zero", func(r *agent.IdentityRequest) { r.UnixNano = 0 }, "wall clock"},
		{"IPv6 address", func(r *agent.IdentityRequest) { r.Network.Address = "2001:db8::5/64" }, "IPv4 CIDR"},
		{"address without prefix", func(r *agent.IdentityRequest) { r.Network.Address = "172.30.0.5" }, "IPv4 CIDR"},
		{"bad gateway", func(r *agent.IdentityRequest) { r.Network.Gateway = "gw" }, "gateway"},
		{"DNS that is a path", func(r *agent.IdentityRequest) { r.Network.DNS = []string{"../../etc/passwd"} }, "DNS"},
		{"too many DNS", func(r *agent.IdentityRequest) {
			r.Network.DNS = strings.Split(strings.Repeat("1.1.1.1,", 9)[:8*9-1], ",")
		}, "DNS servers"},
		{"multicast MAC", func(r *agent.IdentityRequest) { r.Network.MAC = "01:00:5e:00:00:01" }, "MAC"},
		{"private key not PEM", func(r *agent.IdentityRequest) { r.SSHHostKey.Private = "cat /etc/shadow" }, "private key"},
		{"two PEM blocks", func(r *agent.IdentityRequest) { r.SSHHostKey.Private += r.SSHHostKey.Private }, "private key"},
		{"public key of two lines", func(r *agent.IdentityRequest) {
			r.SSHHostKey.Public += "\nssh-ed25519 AAAA other"
		}, "public key"},
		{"public key of another type", func(r *agent.IdentityRequest) { r.SSHHostKey.Public = "ssh-rsa AAAA x" }, "public key"},
		{"huge key", func(r *agent.IdentityRequest) { r.SSHHostKey.Private = strings.Repeat("A", 5000) }, "too large"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			req := good()
			c.mutate(&req)
			body, _ := json.Marshal(req)
			rec := do(t, s, "POST", agent.PathIdentity, bytes.NewReader(body), map[string]string{"Content-Type": "application/json"})
			wantError(t, rec, 400, agent.CodeBadRequest)
			if !strings.Contains(rec.Body.String(), c.want) {
				t.Errorf("error %s lacks %q", rec.Body, c.want)
			}
		})
	}
	if ents, _ := os.ReadDir(root); len(ents) != 0 {
		t.Errorf("refused requests wrote %v", ents)
	}
	if h, _ := os.Hostname(); h != hostBefore {
		t.Errorf("hostname changed to %q", h)
	}
	wantError(t, do(t, s, "GET", agent.PathIdentity, nil, nil), 405, agent.CodeMethodNotAllowed)
}

// TestListeningSSHDs: sshd's PID file is trusted only when it names a listening sshd;
// otherwise (a stale, hostile or garbage file) the process table decides.
func TestListeningSSHDs(t *testing.T) {
	root, proc := t.TempDir(), t.TempDir()
	ps := func(pid, comm, ppid string) {
		dir := proc + "/" + pid
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		os.WriteFile(dir+"/comm", []byte(comm+"\n"), 0o644)
		os.WriteFile(dir+"/stat", []byte(pid+" ("+comm+") S "+ppid+" 1 1 0"), 0o644)
	}
	ps("1", "systemd", "0")
	ps("40", "sshd", "1")      // the listener
	ps("41", "sshd", "40")     // a session's child
	ps("50", "bash", "1")      // not sshd
	ps("60", "sshd) S 1", "7") // a comm crafted to fake its ppid
	s := New(Config{IdentityRoot: root, ProcDir: proc, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	os.MkdirAll(root+"/run", 0o755)
	for _, pidFile := range []string{"", "40\n", "50\n", "41", "1", "../../1", "garbage", strings.Repeat("4", 100)} {
		if pidFile != "" {
			os.WriteFile(root+"/run/sshd.pid", []byte(pidFile), 0o644)
		}
		if got := s.listeningSSHDs(); len(got) != 1 || got[0] != 40 {
			t.Errorf("pid file %q: listeners %v, want [40]", pidFile, got)
		}
	}
}
