package daemon

// Pause and resume: a paused VM is its whole state (RAM, devices, vCPUs) saved in a file in
// the VM's directory, with no VMM running, so it costs disk and nothing else. Resume is a
// start that restores that file on the VM's own disks, with a new TAP on the same lease,
// and then sets the guest's clock, which stopped with the VM.
//
// The saved state and the record move in an order that a killed daemon cannot break:
//   - rec.Pausing is recorded before the save: a daemon that dies mid-save finds the VM
//     running but stopped in its VMM, and lets it run again (reconcile);
//   - the state file appears only whole (written to .tmp, synced, renamed);
//   - the VM is recorded paused (rec.Paused) before its VMM is ended, and a resume clears
//     rec.Paused in the same write that records the VM running, then deletes the file.

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/banger-vm/banger/internal/agent"
	"github.com/banger-vm/banger/internal/api"
	"github.com/banger-vm/banger/internal/lifecycle"
	"github.com/banger-vm/banger/internal/store"
	"github.com/banger-vm/banger/internal/vmm"
)

// pausedStateName is the saved state's file in the VM's directory.
const pausedStateName = "paused.state"

// pauseSpaceSlack is free space a pause asks for beyond the VM's memory size (the state is
// at most about the guest's RAM plus device state).
const pauseSpaceSlack = 64 << 20

// vmPaused is what a paused VM's record says about its saved state.
type vmPaused struct {
	// Driver and Accel are the VMM the state is of: only it can resume it.
	Driver    string `json:"driver"`
	Accel     string `json:"accel,omitempty"`
	StateFile string `json:"state_file"`
	// MemoryFile is the guest's RAM when the VMM keeps it apart from StateFile
	// (vmm.SavedMemoryPath: Firecracker), "" when the state holds it (QEMU).
	MemoryFile string    `json:"memory_file,omitempty"`
	At         time.Time `json:"at"`
	Bytes      int64     `json:"bytes"`
	// Network says the VM had a NIC: the restored machine must have the same devices.
	Network bool `json:"network"`
}

func (s vmSpec) pausedState() string { return filepath.Join(s.Dir, pausedStateName) }

// pausedOf describes a complete state file of vm as its pause.
func pausedOf(vm store.VM, rec vmRecord, path string) (*vmPaused, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	p := &vmPaused{Driver: vm.VMM, Accel: rec.Accel, StateFile: path, At: fi.ModTime().UTC(), Bytes: fi.Size(),
		Network: rec.Network.TAP != ""}
	// A VMM that keeps RAM apart writes it before the state, so a whole state has it.
	if mi, err := os.Stat(vmm.SavedMemoryPath(path)); err == nil {
		p.MemoryFile, p.Bytes = vmm.SavedMemoryPath(path), p.Bytes+mi.Size()
	}
	return p, nil
}

// snapshot is what restores the saved state.
func (p *vmPaused) snapshot() vmm.Snapshot {
	return vmm.Snapshot{Driver: p.Driver, StateFile: p.StateFile, MemoryFile: p.MemoryFile}
}

