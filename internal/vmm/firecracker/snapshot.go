package firecracker

// Snapshots and clones (docs/snapshotting/snapshot-support.md upstream). A VM started with
// MachineSpec.MemoryFile is saved by pausing it and PUT /snapshot/create (Full): Firecracker
// writes the guest's RAM to the memory file and its device state to a state file. A clone
// is a fresh Firecracker given PUT /snapshot/load with the memory file as a File backend
// (mapped privately: clones share its pages), its own TAPs as network_overrides, and
// resume_vm.
//
// Firecracker reopens the drives and the vsock socket at the paths recorded in the
// snapshot. Each clone gets those same paths in its own view: under the jailer they are
// /drive-<id> and /vsock.sock in the clone's chroot; without it they are relative names
// ("drive-<id>" links, "vsock.sock") that Firecracker resolves in its working directory,
// the VM's run dir, so each clone opens its own disks and binds its own socket.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"

	"github.com/banger-vm/banger/internal/agent"
	"github.com/banger-vm/banger/internal/revert"
	"github.com/banger-vm/banger/internal/system"
	"github.com/banger-vm/banger/internal/vmm"
	"github.com/banger-vm/banger/internal/vmm/proc"
)

var (
	_ vmm.Snapshotter   = (*machine)(nil)
	_ vmm.StateSaver    = (*machine)(nil)
	_ vmm.Continuer     = (*machine)(nil)
	_ vmm.DriveResizer  = (*machine)(nil)
	_ vmm.Restorer      = (*Driver)(nil)
	_ vmm.RestoreProber = (*Driver)(nil)
)

const (
	// snapshotStateName is the state file's name in a snapshot directory.
	snapshotStateName = "firecracker-state"
	// Names of the snapshot files inside a jail (Firecracker sees nothing outside it).
	jailStateName  = "snapshot-state"
	jailMemoryName = "snapshot-memory"
	// driveLinkPrefix names a drive's link in the run dir (or a drive's hard link in a
	// jail, see stageJail).
	driveLinkPrefix = "drive-"
)

// RestoreMinVersion is the oldest Firecracker whose PUT /snapshot/load takes
// network_overrides, which give a clone its own TAP.
var RestoreMinVersion = [3]int{1, 13, 0}

// linkDrives points lay's drives at links in the run dir, named by drive id, so the
// paths recorded in a snapshot are the same for every clone (see the package comment).
func linkDrives(lay *layout, spec vmm.MachineSpec) error {
	lay.driveLinks = true
	lay.vsockGuest = vsockSocketName
	lay.driveGuest = nil
	for _, dr := range spec.Drives {
		name := driveLinkPrefix + dr.ID
		link := filepath.Join(spec.RunDir, name)
		if err := os.Remove(link); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("drive link: %w", err)
		}
		abs, err := filepath.Abs(dr.Path)
		if err != nil {
			return err
		}
		if err := os.Symlink(abs, link); err != nil {
			return fmt.Errorf("drive link: %w", err)
		}
		lay.driveGuest = append(lay.driveGuest, name)
	}
	return nil
}

// unlinkDrives removes the drive links of a run dir.
func unlinkDrives(runDir string) {
	links, _ := filepath.Glob(filepath.Join(runDir, driveLinkPrefix+"*"))
	for _, l := range links {
		if fi, err := os.Lstat(l); err == nil && fi.Mode()&os.ModeSymlink != 0 {
			os.Remove(l)
		}
	}
}

// Snapshot pauses the guest and writes its RAM to the VM's memory file and its state into
// dir. The VM stays paused; if the save fails, the guest is resumed and the partial files
// are removed.
func (m *machine) Snapshot(ctx context.Context, dir string) (vmm.Snapshot, error) {
	if m.st.MemoryFile == "" {
		return vmm.Snapshot{}, errors.New("firecracker snapshot: the VM was not started to be snapshotted (MachineSpec.MemoryFile)")
	}
	return m.save(ctx, filepath.Join(dir, snapshotStateName), m.st.MemoryFile)
}

// SaveState implements vmm.StateSaver: Firecracker keeps the guest's RAM apart from its
// device state, so the RAM goes to vmm.SavedMemoryPath(path) beside it, and a restore maps
// that file. The VM stays paused (Continue lets it run again).
func (m *machine) SaveState(ctx context.Context, path string) (vmm.Snapshot, error) {
	// A state this Firecracker cannot load again would strand the VM: refuse while it runs.
	if err := m.d.CanRestore(ctx); err != nil {
		return vmm.Snapshot{}, fmt.Errorf("firecracker save: the VM could not be restored from it: %w", err)
	}
	return m.save(ctx, path, vmm.SavedMemoryPath(path))
}

// Continue implements vmm.Continuer: it resumes a guest paused for a save. Resuming a
// running guest is accepted by Firecracker too.
func (m *machine) Continue(ctx context.Context) error {
	if err := m.api.PatchVM(ctx, VMResumed); err != nil {
		return fmt.Errorf("firecracker: resume the guest: %w", err)
	}
	return nil
}

