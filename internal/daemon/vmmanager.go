package daemon

// The daemon's live VM state: per-VM locks, the running machines and the VMM drivers.

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"

	"github.com/banger-vm/banger/internal/initramfs"
	"github.com/banger-vm/banger/internal/sshkeys"
	"github.com/banger-vm/banger/internal/store"
	"github.com/banger-vm/banger/internal/vmm"
)

// DriverFactory makes the driver for a VMM ("qemu", "firecracker") with an acceleration
// ("kvm", "tcg"). The daemon asks once per pair and keeps the driver.
type DriverFactory func(name, accel string) (vmm.Driver, error)

// vmManager is the daemon's live VM state.
type vmManager struct {
	mu        sync.Mutex
	locks     map[string]*vmLock
	machines  map[string]vmm.Machine
	drivers   map[string]vmm.Driver
	newDriver DriverFactory
	host      func() vmm.Host
	keys      *sshkeys.Store
	// initrd remembers which cached initramfs each kernel's start resolved to, so a
	// start with unchanged guest binaries does not hash them again.
	initrd *initramfs.Memo
	// disks holds the fresh work disk and layer every create copies.
	disks *diskTemplates
	// tpl holds the warm-start templates new VMs restore.
	tpl *templates
	// cloning counts the creates restoring each user snapshot right now (snapshot rm waits
	// for none).
	cloning map[string]int
}

// vmLock serializes the operations on one VM. It lives while someone holds or waits for
// it, so failed creates and removed VMs leave no entry behind.
type vmLock struct {
	mu   sync.Mutex
	refs int
}

func (d *Daemon) initVMs(ctx context.Context) {
	cfg := d.opts.Config.Runtime
	host := d.opts.Host
	if host == nil {
		host = func() vmm.Host { return vmm.DetectHost(context.Background(), cfg.FirecrackerPath, cfg.QEMUPath) }
	}
	d.vms = &vmManager{
		locks:     map[string]*vmLock{},
		machines:  map[string]vmm.Machine{},
		drivers:   map[string]vmm.Driver{},
		newDriver: d.opts.NewDriver,
		keys:      sshkeys.New(d.opts.Layout.SSHDir).WithUserKey(cfg.SSHKeyPath),
		host:      sync.OnceValue(host),
		initrd:    initramfs.NewMemo(),
		disks:     newDiskTemplates(d.leakScope().disks, d.images.Ext4),
		tpl:       newTemplates(filepath.Join(d.opts.Layout.DataDir, "templates")),
	}
	d.reconcileVMs(ctx)
	d.gcTemplates(ctx)
}

// lockedVM finds the VM called name and takes its lock; the VM is read again under the
// lock, as an operation that held it may have changed it. The returned func unlocks.
func (d *Daemon) lockedVM(ctx context.Context, name string) (store.VM, func(), error) {
	vm, err := d.vmLookup(ctx, name)
	if err != nil {
		return store.VM{}, nil, err
	}
	unlock := d.lockVM(vm.ID)
	if vm, err = d.store.GetVM(ctx, vm.ID); err != nil {
		unlock()
		return store.VM{}, nil, err
	}
	return vm, unlock, nil
}

// lockVM serializes operations on one VM; the returned func unlocks.
func (d *Daemon) lockVM(id string) func() {
	d.vms.mu.Lock()
	l := d.vms.locks[id]
	if l == nil {
		l = &vmLock{}
		d.vms.locks[id] = l
	}
	l.refs++
	d.vms.mu.Unlock()
	l.mu.Lock()
	return func() {
		l.mu.Unlock()
		d.vms.mu.Lock()
		if l.refs--; l.refs == 0 {
			delete(d.vms.locks, id)
		}
		d.vms.mu.Unlock()
	}
}

func (d *Daemon) machine(id string) vmm.Machine {
	d.vms.mu.Lock()
	defer d.vms.mu.Unlock()
	return d.vms.machines[id]
}

func (d *Daemon) setMachine(id string, m vmm.Machine) {
	d.vms.mu.Lock()
	if m == nil {
		delete(d.vms.machines, id)
	} else {
		d.vms.machines[id] = m
	}
	d.vms.mu.Unlock()
	if m == nil {
		d.closeForwards(id) // its VMM ended: nothing to forward to
		d.closeMounts(id)
	}
}

// driver returns the (shared) driver for a VMM and acceleration.
func (d *Daemon) driver(name, accel string) (vmm.Driver, error) {
	d.vms.mu.Lock()
	defer d.vms.mu.Unlock()
	key := name + "/" + accel
	if drv := d.vms.drivers[key]; drv != nil {
		return drv, nil
	}
	if d.vms.newDriver == nil {
		return nil, fmt.Errorf("this daemon has no VMM drivers (Options.NewDriver is unset)")
	}
	drv, err := d.vms.newDriver(name, accel)
	if err != nil {
		return nil, err
	}
	d.vms.drivers[key] = drv
	return drv, nil
}

// endMachine kills a machine and waits for its VMM to be gone; the VM's sockets go too.
func endMachine(m vmm.Machine, runDir string) {
	_ = m.Kill()
	<-m.Done()
	_ = m.Close()
	if runDir != "" {
		removeRunSockets(runDir)
	}
}

// reattachAndEnd finds the VMM a persisted state names and ends it: the VM must not keep
// running on disks the daemon is about to hand to another VMM or remove.
func (d *Daemon) reattachAndEnd(ctx context.Context, driver string, st *vmm.State) {
	if st == nil {
		return
	}
	drv, err := d.driver(driver, st.Accel)
	if err != nil {
		return
	}
	if m, err := drv.Reattach(ctx, *st); err == nil {
		endMachine(m, "")
	}
}

// closeVMs lets go of the running VMs without stopping them: they outlive the daemon and the
// next one reattaches.
func (d *Daemon) closeVMs() {
	if d.vms == nil {
		return
	}
	d.vms.mu.Lock()
	ms := d.vms.machines
	d.vms.machines = map[string]vmm.Machine{}
	d.vms.mu.Unlock()
	for _, m := range ms {
		_ = m.Close()
	}
}
