//go:build integration

// Package e2e drives the built banger binaries end to end: a daemon from the real binary
// with its own HOME/XDG directories, images imported from tarballs with the test kernel (no
// network access), and real guests under QEMU (TCG here).
//
//	sudo scripts/fetch-test-assets.sh && go test -tags integration ./test/e2e/
//
// With BANGER_E2E_USER=<user> (CI sets banger-ci) and run as root, it runs banger as
// deployed: the daemon and CLI as that unprivileged user, the root helper as root, both in
// a network namespace of the test's own (so the host's network is never touched). Without
// it, everything runs as the test's user and the daemon has no helper: VMs boot without a
// network, which is checked too.
package e2e

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/banger-vm/banger/internal/api"
	"github.com/banger-vm/banger/internal/testsupport"
)

type env struct {
	t      *testing.T
	bin    string
	dir    string
	vars   []string
	assets testsupport.Assets
	// Privilege-split mode: banger runs as cred, daemon and helper inside netns.
	cred   *syscall.Credential
	netns  string
	helper *exec.Cmd
	subnet string
}

// result of one banger invocation.
type result struct {
	stdout, stderr string
	code           int
}

func (e *env) command(args ...string) *exec.Cmd {
	cmd := exec.Command(filepath.Join(e.bin, "banger"), args...)
	cmd.Env = append(os.Environ(), e.vars...)
	if e.cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: e.cred}
	}
	return cmd
}

func (e *env) run(args ...string) result {
	e.t.Helper()
	return e.runCmd(e.command(args...), args)
}

func (e *env) runCmd(cmd *exec.Cmd, args []string) result {
	e.t.Helper()
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
	return e.mustResult(e.run(args...), args)
}

