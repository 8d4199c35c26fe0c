package daemon

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/banger-vm/banger/internal/api"
	"github.com/banger-vm/banger/internal/store"
	"github.com/banger-vm/banger/internal/vmm"
)

func noProgress(api.Progress) {}

// wantCode checks err is an api.Error of code.
func wantCode(t *testing.T, err error, code api.ErrorCode, text string) {
	t.Helper()
	var ae *api.Error
	if !errors.As(err, &ae) || ae.Code != code || !strings.Contains(err.Error(), text) {
		t.Fatalf("error %v: want %s mentioning %q", err, code, text)
	}
}

// TestFakePauseResume walks a VM through pause and resume on the fake driver: the state
// file is the VM while it is paused (no VMM, no TAP, the lease kept), stop and rm refuse
// without --force, a daemon restart keeps it paused, and resume restores that file.
func TestFakePauseResume(t *testing.T) {
	// Once with the RAM in the state (QEMU), once apart from it (Firecracker).
	for _, separate := range []bool{false, true} {
		t.Run(map[bool]string{false: "ram-in-state", true: "ram-apart"}[separate], func(t *testing.T) { testFakePauseResume(t, separate) })
	}
}

func testFakePauseResume(t *testing.T, separateMemory bool) {
	e := newFakeEnv(t)
	e.drv.separateMemory = separateMemory
	ctx := context.Background()
	if _, err := e.create("p", true); err != nil {
		t.Fatal(err)
	}
	_, before := e.record("p")
	out, err := e.d.pauseVM(ctx, "p", noProgress)
	if err != nil {
		t.Fatal(err)
	}
	vm, rec := e.record("p")
	if vm.State != store.VMPaused || out.State != "paused" || rec.Paused == nil || out.Paused == nil || out.Paused.SizeBytes == 0 {
		t.Fatalf("after pause: state %s, paused %+v, api %+v", vm.State, rec.Paused, out.Paused)
	}
	if _, err := os.Stat(rec.pausedState()); err != nil {
		t.Fatal(err)
	}
	memory := vmm.SavedMemoryPath(rec.pausedState())
	if _, err := os.Stat(memory); separateMemory != (err == nil) || (rec.Paused.MemoryFile == memory) != separateMemory {
		t.Fatalf("RAM file %q recorded, on disk: %v", rec.Paused.MemoryFile, err)
	}
	e.assertNothingRuns("p")
	if e.withNet {
		if l, err := e.d.store.GetLeaseByVM(ctx, vm.ID); err != nil || l.IP.String() != before.Network.IP || !rec.Paused.Network {
			t.Fatalf("lease after pause: %+v %v (had %s)", l, err, before.Network.IP)
		}
	}
	_, err = e.d.pauseVM(ctx, "p", noProgress)
	wantCode(t, err, api.CodeConflict, "already paused")
	_, err = e.d.stopVM(ctx, api.VMStopRequest{Name: "p"})
	wantCode(t, err, api.CodeConflict, "is paused")
	wantCode(t, e.d.removeVM(ctx, api.VMRemoveRequest{Name: "p"}), api.CodeConflict, "is paused")

	// A restarted daemon keeps it paused.
	e.restart()
	if vm, _ := e.record("p"); vm.State != store.VMPaused {
		t.Fatalf("after a daemon restart: %s", vm.State)
	}
	res, err := e.d.startVM(ctx, "p", noProgress)
	if err != nil {
		t.Fatal(err)
	}
	vm, rec = e.record("p")
	if vm.State != store.VMRunning || res.Boot == nil || res.Boot.Mode != api.BootResume || rec.Paused != nil || res.Paused != nil {
		t.Fatalf("after resume: state %s, boot %+v, paused %+v", vm.State, res.Boot, rec.Paused)
	}
	if got := e.drv.restored; len(got) != 1 || got[0] != rec.pausedState() {
		t.Fatalf("restored %v, want the VM's state file", got)
	}
	for _, p := range []string{rec.pausedState(), memory} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Fatalf("%s after resume: %v", p, err)
		}
	}
	if e.withNet && rec.Network.IP != before.Network.IP {
		t.Fatalf("resumed with address %s, had %s", rec.Network.IP, before.Network.IP)
	}
	var clock, thaw bool
	for _, st := range rec.Stages {
		clock = clock || st.Name == stageClock.name
		thaw = thaw || st.Name == stageThaw.name
	}
	if !clock || !thaw {
		t.Errorf("resume stages %+v lack %q or %q", rec.Stages, stageClock.name, stageThaw.name)
	}
	// It was saved frozen; the resume thawed it.
	if m := e.d.machine(vm.ID).(*fakeMachine); m.isFrozen() {
		t.Error("the resumed guest's filesystems are still frozen")
	}

	// Paused again, its state file lost: the next daemon stops it, saying why.
	must(e.d.pauseVM(ctx, "p", noProgress))
	_, rec = e.record("p")
	must(0, os.Remove(rec.pausedState()))
	e.restart()
	vm, rec = e.record("p")
	if vm.State != store.VMStopped || rec.Paused != nil || !strings.Contains(rec.LastExit, "is gone") {
		t.Fatalf("paused VM without its state: %s %q", vm.State, rec.LastExit)
	}

	if separateMemory {
		// A state whose RAM file is lost cannot resume either.
		must(e.d.startVM(ctx, "p", noProgress))
		must(e.d.pauseVM(ctx, "p", noProgress))
		must(0, os.Remove(memory))
		e.restart()
		if vm, rec := e.record("p"); vm.State != store.VMStopped || !strings.Contains(rec.LastExit, "is gone") {
			t.Fatalf("paused VM without its RAM file: %s %q", vm.State, rec.LastExit)
		}
	}

	// stop --force discards a saved state; the next start boots.
	must(e.d.startVM(ctx, "p", noProgress))
	must(e.d.pauseVM(ctx, "p", noProgress))
	must(e.d.stopVM(ctx, api.VMStopRequest{Name: "p", Force: true}))
	vm, rec = e.record("p")
	if _, err := os.Stat(rec.pausedState()); vm.State != store.VMStopped || !os.IsNotExist(err) || !strings.Contains(rec.LastExit, "discarded") {
		t.Fatalf("after stop --force of a paused VM: %s %q %v", vm.State, rec.LastExit, err)
	}
	if _, err := os.Stat(memory); !os.IsNotExist(err) {
		t.Fatalf("RAM file after stop --force: %v", err)
	}
	res, err = e.d.startVM(ctx, "p", noProgress)
	if err != nil || res.Boot.Mode != api.BootCold {
		t.Fatalf("start after discard: %+v %v", res.Boot, err)
	}
	// rm --force of a paused VM removes it and its state.
	must(e.d.pauseVM(ctx, "p", noProgress))
	must(0, e.d.removeVM(ctx, api.VMRemoveRequest{Name: "p", Force: true}))
	if _, err := os.Stat(rec.Dir); !os.IsNotExist(err) {
		t.Fatalf("VM dir after rm: %v", err)
	}
	e.assertNothingRuns("p")

	// Not running: nothing to pause.
	must(e.create("q", false))
	_, err = e.d.pauseVM(ctx, "q", noProgress)
	wantCode(t, err, api.CodeConflict, "not running")
}

