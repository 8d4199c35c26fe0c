//go:build integration

// Package e2e drives the built banger binaries end to end: a daemon from the real binary
// with its own HOME/XDG directories, an image imported from a busybox tarball with the test
// kernel (no network access), and real guests under QEMU (TCG here).
//
//	sudo scripts/fetch-test-assets.sh && go test -tags integration ./test/e2e/
//
// This session runs it as root; the daemon then has no root helper (the helper serves
// unprivileged owners only), so VMs boot without a network, which is what it checks.
package e2e

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/banger-vm/banger/internal/api"
	"github.com/banger-vm/banger/internal/testsupport"
)

type env struct {
	t    *testing.T
	bin  string
	dir  string
	vars []string
}

// result of one banger invocation.
type result struct {
	stdout, stderr string
	code           int
}

func (e *env) run(args ...string) result {
	e.t.Helper()
	cmd := exec.Command(filepath.Join(e.bin, "banger"), args...)
	cmd.Env = append(os.Environ(), e.vars...)
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

// must runs banger and fails the test unless it exits 0.
func (e *env) must(args ...string) result {
	e.t.Helper()
	r := e.run(args...)
	if r.code != 0 {
		e.t.Fatalf("banger %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), r.code, r.stdout, r.stderr)
	}
	return r
}

func (e *env) vms() []api.VM {
	e.t.Helper()
	var vms []api.VM
	if err := json.Unmarshal([]byte(e.must("vm", "ls", "--json").stdout), &vms); err != nil {
		e.t.Fatal(err)
	}
	return vms
}

func buildBinaries(t *testing.T, dir string) {
	t.Helper()
	for _, b := range []string{"banger", "banger-init", "banger-agent"} {
		cmd := exec.Command("go", "build", "-trimpath", "-o", filepath.Join(dir, b), "./cmd/"+b)
		cmd.Dir = filepath.Join("..", "..")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("build %s: %v\n%s", b, err, out)
		}
	}
}

func setup(t *testing.T) *env {
	assets := testsupport.GuestAssets(t)
	testsupport.RequireQEMU(t)
	// Short: VM sockets live under XDG_RUNTIME_DIR and sun_path is 108 bytes.
	dir, err := os.MkdirTemp("", "bge-")
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, bin: filepath.Join(dir, "bin"), dir: dir}
	buildBinaries(t, e.bin)
	for _, d := range []string{"home", "run", "cfg/banger"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	// No root helper: a socket nobody listens on, so the test never touches the host's.
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
		for _, vm := range e.vms() {
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

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func TestVMLifecycle(t *testing.T) {
	e := setup(t)
	vmFlags := []string{"--image", "bb", "--memory", "512M"}

	t.Run("run", func(t *testing.T) {
		start := time.Now()
		r := e.run(append(append([]string{"vm", "run", "-q"}, vmFlags...), "--", "sh", "-c", "echo out; echo err >&2; exit 3")...)
		if r.stdout != "out\n" || r.stderr != "err\n" || r.code != 3 {
			t.Fatalf("vm run: stdout %q stderr %q exit %d; want \"out\\n\" \"err\\n\" 3", r.stdout, r.stderr, r.code)
		}
		t.Logf("vm run -- CMD: %s end to end (create, boot, exec, remove)", time.Since(start).Round(time.Millisecond))
		if vms := e.vms(); len(vms) != 0 {
			t.Fatalf("vm run left VMs behind: %+v", vms)
		}
	})

	t.Run("6 concurrent runs", func(t *testing.T) {
		start := time.Now()
		var wg sync.WaitGroup
		res := make([]result, 6)
		for i := range res {
			wg.Add(1)
			go func() {
				defer wg.Done()
				res[i] = e.run(append(append([]string{"vm", "run", "-q"}, vmFlags...), "--", "sh", "-c", fmt.Sprintf("echo run-%d", i))...)
			}()
		}
		wg.Wait()
		for i, r := range res {
			if r.code != 0 || r.stdout != fmt.Sprintf("run-%d\n", i) {
				t.Errorf("run %d: exit %d stdout %q stderr %q", i, r.code, r.stdout, r.stderr)
			}
		}
		t.Logf("6 concurrent vm run: %s", time.Since(start).Round(time.Millisecond))
		if vms := e.vms(); len(vms) != 0 {
			t.Fatalf("concurrent runs left VMs: %+v", vms)
		}
	})

	t.Run("bad input", func(t *testing.T) {
		for _, args := range [][]string{
			{"vm", "create", "Bad_Name", "--image", "bb"},
			{"vm", "create", "ok", "--image", "bb", "--memory", "12M"},
			{"vm", "create", "ok", "--image", "bb", "--memory", "lots"},
			{"vm", "create", "ok", "--image", "bb", "--cpus", "-1"},
			{"vm", "create", "ok", "--image", "bb", "--disk-size", "1K"},
			{"vm", "create", "ok", "--image", "nope"},
		} {
			r := e.run(args...)
			if r.code == 0 || !strings.Contains(r.stderr, "hint:") {
				t.Errorf("banger %s: exit %d, stderr %q; want a refusal with a hint", strings.Join(args, " "), r.code, r.stderr)
			}
		}
		if vms := e.vms(); len(vms) != 0 {
			t.Fatalf("refused creates left VMs: %+v", vms)
		}
	})

	t.Run("create start exec stop start", func(t *testing.T) {
		r := e.must(append([]string{"vm", "create", "e2e-a"}, vmFlags...)...)
		t.Logf("vm create stages:\n%s", r.stderr)
		start := time.Now()
		e.must("vm", "start", "e2e-a")
		t.Logf("vm start (stopped -> agent ready): %s", time.Since(start).Round(time.Millisecond))
		if r := e.must("vm", "health", "e2e-a"); !strings.Contains(r.stdout, "agent healthy") {
			t.Fatalf("health: %q", r.stdout)
		}
		var vm api.VM
		if err := json.Unmarshal([]byte(e.must("vm", "inspect", "e2e-a", "--json").stdout), &vm); err != nil {
			t.Fatal(err)
		}
		if vm.Driver == "" || vm.DriverReason == "" || vm.PID == 0 || len(vm.Disks) != 3 || vm.Network.Note == "" {
			t.Fatalf("inspect lacks driver/reason/pid/disks/network note: %+v", vm)
		}
		for _, s := range vm.Stages {
			t.Logf("  stage %-26s %8.1f ms", s.Name, s.DurationMS)
		}
		if r := e.must("vm", "exec", "e2e-a", "--", "sh", "-c", "echo persisted > /root/keep && sync && uname -r"); !strings.Contains(r.stdout, "cloud-amd64") {
			t.Fatalf("exec: %q", r.stdout)
		}
		e.must("vm", "stop", "e2e-a")
		if r := e.run("vm", "health", "e2e-a"); r.code == 0 {
			t.Fatalf("health of a stopped VM exited 0: %q", r.stdout)
		}
		e.must("vm", "start", "e2e-a")
		if r := e.must("vm", "exec", "e2e-a", "--", "cat", "/root/keep"); r.stdout != "persisted\n" {
			t.Fatalf("after stop/start /root/keep = %q", r.stdout)
		}
		if r := e.must("vm", "logs", "e2e-a"); !strings.Contains(r.stdout, "Linux version") {
			t.Fatalf("console log lacks the kernel banner: %q", tail(r.stdout, 5))
		}
	})

	t.Run("two VMs from one image", func(t *testing.T) {
		e.must(append([]string{"vm", "create", "e2e-b", "--start"}, vmFlags...)...)
		var wg sync.WaitGroup
		outs := map[string]string{}
		var mu sync.Mutex
		for _, n := range []string{"e2e-a", "e2e-b"} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				r := e.run("vm", "exec", n, "--", "hostname")
				mu.Lock()
				outs[n] = r.stdout
				mu.Unlock()
			}()
		}
		wg.Wait()
		for n, out := range outs {
			if strings.TrimSpace(out) != n {
				t.Errorf("hostname in %s = %q", n, out)
			}
		}
		if r := e.run("vm", "rm", "e2e-b"); r.code == 0 {
			t.Fatal("rm of a running VM without --force succeeded")
		}
	})

	t.Run("daemon restart reattaches; a killed VMM shows crashed", func(t *testing.T) {
		e.must("daemon", "stop")
		e.must("daemon", "start")
		if r := e.must("vm", "exec", "e2e-a", "--", "cat", "/root/keep"); r.stdout != "persisted\n" {
			t.Fatalf("exec after daemon restart: %q", r.stdout)
		}
		var vm api.VM
		if err := json.Unmarshal([]byte(e.must("vm", "inspect", "e2e-b", "--json").stdout), &vm); err != nil {
			t.Fatal(err)
		}
		if vm.PID == 0 {
			t.Fatal("reattached VM has no pid")
		}
		if err := syscall.Kill(vm.PID, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(15 * time.Second)
		for vm.State != "crashed" && time.Now().Before(deadline) {
			time.Sleep(200 * time.Millisecond)
			if err := json.Unmarshal([]byte(e.must("vm", "inspect", "e2e-b", "--json").stdout), &vm); err != nil {
				t.Fatal(err)
			}
		}
		if vm.State != "crashed" || vm.LastExit == "" {
			t.Fatalf("after kill -9 of its VMM: state %q, last exit %q", vm.State, vm.LastExit)
		}
		t.Logf("killed VMM: %s", vm.LastExit)
	})

	t.Run("rm leaves nothing", func(t *testing.T) {
		e.must("vm", "rm", "--force", "e2e-a", "e2e-b")
		if vms := e.vms(); len(vms) != 0 {
			t.Fatalf("VMs left: %+v", vms)
		}
		for _, d := range []string{"data/banger/vms", "run/banger/v"} {
			ents, _ := os.ReadDir(filepath.Join(e.dir, d))
			if len(ents) != 0 {
				t.Errorf("%s not empty: %v", d, ents)
			}
		}
		procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
		for _, p := range procs {
			data, _ := os.ReadFile(p)
			if bytes.Contains(data, []byte("qemu-system")) && bytes.Contains(data, []byte(e.dir)) {
				status, _ := os.ReadFile(filepath.Join(filepath.Dir(p), "status"))
				if !bytes.Contains(status, []byte("State:\tZ")) {
					t.Errorf("qemu still running: %s", bytes.ReplaceAll(data, []byte{0}, []byte{' '}))
				}
			}
		}
	})
}
