//go:build integration

package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/banger-vm/banger/internal/api"
)

// TestSnapshotFork: vm fork of a VM with a running process into 3 clones: each has the
// process and the parent's files, with its own hostname, machine-id and host key, and the
// parent runs on. snapshot rm is refused while clones run and leaves nothing after they
// go; vm run --from runs a command in a clone; doctor --leaks is clean.
func TestSnapshotFork(t *testing.T) {
	e := setup(t)
	e.must("vm", "create", "par", "--image", "bb", "--memory", "512M", "--start")
	e.must("vm", "exec", "par", "--", "sh", "-c", "(setsid sleep 100000 </dev/null >/dev/null 2>&1 &) && echo from-parent > /root/marker")
	probe := "echo $(hostname) $(cat /etc/machine-id 2>/dev/null || echo none) $(pidof sleep) $(cat /root/marker)"
	parent := strings.Fields(e.must("vm", "exec", "par", "--", "sh", "-c", probe).stdout)
	if len(parent) != 4 {
		t.Fatalf("parent probe: %v", parent)
	}

	r := e.must("vm", "fork", "par", "k1", "k2", "k3", "--snapshot", "base", "--json")
	var fork api.ForkResult
	if err := json.Unmarshal([]byte(r.stdout), &fork); err != nil || len(fork.VMs) != 3 {
		t.Fatalf("fork output %v: %s", err, r.stdout)
	}
	t.Logf("fork of 3 clones: %.2f s, snapshot %d bytes", fork.Seconds, fork.Snapshot.SizeBytes)
	seen := map[string]bool{}
	for _, n := range []string{"k1", "k2", "k3"} {
		vm := e.inspectVM(n)
		if vm.State != "running" || vm.Boot == nil || vm.Boot.Snapshot != "base" {
			t.Fatalf("%s: state %s boot %+v", n, vm.State, vm.Boot)
		}
		got := strings.Fields(e.must("vm", "exec", n, "--", "sh", "-c", probe).stdout)
		if len(got) != 4 || got[0] != n || got[2] != parent[2] || got[3] != "from-parent" {
			t.Fatalf("clone %s probe %v, parent %v", n, got, parent)
		}
		if got[1] == parent[1] || seen[got[1]] {
			t.Fatalf("clone %s machine-id %s is not its own", n, got[1])
		}
		seen[got[1]] = true
		if vm.SSH.HostKey == "" || vm.SSH.HostKey == e.inspectVM("par").SSH.HostKey {
			t.Fatalf("clone %s host key %q is not its own", n, vm.SSH.HostKey)
		}
		if vm.Network.IP != "" && vm.Network.IP == e.inspectVM("par").Network.IP {
			t.Fatalf("clone %s has the parent's address", n)
		}
	}
	// The parent runs on, with its process.
	if got := strings.Fields(e.must("vm", "exec", "par", "--", "sh", "-c", probe).stdout); strings.Join(got, " ") != strings.Join(parent, " ") {
		t.Fatalf("parent after the fork: %v, was %v", got, parent)
	}

	// Listed with its size and users; rm refused while clones run.
	var snaps []api.Snapshot
	if err := json.Unmarshal([]byte(e.must("snapshot", "ls", "--json").stdout), &snaps); err != nil || len(snaps) != 1 ||
		snaps[0].Name != "base" || snaps[0].ParentVM != "par" || snaps[0].Image != "bb" || snaps[0].SizeBytes <= 0 || len(snaps[0].UsedBy) != 3 {
		t.Fatalf("snapshot ls: %v %+v", err, snaps)
	}
	// Its disks were copied while the guest's filesystems were frozen: clean filesystems.
	for _, disk := range []string{"work.ext4", "layer.ext4"} {
		p := filepath.Join(snaps[0].Dir, disk)
		out, err := exec.Command("dumpe2fs", "-h", p).CombinedOutput()
		if err != nil || strings.Contains(string(out), "needs_recovery") {
			t.Fatalf("snapshot disk %s is not a clean filesystem: %v\n%s", disk, err, out)
		}
	}
	if r := e.run("snapshot", "rm", "base"); r.code == 0 || !strings.Contains(r.stderr, "in use") {
		t.Fatalf("snapshot rm while clones run: %d %q", r.code, r.stderr)
	}
	// A command in a throwaway clone.
	if r := e.must("vm", "run", "--from", "base", "--", "cat", "/root/marker"); r.stdout != "from-parent\n" {
		t.Fatalf("vm run --from: %q", r.stdout)
	}
	if r := e.run("vm", "create", "bad", "--from", "base", "--memory", "1G"); r.code == 0 || !strings.Contains(r.stderr, "snapshot's image") {
		t.Fatalf("create --from with --memory: %d %q", r.code, r.stderr)
	}
	if r := e.run("vm", "create", "bad", "--from", "../../etc"); r.code == 0 || !strings.Contains(r.stderr, "invalid snapshot name") {
		t.Fatalf("create --from a path: %d %q", r.code, r.stderr)
	}
	e.must("vm", "rm", "--force", "k1", "k2", "k3")
	e.must("snapshot", "rm", "base")
	if _, err := os.Stat(snaps[0].Dir); !os.IsNotExist(err) {
		t.Fatalf("snapshot dir after rm: %v", err)
	}
	if r := e.run("snapshot", "inspect", "base"); r.code == 0 || !strings.Contains(r.stderr, "not found") {
		t.Fatalf("inspect after rm: %d %q", r.code, r.stderr)
	}
	e.must("vm", "rm", "--force", "par")
	e.requireNoLeaks()
}

// TestBenchPause: `banger bench pause` measures pause, resume and fork of a real guest and
// leaves no VM, snapshot or leak behind.
func TestBenchPause(t *testing.T) {
	e := setup(t)
	if r := e.run("bench", "pause", "--runs", "0"); r.code == 0 || !strings.Contains(r.stderr, "between 1 and") {
		t.Fatalf("--runs 0: %d %q", r.code, r.stderr)
	}
	r := e.must("bench", "pause", "--image", "bb", "--memory", "512M", "--runs", "2", "--clones", "2", "--json")
	var res api.BenchPauseResult
	if err := json.Unmarshal([]byte(r.stdout), &res); err != nil {
		t.Fatalf("bench output %v: %s", err, r.stdout)
	}
	if res.Runs != 2 || res.Clones != 2 || res.MemoryMiB != 512 || res.Pause.N != 2 || res.Resume.N != 2 || res.Fork.N != 2 ||
		res.Pause.MedianMS <= 0 || res.Resume.MedianMS <= 0 || res.Fork.MedianMS <= 0 || res.PausedBytes <= 0 || res.SnapshotBytes <= 0 || len(res.ResumeStages) == 0 {
		t.Fatalf("bench result %+v", res)
	}
	t.Logf("pause %.0f ms (%d bytes), resume %.0f ms, fork of 2 %.0f ms", res.Pause.MedianMS, res.PausedBytes, res.Resume.MedianMS, res.Fork.MedianMS)
	if out := e.must("vm", "ls", "--json").stdout; strings.TrimSpace(out) != "[]" {
		t.Fatalf("VMs left after the bench: %s", out)
	}
	if out := e.must("snapshot", "ls", "--json").stdout; strings.TrimSpace(out) != "[]" {
		t.Fatalf("snapshots left after the bench: %s", out)
	}
	e.requireNoLeaks()
}
