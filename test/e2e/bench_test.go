//go:build integration

package e2e

// `banger bench create` and the leak check from the built binary, on the shared harness
// (setup): the busybox test image, real guests under QEMU (TCG here).

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/banger-vm/banger/internal/api"
)

// requireNoLeaks runs scripts/verify (banger doctor --leaks) as banger's user and fails on
// any finding.
func (e *env) requireNoLeaks() {
	e.t.Helper()
	cmd := exec.Command(filepath.Join("..", "..", "scripts", "verify"))
	cmd.Env = append(os.Environ(), append(e.vars, "BANGER="+filepath.Join(e.bin, "banger"))...)
	if e.cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: e.cred}
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		e.t.Fatalf("scripts/verify: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "leaks-processes") {
		e.t.Fatalf("scripts/verify ran no leak checks:\n%s", out)
	}
}

func TestBenchCreate(t *testing.T) {
	e := setup(t)
	e.requireNoLeaks()

	t.Run("two runs as JSON", func(t *testing.T) {
		r := e.must("bench", "create", "--runs", "2", "--json", "--image", "bb", "--memory", "512M")
		var res api.BenchCreateResult
		if err := json.Unmarshal([]byte(r.stdout), &res); err != nil {
			t.Fatalf("bench output is not JSON: %v\n%s", err, r.stdout)
		}
		if res.Runs != 2 || len(res.RunDetails) != 2 || res.Driver != "qemu" {
			t.Fatalf("bench result: runs %d, details %d, driver %q", res.Runs, len(res.RunDetails), res.Driver)
		}
		if res.RunDetails[0].BangerFirst == res.RunDetails[1].BangerFirst {
			t.Error("the runs did not alternate banger and bare")
		}
		guest := 0
		for _, s := range res.Stages {
			if s.N != 2 || s.MedianMS <= 0 {
				t.Errorf("stage %q: %+v, want 2 samples > 0", s.Name, s.BenchStat)
			}
			if s.Guest {
				guest++
			}
		}
		if len(res.Stages) < 4 || guest == 0 {
			t.Errorf("stages %+v: want the recorded host stages and the guest wait", res.Stages)
		}
		for _, run := range res.RunDetails {
			if run.AgentReadyMS <= 0 || run.BareAgentReadyMS <= 0 || run.HostSideMS <= 0 || run.HostSideMS >= run.AgentReadyMS {
				t.Errorf("run %d: %+v", run.Index, run)
			}
		}
		// The busybox image has no sshd: no ssh-ready figure, and a note that says why.
		if res.SSHReady != nil || !strings.Contains(res.SSHNote, "sshd") {
			t.Errorf("ssh-ready %+v, note %q: want none with a note about sshd", res.SSHReady, res.SSHNote)
		}
		if res.Ratio <= 0 || len(res.Goals) != 2 || len(res.BareCommand) == 0 || !strings.Contains(res.BareCommand[0], "qemu-system") {
			t.Errorf("ratio %v, goals %+v, bare command %q", res.Ratio, res.Goals, res.BareCommand)
		}
		if strings.Contains(res.BareNote, "WARNING") {
			t.Errorf("the bare boot is not the banger VM's command line: %s", res.BareNote)
		}
		t.Logf("agent-ready median %.1f ms (bare %.1f ms), ratio %.3f, host-side median %.1f ms",
			res.AgentReady.MedianMS, res.BareAgentReady.MedianMS, res.Ratio, res.HostSide.MedianMS)
		if vms := e.vms(); len(vms) != 0 {
			t.Fatalf("bench left VMs: %+v", vms)
		}
		e.requireNoLeaks()
	})

	t.Run("table", func(t *testing.T) {
		r := e.must("bench", "create", "--runs", "1", "--image", "bb", "--memory", "512M")
		for _, want := range []string{"create -> agent-ready", "host-side", "bare qemu -> agent-ready", "ratio banger/bare", "goal <= 100 ms", "goal <= 1.05"} {
			if !strings.Contains(r.stdout, want) {
				t.Errorf("table lacks %q:\n%s", want, r.stdout)
			}
		}
		t.Logf("\n%s", r.stdout)
		e.requireNoLeaks()
	})

	t.Run("Ctrl-C removes the bench VM", func(t *testing.T) {
		cmd := e.command("bench", "create", "--runs", "2", "--image", "bb", "--memory", "512M")
		stderr, err := cmd.StderrPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		// Interrupt once the first bench VM's VMM runs (its stage finished).
		sc := bufio.NewScanner(stderr)
		seen := false
		for sc.Scan() {
			if strings.Contains(sc.Text(), "banger: starting the vmm") {
				seen = true
				break
			}
		}
		if !seen {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
			t.Fatal("bench create printed no \"starting the vmm\" stage")
		}
		if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
			t.Fatal(err)
		}
		go io.Copy(io.Discard, stderr)
		if err := cmd.Wait(); err == nil {
			t.Fatal("an interrupted bench exited 0")
		}
		// The daemon undoes the create after the client is gone, then logs the bench's end.
		waitForLog(t, filepath.Join(e.dir, "state/banger/daemon.log"), "bench create failed")
		if vms := e.vms(); len(vms) != 0 {
			t.Fatalf("interrupted bench left VMs: %+v", vms)
		}
		e.requireNoLeaks()
	})
}

// waitForLog waits until the daemon log has a line containing want (the daemon writes it
// once it is done), giving up after a generous bound so a hang fails instead of blocking.
func waitForLog(t *testing.T, path, want string) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Minute)
	for {
		data, _ := os.ReadFile(path)
		if bytes.Contains(data, []byte(want)) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the daemon log never said %q", want)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
