package daemon

// Starting a VM: a declarative table of stages, each with a deadline and a hint for when it
// fails. A failed start undoes what its stages did (the VMM killed, the TAP given back) and
// records the VM as stopped with the reason.

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/banger-vm/banger/internal/api"
	"github.com/banger-vm/banger/internal/image"
	"github.com/banger-vm/banger/internal/initramfs"
	"github.com/banger-vm/banger/internal/lifecycle"
	"github.com/banger-vm/banger/internal/revert"
	"github.com/banger-vm/banger/internal/store"
	"github.com/banger-vm/banger/internal/vmm"
	"github.com/banger-vm/banger/internal/vmm/proc"
)

// stage is a timed step of a create or start. A missed deadline fails it with its name, the
// last console lines and the hint.
type stage struct {
	name     string
	deadline time.Duration
	hint     string
}

// Stage names that other parts of the daemon (bench) look for in a VM's timings.
const (
	stageAgent = "waiting for the agent"
	// stageIdentity is a clone's: the agent takes on the VM's own identity.
	stageIdentity = "taking on its identity"
	stageSSH      = "waiting for sshd"
)

// agentDeadline bounds a boot to the agent answering: TCG boots take seconds; a loaded host
// needs slack.
const agentDeadline = 3 * time.Minute

// stageDisks is create's one stage: it builds a new VM's disks.
const stageDisks = "preparing disks"

func disksStage() stage {
	return stage{stageDisks, 2 * time.Minute, "check free space in the data dir and that e2fsprogs is installed (`banger doctor`)"}
}

// startStep is one row of the start table: the stage, an optional condition, what it does,
// and whether the start goes on when it fails.
type startStep struct {
	stage
	// when, if set, decides whether the stage runs at all.
	when func(ctx context.Context, b *boot) bool
	run  func(ctx context.Context, b *boot) error
	// tolerate, if set, says the VM is usable without this stage (the start goes on).
	tolerate func(ctx context.Context, b *boot, err error) bool
}

// startSteps is the start of a VM, in order.
func (d *Daemon) startSteps() []startStep {
	return []startStep{
		{stage: stage{"preparing the initramfs", 2 * time.Minute,
			"check runtime.init_path / runtime.agent_path (banger-init and banger-agent next to banger) and the kernel's modules"},
			run: d.stepInitramfs},
		{stage: stage{"acquiring network", 30 * time.Second, "check the root helper (`banger doctor`)"},
			run: func(ctx context.Context, b *boot) error {
				if p := b.profile.pinnedVMM(); p != nil {
					return d.stepPinnedNetwork(ctx, b, p.Network)
				}
				return d.stepNetwork(ctx, b)
			}},
		{stage: stage{"starting the vmm", time.Minute,
			"see qemu.log / the console log in the VM's run dir, and `banger doctor` for the VMM check"},
			run: d.stepVMM},
		{stage: stage{stageAgent, agentDeadline,
			"the guest did not bring its agent up: read the console (`banger vm logs NAME`); if the VMM exited, its own log is in the VM's run dir"},
			run: stepAgent},
		{stage: stageThaw, when: func(_ context.Context, b *boot) bool { return b.profile.restoresSavedState() },
			run: d.stepThaw, tolerate: d.toleratedThawFailure},
		{stage: stage{stageIdentity, 30 * time.Second,
			"the clone's agent did not take on the VM's identity: read the console (`banger vm logs NAME`); a clone of a warm-start template can be created with --cold instead"},
			when: func(_ context.Context, b *boot) bool { return b.profile.warm != nil }, run: d.stepIdentity},
		{stage: stageClock, when: func(_ context.Context, b *boot) bool { return b.profile.resume != nil },
			run: d.stepClock, tolerate: d.toleratedClockFailure},
		{stage: stage{stageSSH, time.Minute,
			"the guest's sshd did not answer on its port 22: read the console (`banger vm logs NAME`)"},
			// A resumed VM's sshd is as it was paused (and so is what the record says of it).
			when:     func(ctx context.Context, b *boot) bool { return b.profile.resume == nil && d.needSSHWait(ctx, b) },
			run:      func(ctx context.Context, b *boot) error { return waitSSH(ctx, b.m.Agent()) },
			tolerate: d.toleratedSSHFailure},
	}
}