// save pauses the guest and has Firecracker write a full snapshot: its state to state and
// its RAM to memory, each appearing whole (written beside, synced, renamed). On failure
// the guest runs again and the partial files are gone.
func (m *machine) save(ctx context.Context, state, memory string) (_ vmm.Snapshot, err error) {
	// Where Firecracker writes (as it sees the paths), and where that is on the host.
	fcState, fcMemory := state+".tmp", memory+".tmp"
	hostState, hostMemory := fcState, fcMemory
	if m.lay.chrootRoot != "" {
		fcState, fcMemory = "/"+jailStateName, "/"+jailMemoryName
		hostState, hostMemory = filepath.Join(m.lay.chrootRoot, jailStateName), filepath.Join(m.lay.chrootRoot, jailMemoryName)
	}
	if err := m.api.PatchVM(ctx, VMPaused); err != nil {
		return vmm.Snapshot{}, fmt.Errorf("firecracker snapshot: pause: %w", err)
	}
	defer func() {
		if err != nil {
			os.Remove(hostState)
			os.Remove(hostMemory)
			if rerr := m.Continue(context.WithoutCancel(ctx)); rerr != nil {
				err = errors.Join(err, rerr)
			}
		}
	}()
	if err := m.api.CreateSnapshot(ctx, SnapshotCreateParams{SnapshotType: SnapshotFull, SnapshotPath: fcState, MemFilePath: fcMemory}); err != nil {
		return vmm.Snapshot{}, fmt.Errorf("firecracker snapshot: %w", err)
	}
	for _, mv := range [][2]string{{hostMemory, memory}, {hostState, state}} {
		if err := system.SyncFile(mv[0]); err != nil {
			return vmm.Snapshot{}, fmt.Errorf("firecracker snapshot: %w", err)
		}
		if err := os.Rename(mv[0], mv[1]); err != nil {
			if errors.Is(err, syscall.EXDEV) {
				return vmm.Snapshot{}, fmt.Errorf("firecracker snapshot: the jailer's chroot base and %s are on different filesystems: put them on one", filepath.Dir(mv[1]))
			}
			return vmm.Snapshot{}, fmt.Errorf("firecracker snapshot: %w", err)
		}
	}
	for _, dir := range []string{filepath.Dir(state), filepath.Dir(memory)} {
		if err := system.SyncDir(dir); err != nil {
			return vmm.Snapshot{}, fmt.Errorf("firecracker snapshot: %w", err)
		}
	}
	return vmm.Snapshot{Driver: Name, MemoryFile: memory, StateFile: state}, nil
}

// versionCache remembers each binary's version: a restore must not spawn
// `firecracker --version` each time.
type versionCache struct {
	mu sync.Mutex
	v  map[string]versionSeen
}

type versionSeen struct {
	v   [3]int
	err error
}

// CanRestore implements vmm.RestoreProber: restores need RestoreMinVersion.
func (d *Driver) CanRestore(ctx context.Context) error {
	bin, err := d.binary()
	if err != nil {
		return err
	}
	d.versions.mu.Lock()
	defer d.versions.mu.Unlock()
	seen, ok := d.versions.v[bin]
	if !ok {
		seen.v, _, seen.err = BinaryVersion(ctx, bin)
		if d.versions.v == nil {
			d.versions.v = map[string]versionSeen{}
		}
		d.versions.v[bin] = seen
	}
	if seen.err != nil {
		return seen.err
	}
	for i := range seen.v {
		if seen.v[i] != RestoreMinVersion[i] {
			if seen.v[i] < RestoreMinVersion[i] {
				return fmt.Errorf("firecracker %d.%d.%d cannot give a restored VM its own TAP (network_overrides needs %d.%d)",
					seen.v[0], seen.v[1], seen.v[2], RestoreMinVersion[0], RestoreMinVersion[1])
			}
			break
		}
	}
	return nil
}

