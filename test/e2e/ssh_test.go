//go:build integration

package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// importSSHImage imports the Debian fixture with systemd and OpenSSH's server.
func (e *env) importSSHImage() {
	e.t.Helper()
	tarPath := filepath.Join(e.assets.Dir, "debian-ssh.tar")
	if _, err := os.Stat(tarPath); err != nil {
		e.t.Fatalf("no %s: run scripts/fetch-test-assets.sh (it builds the Debian root with sshd)", tarPath)
	}
	start := time.Now()
	e.must("image", "import", tarPath, "--name", "deb")
	e.t.Logf("imported the Debian+sshd fixture in %s", time.Since(start).Round(time.Millisecond))
}

// TestVMSSH: create + start + health + exec + ssh (system and built-in client) on a Debian
// guest with systemd and sshd; the host key is banger's own, pinned, and a changed one is
// refused; restart keeps it; rm forgets it.
func TestVMSSH(t *testing.T) {
	e := setup(t)
	e.importSSHImage()
	r := e.must("vm", "create", "sshvm", "--image", "deb", "--memory", "768M", "--start")
	t.Logf("create --start stages:\n%s", r.stderr)
	if !strings.Contains(r.stderr, "waiting for sshd") {
		t.Fatalf("no sshd stage in the progress: %q", r.stderr)
	}
	if r := e.must("vm", "health", "sshvm"); !strings.Contains(r.stdout, "agent healthy") {
		t.Fatalf("health: %q", r.stdout)
	}
	vm := e.inspect("sshvm")
	if !vm.SSH.Ready || vm.SSH.HostKeyAlias == "" || !strings.HasPrefix(vm.SSH.HostKey, "ssh-ed25519 ") {
		t.Fatalf("inspect ssh: %+v", vm.SSH)
	}
	e.checkNetwork(vm)

	// exec: stdin in, stdout and stderr apart, exit code out.
	cmd := e.command("vm", "exec", "sshvm", "--", "sh", "-c", "tr a-z A-Z; echo to-stderr >&2; exit 4")
	cmd.Stdin = strings.NewReader("piped through\n")
	if r := e.runCmd(cmd, []string{"vm", "exec"}); r.stdout != "PIPED THROUGH\n" || r.stderr != "to-stderr\n" || r.code != 4 {
		t.Fatalf("exec with stdin: stdout %q stderr %q exit %d", r.stdout, r.stderr, r.code)
	}

	// The guest serves the key banger generated (not the image's), and it is the pinned one.
	served := strings.TrimSpace(e.must("vm", "exec", "sshvm", "--", "cat", "/etc/ssh/ssh_host_ed25519_key.pub").stdout)
	if fields(served, 2) != fields(vm.SSH.HostKey, 2) {
		t.Fatalf("guest host key %q, pinned %q", served, vm.SSH.HostKey)
	}
	knownHosts := filepath.Join(e.dir, "data/banger/ssh/known_hosts")
	pins, err := os.ReadFile(knownHosts)
	if err != nil || !strings.Contains(string(pins), vm.SSH.HostKeyAlias+" "+fields(vm.SSH.HostKey, 2)) {
		t.Fatalf("known_hosts %q (%v) lacks the pin of %s", pins, err, vm.SSH.HostKeyAlias)
	}

	for _, client := range []string{"", "-"} {
		args := []string{"vm", "ssh", "sshvm", "--", "sh", "-c", "echo \"$(hostname) uid=$(id -u) $1\"; exit 6", "sh", "two words"}
		if client != "" {
			args = append(args[:2], append([]string{"--ssh", client}, args[2:]...)...)
		}
		start := time.Now()
		r := e.run(args...)
		if r.stdout != "sshvm uid=0 two words\n" || r.code != 6 {
			t.Fatalf("banger %s: stdout %q stderr %q exit %d", strings.Join(args, " "), r.stdout, r.stderr, r.code)
		}
		t.Logf("vm ssh (client %q) command round trip: %s", client, time.Since(start).Round(time.Millisecond))
	}

	// A changed host key is refused by both clients.
	if err := os.WriteFile(knownHosts, []byte(vm.SSH.HostKeyAlias+" ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHBQbH1K4dDC0vDQ9OqDr7kx2tGo7E3Rpw8m8Yp4bN5x\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, client := range []string{"", "-"} {
		r := e.run("vm", "ssh", "--ssh", orSystem(client), "sshvm", "--", "true")
		if r.code == 0 {
			t.Fatalf("ssh (client %q) accepted a host key that does not match the pin", client)
		}
	}
	if err := os.WriteFile(knownHosts, pins, 0o600); err != nil {
		t.Fatal(err)
	}

	// restart: same disks, same host key, SSH again.
	e.must("vm", "exec", "sshvm", "--", "sh", "-c", "echo kept > /root/f && sync")
	e.must("vm", "restart", "sshvm")
	if r := e.must("vm", "ssh", "sshvm", "--", "cat", "/root/f"); r.stdout != "kept\n" {
		t.Fatalf("after restart: %q", r.stdout)
	}
	e.checkSSHConfig("sshvm")
	e.must("vm", "rm", "--force", "sshvm")
	if pins, _ := os.ReadFile(knownHosts); strings.Contains(string(pins), vm.SSH.HostKeyAlias) {
		t.Fatalf("rm left the host key pinned: %q", pins)
	}

	// vm run with a command does not wait for sshd (it uses the agent); kept, the VM is
	// still reachable over SSH once sshd is up.
	r = e.must("vm", "run", "kept", "--keep", "--image", "deb", "--memory", "768M", "--", "true")
	if strings.Contains(r.stderr, "waiting for sshd") {
		t.Fatalf("vm run -- CMD waited for sshd: %q", r.stderr)
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		r := e.run("vm", "ssh", "kept", "--", "echo", "reachable")
		if r.code == 0 && r.stdout == "reachable\n" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("vm ssh into a VM started by vm run --keep: exit %d %q %q", r.code, r.stdout, r.stderr)
		}
		time.Sleep(500 * time.Millisecond)
	}
	e.must("vm", "rm", "--force", "kept")

	// An image without sshd: vm ssh says why and what to use instead.
	e.must("vm", "create", "nossh", "--image", "bb", "--memory", "256M", "--start")
	if r := e.run("vm", "ssh", "nossh", "--", "true"); r.code == 0 || !strings.Contains(r.stderr, "no sshd") {
		t.Fatalf("ssh into an image without sshd: exit %d, %q", r.code, r.stderr)
	}
	e.must("vm", "rm", "--force", "nossh")
}