// sshPolicy says what a start does about the guest's sshd.
type sshPolicy int

const (
	sshWait    sshPolicy = iota // wait for it; a VM without a working sshd still starts
	sshSkip                     // don't wait: the caller uses the agent (vm run -- CMD)
	sshRequire                  // the start fails without it (image builds provision over SSH)
)

// bootProfile is what kind of boot a start is: the VM's drives, extra kernel arguments,
// and what it needs of sshd. Normal VMs and image builds differ only here.
type bootProfile struct {
	drives  func(modules []vmm.Drive) []vmm.Drive
	cmdline string
	ssh     sshPolicy
	// memoryFile puts the guest's RAM in a file (a template's builder, to snapshot it).
	memoryFile string
	// warm, when set, restores the VM from a template instead of booting it.
	warm *warmStart
	// resume, when set, restores the VM's own paused state.
	resume *vmPaused
	// boot is what the start records of its choice (cold, and why, unless warm).
	boot api.VMBoot
}

// restoresSavedState says the start restores a state saved by vm pause or vm snapshot
// (not a template's): its guest's filesystems were frozen for the save.
func (p bootProfile) restoresSavedState() bool {
	return p.resume != nil || (p.warm != nil && p.warm.snap != nil)
}

// pinnedVMM is the VMM a start must use: the one that saved the state it restores (a
// paused VM's, or a user snapshot's); nil lets the host's choice stand.
func (p bootProfile) pinnedVMM() *vmPaused {
	switch {
	case p.resume != nil:
		return p.resume
	case p.warm != nil && p.warm.snap != nil:
		m := p.warm.snap.meta
		return &vmPaused{Driver: m.Driver, Accel: m.Accel, Network: m.Network}
	}
	return nil
}

// vmBootProfile is a normal VM's boot: the image read-only under the VM's writable layer,
// its work disk and its kernel's modules.
func (d *Daemon) vmBootProfile(ctx context.Context, vm store.VM, skipSSHWait bool) (bootProfile, error) {
	rec, err := parseRecord(vm)
	if err != nil {
		return bootProfile{}, err
	}
	if rec.Builder {
		return bootProfile{}, api.Errorf(api.CodeConflict, "it is removed with its build; create a VM from the built image instead",
			"VM %q is an image build's temporary VM", vm.Name)
	}
	img, err := d.store.GetImage(ctx, vm.ImageID)
	if err != nil {
		return bootProfile{}, err
	}
	p := bootProfile{drives: func(mods []vmm.Drive) []vmm.Drive { return vmDrives(img.RootfsPath, rec.vmSpec, mods) },
		boot: api.VMBoot{Mode: api.BootCold, Reason: "only a new VM's first start restores a template: later starts boot the VM's own disks"}}
	if skipSSHWait {
		p.ssh = sshSkip
	}
	return p, nil
}

// vmDrives are a VM's disks: the image read-only under the VM's writable layer, its work
// disk, and its kernel's modules disk.
func vmDrives(rootfs string, spec vmSpec, modules []vmm.Drive) []vmm.Drive {
	return append([]vmm.Drive{
		{ID: "rootfs", Path: rootfs, ReadOnly: true, Role: vmm.RoleRoot},
		{ID: "layer", Path: spec.layerDisk(), Role: vmm.RoleLayer},
		{ID: workDriveID, Path: spec.workDisk(), Role: vmm.RoleWork},
	}, modules...)
}

