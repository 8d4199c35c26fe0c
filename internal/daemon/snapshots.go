package daemon

// User snapshots: a running VM's whole state (RAM and devices) and copies of its writable
// disks, taken while its guest is stopped for the save, then the guest runs on. New VMs
// restore it (vm create --from) with their own identity, as warm-start clones of a
// template do, and carry the snapshot's processes and files.
//
// A snapshot is a directory <data>/snapshots/<name>: snapshot.json (written last: a
// directory without it is an interrupted snapshot, a leak), the VMM's state, work.ext4 and
// layer.ext4. It is built under .staging-<name>-<rand> and renamed into place.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/banger-vm/banger/internal/api"
	"github.com/banger-vm/banger/internal/lifecycle"
	"github.com/banger-vm/banger/internal/revert"
	"github.com/banger-vm/banger/internal/store"
	"github.com/banger-vm/banger/internal/system"
	"github.com/banger-vm/banger/internal/vmm"
)

const (
	snapshotMetaName  = "snapshot.json"
	snapshotStateName = "state"
	snapshotStaging   = ".staging-"
	// maxSnapshotMeta bounds what is read of a snapshot.json.
	maxSnapshotMeta = 64 << 10
)

// snapshotMeta is a snapshot's snapshot.json.
type snapshotMeta struct {
	Name       string    `json:"name"`
	CreatedAt  time.Time `json:"created_at"`
	ParentVM   string    `json:"parent_vm"`
	ParentVMID string    `json:"parent_vm_id"`
	ImageID    string    `json:"image_id"`
	ImageName  string    `json:"image_name"`
	Kernel     string    `json:"kernel"`
	CPUs       int       `json:"cpus"`
	MemoryMiB  int       `json:"memory_mib"`
	DiskBytes  int64     `json:"disk_bytes"`
	Driver     string    `json:"driver"`
	Accel      string    `json:"accel,omitempty"`
	// Network says the VM had a NIC: its clones need one too (the same devices).
	Network bool    `json:"network"`
	SaveMS  float64 `json:"save_ms"`
	// SeparateMemory says the VMM wrote the guest's RAM apart from its state
	// (vmm.SavedMemoryPath of the state file: Firecracker); clones map that file.
	SeparateMemory bool `json:"separate_memory,omitempty"`
}

// userSnapshot is a registered snapshot, checked whole.
type userSnapshot struct {
	dir  string
	meta snapshotMeta
}

func (s *userSnapshot) snapshot() vmm.Snapshot {
	snap := vmm.Snapshot{Driver: s.meta.Driver, StateFile: filepath.Join(s.dir, snapshotStateName)}
	if s.meta.SeparateMemory {
		snap.MemoryFile = vmm.SavedMemoryPath(snap.StateFile)
	}
	return snap
}
func (s *userSnapshot) workDisk() string  { return filepath.Join(s.dir, "work.ext4") }
func (s *userSnapshot) layerDisk() string { return filepath.Join(s.dir, "layer.ext4") }

func (d *Daemon) snapshotsDir() string { return filepath.Join(d.opts.Layout.DataDir, "snapshots") }

func validSnapshotName(name string) error {
	if err := validVMName(name); err != nil {
		return api.Errorf(api.CodeBadRequest, "use 1-32 lowercase letters, digits and single '-', starting with a letter",
			"invalid snapshot name %q", name)
	}
	return nil
}

