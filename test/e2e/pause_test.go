//go:build integration

package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/banger-vm/banger/internal/api"
)

// guestProbe prints what a pause must keep: the pid of the sleep started before it, the
// /dev/shm file, an answer from the HTTP listener started before it, and the boot id.
const guestProbe = `pidof sleep; cat /dev/shm/kept; wget -q -O - http://127.0.0.1:8080/hello.txt; cat /proc/sys/kernel/random/boot_id`

// TestPauseResume: vm pause then vm resume keep a guest's processes, tmpfs and TCP
// listener (and it is the same boot); so does a pause across a daemon kill -9 with its VMMs
// killed (a host reboot); 100 MB written under /root keep their sha256 over 5 pause/resume
// rounds and a stop/start after them; stop and rm of a paused VM refuse without --force.
func TestPauseResume(t *testing.T) {
	e := setup(t)
	e.must("vm", "create", "pz", "--image", "bb", "--memory", "512M", "--start")
	e.must("vm", "exec", "pz", "--", "sh", "-c",
		`mkdir -p /tmp/www && echo hello-from-before > /tmp/www/hello.txt && httpd -p 127.0.0.1:8080 -h /tmp/www &&
		 (setsid sleep 100000 </dev/null >/dev/null 2>&1 &) &&
		 { mountpoint -q /dev/shm || { mkdir -p /dev/shm && mount -t tmpfs tmpfs /dev/shm; }; } && echo shm-kept > /dev/shm/kept`)
	want := e.must("vm", "exec", "pz", "--", "sh", "-c", guestProbe).stdout
	lines := strings.Split(strings.TrimSpace(want), "\n")
	if len(lines) != 4 || lines[1] != "shm-kept" || lines[2] != "hello-from-before" {
		t.Fatalf("guest before the pause: %q", want)
	}
	vmBefore := e.inspectVM("pz")
	// While it runs, its journaled work disk is marked as needing recovery (the check
	// below, after a pause, can tell a frozen filesystem from one that was not).
	if !diskNeedsRecovery(t, vmBefore, "work") {
		t.Fatal("a running VM's work disk does not say needs_recovery: the freeze check would prove nothing")
	}

	check := func(when string) {
		t.Helper()
		if got := e.must("vm", "exec", "pz", "--", "sh", "-c", guestProbe).stdout; got != want {
			t.Fatalf("%s: guest has\n%s\nwant\n%s", when, got, want)
		}
	}
	pause := func() api.VM {
		t.Helper()
		r := e.must("vm", "pause", "pz")
		if !strings.Contains(r.stdout, "paused pz") {
			t.Fatalf("pause said %q", r.stdout)
		}
		vm := e.inspectVM("pz")
		if vm.State != "paused" || vm.PID != 0 || vm.Paused == nil || vm.Paused.SizeBytes <= 0 || vm.Network.TAP != "" {
			t.Fatalf("after pause: state %s pid %d paused %+v tap %q", vm.State, vm.PID, vm.Paused, vm.Network.TAP)
		}
		// The guest's writable filesystems were frozen for the save: their disks are clean
		// filesystems, with no journal to replay if the state were discarded.
		for _, role := range []string{"work", "layer"} {
			if diskNeedsRecovery(t, vm, role) {
				t.Fatalf("the paused VM's %s disk needs journal recovery: its filesystem was not frozen for the save", role)
			}
		}
		if out := e.must("vm", "inspect", "pz").stdout; !strings.Contains(out, "paused:    since") || !strings.Contains(out, "banger vm resume pz") {
			t.Fatalf("vm inspect of a paused VM:\n%s", out)
		}
		waitNoVMM(t, e.dir)
		return vm
	}
	resume := func() {
		t.Helper()
		r := e.must("vm", "resume", "pz")
		vm := e.inspectVM("pz")
		if vm.State != "running" || vm.Boot == nil || vm.Boot.Mode != api.BootResume || vm.Paused != nil {
			t.Fatalf("after resume: state %s boot %+v paused %+v\n%s", vm.State, vm.Boot, vm.Paused, r.stderr)
		}
		if vm.Network.IP != vmBefore.Network.IP {
			t.Fatalf("resumed with address %q, had %q", vm.Network.IP, vmBefore.Network.IP)
		}
		if _, err := os.Stat(filepath.Join(vm.Dir, "paused.state")); !os.IsNotExist(err) {
			t.Fatalf("saved state left after resume: %v", err)
		}
		// Thawed: a write to /root completes (frozen, it would wait for the agent's own thaw
		// a minute later, past the exec's deadline).
		if out := e.must("vm", "exec", "pz", "--", "busybox", "timeout", "20", "sh", "-c", "echo thawed > /root/thaw-probe && cat /root/thaw-probe").stdout; out != "thawed\n" {
			t.Fatalf("write after resume: %q", out)
		}
	}

	// 1. Pause, then resume: the same processes, files and listener; the clock is set.
	paused := pause()
	t.Logf("paused: %d bytes of state", paused.Paused.SizeBytes)
	time.Sleep(3 * time.Second)
	resume()
	check("after vm resume")
	if out := e.must("vm", "exec", "pz", "--", "date", "+%s").stdout; !clockNear(out, time.Now(), 5*time.Second) {
		t.Fatalf("guest clock after resume %q, host %d", out, time.Now().Unix())
	}
	if r := e.run("vm", "pause", "nosuch"); r.code == 0 || !strings.Contains(r.stderr, "not found") {
		t.Fatalf("pause of a missing VM: %d %q", r.code, r.stderr)
	}

	// Stop and rm of a paused VM refuse without --force (no terminal to ask on).
	pause()
	if r := e.run("vm", "stop", "pz"); r.code == 0 || !strings.Contains(r.stderr, "is paused") || !strings.Contains(r.stderr, "--force") {
		t.Fatalf("stop of a paused VM: %d %q", r.code, r.stderr)
	}
	if r := e.run("vm", "rm", "pz"); r.code == 0 || !strings.Contains(r.stderr, "is paused") {
		t.Fatalf("rm of a paused VM: %d %q", r.code, r.stderr)
	}

	// 2. Paused, the daemon and every VMM killed (a host reboot), a new daemon: the same.
	e.killDaemon()
	for _, p := range vmmProcesses(e.dir) {
		_ = syscall.Kill(p.pid, syscall.SIGKILL)
	}
	e.daemon("start")
	if vm := e.inspectVM("pz"); vm.State != "paused" {
		t.Fatalf("after the daemon's kill -9: state %s (%s)", vm.State, vm.LastExit)
	}
	resume()
	check("after a daemon kill -9 and resume")

	// 3. 100 MB under /root, 5 rounds of pause and resume: the same bytes; they are on
	// the disk, too (a stop and start after the rounds).
	sum := e.must("vm", "exec", "pz", "--", "sh", "-c",
		"dd if=/dev/urandom of=/root/big bs=1M count=100 2>/dev/null && sha256sum /root/big").stdout
	if len(strings.Fields(sum)) != 2 {
		t.Fatalf("sha256sum: %q", sum)
	}
	for i := 0; i < 5; i++ {
		pause()
		resume()
	}
	if got := e.must("vm", "exec", "pz", "--", "sha256sum", "/root/big").stdout; got != sum {
		t.Fatalf("after 5 pause/resume rounds: %q, want %q", got, sum)
	}
	check("after 5 rounds")
	e.must("vm", "restart", "pz")
	if got := e.must("vm", "exec", "pz", "--", "sha256sum", "/root/big").stdout; got != sum {
		t.Fatalf("after the rounds and a restart: %q, want %q", got, sum)
	}

	// stop --force discards a saved state; rm --force removes a paused VM.
	pause()
	e.must("vm", "stop", "--force", "pz")
	if vm := e.inspectVM("pz"); vm.State != "stopped" || !strings.Contains(vm.LastExit, "discarded") {
		t.Fatalf("stop --force of a paused VM: %s %q", vm.State, vm.LastExit)
	}
	e.must("vm", "start", "pz")
	pause()
	e.must("vm", "rm", "--force", "pz")
	e.requireNoLeaks()
}

func clockNear(out string, host time.Time, within time.Duration) bool {
	sec, err := strconv.ParseInt(strings.TrimSpace(out), 10, 64)
	if err != nil {
		return false
	}
	d := time.Duration(host.Unix()-sec) * time.Second
	return d < within && d > -within
}

// diskNeedsRecovery reads the superblock of vm's disk of role: a mounted journaled ext4
// says needs_recovery; a frozen (or cleanly unmounted) one does not.
func diskNeedsRecovery(t *testing.T, vm api.VM, role string) bool {
	t.Helper()
	for _, d := range vm.Disks {
		if d.Role != role {
			continue
		}
		out, err := exec.Command("dumpe2fs", "-h", d.Path).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "Filesystem features:") {
			t.Fatalf("dumpe2fs %s: %v\n%s", d.Path, err, out)
		}
		return strings.Contains(string(out), "needs_recovery")
	}
	t.Fatalf("VM %s has no %s disk: %+v", vm.Name, role, vm.Disks)
	return false
}