// TestFakePauseFailsCleanly: a pause that fails at any point leaves the VM running as it
// was, its guest let run again, with no state file.
func TestFakePauseFailsCleanly(t *testing.T) {
	e := newFakeEnv(t)
	ctx := context.Background()
	must(e.create("p", true))
	for _, point := range []string{"stage " + stagePauseSync.name, "stage " + stagePauseSave.name, "pause save", "pause record"} {
		t.Run(point, func(t *testing.T) {
			e.failAt(point)
			defer e.failAt("")
			_, err := e.d.pauseVM(ctx, "p", noProgress)
			if err == nil || !strings.Contains(err.Error(), "injected failure at "+point) {
				t.Fatalf("pause: %v", err)
			}
			vm, rec := e.record("p")
			m, _ := e.d.machine(vm.ID).(*fakeMachine)
			if vm.State != store.VMRunning || rec.Pausing || rec.Paused != nil || m == nil || m.isPaused() || m.isFrozen() {
				t.Fatalf("after a failed pause: state %s, pausing %v, paused %+v, machine %v", vm.State, rec.Pausing, rec.Paused, m)
			}
			if _, err := os.Stat(rec.pausedState()); !os.IsNotExist(err) {
				t.Fatalf("state file after a failed pause: %v", err)
			}
		})
	}
	// Too little room for the state: refused before the guest stops.
	_, rec := e.record("p")
	rec.MemoryMiB = 64 << 20 // 64 TiB: more than any test disk
	vm, _ := e.record("p")
	must(e.d.putRecord(ctx, vm, rec))
	_, err := e.d.pauseVM(ctx, "p", noProgress)
	wantCode(t, err, api.CodeUnavailable, "not enough free space")
}