func (e *env) mustResult(r result, args []string) result {
	e.t.Helper()
	if r.code != 0 {
		e.t.Fatalf("banger %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), r.code, r.stdout, r.stderr)
	}
	return r
}

// daemon runs `banger daemon ARGS` where the daemon must live: in privilege-split mode
// inside the test's network namespace (where the helper made the bridge and TAPs) as the
// unprivileged user.
func (e *env) daemon(args ...string) result {
	e.t.Helper()
	args = append([]string{"daemon"}, args...)
	if e.netns == "" {
		return e.must(args...)
	}
	// ip netns exec (unlike nsenter) also mounts the namespace's own /sys, where the VMM
	// driver looks for the TAP devices; setpriv then drops to the unprivileged user.
	ns := append([]string{"netns", "exec", e.netns, "setpriv", "--reuid=" + strconv.Itoa(int(e.cred.Uid)),
		"--regid=" + strconv.Itoa(int(e.cred.Gid)), "--clear-groups", "--", filepath.Join(e.bin, "banger")}, args...)
	cmd := exec.Command("ip", ns...)
	cmd.Env = append(os.Environ(), e.vars...)
	return e.mustResult(e.runCmd(cmd, args), args)
}

func (e *env) vms() []api.VM {
	e.t.Helper()
	var vms []api.VM
	if err := json.Unmarshal([]byte(e.must("vm", "ls", "--json").stdout), &vms); err != nil {
		e.t.Fatal(err)
	}
	return vms
}

func (e *env) inspect(name string) api.VM {
	e.t.Helper()
	var vm api.VM
	if err := json.Unmarshal([]byte(e.must("vm", "inspect", name, "--json").stdout), &vm); err != nil {
		e.t.Fatal(err)
	}
	return vm
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

// splitUser returns the unprivileged user to run the daemon as, or nil.
func splitUser(t *testing.T) *syscall.Credential {
	name := os.Getenv("BANGER_E2E_USER")
	if name == "" {
		return nil
	}
	if os.Geteuid() != 0 {
		t.Fatalf("BANGER_E2E_USER=%s needs the test to run as root (it starts the root helper)", name)
	}
	u, err := user.Lookup(name)
	if err != nil {
		t.Fatalf("BANGER_E2E_USER: %v (scripts/test.sh creates banger-ci)", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
}

// setup is the harness with warm start off: the other tests exercise the cold path, and a
// background template build would race their checks.
func setup(t *testing.T) *env { return setupWith(t, "[vm]\nwarm_start = false\n") }

// setupWith is the harness with extra config (TOML sections).
func setupWith(t *testing.T, extraCfg string) *env {
	assets := testsupport.GuestAssets(t)
	testsupport.RequireQEMU(t)
	// Short: VM sockets live under XDG_RUNTIME_DIR and sun_path is 108 bytes.
	dir, err := os.MkdirTemp("", "bge-")
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, bin: filepath.Join(dir, "bin"), dir: dir, assets: assets, cred: splitUser(t)}
	buildBinaries(t, e.bin)
	for _, d := range []string{"home", "run", "cfg/banger"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	cfg := "[daemon]\nautostart = false\n"
	if e.cred == nil {
		// No root helper: a socket nobody listens on, so the test never touches the host's.
		cfg += "[network]\nhelper_socket = \"" + filepath.Join(dir, "no-helper.sock") + "\"\n"
	} else {
		e.netns = filepath.Base(dir) // unique per test
		e.subnet = "10.213.77.0/24"
		cfg += fmt.Sprintf("[network]\nhelper_socket = %q\nbridge = \"bge0\"\nsubnet = %q\n", e.helperSocket(), e.subnet)
	}
	cfg += extraCfg
	if err := os.WriteFile(filepath.Join(dir, "cfg/banger/config.toml"), []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	e.vars = []string{"HOME=" + filepath.Join(dir, "home"), "XDG_RUNTIME_DIR=" + filepath.Join(dir, "run"),
		"XDG_CONFIG_HOME=" + filepath.Join(dir, "cfg"), "XDG_DATA_HOME=" + filepath.Join(dir, "data"),
		"XDG_STATE_HOME=" + filepath.Join(dir, "state"), "XDG_CACHE_HOME=" + filepath.Join(dir, "cache"), "BANGER_CONFIG="}
	t.Cleanup(func() {
		if t.Failed() {
			if log, err := os.ReadFile(filepath.Join(dir, "state/banger/daemon.log")); err == nil {
				t.Logf("daemon log (tail):\n%s", tail(string(log), 40))
			}
		}
		var vms []api.VM
		_ = json.Unmarshal([]byte(e.run("vm", "ls", "--json").stdout), &vms)
		for _, vm := range vms {
			e.run("vm", "rm", "--force", vm.ID)
		}
		e.run("daemon", "stop")
		if e.helper != nil {
			_ = e.helper.Process.Signal(syscall.SIGTERM)
			_ = e.helper.Wait()
		}
		if e.netns != "" {
			_ = exec.Command("ip", "netns", "del", e.netns).Run()
		}
		os.RemoveAll(dir)
	})
	if e.cred != nil {
		e.startHelper()
	}
	e.daemon("start")

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

func (e *env) helperSocket() string { return filepath.Join(e.dir, "helper", "helper.sock") }

// startHelper gives the test's files to the unprivileged user and starts the root helper
// in a fresh network namespace, serving that user.
func (e *env) startHelper() {
	t := e.t
	if err := filepath.Walk(e.dir, func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, int(e.cred.Uid), int(e.cred.Gid))
	}); err != nil {
		t.Fatal(err)
	}
	// The unprivileged VMM opens /dev/net/tun for the TAP the helper made for it.
	if st, err := os.Stat("/dev/net/tun"); err != nil || st.Mode().Perm()&0o006 != 0o006 {
		t.Fatalf("/dev/net/tun is not usable by other users (%v): `chmod 0666 /dev/net/tun` as udev does (scripts/test.sh does it)", st.Mode())
	}
	if out, err := exec.Command("ip", "netns", "add", e.netns).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", e.netns, err, out)
	}
	// A host has its loopback up: port forwards listen on it.
	if out, err := exec.Command("ip", "-n", e.netns, "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("loopback up in %s: %v: %s", e.netns, err, out)
	}
	// The helper's socket directory must be root's (the helper refuses anything else).
	if err := os.Mkdir(filepath.Dir(e.helperSocket()), 0o755); err != nil {
		t.Fatal(err)
	}
	helperCfg := filepath.Join(filepath.Dir(e.helperSocket()), "helper.toml")
	if err := os.WriteFile(helperCfg, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	sock := e.helperSocket()
	e.helper = exec.Command("nsenter", "--net=/run/netns/"+e.netns, "--", filepath.Join(e.bin, "banger"), "--config", helperCfg,
		"helper", "--owner-uid", strconv.Itoa(int(e.cred.Uid)), "--socket", sock, "--bridge", "bge0", "--subnet", e.subnet)
	var logBuf bytes.Buffer
	e.helper.Stdout, e.helper.Stderr = &logBuf, &logBuf
	if err := e.helper.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, err := os.Stat(sock); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the helper did not create %s within 20s; its output:\n%s", sock, logBuf.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// checkNetwork checks a running VM's network: with the helper, the guest has the leased
// address on eth0 and reaches the gateway (the bridge, inside the test's namespace);
// without it, inspect says why there is none.
func (e *env) checkNetwork(vm api.VM) {
	t := e.t
	t.Helper()
	if e.netns == "" {
		if vm.Network.Note == "" || vm.Network.IP != "" {
			t.Fatalf("no helper, yet network %+v", vm.Network)
		}
		return
	}
	if vm.Network.IP == "" || vm.Network.TAP == "" || !strings.HasPrefix(vm.Network.IP, "10.213.77.") {
		t.Fatalf("with the helper the VM has no lease in %s: %+v", e.subnet, vm.Network)
	}
	// The guest's own view, from its agent (images need no ip or ping for this).
	var h api.VMHealth
	if err := json.Unmarshal([]byte(e.must("vm", "health", vm.Name, "--json").stdout), &h); err != nil {
		t.Fatal(err)
	}
	var gh struct {
		Interfaces []struct {
			Name  string   `json:"name"`
			Addrs []string `json:"addrs"`
		} `json:"interfaces"`
	}
	if err := json.Unmarshal([]byte(strings.TrimPrefix(h.Detail, "agent healthy: ")), &gh); err != nil {
		t.Fatalf("health detail %q: %v", h.Detail, err)
	}
	found := false
	for _, i := range gh.Interfaces {
		for _, a := range i.Addrs {
			found = found || a == vm.Network.IP+"/24"
		}
	}
	if !found {
		t.Fatalf("the guest does not have %s/24: %+v", vm.Network.IP, gh.Interfaces)
	}
	// And it answers on the bridge, inside the test's namespace.
	if out, err := exec.Command("ip", "netns", "exec", e.netns, "ping", "-c", "1", "-W", "5", vm.Network.IP).CombinedOutput(); err != nil {
		t.Fatalf("ping %s from the bridge: %v\n%s", vm.Network.IP, err, out)
	}
	t.Logf("guest network: %s (gateway %s) answers from the bridge, tap %s", vm.Network.IP, vm.Network.Gateway, vm.Network.TAP)
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
		if vm.Driver == "" || vm.DriverReason == "" || vm.PID == 0 || len(vm.Disks) != 3 {
			t.Fatalf("inspect lacks driver/reason/pid/disks: %+v", vm)
		}
		e.checkNetwork(vm)
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
		e.daemon("stop")
		e.daemon("start")
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
		// The leak check (as scripts/verify runs it): no VMM, socket, disk, lease or TAP
		// beyond the pool; with the helper the TAPs are checked too.
		r := e.run("doctor", "--leaks")
		if r.code != 0 {
			t.Fatalf("doctor --leaks: exit %d\n%s%s", r.code, r.stdout, r.stderr)
		}
		t.Logf("doctor --leaks:\n%s", r.stdout)
		if e.netns != "" && strings.Contains(r.stdout, "WARN  leaks-taps") {
			t.Fatalf("with the helper the TAP leak check must run: %s", r.stdout)
		}
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