// orSystem maps "" to the system ssh's path for --ssh.
func orSystem(client string) string {
	if client == "" {
		return "ssh"
	}
	return client
}

// fields returns the first n space-separated fields of s.
func fields(s string, n int) string {
	f := strings.Fields(s)
	if len(f) > n {
		f = f[:n]
	}
	return strings.Join(f, " ")
}

// TestDaemonKilledMidCreate: kill -9 the daemon while a VM is starting, start it again: the
// half-started VM's VMM is ended, its TAP given back, and the VM is left stopped (it starts
// again normally) — nothing leaks.
func TestDaemonKilledMidCreate(t *testing.T) {
	e := setup(t)
	create := e.command("vm", "create", "victim", "--image", "bb", "--memory", "256M", "--start")
	if err := create.Start(); err != nil {
		t.Fatal(err)
	}
	// Wait until the VMM runs and the daemon waits for the agent.
	deadline := time.Now().Add(60 * time.Second)
	for {
		var vms []struct {
			Name  string `json:"name"`
			State string `json:"state"`
			PID   int    `json:"pid"`
		}
		_ = json.Unmarshal([]byte(e.run("vm", "ls", "--json").stdout), &vms)
		if len(vms) == 1 && vms[0].State == "starting" && vmmRunning(e.dir) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the VM never reached the starting state with a VMM: %+v", vms)
		}
		time.Sleep(50 * time.Millisecond)
	}
	e.killDaemon()
	_ = create.Wait() // the CLI loses its daemon and fails
	e.daemon("start")
	vm := e.inspect("victim")
	if vm.State != "stopped" || vm.PID != 0 || vm.Network.TAP != "" {
		t.Fatalf("after the daemon was killed mid-start: state %q pid %d tap %q (%s)", vm.State, vm.PID, vm.Network.TAP, vm.LastExit)
	}
	waitNoVMM(t, e.dir)
	t.Logf("interrupted start recorded as: %s", vm.LastExit)
	e.must("vm", "start", "victim")
	if r := e.must("vm", "exec", "victim", "--", "echo", "alive"); r.stdout != "alive\n" {
		t.Fatalf("exec after recovery: %q", r.stdout)
	}
	e.must("vm", "rm", "--force", "victim")
	waitNoVMM(t, e.dir)
}