// boot is one start in progress: what the stages share.
type boot struct {
	vm       store.VM
	rec      vmRecord
	profile  bootProfile
	kernel   image.Kernel
	drv      vmm.Driver
	undo     *revert.Reverter
	progress progressFunc
	m        vmm.Machine

	initrd  string
	modules []vmm.Drive
	cmdline []string
	nics    []vmm.NIC
}

// save writes the start's record to the store.
func (d *Daemon) save(ctx context.Context, b *boot) error {
	b.vm.Spec = b.rec.raw()
	return d.store.PutVM(ctx, b.vm)
}

// progressFunc receives stage reports of a streamed operation.
type progressFunc func(api.Progress)

// stageError is a failed stage, with what the user needs to act.
type stageError struct {
	stage   stage
	err     error
	console []string
}

func (e *stageError) Error() string {
	msg := fmt.Sprintf("%s: %v", e.stage.name, e.err)
	if len(e.console) > 0 {
		msg += "\nlast console lines:\n  " + strings.Join(e.console, "\n  ")
	}
	return msg
}

func (e *stageError) Unwrap() error { return e.err }

// runStage runs fn as a timed, recorded stage with its deadline.
func runStage(ctx context.Context, rec *lifecycle.Recorder, progress progressFunc, st stage, fn func(context.Context) error) error {
	progress(api.Progress{Stage: st.name})
	start := time.Now()
	err := rec.Run(ctx, st.name, func(ctx context.Context) error {
		sctx, cancel := context.WithTimeoutCause(ctx, st.deadline, fmt.Errorf("missed its %s deadline", st.deadline))
		defer cancel()
		err := fn(sctx)
		if err != nil && sctx.Err() != nil && ctx.Err() == nil {
			err = fmt.Errorf("%w: %w", context.Cause(sctx), err)
		}
		return err
	})
	if err != nil {
		return &stageError{stage: st, err: err}
	}
	progress(api.Progress{Stage: st.name, Message: fmt.Sprintf("%.1f ms", lifecycle.Millis(time.Since(start)))})
	return nil
}

// startVM boots a stopped VM.
func (d *Daemon) startVM(ctx context.Context, name string, progress progressFunc) (api.VM, error) {
	vm, unlock, err := d.lockedVM(ctx, name)
	if err != nil {
		return api.VM{}, err
	}
	defer unlock()
	if d.machine(vm.ID) != nil {
		return api.VM{}, api.Errorf(api.CodeConflict, "stop it first, or use it", "VM %q is already running", vm.Name)
	}
	profile, err := d.vmBootProfile(ctx, vm, false)
	if err != nil {
		return api.VM{}, err
	}
	op := "vm.start"
	if vm.State == store.VMPaused {
		op = "vm.resume"
	}
	timings := lifecycle.New(op, vm.ID, d.log, d.store).Deferred()
	defer timings.Flush(context.WithoutCancel(ctx))
	if vm.State == store.VMPaused {
		rec, err := parseRecord(vm)
		if err != nil {
			return api.VM{}, err
		}
		if rec.Paused == nil {
			return api.VM{}, api.Errorf(api.CodeInternal, "discard it with `banger vm stop --force`", "VM %q is paused but its record has no saved state", vm.Name)
		}
		resumeProfile(vm, rec, &profile)
	}
	if vm.State == store.VMCreated {
		if vm, err = d.warmFirstStart(ctx, vm, &profile, timings, progress); err != nil {
			return api.VM{}, err
		}
	}
	if vm, err = d.startLocked(ctx, vm, timings, progress, profile); err != nil {
		return api.VM{}, err
	}
	return d.vmToAPI(ctx, vm), nil
}