// removeSavedState deletes a saved state at path, whole or partial, with its RAM file if
// its VMM wrote one. A VMM that maps that RAM (a resumed Firecracker) keeps its mapping:
// the file's space is freed when the VMM exits, and nothing can change it by its name.
func removeSavedState(path string) error {
	var errs []error
	for _, p := range []string{path, path + ".tmp", vmm.SavedMemoryPath(path), vmm.SavedMemoryPath(path) + ".tmp"} {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Stages of a pause.
var (
	stagePauseSync = stage{"syncing and freezing the guest's filesystems", 30 * time.Second,
		"the guest's agent did not answer: read the console (`banger vm logs NAME`); `banger vm stop` still works"}
	stagePauseSave = stage{"saving the VM's state", 5 * time.Minute,
		"check free space in the VM's directory and the VMM's log in its run dir; the VM keeps running"}
	stagePauseEnd = stage{"ending the vmm", 30 * time.Second, "see the daemon log"}
	stageClock    = stage{"setting its clock", 30 * time.Second, "the guest's agent did not take the clock: its clock is behind by the pause"}
	stageThaw     = stage{"thawing its filesystems", 30 * time.Second, "the guest's agent did not answer; it thaws them by itself within a minute"}
)

func (d *Daemon) pauseVM(ctx context.Context, name string, progress progressFunc) (api.VM, error) {
	vm, unlock, err := d.lockedVM(ctx, name)
	if err != nil {
		return api.VM{}, err
	}
	defer unlock()
	if vm, err = d.pauseLocked(ctx, vm, progress); err != nil {
		return api.VM{}, err
	}
	return d.vmToAPI(ctx, vm), nil
}

// pauseLocked saves the running vm (its lock held) and ends its VMM. If the save fails the
// VM keeps running, as it was.
func (d *Daemon) pauseLocked(ctx context.Context, vm store.VM, progress progressFunc) (store.VM, error) {
	if vm.State == store.VMPaused {
		return vm, api.Errorf(api.CodeConflict, "resume it with `banger vm resume "+vm.Name+"`", "VM %q is already paused", vm.Name)
	}
	m := d.machine(vm.ID)
	if m == nil || vm.State != store.VMRunning {
		return vm, api.Errorf(api.CodeConflict, "start it first (`banger vm start "+vm.Name+"`)", "VM %q is not running (%s)", vm.Name, vm.State)
	}
	rec, err := parseRecord(vm)
	if err != nil {
		return vm, err
	}
	if rec.Builder {
		return vm, api.Errorf(api.CodeConflict, "it is removed with its build", "VM %q is an image build's temporary VM", vm.Name)
	}
	saver, ok := m.(vmm.StateSaver)
	if !ok {
		return vm, api.Errorf(api.CodeUnavailable, "stop it instead, or run it on a VMM that can (`[vmm] driver`)",
			"the %s driver cannot save a VM's state", vm.VMM)
	}
	timings := lifecycle.New("vm.pause", vm.ID, d.log, d.store).Deferred()
	defer timings.Flush(context.WithoutCancel(ctx))
	path := rec.pausedState()
	if err := runStage(ctx, timings, progress, stagePauseSync, func(ctx context.Context) error {
		if err := d.fault("stage " + stagePauseSync.name); err != nil {
			return err
		}
		return d.quiesceGuest(ctx, m, vm.Name)
	}); err != nil {
		return vm, api.Errorf(api.CodeUnavailable, stagePauseSync.hint, "pause VM %q: %v", vm.Name, err)
	}
	// The state is about the RAM the guest uses; ask for all of it, as a disk that fills
	// mid-save fails the save after the guest was stopped for it.
	if err := checkFreeSpaceFor(rec.Dir, int64(rec.MemoryMiB)<<20+pauseSpaceSlack, "saving the VM's state",
		"free space there, or stop the VM instead (`banger vm stop`)"); err != nil {
		d.thawGuest(ctx, m, vm.Name)
		return vm, err
	}
	rec.Pausing = true
	if vm, err = d.putRecord(ctx, vm, rec); err != nil {
		d.thawGuest(ctx, m, vm.Name)
		return vm, err
	}
	err = runStage(ctx, timings, progress, stagePauseSave, func(ctx context.Context) error {
		for _, point := range []string{"stage " + stagePauseSave.name, "pause save"} {
			if err := d.fault(point); err != nil {
				return err
			}
		}
		_, err := saver.SaveState(ctx, path)
		return err
	})
	saved := err == nil
	if saved {
		if err = d.fault("pause record"); err == nil {
			rec.Paused, err = pausedOf(vm, rec, path)
		}
	}
	rec.Pausing = false
	if err != nil {
		// A failed save lets the guest run again (the driver does); a failure after it
		// must too, as the VM is not recorded paused.
		if saved {
			err = errors.Join(err, continueGuest(context.WithoutCancel(ctx), m))
		}
		d.thawGuest(ctx, m, vm.Name)
		_ = removeSavedState(path)
		if vm, perr := d.putRecord(context.WithoutCancel(ctx), vm, rec); perr != nil {
			return vm, errors.Join(err, perr)
		}
		return vm, api.Errorf(api.CodeUnavailable, stagePauseSave.hint, "pause VM %q: %v", vm.Name, err)
	}
	ctx = context.WithoutCancel(ctx)
	// Recorded paused before the VMM ends: a daemon killed in between finds the VMM and
	// ends it (reconcile), and the VM is still paused.
	vm.State = store.VMPaused
	if vm, err = d.putRecord(ctx, vm, rec); err != nil {
		_ = removeSavedState(path)
		err = errors.Join(err, continueGuest(ctx, m))
		d.thawGuest(ctx, m, vm.Name)
		return vm, err
	}
	_ = runStage(ctx, timings, progress, stagePauseEnd, func(context.Context) error {
		d.setMachine(vm.ID, nil)
		endMachine(m, rec.RunDir)
		return nil
	})
	d.releaseStopped(ctx, vm, &rec)
	rec.Stages = timings.Stages()
	return d.putRecord(ctx, vm, rec)
}

// freezeThawAfter is how long a guest's filesystems stay frozen when no thaw comes (its
// agent then thaws them by itself, on the guest's clock, which stops while it is saved). A
// save takes seconds; a restore thaws first thing.
const freezeThawAfter = time.Minute

// quiesceGuest syncs the guest's filesystems and freezes the writable ones, so that its
// disks are clean filesystems as of the save. An agent from before /v1/freeze only syncs.
func (d *Daemon) quiesceGuest(ctx context.Context, m vmm.Machine, name string) error {
	if _, err := m.Agent().Sync(ctx); err != nil {
		return err
	}
	res, err := m.Agent().Freeze(ctx, freezeThawAfter)
	switch {
	case agent.IsNotFound(err):
		d.log.Info("the guest's agent cannot freeze: synced only", "vm", name)
		return nil
	case err != nil:
		return fmt.Errorf("freeze: %w", err)
	}
	d.log.Debug("guest filesystems frozen", "vm", name, "frozen", res.Frozen, "skipped", res.Skipped, "ms", res.DurationMS)
	return nil
}

// thawGuest thaws what quiesceGuest froze, once the guest runs again. A thaw that fails is
// logged: the agent thaws by itself after freezeThawAfter.
func (d *Daemon) thawGuest(ctx context.Context, m vmm.Machine, name string) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 15*time.Second)
	defer cancel()
	if _, err := m.Agent().Thaw(ctx); err != nil && !agent.IsNotFound(err) {
		d.log.Warn("could not thaw the guest's filesystems; its agent will after a minute", "vm", name, "err", err)
	}
}

