package qemu

// Snapshots and clones. A VM booted with its RAM in a file (MachineSpec.MemoryFile,
// memory-backend-file share=on) is saved by pausing it and migrating it, with QMP's
// x-ignore-shared capability, into a state file: the RAM is already in the memory file, so
// only device and vCPU state is written (tens of KB). A clone maps the same memory file
// copy-on-write (share=off), so clones share the template's pages, and loads the state
// with migrate-incoming. Both streams go through a file descriptor passed over QMP
// (getfd): the seccomp sandbox forbids QEMU to spawn the `exec:` helpers, and QEMU 7.2 has
// no `file:` transport.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/banger-vm/banger/internal/system"
	"github.com/banger-vm/banger/internal/vmm"
)

var (
	_ vmm.Snapshotter  = (*machine)(nil)
	_ vmm.StateSaver   = (*machine)(nil)
	_ vmm.Restorer     = (*Driver)(nil)
	_ vmm.Continuer    = (*machine)(nil)
	_ vmm.DriveResizer = (*machine)(nil)
)

// Continue implements vmm.Continuer: QMP cont, which also takes the disks back from a
// finished migration.
func (m *machine) Continue(ctx context.Context) error {
	q, err := m.awaitQMP(ctx)
	if err != nil {
		return err
	}
	_, err = q.run(ctx, "cont", nil)
	return err
}

// ResizeDrive implements vmm.DriveResizer: QMP block_resize of the drive (its -drive id),
// which QEMU passes to the guest as a virtio-blk capacity change.
func (m *machine) ResizeDrive(ctx context.Context, driveID string, bytes int64) error {
	q, err := m.awaitQMP(ctx)
	if err != nil {
		return err
	}
	if _, err := q.run(ctx, "block_resize", map[string]any{"device": driveID, "size": bytes}); err != nil {
		return fmt.Errorf("qemu: resize drive %s: %w", driveID, err)
	}
	return nil
}

// snapshotStateName is the state file's name in a snapshot directory.
const snapshotStateName = "qemu-state"

// migrationFDName is the name the migration stream's descriptor gets in QEMU (getfd).
const migrationFDName = "banger-migration"

// ignoreSharedCap sets the capability that leaves shared file-backed RAM out of the stream.
func ignoreSharedCap(on bool) map[string]any {
	return map[string]any{"capabilities": []map[string]any{{"capability": "x-ignore-shared", "state": on}}}
}

// Snapshot pauses the guest and writes its device and vCPU state into dir (the RAM is in
// the VM's memory file already, and is flushed to disk). The VM stays paused; if the save
// fails, the guest is resumed.
func (m *machine) Snapshot(ctx context.Context, dir string) (vmm.Snapshot, error) {
	if m.st.MemoryFile == "" {
		return vmm.Snapshot{}, errors.New("qemu snapshot: the VM was started without a memory file (MachineSpec.MemoryFile)")
	}
	state := filepath.Join(dir, snapshotStateName)
	if err := m.save(ctx, state, true); err != nil {
		return vmm.Snapshot{}, fmt.Errorf("qemu snapshot: %w", err)
	}
	return vmm.Snapshot{Driver: DriverName, MemoryFile: m.st.MemoryFile, StateFile: state}, nil
}

// SaveState implements vmm.StateSaver: the whole VM, RAM included, into path. Zero pages
// take a few bytes each in the stream, so the file is about the size of the RAM the guest
// uses. The VM stays paused; if the save fails, the guest is resumed.
func (m *machine) SaveState(ctx context.Context, path string) (vmm.Snapshot, error) {
	if err := m.save(ctx, path, false); err != nil {
		return vmm.Snapshot{}, fmt.Errorf("qemu save: %w", err)
	}
	return vmm.Snapshot{Driver: DriverName, StateFile: path}, nil
}

// fullSaveBandwidth lifts QEMU's migration speed limit (32 MiB/s by default, meant for
// live migration over a network) for a save to a local file.
const fullSaveBandwidth = 1 << 40