// restartVM stops a VM (if it runs) and boots it again, under one lock so nothing else
// slips in between.
func (d *Daemon) restartVM(ctx context.Context, req api.VMStopRequest, progress progressFunc) (api.VM, error) {
	vm, unlock, err := d.lockedVM(ctx, req.Name)
	if err != nil {
		return api.VM{}, err
	}
	defer unlock()
	profile, err := d.vmBootProfile(ctx, vm, false)
	if err != nil {
		return api.VM{}, err
	}
	progress(api.Progress{Stage: "stopping"})
	start := time.Now()
	if vm, err = d.stopLocked(ctx, vm.ID, req.TimeoutSeconds, req.Force); err != nil {
		return api.VM{}, err
	}
	progress(api.Progress{Stage: "stopping", Message: fmt.Sprintf("%.1f ms", lifecycle.Millis(time.Since(start)))})
	timings := lifecycle.New("vm.restart", vm.ID, d.log, d.store).Deferred()
	defer timings.Flush(context.WithoutCancel(ctx))
	if vm, err = d.startLocked(ctx, vm, timings, progress, profile); err != nil {
		return api.VM{}, err
	}
	return d.vmToAPI(ctx, vm), nil
}

// startLocked boots vm (its lock held) through the start table. On failure the VMM is
// gone, the TAP given back and the VM is stopped again; the error names the stage, the
// last console lines and a hint.
func (d *Daemon) startLocked(ctx context.Context, vm store.VM, timings *lifecycle.Recorder, progress progressFunc, profile bootProfile) (_ store.VM, err error) {
	rec, err := parseRecord(vm)
	if err != nil {
		return vm, err
	}
	b := &boot{vm: vm, rec: rec, profile: profile, undo: revert.New(), progress: progress}
	if b.kernel, err = d.images.Kernel(rec.Kernel); err != nil {
		return vm, api.Errorf(api.CodeNotFound, "import or pull the kernel again", "kernel %q of VM %q is missing", rec.Kernel, vm.Name)
	}
	if p := profile.pinnedVMM(); p != nil {
		// Only the VMM that saved the state can load it.
		if _, b.drv, err = d.resumeDriver(p); err != nil {
			return vm, err
		}
		b.vm.VMM, b.rec.Accel = p.Driver, p.Accel
	} else {
		// The host may have changed since the VM was created (firecracker installed, KVM fixed).
		choice, err := d.chooseVMM()
		if err != nil {
			return vm, err
		}
		b.vm.VMM, b.rec.Accel, b.rec.DriverReason = choice.Driver, choice.Accel, choice.Reason
		if b.drv, err = d.driver(choice.Driver, choice.Accel); err != nil {
			return vm, err
		}
	}
	defer func() {
		if err != nil {
			err = d.failStart(ctx, b, timings, err)
		}
	}()
	b.vm.State = store.VMStarting
	choiceOfBoot := profile.boot
	if profile.warm != nil {
		choiceOfBoot = profile.warm.boot
	}
	b.rec.Boot = &choiceOfBoot
	if err := d.save(ctx, b); err != nil {
		return b.vm, err
	}
	if err := os.MkdirAll(rec.RunDir, 0o700); err != nil {
		return b.vm, err
	}
	// The VMM's own console, reboot and panic keys are the driver's to add.
	b.cmdline = []string{"banger.hostname=" + vm.Name}
	for _, step := range d.startSteps() {
		if step.when != nil && !step.when(ctx, b) {
			continue
		}
		err := runStage(ctx, timings, progress, step.stage, func(ctx context.Context) error {
			if err := d.fault("stage " + step.name); err != nil {
				return err
			}
			return step.run(ctx, b)
		})
		if err != nil && !(step.tolerate != nil && step.tolerate(ctx, b, err)) {
			return b.vm, err
		}
	}
	b.rec.Stages = timings.Stages()
	b.rec.LastExit = ""
	b.vm.State = store.VMRunning
	if err := d.fault("store running"); err != nil {
		return b.vm, err
	}
	// A resumed VM runs from here: its saved state is dropped in the write that says so.
	b.rec.Paused = nil
	if err := d.save(ctx, b); err != nil {
		b.rec.Paused = profile.resume
		return b.vm, err
	}
	if profile.resume != nil {
		if err := removeSavedState(profile.resume.StateFile); err != nil {
			d.log.Warn("could not delete a resumed VM's saved state", "vm", vm.Name, "err", err)
		}
	}
	b.undo.Success()
	d.setMachine(vm.ID, b.m)
	d.openForwardsOf(b.vm, b.rec, b.progress)
	d.openMountsOf(ctx, b.vm, b.rec, b.progress)
	go d.watchMachine(vm.ID, b.m)
	return b.vm, nil
}