// loadSnapshot reads the snapshot called name. Its name is checked first: it becomes a path.
func (d *Daemon) loadSnapshot(name string) (*userSnapshot, error) {
	if err := validSnapshotName(name); err != nil {
		return nil, err
	}
	dir := filepath.Join(d.snapshotsDir(), name)
	f, err := os.Open(filepath.Join(dir, snapshotMetaName))
	if errors.Is(err, os.ErrNotExist) {
		return nil, api.Errorf(api.CodeNotFound, "list snapshots with `banger snapshot ls`", "snapshot %q not found", name)
	} else if err != nil {
		return nil, err
	}
	defer f.Close()
	var meta snapshotMeta
	b, err := io.ReadAll(io.LimitReader(f, maxSnapshotMeta+1))
	if err == nil && len(b) > maxSnapshotMeta {
		err = errors.New("larger than 64 KiB")
	}
	if err == nil {
		err = json.Unmarshal(b, &meta)
	}
	if err == nil && (meta.Name != name || meta.CPUs < 1 || meta.MemoryMiB < minMemoryMiB || meta.Driver == "" || validVMName(meta.ParentVM) != nil) {
		err = errors.New("fields missing or not this snapshot's")
	}
	if err != nil {
		return nil, api.Errorf(api.CodeInternal, "remove it with `banger snapshot rm "+name+"`", "snapshot %q is corrupt: %v", name, err)
	}
	s := &userSnapshot{dir: dir, meta: meta}
	for _, p := range []string{s.snapshot().StateFile, s.snapshot().MemoryFile, s.workDisk(), s.layerDisk()} {
		if p == "" {
			continue
		}
		if _, err := os.Stat(p); err != nil {
			return nil, api.Errorf(api.CodeInternal, "remove it with `banger snapshot rm "+name+"`", "snapshot %q is incomplete: %v", name, err)
		}
	}
	return s, nil
}

// snapshotVM saves the running VM as snapshot snapName; the VM runs on.
func (d *Daemon) snapshotVM(ctx context.Context, req api.SnapshotCreateRequest, progress progressFunc) (api.Snapshot, error) {
	if err := validSnapshotName(req.Snapshot); err != nil {
		return api.Snapshot{}, err
	}
	unlockSnap := d.lockVM("snapshot:" + req.Snapshot)
	defer unlockSnap()
	final := filepath.Join(d.snapshotsDir(), req.Snapshot)
	if _, err := os.Lstat(final); err == nil {
		return api.Snapshot{}, api.Errorf(api.CodeConflict, "pick another name, or remove it with `banger snapshot rm "+req.Snapshot+"`",
			"a snapshot named %q already exists", req.Snapshot)
	}
	vm, unlock, err := d.lockedVM(ctx, req.VM)
	if err != nil {
		return api.Snapshot{}, err
	}
	defer unlock()
	m := d.machine(vm.ID)
	if m == nil || vm.State != store.VMRunning {
		return api.Snapshot{}, api.Errorf(api.CodeConflict, "start it first (`banger vm start "+vm.Name+"`)", "VM %q is not running (%s)", vm.Name, vm.State)
	}
	rec, err := parseRecord(vm)
	if err != nil {
		return api.Snapshot{}, err
	}
	saver, ok := m.(vmm.StateSaver)
	_, canGoOn := m.(vmm.Continuer)
	if !ok || !canGoOn || rec.Builder {
		return api.Snapshot{}, api.Errorf(api.CodeUnavailable, "", "VM %q cannot be snapshotted on the %s driver", vm.Name, vm.VMM)
	}
	img, err := d.store.GetImage(ctx, vm.ImageID)
	if err != nil {
		return api.Snapshot{}, err
	}
	if err := os.MkdirAll(d.snapshotsDir(), 0o700); err != nil {
		return api.Snapshot{}, err
	}
	if err := checkFreeSpaceFor(d.snapshotsDir(), int64(rec.MemoryMiB)<<20+pauseSpaceSlack, "the snapshot's state",
		"free space there, or remove old snapshots (`banger snapshot ls`)"); err != nil {
		return api.Snapshot{}, err
	}
	timings := lifecycle.New("vm.snapshot", vm.ID, d.log, d.store).Deferred()
	defer timings.Flush(context.WithoutCancel(ctx))
	staging, err := os.MkdirTemp(d.snapshotsDir(), snapshotStaging+req.Snapshot+"-")
	if err != nil {
		return api.Snapshot{}, err
	}
	undo := revert.New()
	defer undo.Fail()
	undo.Add(func() { _ = os.RemoveAll(staging) })
	if err := runStage(ctx, timings, progress, stagePauseSync, func(ctx context.Context) error {
		return d.quiesceGuest(ctx, m, vm.Name)
	}); err != nil {
		return api.Snapshot{}, err
	}
	// Whatever happens next, the guest runs on (the save's driver or the copy's end let it)
	// and its filesystems are thawed.
	defer d.thawGuest(ctx, m, vm.Name)
	meta := snapshotMeta{Name: req.Snapshot, CreatedAt: time.Now().UTC(), ParentVM: vm.Name, ParentVMID: vm.ID, ImageID: img.ID,
		ImageName: img.Name, Kernel: rec.Kernel, CPUs: rec.CPUs, MemoryMiB: rec.MemoryMiB, DiskBytes: rec.DiskBytes,
		Driver: vm.VMM, Accel: rec.Accel, Network: rec.Network.TAP != ""}
	began := time.Now()
	// The guest stays stopped from the save until its disks are copied, so the copies are
	// the disks the saved state knows.
	err = runStage(ctx, timings, progress, stage{"saving the VM's state and disks", 10 * time.Minute, "check free space in the data dir"},
		func(ctx context.Context) error {
			if err := d.fault("snapshot save"); err != nil {
				return err
			}
			saved, err := saver.SaveState(ctx, filepath.Join(staging, snapshotStateName))
			if err != nil {
				return err
			}
			meta.SeparateMemory = saved.MemoryFile != ""
			defer func() {
				if cerr := continueGuest(context.WithoutCancel(ctx), m); cerr != nil {
					d.log.Warn("a snapshotted VM did not run on", "vm", vm.Name, "err", cerr)
				}
			}()
			for _, c := range [][2]string{{rec.workDisk(), "work.ext4"}, {rec.layerDisk(), "layer.ext4"}} {
				if _, err := system.CloneFile(ctx, c[0], filepath.Join(staging, c[1])); err != nil {
					return fmt.Errorf("copy the VM's disk: %w", err)
				}
			}
			return d.fault("snapshot disks")
		})
	if err != nil {
		return api.Snapshot{}, api.Errorf(api.CodeUnavailable, "check free space in the data dir; the VM runs on", "snapshot VM %q: %v", vm.Name, err)
	}
	meta.SaveMS = lifecycle.Millis(time.Since(began))
	b, _ := json.MarshalIndent(meta, "", "  ")
	if err := system.WriteFileAtomic(filepath.Join(staging, snapshotMetaName), b, 0o600); err != nil {
		return api.Snapshot{}, err
	}
	if err := system.SyncDir(staging); err != nil {
		return api.Snapshot{}, err
	}
	if err := os.Rename(staging, final); err != nil {
		return api.Snapshot{}, err
	}
	undo.Success()
	_ = system.SyncDir(d.snapshotsDir())
	s, err := d.loadSnapshot(req.Snapshot)
	if err != nil {
		return api.Snapshot{}, err
	}
	return d.snapshotToAPI(ctx, s), nil
}