// killDaemon kill -9s the daemon and waits until it is gone (its socket and lock with it).
func (e *env) killDaemon() {
	e.t.Helper()
	var st struct {
		PID int `json:"pid"`
	}
	if err := json.Unmarshal([]byte(e.must("daemon", "status", "--json").stdout), &st); err != nil || st.PID == 0 {
		e.t.Fatalf("daemon status: %v", err)
	}
	if err := syscall.Kill(st.PID, syscall.SIGKILL); err != nil {
		e.t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", st.PID))
		if err != nil || strings.Contains(string(stat), ") Z ") {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("daemon pid %d still alive 10s after SIGKILL", st.PID)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// vmmRunning reports whether a qemu of this test's installation runs.
func vmmRunning(dir string) bool { return len(vmmProcesses(dir)) > 0 }

// vmmProc is a live qemu of this test's installation.
type vmmProc struct {
	pid     int
	cmdline string
}

func (p vmmProc) String() string { return fmt.Sprintf("%d: %s", p.pid, p.cmdline) }

func vmmProcesses(dir string) []vmmProc {
	var out []vmmProc
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		data, _ := os.ReadFile(p)
		if strings.Contains(string(data), "qemu-system") && strings.Contains(string(data), dir) {
			status, _ := os.ReadFile(filepath.Join(filepath.Dir(p), "status"))
			pid, err := strconv.Atoi(filepath.Base(filepath.Dir(p)))
			if err == nil && !strings.Contains(string(status), "State:\tZ") {
				out = append(out, vmmProc{pid: pid, cmdline: strings.ReplaceAll(string(data), "\x00", " ")})
			}
		}
	}
	return out
}

func waitNoVMM(t *testing.T, dir string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for vmmRunning(dir) {
		if time.Now().After(deadline) {
			t.Fatalf("VMM still running: %v", vmmProcesses(dir))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// checkSSHConfig: after `vm ssh-config --install` (twice: the second changes nothing), the
// system ssh and scp reach NAME.banger with no prompts, through the Include in
// ~/.ssh/config; `vm ssh-config NAME` alone works too; a key that is not the VM's pinned
// one is refused.
func (e *env) checkSSHConfig(name string) {
	e.t.Helper()
	sshBin, err := exec.LookPath("ssh")
	if err != nil {
		e.t.Fatal("no ssh client on PATH (openssh-client): the ssh-config check needs the system ssh")
	}
	e.must("vm", "ssh-config", "--install")
	userCfg := filepath.Join(e.dir, "home", ".ssh", "config")
	first, err := os.ReadFile(userCfg)
	if err != nil || strings.Count(string(first), "Include ") != 1 {
		e.t.Fatalf("~/.ssh/config after --install: %v\n%s", err, first)
	}
	e.must("vm", "ssh-config", "--install")
	if again, _ := os.ReadFile(userCfg); string(again) != string(first) {
		e.t.Fatalf("a second --install changed ~/.ssh/config:\n%s", again)
	}
	// ssh reads the config of the account's home, not $HOME: name the file with -F.
	sshCmd := func(bin string, args ...string) *exec.Cmd {
		cmd := e.command()
		cmd.Path, cmd.Args = bin, append([]string{bin}, args...)
		cmd.Stdin = nil
		return cmd
	}
	host := name + ".banger"
	r := e.runCmd(sshCmd(sshBin, "-F", userCfg, "-o", "BatchMode=yes", host, "echo", "via-config", "$(hostname)"), []string{"ssh", host})
	if r.code != 0 || r.stdout != "via-config "+name+"\n" {
		e.t.Fatalf("ssh %s through the installed config: exit %d, stdout %q, stderr %q", host, r.code, r.stdout, r.stderr)
	}
	local := filepath.Join(e.dir, "scp-src")
	if err := os.WriteFile(local, []byte("copied by scp\n"), 0o644); err != nil {
		e.t.Fatal(err)
	}
	if e.cred != nil {
		_ = os.Chown(local, int(e.cred.Uid), int(e.cred.Gid))
	}
	if scpBin, err := exec.LookPath("scp"); err == nil {
		if r := e.runCmd(sshCmd(scpBin, "-F", userCfg, "-o", "BatchMode=yes", local, host+":/root/scp-dst"), []string{"scp"}); r.code != 0 {
			e.t.Fatalf("scp through the installed config: exit %d: %s", r.code, r.stderr)
		}
		if got := e.must("vm", "exec", name, "--", "cat", "/root/scp-dst").stdout; got != "copied by scp\n" {
			e.t.Fatalf("scp copied %q", got)
		}
	}
	// One VM's block, printed, is a config of its own.
	block := filepath.Join(e.dir, "one-vm.ssh_config")
	if err := os.WriteFile(block, []byte(e.must("vm", "ssh-config", name).stdout), 0o644); err != nil {
		e.t.Fatal(err)
	}
	if r := e.runCmd(sshCmd(sshBin, "-F", block, "-o", "BatchMode=yes", host, "true"), []string{"ssh", host}); r.code != 0 {
		e.t.Fatalf("ssh with `vm ssh-config %s`: exit %d: %s", name, r.code, r.stderr)
	}
	// A host that is not banger's VM gets no key from banger: refused, not trusted.
	if r := e.runCmd(sshCmd(sshBin, "-F", userCfg, "-o", "BatchMode=yes", "nosuchvm.banger", "true"), []string{"ssh"}); r.code == 0 {
		e.t.Fatal("ssh to a VM that does not exist succeeded")
	}
}
