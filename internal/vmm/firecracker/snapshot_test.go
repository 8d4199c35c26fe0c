package firecracker

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/banger-vm/banger/internal/vmm"
)

// snapshotFixture is a fake firecracker VM started to be snapshotted, and its snapshot.
func snapshotFixture(t *testing.T, modes string) (*fixture, vmm.Snapshot) {
	t.Helper()
	f := newFixture(t, modes)
	tpl := filepath.Join(f.dir, "tpl")
	if err := os.Mkdir(tpl, 0o700); err != nil {
		t.Fatal(err)
	}
	f.spec.MemoryFile = filepath.Join(tpl, "memory")
	ctx := ctxT(t)
	m := f.start(t, ctx)
	// Its drives are links in the run dir, named as the snapshot will record them.
	for _, d := range f.spec.Drives {
		if got, err := os.Readlink(filepath.Join(f.spec.RunDir, "drive-"+d.ID)); err != nil || got != d.Path {
			t.Fatalf("drive %s link: %q, %v", d.ID, got, err)
		}
	}
	if _, err := m.Agent().WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	snap, err := m.(vmm.Snapshotter).Snapshot(ctx, tpl)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Kill(); err != nil {
		t.Fatal(err)
	}
	m.Close()
	assertNoLeftovers(t, f, m.PID())
	if links, _ := filepath.Glob(filepath.Join(f.spec.RunDir, "drive-*")); len(links) != 0 {
		t.Fatalf("drive links left after the VM exited: %v", links)
	}
	return f, snap
}

