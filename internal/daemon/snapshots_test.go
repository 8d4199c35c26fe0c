package daemon

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/banger-vm/banger/internal/api"
	"github.com/banger-vm/banger/internal/store"
	"github.com/banger-vm/banger/internal/vmm"
)

// TestFakeSnapshots: a snapshot of a running VM on the fake driver, its clones, and the
// refusals: hostile and taken names, rm while a clone runs, failures mid-snapshot (no
// snapshot or staging left, the VM runs on), corrupt snapshot.json files.
func TestFakeSnapshots(t *testing.T) {
	// Once with the RAM in the state (QEMU), once apart from it (Firecracker).
	for _, separate := range []bool{false, true} {
		t.Run(map[bool]string{false: "ram-in-state", true: "ram-apart"}[separate], func(t *testing.T) { testFakeSnapshots(t, separate) })
	}
}

func testFakeSnapshots(t *testing.T, separateMemory bool) {
	e := newFakeEnv(t)
	e.drv.separateMemory = separateMemory
	ctx := context.Background()
	must(e.create("par", true))
	snap := func(vm, name string) (api.Snapshot, error) {
		return e.d.snapshotVM(ctx, api.SnapshotCreateRequest{VM: vm, Snapshot: name}, noProgress)
	}
	for _, bad := range []string{"", "../x", "Snap", "a/b", strings.Repeat("a", 40), "-x"} {
		_, err := snap("par", bad)
		wantCode(t, err, api.CodeBadRequest, "invalid snapshot name")
		if bad != "" { // no --from at all is a normal create
			_, err = e.d.createVMFrom(ctx, "c", bad)
			wantCode(t, err, api.CodeBadRequest, "invalid snapshot name")
		}
	}
	_, err := snap("nosuch", "s1")
	wantCode(t, err, api.CodeNotFound, "not found")

	// Failures mid-snapshot leave nothing, and the guest runs on.
	for _, point := range []string{"snapshot save", "snapshot disks"} {
		e.failAt(point)
		_, err := snap("par", "s1")
		e.failAt("")
		if err == nil || !strings.Contains(err.Error(), "injected failure at "+point) {
			t.Fatalf("%s: %v", point, err)
		}
		if ents, _ := os.ReadDir(e.d.snapshotsDir()); len(ents) != 0 {
			t.Fatalf("%s left %v", point, ents)
		}
		vm, _ := e.record("par")
		if m, _ := e.d.machine(vm.ID).(*fakeMachine); m == nil || m.isPaused() || m.isFrozen() {
			t.Fatalf("%s: the VM does not run on", point)
		}
	}

	s, err := snap("par", "s1")
	if err != nil {
		t.Fatal(err)
	}
	vm, _ := e.record("par")
	if m := e.d.machine(vm.ID).(*fakeMachine); m.isPaused() || m.isFrozen() || vm.State != store.VMRunning {
		t.Fatal("the snapshotted VM does not run on")
	}
	if s.ParentVM != "par" || s.Image != "img" || s.SizeBytes <= 0 || len(s.UsedBy) != 0 {
		t.Fatalf("snapshot %+v", s)
	}
	_, err = snap("par", "s1")
	wantCode(t, err, api.CodeConflict, "already exists")
	memory := vmm.SavedMemoryPath(filepath.Join(e.d.snapshotsDir(), "s1", snapshotStateName))
	if _, err := os.Stat(memory); separateMemory != (err == nil) {
		t.Fatalf("snapshot RAM file: %v", err)
	}

	// A clone: the snapshot's shape; rm refused while it runs.
	_, err = e.d.createVM(ctx, api.VMCreateRequest{Name: "c", From: "s1", Memory: "2G", Start: true}, noProgress)
	wantCode(t, err, api.CodeBadRequest, "snapshot's image")
	c, err := e.d.createVMFrom(ctx, "c", "s1")
	if err != nil {
		t.Fatal(err)
	}
	cvm, crec := e.record("c")
	if m := e.d.machine(cvm.ID).(*fakeMachine); m.isFrozen() {
		t.Error("the clone's filesystems are still frozen")
	}
	if c.State != "running" || c.Boot == nil || c.Boot.Snapshot != "s1" || crec.FromSnapshot != "s1" {
		t.Fatalf("clone %s boot %+v from %q", c.State, c.Boot, crec.FromSnapshot)
	}
	wantCode(t, e.d.removeSnapshot(ctx, "s1"), api.CodeConflict, "in use")
	must(0, e.d.removeVM(ctx, api.VMRemoveRequest{Name: "c", Force: true}))
	must(0, e.d.removeSnapshot(ctx, "s1"))
	if ents, _ := os.ReadDir(e.d.snapshotsDir()); len(ents) != 0 {
		t.Fatalf("rm left %v", ents)
	}
	wantCode(t, e.d.removeSnapshot(ctx, "s1"), api.CodeNotFound, "not found")

	// Corrupt snapshot.json: refused to clone, shown broken, removable.
	for i, body := range []string{`{`, `{"name":"other","cpus":2,"memory_mib":512,"driver":"qemu"}`,
		`{"name":"s2","cpus":2,"memory_mib":512,"driver":"qemu","parent_vm":"\u001b]0;owned\u0007x"}`, strings.Repeat(" ", maxSnapshotMeta+1)} {
		must(snap("par", "s2"))
		must(0, os.WriteFile(filepath.Join(e.d.snapshotsDir(), "s2", snapshotMetaName), []byte(body), 0o600))
		_, err := e.d.createVMFrom(ctx, "c", "s2")
		wantCode(t, err, api.CodeInternal, "corrupt")
		list, err := e.d.listSnapshots(ctx)
		if err != nil || len(list) != 1 || list[0].Error == "" {
			t.Fatalf("case %d: ls %+v %v", i, list, err)
		}
		must(0, e.d.removeSnapshot(ctx, "s2"))
	}
	must(0, e.d.removeVM(ctx, api.VMRemoveRequest{Name: "par", Force: true}))
	e.assertNothingRuns("par")
}

func (d *Daemon) createVMFrom(ctx context.Context, name, snap string) (api.VM, error) {
	return d.createVM(ctx, api.VMCreateRequest{Name: name, From: snap, Start: true}, noProgress)
}