// failStart undoes a failed start and records the VM as stopped with the reason; it returns
// the error for the user (a failed stage's hint and console lines included).
func (d *Daemon) failStart(ctx context.Context, b *boot, timings *lifecycle.Recorder, err error) error {
	var se *stageError
	if errors.As(err, &se) && b.m != nil {
		se.console = proc.ConsoleTail(b.rec.ConsoleLog, 15)
	}
	b.undo.Fail()
	b.rec.VMM, b.rec.Network.TAP = nil, ""
	b.rec.LastExit = "start failed: " + firstLine(err.Error())
	b.rec.Stages = timings.Stages()
	b.vm.State = store.VMStopped
	if b.profile.resume != nil {
		// The saved state is untouched: the VM is still paused, to resume again or discard.
		b.vm.State, b.rec.LastExit = store.VMPaused, "resume failed: "+firstLine(err.Error())
	}
	if perr := d.save(context.WithoutCancel(ctx), b); perr != nil {
		d.log.Warn("could not record a failed start", "vm", b.vm.Name, "err", perr)
	}
	if se != nil {
		return api.Errorf(api.CodeUnavailable, se.stage.hint, "start VM %q failed at stage %s", b.vm.Name, se.Error())
	}
	return err
}

// fault is the daemon's fault-injection point for tests (Options.fault); nil otherwise.
func (d *Daemon) fault(point string) error {
	if d.opts.fault == nil {
		return nil
	}
	return d.opts.fault(point)
}

func (d *Daemon) guestBinaries() (initBin, agentBin string, err error) {
	cfg := d.opts.Config.Runtime
	exe, _ := os.Executable()
	dir := filepath.Dir(exe)
	initBin, agentBin = cfg.InitPath, cfg.AgentPath
	if initBin == "" {
		initBin = filepath.Join(dir, "banger-init")
	}
	if agentBin == "" {
		agentBin = filepath.Join(dir, "banger-agent")
	}
	for _, p := range []string{initBin, agentBin} {
		if _, err := os.Stat(p); err != nil {
			return "", "", fmt.Errorf("guest binary %s is missing: install banger-init and banger-agent next to banger (make install), or set runtime.init_path / runtime.agent_path", p)
		}
	}
	return initBin, agentBin, nil
}

// ensureInitramfs is the kernel's initramfs (banger-init, the agent and the boot modules),
// from the cache.
func (d *Daemon) ensureInitramfs(ctx context.Context, k image.Kernel) (string, error) {
	initBin, agentBin, err := d.guestBinaries()
	if err != nil {
		return "", err
	}
	res, err := initramfs.Cache{Dir: filepath.Join(d.opts.Layout.CacheDir, "initramfs"), Memo: d.vms.initrd}.Ensure(ctx, initramfs.Spec{
		InitBinary: initBin, AgentBinary: agentBin, ModulesDir: k.ModulesDir, KernelRelease: k.Release, BangerVersion: d.opts.Version})
	return res.Path, err
}

func (d *Daemon) stepInitramfs(ctx context.Context, b *boot) error {
	var err error
	if b.initrd, err = d.ensureInitramfs(ctx, b.kernel); err != nil {
		return err
	}
	// The kernel's full module tree as a read-only disk, so modprobe works in the guest.
	var merr error
	if b.modules, merr = d.modulesDrives(ctx, b.kernel); merr != nil {
		d.log.Warn("VM boots without its kernel's modules (modprobe will fail in the guest)", "vm", b.vm.Name, "err", merr)
	}
	return nil
}