// snapshotUsers lists the running VMs restored from the snapshot: its clones load their
// RAM from it, so it stays while any runs (a Firecracker clone maps the file).
func (d *Daemon) snapshotUsers(ctx context.Context, name string) []string {
	vms, err := d.store.ListVMs(ctx)
	if err != nil {
		return nil
	}
	var out []string
	for _, vm := range vms {
		rec, err := parseRecord(vm)
		if err != nil || rec.FromSnapshot != name {
			continue
		}
		if d.machine(vm.ID) != nil || vm.State == store.VMStarting {
			out = append(out, vm.Name)
		}
	}
	d.vms.mu.Lock()
	n := d.vms.cloning[name]
	d.vms.mu.Unlock()
	if n > 0 {
		out = append(out, fmt.Sprintf("%d being created", n))
	}
	return out
}

func (d *Daemon) snapshotToAPI(ctx context.Context, s *userSnapshot) api.Snapshot {
	m := s.meta
	out := api.Snapshot{Name: m.Name, CreatedAt: m.CreatedAt, ParentVM: m.ParentVM, Image: m.ImageName, Kernel: m.Kernel,
		CPUs: m.CPUs, MemoryMiB: m.MemoryMiB, DiskBytes: m.DiskBytes, Driver: m.Driver, Network: m.Network, Dir: s.dir,
		SaveMS: m.SaveMS, UsedBy: d.snapshotUsers(ctx, m.Name)}
	if out.UsedBy == nil {
		out.UsedBy = []string{}
	}
	ents, _ := os.ReadDir(s.dir)
	for _, e := range ents {
		var st unixStat
		if statFile(filepath.Join(s.dir, e.Name()), &st) == nil {
			out.SizeBytes += st.used
		}
	}
	return out
}