// save stops the guest and migrates it into path, atomically: without the RAM in a shared
// memory file (ignoreShared) or all of it.
func (m *machine) save(ctx context.Context, path string, ignoreShared bool) (err error) {
	q, err := m.awaitQMP(ctx)
	if err != nil {
		return err
	}
	if _, err := q.run(ctx, "stop", nil); err != nil {
		return err
	}
	tmp := path + ".tmp"
	defer func() {
		if err != nil {
			_ = os.Remove(tmp)
			if _, cerr := q.run(context.WithoutCancel(ctx), "cont", nil); cerr != nil {
				err = errors.Join(err, fmt.Errorf("resuming the guest: %w", cerr))
			}
		}
	}()
	// Capabilities stay set in a QEMU process (a clone's restore set x-ignore-shared): say
	// it each time.
	if _, err := q.run(ctx, "migrate-set-capabilities", ignoreSharedCap(ignoreShared)); err != nil {
		return err
	}
	if !ignoreShared {
		if _, err := q.run(ctx, "migrate-set-parameters", map[string]any{"max-bandwidth": fullSaveBandwidth}); err != nil {
			return err
		}
	}
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := migrate(ctx, q, "migrate", f); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	// share=on: the guest's RAM is the memory file's page cache; the snapshot must survive
	// a host crash like the state does.
	if ignoreShared {
		if err := system.SyncFile(m.st.MemoryFile); err != nil {
			return fmt.Errorf("memory file: %w", err)
		}
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	return system.SyncDir(filepath.Dir(path))
}

// migrate passes f to QEMU and runs cmd ("migrate" or "migrate-incoming") on it, then waits
// for the migration to complete.
func migrate(ctx context.Context, q *qmpConn, cmd string, f *os.File) error {
	if _, err := q.runFD(ctx, "getfd", map[string]any{"fdname": migrationFDName}, f); err != nil {
		return err
	}
	if _, err := q.run(ctx, cmd, map[string]any{"uri": "fd:" + migrationFDName}); err != nil {
		return err
	}
	return waitMigration(ctx, q)
}

// waitMigration polls query-migrate until the migration completed or failed. Saving or
// loading a state of tens of KB takes milliseconds, so the poll is short.
func waitMigration(ctx context.Context, q *qmpConn) error {
	for {
		out, err := q.run(ctx, "query-migrate", nil)
		if err != nil {
			return err
		}
		var st struct {
			Status    string `json:"status"`
			ErrorDesc string `json:"error-desc"`
		}
		if err := json.Unmarshal(out, &st); err != nil {
			return fmt.Errorf("query-migrate: %w", err)
		}
		switch st.Status {
		case "completed":
			return nil
		case "failed", "cancelled":
			return fmt.Errorf("migration %s: %s", st.Status, st.ErrorDesc)
		}
		t := time.NewTimer(time.Millisecond)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("migration (%s): %w", st.Status, context.Cause(ctx))
		case <-t.C:
		}
	}
}

// Restore starts a clone of snap: QEMU with the snapshot's memory file mapped copy-on-write,
// waiting for the state, which it then loads; the guest runs when Restore returns. spec's
// shape (vCPUs, memory, drives, devices) must be the snapshotted VM's; its files are the
// clone's own. If any step fails, the clone is killed and its sockets removed.
func (d *Driver) Restore(ctx context.Context, spec vmm.MachineSpec, snap vmm.Snapshot) (_ vmm.Machine, err error) {
	if snap.Driver != DriverName {
		return nil, fmt.Errorf("qemu restore: the snapshot is %q's, not qemu's", snap.Driver)
	}
	// Without a memory file the RAM is in the state (SaveState).
	whole := snap.MemoryFile == ""
	if !whole {
		fi, err := os.Stat(snap.MemoryFile)
		if err != nil {
			return nil, fmt.Errorf("qemu restore: memory file: %w", err)
		}
		if want := int64(spec.MemoryMiB) << 20; fi.Size() != want {
			return nil, fmt.Errorf("qemu restore: memory file %s is %d bytes, the VM has %d MiB: the snapshot is of another shape", snap.MemoryFile, fi.Size(), spec.MemoryMiB)
		}
	}
	state, err := os.Open(snap.StateFile)
	if err != nil {
		return nil, fmt.Errorf("qemu restore: %w", err)
	}
	defer state.Close()
	spec.MemoryFile = snap.MemoryFile
	m, err := d.launch(ctx, spec, true)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			m.killAndWait()
			m.Close()
			removeSockets(spec.RunDir)
		}
	}()
	fail := func(err error) error {
		if m.exited() {
			return fmt.Errorf("qemu restore %s: qemu exited: %s", spec.Name, m.Exit().Reason)
		}
		return fmt.Errorf("qemu restore %s: %w", spec.Name, err)
	}
	q, err := m.awaitQMP(ctx)
	if err != nil {
		return nil, fail(err)
	}
	if _, err := q.run(ctx, "migrate-set-capabilities", ignoreSharedCap(!whole)); err != nil {
		return nil, fail(err)
	}
	if err := migrate(ctx, q, "migrate-incoming", state); err != nil {
		return nil, fail(err)
	}
	// The snapshot was taken paused, so the clone is paused too until told to run.
	if _, err := q.run(ctx, "cont", nil); err != nil {
		return nil, fail(err)
	}
	return m, nil
}