// Restore starts a clone of snap. spec's shape must be the snapshotted VM's; its drives,
// NICs and run dir are the clone's own. If any step fails, the clone is killed and its
// sockets, links and jail removed.
func (d *Driver) Restore(ctx context.Context, spec vmm.MachineSpec, snap vmm.Snapshot) (_ vmm.Machine, err error) {
	if snap.Driver != Name {
		return nil, fmt.Errorf("firecracker restore: the snapshot is %q's, not firecracker's", snap.Driver)
	}
	if err := spec.Validate(); err != nil {
		return nil, err
	}
	if spec.AgentPort == 0 {
		spec.AgentPort = agent.DefaultVsockPort
	}
	fi, err := os.Stat(snap.MemoryFile)
	if err != nil {
		return nil, fmt.Errorf("firecracker restore: memory file: %w", err)
	}
	if want := int64(spec.MemoryMiB) << 20; fi.Size() != want {
		return nil, fmt.Errorf("firecracker restore: memory file %s is %d bytes, the VM has %d MiB: the snapshot is of another shape", snap.MemoryFile, fi.Size(), spec.MemoryMiB)
	}
	if _, err := os.Stat(snap.StateFile); err != nil {
		return nil, fmt.Errorf("firecracker restore: %w", err)
	}
	if err := d.CanRestore(ctx); err != nil {
		return nil, fmt.Errorf("firecracker restore: %w", err)
	}
	bin, err := d.binary()
	if err != nil {
		return nil, err
	}
	lay, argv, err := d.spawnLayout(bin, spec)
	if err != nil {
		return nil, err
	}
	fcState, fcMemory := snap.StateFile, snap.MemoryFile
	undo := revert.New()
	defer undo.Fail()
	if lay.chrootRoot != "" {
		undo.Add(func() { os.RemoveAll(lay.chrootDir) })
		if err := stageJailDrives(&lay, spec); err != nil {
			return nil, err
		}
		for _, l := range [][2]string{{snap.StateFile, jailStateName}, {snap.MemoryFile, jailMemoryName}} {
			if err := linkIntoJail(lay.chrootRoot, l[0], l[1]); err != nil {
				return nil, err
			}
		}
		fcState, fcMemory = "/"+jailStateName, "/"+jailMemoryName
	} else {
		undo.Add(func() { unlinkDrives(spec.RunDir) })
		if err := linkDrives(&lay, spec); err != nil {
			return nil, err
		}
	}
	p, err := proc.Spawn(proc.Options{Argv: argv, Dir: spec.RunDir, Console: d.console(spec.RunDir)})
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", argv[0], err)
	}
	m := newMachine(d, p, lay, spec.RunDir, spec.AgentPort)
	// The clone maps the snapshot's memory: while it runs, the file must stay.
	m.st.MemoryFile = snap.MemoryFile
	undo.Add(func() { m.Kill() })
	if m.st.StartTime == 0 {
		return nil, m.withConsole(fmt.Errorf("firecracker (pid %d) exited at once", m.pid))
	}
	if err := m.waitAPI(ctx, d.cfg.StartTimeout); err != nil {
		return nil, err
	}
	load := SnapshotLoadParams{
		SnapshotPath: fcState,
		MemBackend:   &MemoryBackend{BackendType: MemoryBackendFile, BackendPath: fcMemory},
		ResumeVM:     true,
	}
	for i, n := range spec.NICs {
		load.NetworkOverrides = append(load.NetworkOverrides, NetworkOverride{IfaceID: fmt.Sprintf("eth%d", i), HostDevName: n.TAP})
	}
	if err := m.api.LoadSnapshot(ctx, load); err != nil {
		return nil, m.withConsole(fmt.Errorf("firecracker restore %s: %w", spec.Name, err))
	}
	undo.Success()
	return m, nil
}

// stageJailDrives hard-links the clone's drives into its jail under the names the
// snapshotted VM's had there.
func stageJailDrives(lay *layout, spec vmm.MachineSpec) error {
	if err := os.MkdirAll(lay.chrootRoot, 0o755); err != nil {
		return fmt.Errorf("jail: %w", err)
	}
	for _, dr := range spec.Drives {
		if err := linkIntoJail(lay.chrootRoot, dr.Path, driveLinkPrefix+dr.ID); err != nil {
			return err
		}
		lay.driveGuest = append(lay.driveGuest, "/"+driveLinkPrefix+dr.ID)
	}
	return nil
}

// linkIntoJail hard-links src into the jail root as name.
func linkIntoJail(root, src, name string) error {
	if strings.ContainsRune(name, '/') {
		return fmt.Errorf("jail: bad name %q", name)
	}
	dst := filepath.Join(root, name)
	os.Remove(dst)
	if err := os.Link(src, dst); err != nil {
		if errors.Is(err, syscall.EXDEV) {
			return fmt.Errorf("jail: %s is on another filesystem than the jailer's chroot base: put them on the same filesystem", src)
		}
		return fmt.Errorf("jail: %w", err)
	}
	return nil
}

// ResizeDrive implements vmm.DriveResizer: PATCH /drives/{id} with the drive's own path
// (its link in the run dir, or in the jail) makes Firecracker reopen it, read its new size
// and tell the guest.
func (m *machine) ResizeDrive(ctx context.Context, driveID string, _ int64) error {
	name := driveLinkPrefix + driveID
	guestPath := name
	if m.lay.chrootRoot != "" {
		guestPath = "/" + name
	} else if _, err := os.Lstat(filepath.Join(m.st.RunDir, name)); err != nil {
		return fmt.Errorf("firecracker: resize drive %s: the VM was started without drive links (restart it first): %w", driveID, err)
	}
	if err := m.api.PatchDrive(ctx, PartialDrive{DriveID: driveID, PathOnHost: guestPath}); err != nil {
		return fmt.Errorf("firecracker: resize drive %s: %w", driveID, err)
	}
	return nil
}