// cloneSpec is f's spec for a clone: its own run dir and writable disks, another TAP.
func cloneSpec(t *testing.T, f *fixture, name string) vmm.MachineSpec {
	spec := f.spec
	spec.MemoryFile = ""
	spec.RunDir = filepath.Join(f.dir, name)
	if err := os.Mkdir(spec.RunDir, 0o700); err != nil {
		t.Fatal(err)
	}
	spec.Drives = slices.Clone(f.spec.Drives)
	for i, d := range spec.Drives {
		if !d.ReadOnly {
			spec.Drives[i].Path = filepath.Join(f.dir, name+"-"+d.ID+".ext4")
			if err := os.WriteFile(spec.Drives[i].Path, []byte(name), 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	spec.NICs = []vmm.NIC{{TAP: "bgtap9"}}
	return spec
}

// TestSnapshotAndRestore: the snapshot is written where the daemon wants it; a clone is a
// fresh firecracker given PUT /snapshot/load, which reopens the recorded drive paths and
// finds the clone's own disks, gets the clone's TAP, and comes up with its agent on the
// clone's own socket. Every request matches Firecracker's API description.
func TestSnapshotAndRestore(t *testing.T) {
	c := loadContract(t)
	f, snap := snapshotFixture(t, "")
	tpl := filepath.Dir(snap.MemoryFile)
	if snap.Driver != Name || snap.StateFile != filepath.Join(tpl, snapshotStateName) {
		t.Fatalf("snapshot %+v", snap)
	}
	if fi, err := os.Stat(snap.MemoryFile); err != nil || fi.Size() != int64(f.spec.MemoryMiB)<<20 {
		t.Fatalf("memory file: %v %v", fi, err)
	}
	if tmp, _ := filepath.Glob(filepath.Join(tpl, "*.tmp")); len(tmp) != 0 {
		t.Fatalf("temporary files left: %v", tmp)
	}

	ctx := ctxT(t)
	spec := cloneSpec(t, f, "clone1")
	m, err := f.drv.Restore(ctx, spec, snap)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Agent().WaitReady(ctx); err != nil {
		t.Fatalf("the clone's agent: %v", err)
	}
	if m.State().MemoryFile != snap.MemoryFile || m.State().AgentSocket != filepath.Join(spec.RunDir, vsockSocketName) {
		t.Errorf("clone state %+v", m.State())
	}
	var load *SnapshotLoadParams
	var opened []string
	var sawPause, sawCreate bool
	for _, r := range f.requests(t) {
		switch {
		case r.Method == "FAKE":
			opened = nil
			json.Unmarshal(r.Body, &opened)
			continue
		case r.Method == "PATCH" && r.Path == "/vm":
			sawPause = sawPause || strings.Contains(string(r.Body), `"Paused"`)
		case r.Path == "/snapshot/create":
			sawCreate = true
			var p SnapshotCreateParams
			json.Unmarshal(r.Body, &p)
			if p.SnapshotType != SnapshotFull {
				t.Errorf("snapshot type %q", p.SnapshotType)
			}
		case r.Path == "/snapshot/load":
			load = &SnapshotLoadParams{}
			json.Unmarshal(r.Body, load)
		}
		if err := c.validate(r.Method, r.Path, r.Body); err != nil {
			t.Errorf("%s %s %s:\n%v", r.Method, r.Path, r.Body, err)
		}
	}
	if !sawPause || !sawCreate || load == nil {
		t.Fatalf("pause %v, create %v, load %v", sawPause, sawCreate, load)
	}
	if load.SnapshotPath != snap.StateFile || load.MemBackend == nil || load.MemBackend.BackendType != MemoryBackendFile ||
		load.MemBackend.BackendPath != snap.MemoryFile || !load.ResumeVM {
		t.Errorf("load %+v", load)
	}
	if len(load.NetworkOverrides) != 1 || load.NetworkOverrides[0] != (NetworkOverride{IfaceID: "eth0", HostDevName: "bgtap9"}) {
		t.Errorf("network overrides %+v", load.NetworkOverrides)
	}
	var want []string
	for _, d := range spec.Drives {
		real, _ := filepath.EvalSymlinks(d.Path)
		want = append(want, real)
	}
	if !slices.Equal(opened, want) {
		t.Errorf("the clone's firecracker opened %v, want its own drives %v", opened, want)
	}
	if err := m.Kill(); err != nil {
		t.Fatal(err)
	}
	m.Close()
	if left, _ := filepath.Glob(filepath.Join(spec.RunDir, "*")); slices.ContainsFunc(left, func(p string) bool {
		b := filepath.Base(p)
		return strings.HasPrefix(b, "drive-") || strings.HasSuffix(b, ".sock")
	}) {
		t.Errorf("left in the clone's run dir: %v", left)
	}
}

// TestRestoreRefuses: a restore that cannot work fails with a reason, before or after
// the spawn, and leaves no process, socket or link behind.
func TestRestoreRefuses(t *testing.T) {
	f, snap := snapshotFixture(t, "")
	ctx := ctxT(t)
	cases := []struct {
		name  string
		modes string
		edit  func(*vmm.MachineSpec, *vmm.Snapshot)
		want  string
	}{
		{"another VMM's snapshot", "", func(_ *vmm.MachineSpec, s *vmm.Snapshot) { s.Driver = "qemu" }, "not firecracker's"},
		{"another shape", "", func(sp *vmm.MachineSpec, _ *vmm.Snapshot) { sp.MemoryMiB = 512 }, "another shape"},
		{"missing state", "", func(_ *vmm.MachineSpec, s *vmm.Snapshot) { s.StateFile += ".gone" }, "no such file"},
		{"too old a firecracker", "version=1.10.1", nil, "network_overrides needs 1.13"},
		{"load refused", "fail=PUT /snapshot/load", nil, "fake: cannot PUT /snapshot/load"},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Setenv(fakeEnv, c.modes)
			drv := New(f.drv.cfg) // its own version cache: the modes differ
			spec, s := cloneSpec(t, f, "refused"+string(rune('a'+i))), snap
			if c.edit != nil {
				c.edit(&spec, &s)
			}
			m, err := drv.Restore(ctx, spec, s)
			if err == nil {
				m.Kill()
				t.Fatal("the restore succeeded")
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %q lacks %q", err, c.want)
			}
			left, _ := filepath.Glob(filepath.Join(spec.RunDir, "*"))
			for _, p := range left {
				if b := filepath.Base(p); strings.HasPrefix(b, "drive-") || strings.HasSuffix(b, ".sock") {
					t.Errorf("left behind: %s", p)
				}
			}
		})
	}
	// The snapshot itself is untouched by the refusals.
	if _, err := os.Stat(snap.StateFile); err != nil {
		t.Fatal(err)
	}
}

// TestSnapshotNeedsMemoryFile: a VM not started to be snapshotted refuses, and runs on.
func TestSnapshotNeedsMemoryFile(t *testing.T) {
	f := newFixture(t, "")
	ctx := ctxT(t)
	m := f.start(t, ctx)
	defer func() { m.Kill(); m.Close() }()
	if _, err := m.(vmm.Snapshotter).Snapshot(ctx, f.dir); err == nil || !strings.Contains(err.Error(), "MachineSpec.MemoryFile") {
		t.Fatalf("snapshot without a memory file: %v", err)
	}
	for _, r := range f.requests(t) {
		if r.Path == "/vm" || strings.HasPrefix(r.Path, "/snapshot") {
			t.Errorf("sent %s %s", r.Method, r.Path)
		}
	}
}

// TestSaveStateAndRestore: a VM started normally (no MemoryFile) is saved whole, its RAM
// beside its state (vm pause, vm snapshot); Continue lets it run on; the saved VM comes
// back from the files, and a clone of them opens its own disks. Every request matches
// Firecracker's API description.
func TestSaveStateAndRestore(t *testing.T) {
	c := loadContract(t)
	f := newFixture(t, "")
	ctx := ctxT(t)
	m := f.start(t, ctx)
	if _, err := m.Agent().WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	saved := filepath.Join(f.dir, "paused.state")
	snap, err := m.(vmm.StateSaver).SaveState(ctx, saved)
	if err != nil {
		t.Fatal(err)
	}
	if snap.Driver != Name || snap.StateFile != saved || snap.MemoryFile != vmm.SavedMemoryPath(saved) {
		t.Fatalf("saved %+v", snap)
	}
	if fi, err := os.Stat(snap.MemoryFile); err != nil || fi.Size() != int64(f.spec.MemoryMiB)<<20 {
		t.Fatalf("memory file: %v %v", fi, err)
	}
	if tmp, _ := filepath.Glob(filepath.Join(f.dir, "*.tmp")); len(tmp) != 0 {
		t.Fatalf("temporary files left: %v", tmp)
	}
	if err := m.(vmm.Continuer).Continue(ctx); err != nil {
		t.Fatal(err)
	}
	var states []string
	for _, r := range f.requests(t) {
		if r.Method == "PATCH" && r.Path == "/vm" {
			var v VM
			json.Unmarshal(r.Body, &v)
			states = append(states, string(v.State))
		}
		if r.Path == "/snapshot/create" {
			var p SnapshotCreateParams
			json.Unmarshal(r.Body, &p)
			if p.SnapshotType != SnapshotFull || p.SnapshotPath != saved+".tmp" || p.MemFilePath != snap.MemoryFile+".tmp" {
				t.Errorf("create %+v", p)
			}
		}
		if r.Method != "FAKE" {
			if err := c.validate(r.Method, r.Path, r.Body); err != nil {
				t.Errorf("%s %s %s:\n%v", r.Method, r.Path, r.Body, err)
			}
		}
	}
	if !slices.Equal(states, []string{string(VMPaused), string(VMResumed)}) {
		t.Fatalf("PATCH /vm states %v, want paused then resumed", states)
	}
	m.Kill()
	m.Close()

	// The same VM again, in its own run dir on its own disks (a resume).
	back, err := f.drv.Restore(ctx, f.spec, snap)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := back.Agent().WaitReady(ctx); err != nil {
		t.Fatalf("the resumed VM's agent: %v", err)
	}
	back.Kill()
	back.Close()

	// A clone of the same files opens the clone's disks, not the saved VM's.
	spec := cloneSpec(t, f, "clone1")
	cl, err := f.drv.Restore(ctx, spec, snap)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { cl.Kill(); cl.Close() }()
	var opened []string
	for _, r := range f.requests(t) {
		if r.Method == "FAKE" {
			opened = nil
			json.Unmarshal(r.Body, &opened)
		}
	}
	var want []string
	for _, d := range spec.Drives {
		real, _ := filepath.EvalSymlinks(d.Path)
		want = append(want, real)
	}
	if !slices.Equal(opened, want) {
		t.Errorf("the clone's firecracker opened %v, want its own drives %v", opened, want)
	}
}

// TestSaveStateFailsCleanly: a save Firecracker refuses leaves no file and the guest runs.
func TestSaveStateFailsCleanly(t *testing.T) {
	f := newFixture(t, "fail=PUT /snapshot/create")
	ctx := ctxT(t)
	m := f.start(t, ctx)
	defer func() { m.Kill(); m.Close() }()
	saved := filepath.Join(f.dir, "paused.state")
	if _, err := m.(vmm.StateSaver).SaveState(ctx, saved); err == nil || !strings.Contains(err.Error(), "cannot PUT /snapshot/create") {
		t.Fatalf("save: %v", err)
	}
	if left, _ := filepath.Glob(saved + "*"); len(left) != 0 {
		t.Fatalf("left after a failed save: %v", left)
	}
	reqs := f.requests(t)
	if last := reqs[len(reqs)-1]; last.Path != "/vm" || !strings.Contains(string(last.Body), string(VMResumed)) {
		t.Fatalf("last request %s %s %s: the guest was not let run again", last.Method, last.Path, last.Body)
	}
	if _, err := m.Agent().WaitReady(ctx); err != nil {
		t.Fatalf("the agent after a failed save: %v", err)
	}
}

// TestSaveStateNeedsARestorableFirecracker: a Firecracker too old to restore a VM on its
// own TAP refuses the save, and the guest is not even paused.
func TestSaveStateNeedsARestorableFirecracker(t *testing.T) {
	f := newFixture(t, "version=1.10.1")
	ctx := ctxT(t)
	m := f.start(t, ctx)
	defer func() { m.Kill(); m.Close() }()
	_, err := m.(vmm.StateSaver).SaveState(ctx, filepath.Join(f.dir, "paused.state"))
	if err == nil || !strings.Contains(err.Error(), "network_overrides needs 1.13") {
		t.Fatalf("save on firecracker 1.10: %v", err)
	}
	for _, r := range f.requests(t) {
		if r.Path == "/vm" || strings.HasPrefix(r.Path, "/snapshot") {
			t.Errorf("sent %s %s", r.Method, r.Path)
		}
	}
}

// TestResizeDrive: a grown drive is announced with PATCH /drives/{id} naming the drive's own
// path as Firecracker sees it, valid against Firecracker's API description.
func TestResizeDrive(t *testing.T) {
	c := loadContract(t)
	f := newFixture(t, "")
	ctx := ctxT(t)
	m := f.start(t, ctx)
	defer func() { m.Kill(); m.Close() }()
	if err := m.(vmm.DriveResizer).ResizeDrive(ctx, "work", 1<<30); err != nil {
		t.Fatal(err)
	}
	var patched bool
	for _, r := range f.requests(t) {
		if r.Method == "PATCH" && r.Path == "/drives/work" {
			patched = true
			var p PartialDrive
			json.Unmarshal(r.Body, &p)
			if p.DriveID != "work" || p.PathOnHost != "drive-work" {
				t.Errorf("patch %+v", p)
			}
			if err := c.validate(r.Method, r.Path, r.Body); err != nil {
				t.Errorf("%s %s %s:\n%v", r.Method, r.Path, r.Body, err)
			}
		}
	}
	if !patched {
		t.Fatal("no PATCH /drives/work sent")
	}
	if err := m.(vmm.DriveResizer).ResizeDrive(ctx, "nosuch", 1<<30); err == nil || !strings.Contains(err.Error(), "without drive links") {
		t.Fatalf("resize of a drive the VM does not have: %v", err)
	}
}