// stepThaw thaws the filesystems of a restored saved state (a resume, a user snapshot's
// clone): they were frozen for the save, and the clone's identity is written to them.
func (d *Daemon) stepThaw(ctx context.Context, b *boot) error {
	res, err := b.m.Agent().Thaw(ctx)
	if agent.IsNotFound(err) {
		return nil // an agent from before /v1/freeze froze nothing
	}
	if err != nil {
		return err
	}
	d.log.Debug("restored guest's filesystems thawed", "vm", b.vm.Name, "thawed", res.Thawed)
	return nil
}

// toleratedThawFailure: the agent thaws by itself a minute after the freeze, guest time.
func (d *Daemon) toleratedThawFailure(ctx context.Context, b *boot, err error) bool {
	if ctx.Err() != nil {
		return false
	}
	b.progress(api.Progress{Stage: stageThaw.name, Message: "failed: its agent thaws them within a minute"})
	d.log.Warn("could not thaw a restored VM's filesystems", "vm", b.vm.Name, "err", err)
	return true
}

// continueGuest lets a guest its VMM stopped for a save run again.
func continueGuest(ctx context.Context, m vmm.Machine) error {
	c, ok := m.(vmm.Continuer)
	if !ok {
		return nil
	}
	if err := c.Continue(ctx); err != nil {
		return fmt.Errorf("letting the guest run again: %w", err)
	}
	return nil
}

// releaseStopped gives back what a VM whose VMM has ended no longer needs: its TAP (the
// lease stays for the next start) and its sockets; a clone's template may be collected.
func (d *Daemon) releaseStopped(ctx context.Context, vm store.VM, rec *vmRecord) {
	if rec.Network.TAP != "" {
		if err := d.detachNetwork(ctx, vm.ID, rec.Network.TAP, false); err != nil {
			d.log.Warn("could not give back the VM's TAP", "vm", vm.Name, "tap", rec.Network.TAP, "err", err)
		}
	}
	removeRunSockets(rec.RunDir)
	clone := rec.VMM != nil && rec.VMM.MemoryFile != ""
	rec.Network.TAP, rec.VMM = "", nil
	if clone {
		// It may have been the last clone of a retired template.
		defer d.gcTemplates(ctx)
	}
}

