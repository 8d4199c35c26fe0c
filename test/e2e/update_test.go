//go:build integration

package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/banger-vm/banger/internal/api"
	"github.com/banger-vm/banger/internal/testsupport"
	"github.com/banger-vm/banger/internal/update"
	"github.com/banger-vm/banger/internal/update/updatetest"
)

// TestUpdateKeepsRunningVMs updates a banger whose daemon runs a real guest: after the
// update (binaries swapped, daemon restarted from the new binary, doctor passed) the guest
// is the same VMM process, still running, and the new daemon manages it: exec, stop,
// start, rm. A VM paused before the update is still paused after it and resumes with its
// processes.
func TestUpdateKeepsRunningVMs(t *testing.T) {
	assets := testsupport.GuestAssets(t)
	testsupport.RequireQEMU(t)
	key := updatetest.NewKey(t)
	buildDir := t.TempDir()
	oldB, err := updatetest.BuildRelease(filepath.Join(buildDir, "old"), "v1.0.0", "", key.Pub)
	if err != nil {
		t.Fatal(err)
	}
	newB, err := updatetest.BuildRelease(filepath.Join(buildDir, "new"), "v1.1.0", "", key.Pub)
	if err != nil {
		t.Fatal(err)
	}
	ch := updatetest.NewChannel(t)
	ch.Publish(t, "v1.1.0", updatetest.Tarball(t, newB), key.Priv)

	s := updatetest.NewSandbox(t, oldB, ch.URL(), "")
	s.Must("daemon", "start")
	t.Cleanup(func() {
		// Before the sandbox stops the daemon (cleanups run last-registered first).
		var vms []api.VM
		if json.Unmarshal([]byte(s.Run(nil, "vm", "ls", "--json").Stdout), &vms) == nil {
			for _, vm := range vms {
				s.Run(nil, "vm", "rm", "--force", vm.ID)
			}
		}
	})
	tarData, err := testsupport.BusyboxRootfsTar(assets.Busybox)
	if err != nil {
		t.Fatal(err)
	}
	tarPath := filepath.Join(s.Dir, "busybox.tar")
	if err := os.WriteFile(tarPath, tarData, 0o644); err != nil {
		t.Fatal(err)
	}
	s.Must("image", "kernel", "import", filepath.Join(assets.Dir, "kernel"))
	s.Must("image", "import", tarPath, "--name", "bb")
	s.Must("vm", "create", "upd", "--image", "bb", "--memory", "512M", "--start")
	s.Must("vm", "exec", "upd", "--", "sh", "-c", "echo before-update > /root/keep && sync")
	before := inspectVM(t, s, "upd")
	if before.PID == 0 || before.State != "running" {
		t.Fatalf("VM before the update: state %s pid %d", before.State, before.PID)
	}
	// A paused VM too: its saved processes survive the update.
	s.Must("vm", "create", "pz", "--image", "bb", "--memory", "512M", "--start")
	s.Must("vm", "exec", "pz", "--", "sh", "-c", "(setsid sleep 100000 </dev/null >/dev/null 2>&1 &)")
	sleepPID := s.Must("vm", "exec", "pz", "--", "sh", "-c", "pidof sleep").Stdout
	s.Must("vm", "pause", "pz")

	out := s.Run(nil, "update", "--json")
	if out.Code != 0 {
		t.Fatalf("update: exit %d\n%s\n%s", out.Code, out.Stdout, out.Stderr)
	}
	var res update.Result
	if err := json.Unmarshal([]byte(out.Stdout), &res); err != nil || res.Status != "updated" {
		t.Fatalf("update result %q: %v", out.Stdout, err)
	}
	t.Logf("update with a running VM: total %.0f ms: %+v", res.TotalMS, res.Stages)
	s.InstalledIs(newB)
	if st := s.Status(); st.Version != "v1.1.0" {
		t.Fatalf("daemon runs %s after the update", st.Version)
	}

	after := inspectVM(t, s, "upd")
	if after.PID != before.PID || after.State != "running" {
		t.Fatalf("VM after the update: state %s pid %d, want running with the same VMM pid %d", after.State, after.PID, before.PID)
	}
	if err := syscall.Kill(after.PID, 0); err != nil {
		t.Fatalf("VMM pid %d is gone: %v", after.PID, err)
	}
	if r := s.Must("vm", "exec", "upd", "--", "cat", "/root/keep"); r.Stdout != "before-update\n" {
		t.Fatalf("exec after the update: %q", r.Stdout)
	}
	if pz := inspectVM(t, s, "pz"); pz.State != "paused" || pz.Paused == nil {
		t.Fatalf("paused VM after the update: state %s, paused %+v", pz.State, pz.Paused)
	}
	s.Must("vm", "resume", "pz")
	if got := s.Must("vm", "exec", "pz", "--", "sh", "-c", "pidof sleep").Stdout; got != sleepPID {
		t.Fatalf("sleep after the update and a resume: pid %q, was %q", got, sleepPID)
	}
	s.Must("vm", "rm", "--force", "pz")
	s.Must("vm", "stop", "upd")
	s.Must("vm", "start", "upd")
	if r := s.Must("vm", "exec", "upd", "--", "cat", "/root/keep"); r.Stdout != "before-update\n" {
		t.Fatalf("exec after stop/start under the new daemon: %q", r.Stdout)
	}
	s.Must("vm", "rm", "--force", "upd")
	if r := s.Must("vm", "ls", "--json"); strings.Contains(r.Stdout, "upd") {
		t.Fatalf("vm rm left: %s", r.Stdout)
	}
}
