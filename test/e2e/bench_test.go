//go:build integration

package e2e

// `banger bench create` and the leak check from the built binary: a daemon with its own
// directories, the busybox test image, real guests under QEMU (TCG here).

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/banger-vm/banger/internal/api"
	"github.com/banger-vm/banger/internal/testsupport"
)

// benchEnv is a daemon from the built binaries with the busybox image imported as "bb".
type benchEnv struct {
	t    *testing.T
	bin  string
	dir  string
	vars []string
}

func (e *benchEnv) command(args ...string) *exec.Cmd {
	cmd := exec.Command(filepath.Join(e.bin, "banger"), args...)
	cmd.Env = append(os.Environ(), e.vars...)
	return cmd
}

func (e *benchEnv) run(args ...string) result {
	e.t.Helper()
	cmd := e.command(args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	r := result{stdout: out.String(), stderr: errb.String()}
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	case err != nil:
		e.t.Fatalf("banger %s: %v", strings.Join(args, " "), err)
	}
	return r
}

func (e *benchEnv) must(args ...string) result {
	e.t.Helper()
	r := e.run(args...)
	if r.code != 0 {
		e.t.Fatalf("banger %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), r.code, r.stdout, r.stderr)
	}
	return r
}

func (e *benchEnv) vmList() []api.VM {
	e.t.Helper()
	var vms []api.VM
	if err := json.Unmarshal([]byte(e.must("vm", "ls", "--json").stdout), &vms); err != nil {
		e.t.Fatal(err)
	}
	return vms
}

// requireNoLeaks runs scripts/verify (banger doctor --leaks) and fails on any finding.
func (e *benchEnv) requireNoLeaks() {
	e.t.Helper()
	cmd := exec.Command(filepath.Join("..", "..", "scripts", "verify"))
	cmd.Env = append(os.Environ(), append(e.vars, "BANGER="+filepath.Join(e.bin, "banger"))...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		e.t.Fatalf("scripts/verify: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "leaks-processes") {
		e.t.Fatalf("scripts/verify ran no leak checks:\n%s", out)
	}
}

func setupBench(t *testing.T) *benchEnv {
	assets := testsupport.GuestAssets(t)
	testsupport.RequireQEMU(t)
	dir, err := os.MkdirTemp("", "bgb-")
	if err != nil {
		t.Fatal(err)
	}
	e := &benchEnv{t: t, bin: filepath.Join(dir, "bin"), dir: dir}
	buildBinaries(t, e.bin)
	for _, d := range []string{"home", "run", "cfg/banger"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	cfg := "[network]\nhelper_socket = \"" + filepath.Join(dir, "no-helper.sock") + "\"\n"
	if err := os.WriteFile(filepath.Join(dir, "cfg/banger/config.toml"), []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	e.vars = []string{"HOME=" + filepath.Join(dir, "home"), "XDG_RUNTIME_DIR=" + filepath.Join(dir, "run"),
		"XDG_CONFIG_HOME=" + filepath.Join(dir, "cfg"), "XDG_DATA_HOME=" + filepath.Join(dir, "data"),
		"XDG_STATE_HOME=" + filepath.Join(dir, "state"), "XDG_CACHE_HOME=" + filepath.Join(dir, "cache"), "BANGER_CONFIG="}
	e.must("daemon", "start")
	t.Cleanup(func() {
		if t.Failed() {
			if log, err := os.ReadFile(filepath.Join(dir, "state/banger/daemon.log")); err == nil {
				t.Logf("daemon log (tail):\n%s", tail(string(log), 40))
			}
		}
		for _, vm := range e.vmList() {
			e.run("vm", "rm", "--force", vm.ID)
		}
		e.run("daemon", "stop")
		os.RemoveAll(dir)
	})
	tarData, err := testsupport.BusyboxRootfsTar(assets.Busybox)
	if err != nil {
		t.Fatal(err)
	}
	tarPath := filepath.Join(dir, "busybox.tar")
	if err := os.WriteFile(tarPath, tarData, 0o644); err != nil {
		t.Fatal(err)
	}
	e.must("image", "kernel", "import", filepath.Join(assets.Dir, "kernel"))
	e.must("image", "import", tarPath, "--name", "bb")
	return e
}

func TestBenchCreate(t *testing.T) {
	e := setupBench(t)
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
		if vms := e.vmList(); len(vms) != 0 {
			t.Fatalf("bench left VMs: %+v", vms)
		}
		e.requireNoLeaks()
	})

	t.Run("table", func(t *testing.T) {
		r := e.must("bench", "create", "--runs", "1", "--image", "bb", "--memory", "512M")
		for _, want := range []string{"create -> agent-ready", "host-side", "bare qemu -> agent-ready", "ratio banger/bare", "goal <= 100 ms", "goal <= 1.1"} {
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
		if vms := e.vmList(); len(vms) != 0 {
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