// TestFakeResumeFailsCleanly: a resume that fails at any point leaves the VM paused with
// its state intact and nothing running; the next resume works. A guest that does not take
// the clock still resumes.
func TestFakeResumeFailsCleanly(t *testing.T) {
	e := newFakeEnv(t)
	ctx := context.Background()
	must(e.create("p", true))
	must(e.d.pauseVM(ctx, "p", noProgress))
	points := []string{"resume restore", "store vmm", "store running"}
	for _, s := range e.d.startSteps() {
		if s.name != stageIdentity && s.name != stageClock.name && s.name != stageThaw.name && s.name != stageSSH {
			points = append(points, "stage "+s.name)
		}
	}
	for _, point := range points {
		t.Run(point, func(t *testing.T) {
			e.failAt(point)
			defer e.failAt("")
			_, err := e.d.startVM(ctx, "p", noProgress)
			if err == nil || !strings.Contains(err.Error(), "injected failure at "+point) {
				t.Fatalf("resume: %v", err)
			}
			e.assertNothingRuns("p")
			vm, rec := e.record("p")
			if vm.State != store.VMPaused || rec.Paused == nil || !strings.HasPrefix(rec.LastExit, "resume failed: ") {
				t.Fatalf("after a failed resume: state %s, paused %+v, last exit %q", vm.State, rec.Paused, rec.LastExit)
			}
			if _, err := os.Stat(rec.pausedState()); err != nil {
				t.Fatal(err)
			}
		})
	}
	// A guest that does not take the clock, or whose thaw fails (its agent thaws by
	// itself), still resumes.
	for _, st := range []stage{stageClock, stageThaw} {
		e.failAt("stage " + st.name)
		if _, err := e.d.startVM(ctx, "p", noProgress); err != nil {
			t.Fatalf("resume with %s failing: %v", st.name, err)
		}
		e.failAt("")
		if vm, _ := e.record("p"); vm.State != store.VMRunning {
			t.Fatalf("state %s", vm.State)
		}
		must(e.d.pauseVM(ctx, "p", noProgress))
	}
	must(e.d.startVM(ctx, "p", noProgress))
}

// TestFakeInterruptedPause: a daemon killed mid-save (the guest stopped for it, the record
// still running with Pausing) lets the VM run on when the next daemon starts, and drops the
// partial state; one killed after the state was whole but before it recorded the pause, its
// VMM gone too (a host reboot), finds the VM paused.
func TestFakeInterruptedPause(t *testing.T) {
	e := newFakeEnv(t)
	ctx := context.Background()
	must(e.create("p", true))
	vm, rec := e.record("p")
	m := e.d.machine(vm.ID).(*fakeMachine)
	must(m.SaveState(ctx, rec.pausedState()+".tmp"))
	rec.Pausing = true
	must(e.d.putRecord(ctx, vm, rec))
	e.restart()
	vm, rec = e.record("p")
	if vm.State != store.VMRunning || rec.Pausing || m.isPaused() || m.isFrozen() || e.d.machine(vm.ID) == nil {
		t.Fatalf("after an interrupted pause: state %s, pausing %v, guest stopped %v", vm.State, rec.Pausing, m.isPaused())
	}
	if _, err := os.Stat(rec.pausedState() + ".tmp"); !os.IsNotExist(err) {
		t.Fatalf("partial state after an interrupted pause: %v", err)
	}

	must(m.SaveState(ctx, rec.pausedState()))
	rec.Pausing = true
	must(e.d.putRecord(ctx, vm, rec))
	must(0, e.d.Shutdown(ctx))
	e.drv.crash()
	e.start()
	vm, rec = e.record("p")
	if vm.State != store.VMPaused || rec.Paused == nil || rec.Pausing {
		t.Fatalf("after a pause interrupted by a reboot: state %s, paused %+v", vm.State, rec.Paused)
	}
	must(e.d.startVM(ctx, "p", noProgress))
	if vm, _ := e.record("p"); vm.State != store.VMRunning {
		t.Fatalf("state %s", vm.State)
	}
}
