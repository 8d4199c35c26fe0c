package daemon

// Reconciling VMs at daemon start: live VMMs are reattached; VMs whose VMM is gone are
// recorded as stopped or crashed; interrupted creates and image builds are removed.

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"time"

	"github.com/banger-vm/banger/internal/sshkeys"
	"github.com/banger-vm/banger/internal/store"
	"github.com/banger-vm/banger/internal/vmm"
)

// reconcileVMs runs at daemon start, before networking: live VMMs are reattached; VMs whose
// VMM is gone are marked stopped with their TAP dropped from the spec (the network
// reconcile then deletes the TAP as unreferenced; the lease stays for the next start).
func (d *Daemon) reconcileVMs(ctx context.Context) {
	vms, err := d.store.ListVMs(ctx)
	if err != nil {
		d.log.Warn("could not list VMs to reconcile", "err", err)
		return
	}
	// A daemon killed between spawning a VMM and recording it leaves a VMM no record names:
	// found by its run dir, it is ended with the VM's other leftovers.
	procs, err := scanVMMProcs("/proc", d.opts.Layout.RuntimeDir)
	if err != nil {
		d.log.Warn("could not scan for VMM processes", "err", err)
	}
	for _, vm := range vms {
		rec, err := parseRecord(vm)
		if err != nil {
			// Nothing safe can be done with a record that does not decode: mark it and leave
			// it for the user (vm rm) rather than guess.
			d.log.Warn("a VM's record does not decode; marking it error", "vm", vm.Name, "err", err)
			if err := d.store.SetVMState(ctx, vm.ID, store.VMError); err != nil {
				d.log.Warn("could not mark a VM error", "vm", vm.Name, "err", err)
			}
			continue
		}
		c := leftovers{d: d, vm: vm, rec: rec, procs: procs}
		switch {
		case rec.Builder:
			c.removeBuilder(ctx)
		case vm.State == store.VMCreated && rec.Creating:
			c.removeInterruptedCreate(ctx)
		case vm.State == store.VMPaused:
			c.keepPaused(ctx)
		case vm.State == store.VMRunning, vm.State == store.VMStarting, vm.State == store.VMStopping:
			c.reattachOrRecordGone(ctx)
		default:
			c.dropStaleState()
		}
	}
}

// leftovers is one VM's reconcile.
type leftovers struct {
	d     *Daemon
	vm    store.VM
	rec   vmRecord
	procs []vmmProc
}

// killUnrecorded ends any VMM running in the VM's run dir that no record names.
func (c leftovers) killUnrecorded() {
	if c.rec.RunDir == "" {
		return
	}
	for _, p := range c.procs {
		if p.runDir != filepath.Clean(c.rec.RunDir) {
			continue
		}
		if err := killStray("/proc", p.pid, c.d.opts.Layout.RuntimeDir); err != nil {
			c.d.log.Warn("could not end a VMM of an interrupted start", "vm", c.vm.Name, "pid", p.pid, "err", err)
		} else {
			c.d.log.Warn("ended a VMM of an interrupted start", "vm", c.vm.Name, "pid", p.pid)
		}
	}
}

// removeBuilder ends an image build the daemon did not finish: its image is gone with the
// staging files (image cleanup), so its builder VM goes too (the lease with the row).
func (c leftovers) removeBuilder(ctx context.Context) {
	c.d.reattachAndEnd(ctx, c.vm.VMM, c.rec.VMM)
	c.killUnrecorded()
	_ = os.RemoveAll(c.rec.RunDir)
	_ = os.RemoveAll(c.rec.Dir)
	c.remove(ctx, "removed the builder VM of an interrupted image build")
}

// removeInterruptedCreate: a create interrupted before its disks were done never existed
// for the user, so it goes, with whatever it had written.
func (c leftovers) removeInterruptedCreate(ctx context.Context) {
	if c.rec.Dir != "" {
		_ = os.RemoveAll(c.rec.Dir)
	}
	c.remove(ctx, "removed a VM whose create was interrupted")
}

// remove deletes the row and the host key pin (the disks stage pins it before the row loses
// Creating).
func (c leftovers) remove(ctx context.Context, done string) {
	_ = c.d.vms.keys.Unpin(sshkeys.HostAlias(c.vm.ID))
	if err := c.d.store.DeleteVM(ctx, c.vm.ID); err != nil {
		c.d.log.Warn("could not remove a VM left by an interrupted operation", "vm", c.vm.Name, "err", err)
	} else {
		c.d.log.Warn(done, "vm", c.vm.Name)
	}
}

