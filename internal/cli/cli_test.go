package cli_test

// These tests drive the real banger binary as a user would: a foreground daemon stopped by
// SIGTERM, a daemon killed with -9 and replaced, detached start/stop, doctor's exit status
// and JSON, config show.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/banger-vm/banger/internal/api"
	"github.com/banger-vm/banger/internal/kvm"
)

var bangerBin string

func TestMain(m *testing.M) {
	if os.Getenv("BANGER_TEST_PEER_LISTENER") != "" {
		peerListenerMain()
		return
	}
	dir, err := os.MkdirTemp("", "banger-cli-test")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	bangerBin = filepath.Join(dir, "banger")
	if out, err := buildBanger(bangerBin); err != nil {
		fmt.Fprintf(os.Stderr, "build banger: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// buildBanger builds cmd/banger (static, with the extra go build flags) into out.
func buildBanger(out string, flags ...string) ([]byte, error) {
	args := append(append([]string{"build", "-o", out}, flags...), "../../cmd/banger")
	build := exec.Command("go", args...)
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	return build.CombinedOutput()
}

// sandbox is one user's banger world: its own HOME, XDG dirs and socket.
type sandbox struct {
	t      *testing.T
	env    []string
	socket string
	home   string
}

func newSandbox(t *testing.T) *sandbox {
	t.Helper()
	home := t.TempDir()
	rt, err := os.MkdirTemp("", "bgr") // short: socket paths are limited to 108 bytes
	if err != nil {
		t.Fatal(err)
	}
	s := &sandbox{t: t, home: home, socket: filepath.Join(rt, "banger", "banger.sock")}
	s.env = append(os.Environ(), "HOME="+home, "XDG_RUNTIME_DIR="+rt,
		"XDG_CONFIG_HOME="+filepath.Join(home, "cfg"), "XDG_DATA_HOME="+filepath.Join(home, "data"),
		"XDG_STATE_HOME="+filepath.Join(home, "state"), "XDG_CACHE_HOME="+filepath.Join(home, "cache"),
		"BANGER_CONFIG=")
	t.Cleanup(func() {
		// Whatever a test left running is stopped, so no daemon outlives the test.
		_, _, _ = s.run("daemon", "stop")
		os.RemoveAll(rt)
	})
	return s
}

func (s *sandbox) command(args ...string) *exec.Cmd {
	cmd := exec.Command(bangerBin, args...)
	cmd.Env = s.env
	return cmd
}

func (s *sandbox) run(args ...string) (string, string, int) {
	cmd := s.command(args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		s.t.Fatalf("run banger %v: %v", args, err)
	}
	return out.String(), errb.String(), code
}

func (s *sandbox) mustRun(args ...string) string {
	s.t.Helper()
	out, errs, code := s.run(args...)
	if code != 0 {
		s.t.Fatalf("banger %v exited %d\nstdout: %s\nstderr: %s", args, code, out, errs)
	}
	return out
}

func (s *sandbox) client() *api.Client { return api.NewClient(s.socket, "test") }

func (s *sandbox) waitUp() api.StatusResponse {
	s.t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		st, err := s.client().Status(context.Background())
		if err == nil {
			return st
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("daemon not up: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestForegroundDaemonStopsGracefullyOnSIGTERM(t *testing.T) {
	s := newSandbox(t)
	cmd := s.command("daemon")
	var logs bytes.Buffer
	cmd.Stderr = &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	st := s.waitUp()
	if st.PID != cmd.Process.Pid {
		t.Fatalf("status pid %d, started %d", st.PID, cmd.Process.Pid)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("daemon exited with %v after SIGTERM; log:\n%s", err, logs.String())
		}
	case <-time.After(20 * time.Second):
		_ = cmd.Process.Kill()
		t.Fatal("daemon did not exit after SIGTERM")
	}
	if _, err := os.Stat(s.socket); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("socket left after graceful stop: %v", err)
	}
	if !strings.Contains(logs.String(), "banger daemon stopped") {
		t.Fatalf("log lacks the stop line:\n%s", logs.String())
	}
}

func TestSecondForegroundDaemonRefused(t *testing.T) {
	s := newSandbox(t)
	s.mustRun("daemon", "start")
	first := s.waitUp()
	_, errs, code := s.run("daemon")
	if code != 1 || !strings.Contains(errs, fmt.Sprintf("pid %d", first.PID)) || !strings.Contains(errs, "already serving") {
		t.Fatalf("second daemon: exit %d, stderr %q", code, errs)
	}
	if st := s.waitUp(); st.PID != first.PID {
		t.Fatalf("first daemon replaced: %d -> %d", first.PID, st.PID)
	}
}

func TestKilledDaemonIsReplacedDespiteStaleSocket(t *testing.T) {
	s := newSandbox(t)
	out := s.mustRun("daemon", "start")
	_ = out
	st := s.waitUp()
	if err := syscall.Kill(st.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	// Wait until the process is really gone (it is not our child, so poll).
	deadline := time.Now().Add(10 * time.Second)
	for syscall.Kill(st.PID, 0) == nil && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if _, err := os.Stat(s.socket); err != nil {
		t.Fatalf("expected a stale socket after kill -9: %v", err)
	}
	_, errs, code := s.run("doctor")
	if code != 1 || !strings.Contains(errs+s.mustRunOrOutput("doctor"), "no banger daemon is running") {
		t.Fatalf("doctor with a dead daemon: exit %d", code)
	}
	s.mustRun("daemon", "start")
	st2 := s.waitUp()
	if st2.PID == st.PID {
		t.Fatal("same pid after restart")
	}
	out = s.mustRun("daemon", "stop")
	if !strings.Contains(out, fmt.Sprintf("stopped banger daemon (pid %d)", st2.PID)) {
		t.Fatalf("stop said %q", out)
	}
	if _, err := s.client().Status(context.Background()); !api.IsDaemonNotRunning(err) {
		t.Fatalf("daemon still answers after stop: %v", err)
	}
	// Stopping again is not an error.
	if out := s.mustRun("daemon", "stop"); !strings.Contains(out, "no banger daemon is running") {
		t.Fatalf("second stop said %q", out)
	}
}

// mustRunOrOutput returns stdout whatever the exit status.
func (s *sandbox) mustRunOrOutput(args ...string) string {
	out, _, _ := s.run(args...)
	return out
}

type doctorJSON struct {
	OK     bool              `json:"ok"`
	Checks []api.CheckResult `json:"checks"`
}

func (s *sandbox) doctor() (doctorJSON, int) {
	s.t.Helper()
	out, errs, code := s.run("doctor", "--json")
	var d doctorJSON
	if err := json.Unmarshal([]byte(out), &d); err != nil {
		s.t.Fatalf("doctor --json printed invalid JSON (%v): %s\nstderr: %s", err, out, errs)
	}
	return d, code
}

func check(t *testing.T, d doctorJSON, name string) api.CheckResult {
	t.Helper()
	for _, c := range d.Checks {
		if c.Name == name {
			return c
		}
	}
	t.Fatalf("doctor has no %q check: %+v", name, d.Checks)
	return api.CheckResult{}
}

func TestDoctorWithoutDaemonFailsWithHowToStart(t *testing.T) {
	s := newSandbox(t)
	d, code := s.doctor()
	if code != 1 || d.OK {
		t.Fatalf("doctor without daemon: exit %d ok=%v, want 1 and false", code, d.OK)
	}
	c := check(t, d, "daemon")
	if c.Status != api.Fail || !strings.Contains(c.Hint, "banger daemon start") {
		t.Fatalf("daemon check = %+v", c)
	}
	// Host checks still ran locally.
	check(t, d, "kvm")
	check(t, d, "e2fsprogs")
}

// TestDoctorIsTruthfulHere compares doctor's verdicts with independent looks at the host.
func TestDoctorIsTruthfulHere(t *testing.T) {
	s := newSandbox(t)
	s.mustRun("daemon", "start")
	d, code := s.doctor()
	failed := false
	for _, c := range d.Checks {
		if c.Status == api.Fail {
			failed = true
		}
		if c.Status != api.Pass && c.Hint == "" {
			t.Errorf("%s is %s without a hint", c.Name, c.Status)
		}
	}
	if (code == 1) != failed || d.OK == failed {
		t.Fatalf("exit %d and ok=%v disagree with the checks %+v", code, d.OK, d.Checks)
	}
	if c := check(t, d, "daemon"); c.Status != api.Pass {
		t.Errorf("daemon check = %+v", c)
	}
	if c := check(t, d, "store"); c.Status != api.Pass || !strings.Contains(c.Detail, "integrity ok") {
		t.Errorf("store check = %+v", c)
	}

	fc := check(t, d, "firecracker")
	if _, err := exec.LookPath("firecracker"); err != nil {
		if fc.Status != api.Warn || !strings.Contains(fc.Detail, "not found") || !strings.Contains(fc.Hint, "firecracker") {
			t.Errorf("no firecracker on PATH, but the check says %+v", fc)
		}
	} else if fc.Status == api.Warn && strings.Contains(fc.Detail, "not found") {
		t.Errorf("firecracker is on PATH, but the check says %+v", fc)
	}

	q := check(t, d, "qemu")
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		if q.Status != api.Fail {
			t.Errorf("no qemu on PATH, but the check says %+v", q)
		}
	} else if q.Status != api.Pass {
		t.Errorf("qemu is on PATH, but the check says %+v", q)
	}

	// KVM: the verdict must match a probe run here, and say what will be used instead.
	k := check(t, d, "kvm")
	p := kvm.Probe(context.Background(), "")
	if (p.Status == kvm.StatusUsable) != (k.Status == api.Pass) {
		t.Errorf("probe here says %s (%s) but doctor says %+v", p.Status, p.Detail, k)
	}
	if p.Status != kvm.StatusUsable && !strings.Contains(strings.ToLower(k.Hint+k.Detail), "emulation") {
		t.Errorf("unusable KVM but doctor does not say software emulation will be used: %+v", k)
	}
	vmm := check(t, d, "vmm")
	if p.Status != kvm.StatusUsable && !strings.Contains(vmm.Detail, "TCG") && vmm.Status != api.Fail {
		t.Errorf("vmm check does not say TCG although KVM is %s: %+v", p.Status, vmm)
	}

	human := s.mustRunOrOutput("doctor")
	for _, want := range []string{"daemon", "kvm", "firecracker", "qemu", "e2fsprogs", "disk-space", "checks:"} {
		if !strings.Contains(human, want) {
			t.Errorf("human doctor output lacks %q:\n%s", want, human)
		}
	}
}

func TestConfigShowExplainsSources(t *testing.T) {
	s := newSandbox(t)
	cfgDir := filepath.Join(s.home, "cfg", "banger")
	if err := os.MkdirAll(cfgDir, 0o700); err != nil {
		t.Fatal(err)
	}
	cfgFile := filepath.Join(cfgDir, "config.toml")
	if err := os.WriteFile(cfgFile, []byte("[runtime]\nping_helper_path = \"/opt/agent\"\n[vmm]\ndriver = \"qemu\"\ncolour = 1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out, errs, code := s.run("config", "show")
	if code != 0 {
		t.Fatalf("config show exit %d: %s", code, errs)
	}
	for _, want := range []string{"runtime.agent_path", "/opt/agent", "deprecated runtime.ping_helper_path", "vmm.driver", "qemu", cfgFile, "default"} {
		if !strings.Contains(out, want) {
			t.Errorf("config show lacks %q:\n%s", want, out)
		}
	}
	for _, want := range []string{`rename it to "runtime.agent_path"`, `unknown key "vmm.colour"`} {
		if !strings.Contains(errs, want) {
			t.Errorf("stderr lacks %q:\n%s", want, errs)
		}
	}
	out = s.mustRun("config", "show", "--json")
	var js struct {
		File string `json:"file"`
		Keys []struct {
			Key    string `json:"key"`
			Value  string `json:"value"`
			Source struct {
				Kind string `json:"kind"`
			} `json:"source"`
		} `json:"keys"`
		Warnings []string `json:"warnings"`
	}
	if err := json.Unmarshal([]byte(out), &js); err != nil {
		t.Fatalf("config show --json: %v\n%s", err, out)
	}
	if js.File != cfgFile || len(js.Warnings) != 2 {
		t.Fatalf("json = %+v", js)
	}

	// A bad value is an error naming the key, and every command refuses to run on it.
	if err := os.WriteFile(cfgFile, []byte("[vmm]\ndriver = \"vmware\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, errs, code = s.run("daemon", "start")
	if code != 1 || !strings.Contains(errs, `key "vmm.driver"`) {
		t.Fatalf("bad config: exit %d, stderr %q", code, errs)
	}
}

func TestVersionAndHelp(t *testing.T) {
	s := newSandbox(t)
	out := s.mustRun("version")
	if !strings.HasPrefix(out, "banger ") || !strings.Contains(out, "no banger daemon is running") {
		t.Fatalf("version without daemon: %q", out)
	}
	out = s.mustRun("--help")
	for _, sub := range []string{"daemon", "doctor", "version", "config", "completion"} {
		if !strings.Contains(out, sub) {
			t.Errorf("--help lacks %q", sub)
		}
	}
	if out := s.mustRun("completion", "bash"); !strings.Contains(out, "bash completion") {
		t.Errorf("completion bash printed %q...", out[:min(80, len(out))])
	}
	if _, errs, code := s.run("no-such-command"); code != 1 || !strings.Contains(errs, "unknown command") {
		t.Errorf("unknown command: exit %d, %q", code, errs)
	}
}

func TestDoctorWarnsOnDaemonVersionMismatch(t *testing.T) {
	other := filepath.Join(t.TempDir(), "banger-v9")
	if out, err := buildBanger(other, "-ldflags", "-X github.com/banger-vm/banger/internal/buildinfo.version=v9.9.9"); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	s := newSandbox(t)
	daemon := exec.Command(other, "daemon")
	daemon.Env = s.env
	if err := daemon.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = daemon.Process.Kill(); _ = daemon.Wait() }()
	s.waitUp()
	d, _ := s.doctor()
	c := check(t, d, "daemon")
	if c.Status != api.Warn || !strings.Contains(c.Detail, "daemon runs banger v9.9.9 but this CLI is") || !strings.Contains(c.Hint, "banger daemon restart") {
		t.Fatalf("daemon check with a mismatched daemon: %+v", c)
	}
	out, errs, _ := s.run("daemon", "status")
	if !strings.Contains(out, "v9.9.9") || !strings.Contains(errs, "restart it with `banger daemon restart`") {
		t.Fatalf("status with a mismatched daemon: %q / %q", out, errs)
	}
}