// putRecord stores vm with rec as its document.
func (d *Daemon) putRecord(ctx context.Context, vm store.VM, rec vmRecord) (store.VM, error) {
	vm.Spec = rec.raw()
	return vm, d.store.PutVM(ctx, vm)
}

// resumeProfile turns a paused VM's boot profile into its resume.
func resumeProfile(vm store.VM, rec vmRecord, p *bootProfile) {
	p.resume = rec.Paused
	p.ssh = sshSkip
	p.boot = api.VMBoot{Mode: api.BootResume, Reason: fmt.Sprintf("resumed the state saved when it was paused at %s", rec.Paused.At.Format(time.RFC3339))}
}

// resumeDriver is the driver a paused VM's state belongs to.
func (d *Daemon) resumeDriver(p *vmPaused) (vmm.Restorer, vmm.Driver, error) {
	drv, err := d.driver(p.Driver, p.Accel)
	if err != nil {
		return nil, nil, api.Errorf(api.CodeUnavailable, "its state can only be resumed by that VMM; or discard it with `banger vm stop --force`",
			"the VM was paused on %s (%s), which is not available now: %v", p.Driver, p.Accel, err)
	}
	r, ok := drv.(vmm.Restorer)
	if !ok {
		return nil, nil, api.Errorf(api.CodeUnavailable, "discard the state with `banger vm stop --force`", "the %s driver cannot resume a saved VM", p.Driver)
	}
	return r, drv, nil
}

// stepPinnedNetwork gives a VM that restores a saved state (a resume, a user snapshot's
// clone) the NIC the saved VM had, or none: the restored machine must have its devices. A
// resumed VM keeps its lease (its guest keeps the address) on a new TAP.
func (d *Daemon) stepPinnedNetwork(ctx context.Context, b *boot, nic bool) error {
	if !nic {
		b.rec.Network = vmNetwork{Note: "no network: the saved VM had none"}
		return nil
	}
	if !d.networkReady() {
		return errors.New("the saved VM had a network and the root helper is not reachable: start it (`banger doctor`)")
	}
	if err := d.stepNetwork(ctx, b); err != nil {
		return err
	}
	if b.rec.Network.TAP == "" {
		return errors.New(b.rec.Network.Note)
	}
	return nil
}

// stepClock sets a resumed guest's clock and reseeds its random pool.
func (d *Daemon) stepClock(ctx context.Context, b *boot) error {
	entropy := make([]byte, 64)
	if _, err := rand.Read(entropy); err != nil {
		return err
	}
	res, err := b.m.Agent().SetClock(ctx, agent.ClockRequest{UnixNano: time.Now().UnixNano(), Entropy: entropy})
	if err != nil {
		return err
	}
	d.log.Debug("resumed VM's clock set", "vm", b.vm.Name, "step_ms", res.StepMS)
	return nil
}

// toleratedClockFailure: a guest whose clock could not be set still runs (an agent from
// before /v1/clock answers 404); its clock is behind by the pause, which the log says.
func (d *Daemon) toleratedClockFailure(ctx context.Context, b *boot, err error) bool {
	if ctx.Err() != nil {
		return false
	}
	b.progress(api.Progress{Stage: stageClock.name, Message: "failed: the guest's clock is behind by its pause"})
	d.log.Warn("could not set a resumed VM's clock", "vm", b.vm.Name, "err", err)
	return true
}

// discardPaused forgets a paused VM's saved state (vm stop --force): it is stopped, and its
// next start boots its disks, which hold what the guest had synced when it was paused.
func (d *Daemon) discardPaused(ctx context.Context, vm store.VM) (store.VM, error) {
	rec, err := parseRecord(vm)
	if err != nil {
		return vm, err
	}
	if err := removeSavedState(rec.pausedState()); err != nil {
		return vm, fmt.Errorf("discard the saved state: %w", err)
	}
	rec.Paused, rec.LastExit = nil, "stopped while paused: its saved state was discarded"
	vm.State = store.VMStopped
	return d.putRecord(ctx, vm, rec)
}

// pausedConflict is the refusal of an operation that would discard a paused VM's state.
func pausedConflict(vm store.VM, what string) error {
	return api.Errorf(api.CodeConflict, "resume it (`banger vm resume "+vm.Name+"`), or pass --force to discard its saved state",
		"VM %q is paused: %s would discard its saved processes and memory", vm.Name, what)
}
