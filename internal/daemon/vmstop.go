package daemon

// Stopping and removing VMs, and noticing VMs that stop on their own.

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"time"

	"github.com/banger-vm/banger/internal/api"
	"github.com/banger-vm/banger/internal/sshkeys"
	"github.com/banger-vm/banger/internal/store"
	"github.com/banger-vm/banger/internal/vmm"
)

// watchMachine notices a VMM that exits on its own (guest power off, crash, kill -9).
func (d *Daemon) watchMachine(id string, m vmm.Machine) {
	<-m.Done()
	unlock := d.lockVM(id)
	defer unlock()
	if d.machine(id) != m {
		return // stopped through the API
	}
	d.setMachine(id, nil)
	_ = m.Close()
	exit := m.Exit()
	kind, reason := stopClean, exit.Reason
	if !exit.Clean {
		kind, reason = stopCrashed, "crashed: "+exit.Reason
	}
	d.log.Warn("VM stopped on its own", "vm", id, "reason", exit.Reason, "clean", exit.Clean)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if vm, err := d.store.GetVM(ctx, id); err == nil {
		d.afterStop(ctx, vm, kind, reason)
	}
}

// afterStop gives the TAP back (the lease stays for the next start) and records the state.
func (d *Daemon) afterStop(ctx context.Context, vm store.VM, kind stopKind, reason string) store.VM {
	rec, err := parseRecord(vm)
	if err != nil {
		d.log.Warn("recording the stop of a VM with a corrupt record", "vm", vm.Name, "err", err)
	}
	d.releaseStopped(ctx, vm, &rec)
	rec.LastExit = reason
	vm.State, vm.Spec = kind.state(), rec.raw()
	if err := d.store.PutVM(ctx, vm); err != nil {
		d.log.Warn("could not record the VM's stop", "vm", vm.Name, "err", err)
	}
	return vm
}

// removeRunSockets deletes the sockets in a VM's run dir (the console log stays for logs).
func removeRunSockets(dir string) {
	if dir == "" {
		return
	}
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if e.Type()&os.ModeSocket != 0 {
			_ = os.Remove(filepath.Join(dir, e.Name()))
		}
	}
}

func (d *Daemon) stopVM(ctx context.Context, req api.VMStopRequest) (api.VM, error) {
	vm, err := d.vmLookup(ctx, req.Name)
	if err != nil {
		return api.VM{}, err
	}
	unlock := d.lockVM(vm.ID)
	defer unlock()
	if vm, err = d.stopLocked(ctx, vm.ID, req.TimeoutSeconds, req.Force); err != nil {
		return api.VM{}, err
	}
	return d.vmToAPI(ctx, vm), nil
}

func (d *Daemon) stopLocked(ctx context.Context, id string, timeoutSec float64, force bool) (store.VM, error) {
	vm, err := d.store.GetVM(ctx, id)
	if err != nil {
		return vm, err
	}
	m := d.machine(id)
	if m == nil && vm.State == store.VMPaused {
		if !force {
			return vm, pausedConflict(vm, "stopping it")
		}
		return d.discardPaused(ctx, vm)
	}
	if m == nil {
		if vm.State == store.VMRunning || vm.State == store.VMStarting || vm.State == store.VMStopping {
			vm = d.afterStop(ctx, vm, stopClean, "stopped (its VMM was already gone)")
		}
		return vm, nil
	}
	timeout := 30 * time.Second
	if timeoutSec > 0 {
		timeout = time.Duration(timeoutSec * float64(time.Second))
	}
	if err := d.store.SetVMState(ctx, id, store.VMStopping); err != nil {
		return vm, err
	}
	d.setMachine(id, nil)
	var exit vmm.ExitInfo
	if force {
		endMachine(m, "")
		exit = m.Exit()
		exit.Reason = "killed (--force)"
	} else {
		exit, err = m.Stop(context.WithoutCancel(ctx), timeout)
		if err != nil {
			endMachine(m, "")
		} else {
			_ = m.Close()
		}
	}
	return d.afterStop(context.WithoutCancel(ctx), vm, stopClean, exit.Reason), nil
}

func (d *Daemon) removeVM(ctx context.Context, req api.VMRemoveRequest) error {
	vm, unlock, err := d.lockedVM(ctx, req.Name)
	if err != nil {
		return err
	}
	defer unlock()
	if vm.State == store.VMPaused && !req.Force {
		return pausedConflict(vm, "removing it")
	}
	if d.machine(vm.ID) != nil {
		if !req.Force {
			return api.Errorf(api.CodeConflict, "stop it first, or pass --force", "VM %q is running", vm.Name)
		}
		if vm, err = d.stopLocked(ctx, vm.ID, 10, false); err != nil {
			return err
		}
	}
	rec, err := parseRecord(vm)
	if err != nil {
		// Removing is how a user gets rid of a VM whose record is corrupt: its directories
		// are where create puts them.
		d.log.Warn("removing a VM whose record does not decode", "vm", vm.Name, "err", err)
		rec = d.defaultRecord(vm.ID)
	}
	ctx = context.WithoutCancel(ctx)
	var errs []error
	if err := d.detachNetwork(ctx, vm.ID, rec.Network.TAP, true); err != nil {
		errs = append(errs, err)
	}
	for _, dir := range []string{rec.RunDir, rec.Dir} {
		if dir != "" {
			errs = append(errs, os.RemoveAll(dir))
		}
	}
	if err := d.store.DeleteVM(ctx, vm.ID); err != nil {
		errs = append(errs, err)
	}
	if err := d.vms.keys.Unpin(sshkeys.HostAlias(vm.ID)); err != nil {
		// The VM is gone already; a stale pin harms nothing, so this is not a failed rm.
		d.log.Warn("could not forget a removed VM's SSH host key", "vm", vm.Name, "err", err)
	}
	return errors.Join(errs...)
}