func (d *Daemon) listSnapshots(ctx context.Context) ([]api.Snapshot, error) {
	ents, err := os.ReadDir(d.snapshotsDir())
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	out := []api.Snapshot{}
	for _, e := range ents {
		if !e.IsDir() || validVMName(e.Name()) != nil {
			continue // staging, or not ours
		}
		s, err := d.loadSnapshot(e.Name())
		if err != nil {
			out = append(out, api.Snapshot{Name: e.Name(), Dir: filepath.Join(d.snapshotsDir(), e.Name()), Error: err.Error(), UsedBy: []string{}})
			continue
		}
		out = append(out, d.snapshotToAPI(ctx, s))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

func (d *Daemon) inspectSnapshot(ctx context.Context, name string) (api.Snapshot, error) {
	s, err := d.loadSnapshot(name)
	if err != nil {
		return api.Snapshot{}, err
	}
	return d.snapshotToAPI(ctx, s), nil
}

// removeSnapshot deletes a snapshot no running clone uses. A corrupt or incomplete one
// goes too: removing is how the user gets rid of it.
func (d *Daemon) removeSnapshot(ctx context.Context, name string) error {
	if err := validSnapshotName(name); err != nil {
		return err
	}
	unlock := d.lockVM("snapshot:" + name)
	defer unlock()
	dir := filepath.Join(d.snapshotsDir(), name)
	if _, err := os.Lstat(dir); errors.Is(err, os.ErrNotExist) {
		return api.Errorf(api.CodeNotFound, "list snapshots with `banger snapshot ls`", "snapshot %q not found", name)
	}
	if users := d.snapshotUsers(ctx, name); len(users) > 0 {
		return api.Errorf(api.CodeConflict, "stop or remove those VMs first",
			"snapshot %q is in use: running VMs restored from it: %v", name, users)
	}
	// Renamed aside first, so a half-deleted snapshot is never loaded.
	aside := filepath.Join(d.snapshotsDir(), snapshotStaging+"rm-"+name+"-"+randomHex(4))
	if err := os.Rename(dir, aside); err != nil {
		return err
	}
	return os.RemoveAll(aside)
}

// useSnapshot marks a create restoring the snapshot until the returned release.
func (d *Daemon) useSnapshot(name string) func() {
	d.vms.mu.Lock()
	defer d.vms.mu.Unlock()
	if d.vms.cloning == nil {
		d.vms.cloning = map[string]int{}
	}
	d.vms.cloning[name]++
	return func() {
		d.vms.mu.Lock()
		defer d.vms.mu.Unlock()
		if d.vms.cloning[name]--; d.vms.cloning[name] <= 0 {
			delete(d.vms.cloning, name)
		}
	}
}

// snapshotClone is a create --from's restore, on the VMM that took the snapshot.
func (d *Daemon) snapshotClone(p createParams) (*warmStart, error) {
	m := p.from.meta
	r, _, err := d.resumeDriver(&vmPaused{Driver: m.Driver, Accel: m.Accel})
	if err != nil {
		return nil, err
	}
	if m.Network && !d.networkReady() {
		return nil, api.Errorf(api.CodeUnavailable, "start the root helper (`banger doctor`)",
			"snapshot %q was taken with a network, and the root helper is not reachable: its clones need one", m.Name)
	}
	return &warmStart{src: p.from, snap: p.from, restorer: r, params: p,
		boot: api.VMBoot{Mode: api.BootWarm, Snapshot: m.Name, Reason: "restored from snapshot " + m.Name + " of VM " + m.ParentVM}}, nil
}