// reattachOrRecordGone picks a running VM up again, or records why it no longer runs.
func (c leftovers) reattachOrRecordGone(ctx context.Context) {
	kind, reason := stopClean, "the daemon stopped while the VM was starting"
	vmmStarted := c.rec.VMM != nil
	// A resume whose VMM started is picked up like a running VM: its guest may have run
	// (and written to its disks) since, so its saved state is no longer one to go back to.
	resuming := c.vm.State == store.VMStarting && c.rec.Paused != nil
	switch {
	case c.rec.VMM != nil && (c.vm.State != store.VMStarting || resuming):
		drv, err := c.d.driver(c.vm.VMM, c.rec.VMM.Accel)
		if err != nil {
			kind, reason = stopCrashed, "crashed: its VMM driver is not available: "+err.Error()
			break
		}
		rctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		m, err := drv.Reattach(rctx, *c.rec.VMM)
		cancel()
		if err == nil {
			c.d.setMachine(c.vm.ID, m)
			c.d.openForwardsOf(c.vm, c.rec, nil)
			// The guest's old mounts died with the old daemon's agent streams.
			go c.d.openMountsOf(context.Background(), c.vm, c.rec, nil)
			go c.d.watchMachine(c.vm.ID, m)
			c.d.log.Info("reattached running VM", "vm", c.vm.Name, "pid", m.PID())
			c.finishInterruptedPause(ctx, m)
			return
		}
		kind, reason = stopCrashed, "crashed: its VMM was gone when the daemon started"
		if !errors.Is(err, vmm.ErrGone) {
			// Its VMM may still run: it is ended below, as a second VMM on the same disks
			// (the next start) would corrupt them.
			reason = "crashed: could not reattach (its VMM was ended): " + err.Error()
			c.d.log.Warn("could not reattach a running VM; ending its VMM", "vm", c.vm.Name, "err", err)
		}
	case c.rec.VMM != nil:
		// Interrupted mid-start: the VMM may still run without an agent; end it.
		c.d.reattachAndEnd(ctx, c.vm.VMM, c.rec.VMM)
	}
	c.killUnrecorded()
	removeRunSockets(c.rec.RunDir)
	c.rec.Network.TAP, c.rec.VMM, c.rec.LastExit = "", nil, reason
	c.vm.State = kind.state()
	if resuming && vmmStarted {
		c.rec.Paused = nil
		c.dropStaleState()
	} else if c.adoptSavedState() {
		// Its VMM is gone but its whole state is on disk: a resume interrupted before it
		// was recorded, or a pause before it was.
		c.vm.State, c.rec.LastExit = store.VMPaused, "still paused: the daemon stopped while it was pausing or resuming"
	}
	c.vm.Spec = c.rec.raw()
	if err := c.d.store.PutVM(ctx, c.vm); err != nil {
		c.d.log.Warn("could not record a VM's state", "vm", c.vm.Name, "err", err)
	}
	c.d.log.Warn("VM is no longer running", "vm", c.vm.Name, "reason", reason)
}

// keepPaused checks a paused VM at daemon start: a VMM left running (the daemon was killed
// between recording the pause and ending it) is ended; a VM whose saved state is gone is
// stopped, to boot from its disks.
func (c leftovers) keepPaused(ctx context.Context) {
	c.d.reattachAndEnd(ctx, c.vm.VMM, c.rec.VMM)
	c.killUnrecorded()
	removeRunSockets(c.rec.RunDir)
	c.rec.Network.TAP, c.rec.VMM = "", nil
	if !c.adoptSavedState() {
		c.rec.Paused, c.rec.LastExit = nil, "its saved state "+c.rec.pausedState()+" is gone: it boots from its disks"
		c.vm.State = store.VMStopped
		c.d.log.Warn("a paused VM's saved state is gone; it is stopped", "vm", c.vm.Name)
	}
	c.vm.Spec = c.rec.raw()
	if err := c.d.store.PutVM(ctx, c.vm); err != nil {
		c.d.log.Warn("could not record a VM's state", "vm", c.vm.Name, "err", err)
	}
}

// adoptSavedState says whether the VM's whole saved state is on disk, filling in c.rec.Paused
// from the file when a pause had not recorded it yet. A state file only ever appears whole.
func (c *leftovers) adoptSavedState() bool {
	if c.rec.Paused == nil && !c.rec.Pausing {
		return false
	}
	path := c.rec.pausedState()
	if c.rec.Paused != nil && c.rec.Paused.StateFile != path {
		return false // not where banger puts it: a record not to trust
	}
	saved := c.rec.Paused
	p, err := pausedOf(c.vm, c.rec, path)
	if err != nil {
		return false
	}
	if saved != nil && saved.MemoryFile != "" && p.MemoryFile == "" {
		return false // its RAM file is gone
	}
	if saved != nil {
		p.Network = saved.Network
		p.Driver, p.Accel = saved.Driver, saved.Accel
	}
	c.rec.Paused, c.rec.Pausing = p, false
	return true
}

// finishInterruptedPause lets a reattached VM run again when the daemon was killed while
// pausing it (its VMM may have stopped the guest for the save), and drops the partial state.
func (c leftovers) finishInterruptedPause(ctx context.Context, m vmm.Machine) {
	if !c.rec.Pausing && c.rec.Paused == nil {
		c.dropStaleState()
		return
	}
	cctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	if err := continueGuest(cctx, m); err != nil {
		c.d.log.Warn("could not let a VM run again after an interrupted pause", "vm", c.vm.Name, "err", err)
	}
	cancel()
	c.d.thawGuest(ctx, m, c.vm.Name)
	c.rec.Pausing, c.rec.Paused = false, nil
	c.dropStaleState()
	if c.vm.State == store.VMStarting {
		c.vm.State = store.VMRunning // a resume that had restored the VM
	}
	c.vm.Spec = c.rec.raw()
	if err := c.d.store.PutVM(ctx, c.vm); err != nil {
		c.d.log.Warn("could not record a VM's state", "vm", c.vm.Name, "err", err)
	}
	c.d.log.Warn("a pause was interrupted by the daemon's stop; the VM runs on", "vm", c.vm.Name)
}

// dropStaleState removes saved-state files of a VM that is not paused (a resume or a pause
// that the daemon's stop interrupted).
func (c leftovers) dropStaleState() {
	if c.rec.Dir == "" || c.rec.Paused != nil || c.rec.Pausing {
		return
	}
	_ = removeSavedState(c.rec.pausedState())
}