func (d *Daemon) stepNetwork(ctx context.Context, b *boot) error {
	b.rec.Network = vmNetwork{}
	if !d.networkReady() {
		b.rec.Network.Note = "no network: the root helper is not reachable (see `banger doctor`)"
		return nil
	}
	lease, tap, err := d.attachNetwork(ctx, b.vm.ID)
	if err != nil {
		// Not fatal: the VM boots without a network and says why.
		b.rec.Network.Note = "no network: " + err.Error()
		d.log.Warn("VM boots without a network", "vm", b.vm.Name, "err", err)
		return nil
	}
	b.undo.Add(func() { _ = d.detachNetwork(context.WithoutCancel(ctx), b.vm.ID, tap, false) })
	mac, _ := parseMAC(lease.MAC)
	b.nics = append(b.nics, vmm.NIC{TAP: tap, MAC: mac})
	dns := make([]string, 0, len(lease.DNS))
	for _, a := range lease.DNS {
		dns = append(dns, a.String())
	}
	b.rec.Network = vmNetwork{TAP: tap, IP: lease.IP.String(), Prefix: lease.Prefix, Gateway: lease.Gateway.String(), MAC: lease.MAC, DNS: dns}
	b.cmdline = append(b.cmdline, "banger.ip="+netip.PrefixFrom(lease.IP, lease.Prefix).String(), "banger.gw="+lease.Gateway.String())
	if len(dns) > 0 {
		b.cmdline = append(b.cmdline, "banger.dns="+strings.Join(dns, ","))
	}
	// Persist the TAP before the VMM uses it, so a restarted daemon keeps it.
	return d.save(ctx, b)
}

func (d *Daemon) stepVMM(ctx context.Context, b *boot) error {
	cmdline := b.cmdline
	if b.profile.cmdline != "" {
		cmdline = append(cmdline, b.profile.cmdline)
	}
	ms := vmm.MachineSpec{
		Name: b.vm.Name, Kernel: b.kernel.BzImage, Initramfs: b.initrd, Cmdline: strings.Join(cmdline, " "),
		Drives: b.profile.drives(b.modules),
		NICs:   b.nics, VCPUs: b.rec.CPUs, MemoryMiB: b.rec.MemoryMiB, RunDir: b.rec.RunDir,
		MemoryFile: b.profile.memoryFile,
	}
	var m vmm.Machine
	var err error
	if p := b.profile.resume; p != nil {
		r, _, err := d.resumeDriver(p)
		if err != nil {
			return err
		}
		if err := d.fault("resume restore"); err != nil {
			return err
		}
		if m, err = r.Restore(ctx, ms, p.snapshot()); err != nil {
			return err
		}
	}
	if b.profile.warm != nil {
		if m, err = d.restoreClone(ctx, b, ms); err != nil {
			return err
		}
	}
	if m == nil {
		if m, err = b.drv.Start(ctx, ms); err != nil {
			return err
		}
	}
	// The VMM runs from here on: its undo is registered before anything else can fail.
	b.m = m
	b.undo.Add(func() { endMachine(m, b.rec.RunDir) })
	st := m.State()
	b.rec.VMM, b.rec.ConsoleLog = &st, st.ConsoleLog
	if err := d.fault("store vmm"); err != nil {
		return err
	}
	return d.save(ctx, b)
}

func stepAgent(ctx context.Context, b *boot) error {
	actx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	go func() {
		select {
		case <-b.m.Done():
			cancel(fmt.Errorf("the VMM exited: %s", b.m.Exit().Reason))
		case <-actx.Done():
		}
	}()
	_, err := b.m.Agent().WaitReady(actx)
	if err != nil && context.Cause(actx) != nil && ctx.Err() == nil {
		return context.Cause(actx)
	}
	return err
}
