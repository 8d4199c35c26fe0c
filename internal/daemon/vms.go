package daemon

// The VM lifecycle: create, start (in timed stages with deadlines), stop, rm, reconcile
// after a daemon restart. One mutex per VM serializes its operations; different VMs
// proceed in parallel. Every multi-step operation undoes what it did when a step fails.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/banger-vm/banger/internal/agent"
	"github.com/banger-vm/banger/internal/agent/agentclient"
	"github.com/banger-vm/banger/internal/api"
	"github.com/banger-vm/banger/internal/image"
	"github.com/banger-vm/banger/internal/initramfs"
	"github.com/banger-vm/banger/internal/kvm"
	"github.com/banger-vm/banger/internal/lifecycle"
	"github.com/banger-vm/banger/internal/sshkeys"
	"github.com/banger-vm/banger/internal/store"
	"github.com/banger-vm/banger/internal/system"
	"github.com/banger-vm/banger/internal/units"
	"github.com/banger-vm/banger/internal/vmm"
	"github.com/banger-vm/banger/internal/vmm/firecracker"
	"github.com/banger-vm/banger/internal/vmm/qemu"
)

// Defaults and limits of a VM's resources.
const (
	defaultCPUs      = 2
	defaultMemoryMiB = 1024
	minMemoryMiB     = 128
	maxMemoryMiB     = 256 << 10
	maxCPUs          = 64
	minDiskBytes     = 256 << 20
	maxDiskBytes     = 16 << 40
	layerDiskBytes   = 4 << 30
)

// Stage names and deadlines of a start. A missed deadline fails the start with the stage's
// name, the last console lines and a hint.
const (
	stageDisks     = "preparing disks"
	stageInitramfs = "preparing the initramfs"
	stageNetwork   = "acquiring network"
	stageVMM       = "starting the vmm"
	stageAgent     = "waiting for the agent"
	stageSSH       = "waiting for sshd"
)

var stageDeadline = map[string]time.Duration{
	stageDisks:     2 * time.Minute,
	stageInitramfs: 2 * time.Minute,
	stageNetwork:   30 * time.Second,
	stageVMM:       time.Minute,
	stageAgent:     3 * time.Minute, // TCG boots take seconds; a loaded host needs slack
	stageSSH:       time.Minute,
}

var stageHint = map[string]string{
	stageDisks:     "check free space in the data dir and that e2fsprogs is installed (`banger doctor`)",
	stageInitramfs: "check runtime.init_path / runtime.agent_path (banger-init and banger-agent next to banger) and the kernel's modules",
	stageNetwork:   "check the root helper (`banger doctor`)",
	stageVMM:       "see qemu.log / the console log in the VM's run dir, and `banger doctor` for the VMM check",
	stageAgent:     "the guest did not bring its agent up: read the console (`banger vm logs NAME`)",
	stageSSH:       "the guest's sshd did not answer on its port 22: read the console (`banger vm logs NAME`)",
}

// vmNetwork is the network part of a VM's spec; "tap" is what network.go's reconcile reads.
type vmNetwork struct {
	TAP     string   `json:"tap,omitempty"`
	IP      string   `json:"ip,omitempty"`
	Prefix  int      `json:"prefix,omitempty"`
	Gateway string   `json:"gateway,omitempty"`
	MAC     string   `json:"mac,omitempty"`
	DNS     []string `json:"dns,omitempty"`
	Note    string   `json:"note,omitempty"`
}

// vmSpec is the VM row's spec JSON.
type vmSpec struct {
	Network      vmNetwork   `json:"network"`
	Kernel       string      `json:"kernel"`
	CPUs         int         `json:"cpus"`
	MemoryMiB    int         `json:"memory_mib"`
	DiskBytes    int64       `json:"disk_bytes"`
	Dir          string      `json:"dir"`
	RunDir       string      `json:"run_dir"`
	ConsoleLog   string      `json:"console_log,omitempty"`
	Driver       string      `json:"driver"`
	Accel        string      `json:"accel,omitempty"`
	DriverReason string      `json:"driver_reason,omitempty"`
	VMM          *vmm.State  `json:"vmm,omitempty"`
	Stages       []api.Stage `json:"stages,omitempty"`
	LastExit     string      `json:"last_exit,omitempty"`
	// SSHHostKey is the VM's public host key, pinned in banger's known_hosts.
	SSHHostKey string `json:"ssh_host_key,omitempty"`
	SSHReady   bool   `json:"ssh_ready,omitempty"`
	SSHAbsent  bool   `json:"ssh_absent,omitempty"` // no sshd or no banger key: vm ssh cannot work
	SSHNote    string `json:"ssh_note,omitempty"`
	// Builder marks an image build's temporary VM: it boots Rootfs (the image being built)
	// read-write, without a layer or work disk, and is removed with the build.
	Builder bool   `json:"builder,omitempty"`
	Rootfs  string `json:"rootfs,omitempty"`
	// Creating is set while create builds the disks: a row still marked so when the daemon
	// starts is an interrupted create, which reconcile removes.
	Creating bool `json:"creating,omitempty"`
}

func parseSpec(vm store.VM) vmSpec {
	var s vmSpec
	if len(vm.Spec) > 0 {
		_ = json.Unmarshal(vm.Spec, &s)
	}
	return s
}

func (s vmSpec) raw() json.RawMessage {
	b, _ := json.Marshal(s)
	return b
}

func (s vmSpec) workDisk() string  { return filepath.Join(s.Dir, "work.ext4") }
func (s vmSpec) layerDisk() string { return filepath.Join(s.Dir, "layer.ext4") }

// vmManager is the daemon's live VM state.
type vmManager struct {
	mu       sync.Mutex
	locks    map[string]*sync.Mutex
	machines map[string]vmm.Machine
	drivers  map[string]vmm.Driver
	host     func() vmm.Host
	keys     *sshkeys.Store
}

func (d *Daemon) initVMs(ctx context.Context) {
	cfg := d.opts.Config.Runtime
	d.vms = &vmManager{
		locks:    map[string]*sync.Mutex{},
		machines: map[string]vmm.Machine{},
		drivers:  map[string]vmm.Driver{},
		keys:     sshkeys.New(d.opts.Layout.SSHDir).WithUserKey(cfg.SSHKeyPath),
		host: sync.OnceValue(func() vmm.Host {
			bg := context.Background()
			k := kvm.Probe(bg, "")
			fc, fcErr := system.LookupTool(bg, "firecracker", cfg.FirecrackerPath, "", "--version")
			q, qErr := system.LookupTool(bg, "qemu-system-x86_64", cfg.QEMUPath, "", "--version")
			return vmm.Host{
				KVMUsable:     k.Status == kvm.StatusUsable,
				KVMStatus:     string(k.Status),
				FirecrackerOK: fcErr == nil && fc.Path != "" && system.VersionAtLeast(fc.Version, "1.8"),
				QEMUOK:        qErr == nil && q.Path != "",
			}
		}),
	}
	d.reconcileVMs(ctx)
}

// lockVM serializes operations on one VM.
func (d *Daemon) lockVM(id string) func() {
	d.vms.mu.Lock()
	l := d.vms.locks[id]
	if l == nil {
		l = &sync.Mutex{}
		d.vms.locks[id] = l
	}
	d.vms.mu.Unlock()
	l.Lock()
	return l.Unlock
}

func (d *Daemon) machine(id string) vmm.Machine {
	d.vms.mu.Lock()
	defer d.vms.mu.Unlock()
	return d.vms.machines[id]
}

func (d *Daemon) setMachine(id string, m vmm.Machine) {
	d.vms.mu.Lock()
	defer d.vms.mu.Unlock()
	if m == nil {
		delete(d.vms.machines, id)
	} else {
		d.vms.machines[id] = m
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
	var drv vmm.Driver
	switch name {
	case qemu.DriverName:
		drv = qemu.New(qemu.Config{Binary: d.opts.Config.Runtime.QEMUPath, Accel: accel})
	case firecracker.Name:
		drv = firecracker.New(firecracker.Config{Binary: d.opts.Config.Runtime.FirecrackerPath,
			KernelCacheDir: filepath.Join(d.opts.Layout.CacheDir, "vmlinux")})
	default:
		return nil, fmt.Errorf("unknown VMM driver %q", name)
	}
	d.vms.drivers[key] = drv
	return drv, nil
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

var vmNameRE = regexp.MustCompile(`^[a-z][a-z0-9-]{0,31}$`)

func validVMName(name string) error {
	if !vmNameRE.MatchString(name) || strings.HasSuffix(name, "-") || strings.Contains(name, "--") {
		return api.Errorf(api.CodeBadRequest, "use 1-32 lowercase letters, digits and single '-', starting with a letter and not ending with '-'",
			"invalid VM name %q", name)
	}
	return nil
}

var (
	nameAdjectives = []string{"brisk", "calm", "eager", "fuzzy", "gentle", "happy", "jolly", "keen", "lucky", "mellow", "nimble", "plucky", "quiet", "rapid", "sunny", "witty"}
	nameNouns      = []string{"otter", "badger", "falcon", "lynx", "heron", "panda", "gecko", "marten", "puffin", "walrus", "koala", "bison", "ferret", "robin", "newt", "yak"}
)

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func generateName() string {
	b := make([]byte, 2)
	_, _ = rand.Read(b)
	return nameAdjectives[b[0]%16] + "-" + nameNouns[b[1]%16] + "-" + randomHex(2)
}

// createParams is a validated create request.
type createParams struct {
	name      string
	img       store.Image
	kernel    image.Kernel
	cpus      int
	memoryMiB int
	diskBytes int64
}

func (d *Daemon) validateCreate(ctx context.Context, req api.VMCreateRequest) (createParams, error) {
	p := createParams{name: req.Name, cpus: req.CPUs, memoryMiB: defaultMemoryMiB, diskBytes: system.DefaultWorkDiskSize}
	if p.name == "" {
		p.name = generateName()
	}
	if err := validVMName(p.name); err != nil {
		return p, err
	}
	switch {
	case p.cpus == 0:
		p.cpus = defaultCPUs
	case p.cpus < 1 || p.cpus > maxCPUs:
		return p, api.Errorf(api.CodeBadRequest, fmt.Sprintf("pass --cpus between 1 and %d", maxCPUs), "invalid CPU count %d", req.CPUs)
	}
	if req.Memory != "" {
		n, err := units.ParseSize(req.Memory)
		if err != nil {
			return p, api.Errorf(api.CodeBadRequest, "pass --memory like 512M or 2G", "invalid memory: %v", err)
		}
		p.memoryMiB = int(n >> 20)
		if p.memoryMiB < minMemoryMiB || p.memoryMiB > maxMemoryMiB {
			return p, api.Errorf(api.CodeBadRequest, fmt.Sprintf("pass --memory between %dM and %dG", minMemoryMiB, maxMemoryMiB>>10),
				"invalid memory %q: %s is out of range", req.Memory, units.FormatSize(n))
		}
	}
	if req.DiskSize != "" {
		n, err := units.ParseSize(req.DiskSize)
		if err != nil {
			return p, api.Errorf(api.CodeBadRequest, "pass --disk-size like 8G", "invalid disk size: %v", err)
		}
		if n < minDiskBytes || n > maxDiskBytes {
			return p, api.Errorf(api.CodeBadRequest, "pass --disk-size between 256M and 16T",
				"invalid disk size %q: %s is out of range", req.DiskSize, units.FormatSize(n))
		}
		p.diskBytes = n &^ (1<<20 - 1)
	}
	imgName := req.Image
	if imgName == "" {
		imgName = d.opts.Config.Images.Default
	}
	img, err := d.store.GetImageByName(ctx, imgName)
	if errors.Is(err, store.ErrNotFound) {
		return p, api.Errorf(api.CodeNotFound, fmt.Sprintf("pull it with `banger image pull %s`, or pick one from `banger image ls` with --image", imgName),
			"image %q not found", imgName)
	} else if err != nil {
		return p, err
	}
	p.img = img
	kid := req.Kernel
	if kid == "" {
		kid = img.KernelRef
	}
	if kid != "" {
		if p.kernel, err = d.images.Kernel(kid); err != nil {
			return p, api.Errorf(api.CodeNotFound, "list kernels with `banger image kernel ls`", "kernel %q not found", kid)
		}
	} else {
		ks, _ := d.images.Kernels()
		if len(ks) == 0 {
			return p, api.Errorf(api.CodeNotFound, "fetch one with `banger image kernel pull` or import one with `banger image kernel import DIR`",
				"image %q has no kernel and none is installed", imgName)
		}
		p.kernel = ks[0]
	}
	return p, nil
}

// vmLookup finds a VM by name (or id).
func (d *Daemon) vmLookup(ctx context.Context, name string) (store.VM, error) {
	if name == "" {
		return store.VM{}, api.Errorf(api.CodeBadRequest, "name the VM", "missing VM name")
	}
	vm, err := d.store.GetVMByName(ctx, name)
	if errors.Is(err, store.ErrNotFound) {
		vm, err = d.store.GetVM(ctx, name)
	}
	if errors.Is(err, store.ErrNotFound) {
		return vm, api.Errorf(api.CodeNotFound, "list VMs with `banger vm ls`", "VM %q not found", name)
	}
	return vm, err
}

// progressFunc receives stage reports of a streamed operation.
type progressFunc func(api.Progress)

// stageError is a failed start stage, with what the user needs to act.
type stageError struct {
	stage   string
	err     error
	console []string
}

func (e *stageError) Error() string {
	msg := fmt.Sprintf("%s: %v", e.stage, e.err)
	if len(e.console) > 0 {
		msg += "\nlast console lines:\n  " + strings.Join(e.console, "\n  ")
	}
	return msg
}

func (e *stageError) Unwrap() error { return e.err }

// runStage runs fn as a timed, recorded stage with its deadline.
func runStage(ctx context.Context, rec *lifecycle.Recorder, progress progressFunc, name string, fn func(context.Context) error) error {
	progress(api.Progress{Stage: name})
	start := time.Now()
	limit := stageDeadline[name]
	err := rec.Run(ctx, name, func(ctx context.Context) error {
		sctx, cancel := context.WithTimeoutCause(ctx, limit, fmt.Errorf("missed its %s deadline", limit))
		defer cancel()
		err := fn(sctx)
		if err != nil && sctx.Err() != nil && ctx.Err() == nil {
			err = fmt.Errorf("%w: %w", context.Cause(sctx), err)
		}
		return err
	})
	if err != nil {
		return &stageError{stage: name, err: err}
	}
	progress(api.Progress{Stage: name, Message: fmt.Sprintf("%.1f ms", lifecycle.Millis(time.Since(start)))})
	return nil
}

// create registers a VM and builds its disks; with start it boots it too. On failure
// nothing of the VM is left.
func (d *Daemon) createVM(ctx context.Context, req api.VMCreateRequest, progress progressFunc) (_ api.VM, err error) {
	p, err := d.validateCreate(ctx, req)
	if err != nil {
		return api.VM{}, err
	}
	choice, err := vmm.Choose(d.opts.Config.VMM.Driver, d.vms.host())
	if err != nil {
		return api.VM{}, api.Errorf(api.CodeUnavailable, "see `banger doctor`", "%v", err)
	}
	id := randomHex(6)
	unlock := d.lockVM(id)
	defer unlock()
	spec := vmSpec{Kernel: p.kernel.ID, CPUs: p.cpus, MemoryMiB: p.memoryMiB, DiskBytes: p.diskBytes,
		Dir:    filepath.Join(d.opts.Layout.VMsDir, id),
		RunDir: filepath.Join(d.opts.Layout.RuntimeDir, "v", id),
		Driver: choice.Driver, Accel: choice.Accel, DriverReason: choice.Reason, Creating: true}
	row := store.VM{ID: id, Name: p.name, ImageID: p.img.ID, State: store.VMCreated, VMM: choice.Driver, Spec: spec.raw()}
	var undo []func()
	defer func() {
		if err != nil {
			for i := len(undo) - 1; i >= 0; i-- {
				undo[i]()
			}
		}
	}()
	if err := d.store.PutVM(ctx, row); err != nil {
		if errors.Is(err, store.ErrConflict) {
			return api.VM{}, api.Errorf(api.CodeConflict, "pick another name, or remove the other VM", "a VM named %q already exists", p.name)
		}
		return api.VM{}, err
	}
	undo = append(undo, func() { _ = d.store.DeleteVM(context.WithoutCancel(ctx), id) })
	if err := os.MkdirAll(spec.Dir, 0o700); err != nil {
		return api.VM{}, err
	}
	undo = append(undo, func() { _ = os.RemoveAll(spec.Dir); _ = os.RemoveAll(spec.RunDir) })
	rec := lifecycle.New("vm.create", id, d.log, d.store)
	if err := runStage(ctx, rec, progress, stageDisks, func(ctx context.Context) error {
		hostKey, err := d.buildDisks(ctx, spec, p)
		if err != nil {
			return err
		}
		spec.SSHHostKey = string(hostKey)
		return d.vms.keys.Pin(sshkeys.HostAlias(id), hostKey)
	}); err != nil {
		return api.VM{}, err
	}
	undo = append(undo, func() { _ = d.vms.keys.Unpin(sshkeys.HostAlias(id)) })
	spec.Creating = false
	row.Spec = spec.raw()
	if err := d.store.PutVM(ctx, row); err != nil {
		return api.VM{}, err
	}
	if req.Start {
		row, err = d.startLocked(ctx, row, rec, progress, startOptions{skipSSHWait: req.SkipSSHWait})
		if err != nil {
			return api.VM{}, err
		}
	}
	return d.vmToAPI(ctx, row), nil
}

// sshdDropIn makes sshd serve the VM's own host key only: an image may carry keys of its
// own (Debian's openssh-server generates them when installed), which every VM from the
// image would share.
const sshdDropIn = `# Written by banger: this VM's own host key, pinned in banger's known_hosts.
HostKey /etc/ssh/ssh_host_ed25519_key
`

// buildDisks makes the VM's work disk (from the image's seed, with banger's user key
// authorized for root) and its writable layer (holding the VM's own SSH host key), in
// parallel. It returns the host key's public line.
func (d *Daemon) buildDisks(ctx context.Context, spec vmSpec, p createParams) ([]byte, error) {
	userKey, err := d.vms.keys.EnsureUserKey()
	if err != nil {
		return nil, fmt.Errorf("banger's SSH key: %w", err)
	}
	hostPriv, hostPub, err := sshkeys.NewKey("banger vm " + p.name)
	if err != nil {
		return nil, err
	}
	e := d.images.Ext4
	work := make(chan error, 1)
	go func() {
		_, err := e.BuildWorkDisk(ctx, system.WorkDiskSpec{Path: spec.workDisk(), SizeBytes: p.diskBytes, SeedPath: p.img.WorkSeedPath})
		if err == nil {
			err = authorizeKey(ctx, e, spec.workDisk(), userKey)
		}
		work <- err
	}()
	err = e.CreateExt4(ctx, spec.layerDisk(), layerDiskBytes, system.CreateOptions{Label: "banger-layer"})
	if err == nil {
		err = e.WriteExt4Files(ctx, spec.layerDisk(), hostKeyEntries("/upper", hostPriv, hostPub))
	}
	if werr := <-work; werr != nil {
		return nil, werr
	}
	return hostPub, err
}

// authorizeKey adds key to /root/.ssh/authorized_keys on the work disk (the disk's root is
// /root), keeping what the image's seed put there.
func authorizeKey(ctx context.Context, e *system.Ext4, work string, key []byte) error {
	existing, err := e.ReadExt4File(ctx, work, "/.ssh/authorized_keys")
	if err != nil {
		existing = nil // none yet (the usual case)
	}
	if bytes.Contains(existing, bytes.TrimSpace(key)) {
		return nil
	}
	return e.WriteExt4Files(ctx, work, authorizedKeysEntries("", existing, key))
}

// authorizedKeysEntries are root's .ssh directory and authorized_keys (existing plus key)
// under home, an image path.
func authorizedKeysEntries(home string, existing, key []byte) []system.Ext4Entry {
	keys := append([]byte{}, existing...)
	if len(keys) > 0 && !bytes.HasSuffix(keys, []byte("\n")) {
		keys = append(keys, '\n')
	}
	return []system.Ext4Entry{
		{Path: home + "/.ssh", Dir: true, Mode: 0o700},
		{Path: home + "/.ssh/authorized_keys", Data: append(keys, key...), Mode: 0o600},
	}
}

// hostKeyEntries are a VM's own SSH host key and the drop-in that makes sshd serve only
// it, under root (an image path: the layer's upper dir, or an image build's root).
func hostKeyEntries(root string, priv, pub []byte) []system.Ext4Entry {
	return []system.Ext4Entry{
		{Path: root + "/etc/ssh/ssh_host_ed25519_key", Data: priv, Mode: 0o600},
		{Path: root + "/etc/ssh/ssh_host_ed25519_key.pub", Data: pub, Mode: 0o644},
		{Path: root + "/etc/ssh/sshd_config.d/banger.conf", Data: []byte(sshdDropIn), Mode: 0o644},
	}
}

// startVM boots a stopped VM.
func (d *Daemon) startVM(ctx context.Context, name string, progress progressFunc) (api.VM, error) {
	vm, err := d.vmLookup(ctx, name)
	if err != nil {
		return api.VM{}, err
	}
	unlock := d.lockVM(vm.ID)
	defer unlock()
	if vm, err = d.store.GetVM(ctx, vm.ID); err != nil {
		return api.VM{}, err
	}
	if d.machine(vm.ID) != nil {
		return api.VM{}, api.Errorf(api.CodeConflict, "stop it first, or use it", "VM %q is already running", vm.Name)
	}
	rec := lifecycle.New("vm.start", vm.ID, d.log, d.store)
	vm, err = d.startLocked(ctx, vm, rec, progress, startOptions{})
	if err != nil {
		return api.VM{}, err
	}
	return d.vmToAPI(ctx, vm), nil
}

// restartVM stops a VM (if it runs) and boots it again, under one lock so nothing else
// slips in between.
func (d *Daemon) restartVM(ctx context.Context, req api.VMStopRequest, progress progressFunc) (api.VM, error) {
	vm, err := d.vmLookup(ctx, req.Name)
	if err != nil {
		return api.VM{}, err
	}
	unlock := d.lockVM(vm.ID)
	defer unlock()
	progress(api.Progress{Stage: "stopping"})
	start := time.Now()
	if vm, err = d.stopLocked(ctx, vm.ID, req.TimeoutSeconds, req.Force); err != nil {
		return api.VM{}, err
	}
	progress(api.Progress{Stage: "stopping", Message: fmt.Sprintf("%.1f ms", lifecycle.Millis(time.Since(start)))})
	rec := lifecycle.New("vm.restart", vm.ID, d.log, d.store)
	if vm, err = d.startLocked(ctx, vm, rec, progress, startOptions{}); err != nil {
		return api.VM{}, err
	}
	return d.vmToAPI(ctx, vm), nil
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

// startLocked boots vm (its lock held) in stages. On failure the VMM is gone, the TAP given
// back and the VM is stopped again; the error names the stage, the last console lines and
// a hint.
// startOptions tune a start.
type startOptions struct {
	// skipSSHWait leaves out the sshd stage: the caller uses the agent (vm run -- CMD) and
	// should not wait for a service it does not need.
	skipSSHWait bool
}

func (d *Daemon) startLocked(ctx context.Context, vm store.VM, rec *lifecycle.Recorder, progress progressFunc, opts startOptions) (_ store.VM, err error) {
	spec := parseSpec(vm)
	k, err := d.images.Kernel(spec.Kernel)
	if err != nil {
		return vm, api.Errorf(api.CodeNotFound, "import or pull the kernel again", "kernel %q of VM %q is missing", spec.Kernel, vm.Name)
	}
	img, err := d.store.GetImage(ctx, vm.ImageID)
	if err != nil {
		return vm, err
	}
	// The host may have changed since the VM was created (firecracker installed, KVM fixed).
	choice, err := vmm.Choose(d.opts.Config.VMM.Driver, d.vms.host())
	if err != nil {
		return vm, api.Errorf(api.CodeUnavailable, "see `banger doctor`", "%v", err)
	}
	spec.Driver, spec.Accel, spec.DriverReason = choice.Driver, choice.Accel, choice.Reason
	drv, err := d.driver(choice.Driver, choice.Accel)
	if err != nil {
		return vm, err
	}
	var m vmm.Machine
	var undo []func()
	defer func() {
		if err == nil {
			return
		}
		var se *stageError
		if errors.As(err, &se) && m != nil {
			se.console = consoleTail(spec.ConsoleLog, 15)
		}
		for i := len(undo) - 1; i >= 0; i-- {
			undo[i]()
		}
		spec.VMM, spec.Network.TAP = nil, ""
		spec.LastExit = "start failed: " + firstLine(err.Error())
		spec.Stages = rec.Stages()
		vm.State, vm.Spec, vm.VMM = store.VMStopped, spec.raw(), spec.Driver
		_ = d.store.PutVM(context.WithoutCancel(ctx), vm)
		if errors.As(err, &se) {
			err = api.Errorf(api.CodeUnavailable, stageHint[se.stage], "start VM %q failed at stage %s", vm.Name, se.Error())
		}
	}()
	vm.State = store.VMStarting
	if err := d.store.PutVM(ctx, vm); err != nil {
		return vm, err
	}
	if err := os.MkdirAll(spec.RunDir, 0o700); err != nil {
		return vm, err
	}

	var initrd string
	var modDrives []vmm.Drive
	if err := runStage(ctx, rec, progress, stageInitramfs, func(ctx context.Context) error {
		initBin, agentBin, err := d.guestBinaries()
		if err != nil {
			return err
		}
		res, err := initramfs.Cache{Dir: filepath.Join(d.opts.Layout.CacheDir, "initramfs")}.Ensure(ctx, initramfs.Spec{
			InitBinary: initBin, AgentBinary: agentBin, ModulesDir: k.ModulesDir, KernelRelease: k.Release, BangerVersion: d.opts.Version})
		initrd = res.Path
		if err != nil {
			return err
		}
		// The kernel's full module tree as a read-only disk, so modprobe works in the guest.
		var merr error
		if modDrives, merr = d.modulesDrives(ctx, k); merr != nil {
			d.log.Warn("VM boots without its kernel's modules (modprobe will fail in the guest)", "vm", vm.Name, "err", merr)
		}
		return nil
	}); err != nil {
		return vm, err
	}

	cmdline := "console=ttyS0 reboot=t panic=-1 banger.hostname=" + vm.Name
	var nics []vmm.NIC
	spec.Network = vmNetwork{}
	if err := runStage(ctx, rec, progress, stageNetwork, func(ctx context.Context) error {
		if !d.networkReady() {
			spec.Network.Note = "no network: the root helper is not reachable (see `banger doctor`)"
			return nil
		}
		lease, tap, err := d.attachNetwork(ctx, vm.ID)
		if err != nil {
			// Not fatal: the VM boots without a network and says why.
			spec.Network.Note = "no network: " + err.Error()
			d.log.Warn("VM boots without a network", "vm", vm.Name, "err", err)
			return nil
		}
		undo = append(undo, func() { _ = d.detachNetwork(context.WithoutCancel(ctx), vm.ID, tap, false) })
		mac, _ := parseMAC(lease.MAC)
		nics = append(nics, vmm.NIC{TAP: tap, MAC: mac})
		spec.Network = vmNetwork{TAP: tap, IP: lease.IP.String(), Prefix: lease.Prefix, Gateway: lease.Gateway.String(), MAC: lease.MAC}
		var dns []string
		for _, a := range lease.DNS {
			dns = append(dns, a.String())
		}
		spec.Network.DNS = dns
		cmdline += fmt.Sprintf(" banger.ip=%s banger.gw=%s", netip.PrefixFrom(lease.IP, lease.Prefix), lease.Gateway)
		if len(dns) > 0 {
			cmdline += " banger.dns=" + strings.Join(dns, ",")
		}
		// Persist the TAP before the VMM uses it, so a restarted daemon keeps it.
		vm.Spec = spec.raw()
		return d.store.PutVM(ctx, vm)
	}); err != nil {
		return vm, err
	}

	ms := vmm.MachineSpec{
		Name: vm.Name, Kernel: k.BzImage, Initramfs: initrd, Cmdline: cmdline,
		Drives: vmDrives(img.RootfsPath, spec, modDrives),
		NICs:   nics, VCPUs: spec.CPUs, MemoryMiB: spec.MemoryMiB, RunDir: spec.RunDir,
	}
	if spec.Builder {
		// An image build changes the image itself: no overlay, no work disk.
		ms.Drives = append([]vmm.Drive{{ID: "rootfs", Path: spec.Rootfs, Role: vmm.RoleRoot}}, modDrives...)
		ms.Cmdline += " banger.rootrw=1"
	}
	if err := runStage(ctx, rec, progress, stageVMM, func(ctx context.Context) error {
		var err error
		if m, err = drv.Start(ctx, ms); err != nil {
			return err
		}
		st := m.State()
		spec.VMM, spec.ConsoleLog = &st, st.ConsoleLog
		vm.Spec = spec.raw()
		return d.store.PutVM(ctx, vm)
	}); err != nil {
		return vm, err
	}
	undo = append(undo, func() { _ = m.Kill(); <-m.Done(); _ = m.Close(); removeRunSockets(spec.RunDir) })

	if err := runStage(ctx, rec, progress, stageAgent, func(ctx context.Context) error {
		actx, cancel := context.WithCancelCause(ctx)
		defer cancel(nil)
		go func() {
			select {
			case <-m.Done():
				cancel(fmt.Errorf("the VMM exited: %s", m.Exit().Reason))
			case <-actx.Done():
			}
		}()
		_, err := m.Agent().WaitReady(actx)
		if err != nil && context.Cause(actx) != nil && ctx.Err() == nil {
			return context.Cause(actx)
		}
		return err
	}); err != nil {
		return vm, err
	}
	spec.SSHReady, spec.SSHNote, spec.SSHAbsent = false, "", false
	switch _, serr := m.Agent().Stat(ctx, sshdPath); {
	case spec.SSHHostKey == "":
		spec.SSHNote, spec.SSHAbsent = "created before banger managed SSH keys: recreate the VM to use `vm ssh`", true
	case agent.IsNotFound(serr):
		spec.SSHNote, spec.SSHAbsent = "the image has no sshd ("+sshdPath+"): use `banger vm exec`", true
	case opts.skipSSHWait && !spec.Builder:
		spec.SSHNote = "sshd was not waited for (the VM was started to run a command through the agent)"
	default:
		err := runStage(ctx, rec, progress, stageSSH, func(ctx context.Context) error { return waitSSH(ctx, m.Agent()) })
		switch {
		case err == nil:
			spec.SSHReady = true
		case spec.Builder || ctx.Err() != nil:
			return vm, err
		default:
			// The VM itself is up and its agent answers: a disabled or broken sshd must not
			// make it unstartable (the user repairs it with `vm exec`).
			spec.SSHNote = "sshd did not answer on port 22 (" + firstLine(err.Error()) + "): use `banger vm exec`"
			progress(api.Progress{Stage: stageSSH, Message: "no answer: the VM runs without SSH"})
			d.log.Warn("VM started without SSH", "vm", vm.Name, "err", err)
		}
	}
	spec.Stages = rec.Stages()
	spec.LastExit = ""
	vm.State, vm.Spec, vm.VMM = store.VMRunning, spec.raw(), spec.Driver
	if err := d.store.PutVM(ctx, vm); err != nil {
		return vm, err
	}
	d.setMachine(vm.ID, m)
	go d.watchMachine(vm.ID, m)
	return vm, nil
}

// vmDrives are a VM's disks: the image read-only under the VM's writable layer, its work
// disk, and its kernel's modules disk.
func vmDrives(rootfs string, spec vmSpec, modules []vmm.Drive) []vmm.Drive {
	return append([]vmm.Drive{
		{ID: "rootfs", Path: rootfs, ReadOnly: true, Role: vmm.RoleRoot},
		{ID: "layer", Path: spec.layerDisk(), Role: vmm.RoleLayer},
		{ID: "work", Path: spec.workDisk(), Role: vmm.RoleWork},
	}, modules...)
}

// sshdPath is where images keep OpenSSH's server; without it a VM has no SSH.
const sshdPath = "/usr/sbin/sshd"

// waitSSH waits until the guest's sshd sends its banner on port 22, reached through the
// agent so it works with or without a guest network.
func waitSSH(ctx context.Context, a *agentclient.Client) error {
	var last error
	for {
		last = probeSSH(ctx, a)
		if last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (last attempt: %v)", context.Cause(ctx), last)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// probeSSH connects to the guest's port 22 once and reads the SSH banner.
func probeSSH(ctx context.Context, a *agentclient.Client) error {
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	conn, err := a.Forward(pctx, 22)
	if err != nil {
		return err
	}
	stop := context.AfterFunc(pctx, func() { conn.Close() })
	defer stop()
	defer conn.Close()
	line, err := bufio.NewReader(io.LimitReader(conn, 512)).ReadString('\n')
	if err != nil {
		return fmt.Errorf("read the SSH banner: %w", err)
	}
	if !strings.HasPrefix(line, "SSH-") {
		return fmt.Errorf("port 22 answered %q, not an SSH banner", strings.TrimSpace(line))
	}
	return nil
}

func (d *Daemon) networkReady() bool {
	if d.net == nil {
		return false
	}
	d.net.mu.Lock()
	defer d.net.mu.Unlock()
	return d.net.ready
}

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
	state := store.VMStopped
	reason := exit.Reason
	if !exit.Clean {
		state, reason = store.VMError, "crashed: "+exit.Reason
	}
	d.log.Warn("VM stopped on its own", "vm", id, "reason", exit.Reason, "clean", exit.Clean)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if vm, err := d.store.GetVM(ctx, id); err == nil {
		d.afterStop(ctx, vm, state, reason)
	}
}

// afterStop gives the TAP back (the lease stays for the next start) and records the state.
func (d *Daemon) afterStop(ctx context.Context, vm store.VM, state store.VMState, reason string) store.VM {
	spec := parseSpec(vm)
	if spec.Network.TAP != "" {
		if err := d.detachNetwork(ctx, vm.ID, spec.Network.TAP, false); err != nil {
			d.log.Warn("could not give back the VM's TAP", "vm", vm.Name, "tap", spec.Network.TAP, "err", err)
		}
	}
	removeRunSockets(spec.RunDir)
	spec.Network.TAP, spec.VMM, spec.LastExit = "", nil, reason
	vm.State, vm.Spec = state, spec.raw()
	if err := d.store.PutVM(ctx, vm); err != nil {
		d.log.Warn("could not record the VM's stop", "vm", vm.Name, "err", err)
	}
	return vm
}

// removeRunSockets deletes the sockets in a VM's run dir (the console log stays for logs).
func removeRunSockets(dir string) {
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
	if m == nil {
		if vm.State == store.VMRunning || vm.State == store.VMStarting || vm.State == store.VMStopping {
			vm = d.afterStop(ctx, vm, store.VMStopped, "stopped (its VMM was already gone)")
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
		_ = m.Kill()
		<-m.Done()
		exit = m.Exit()
		exit.Reason = "killed (--force)"
	} else {
		exit, err = m.Stop(context.WithoutCancel(ctx), timeout)
		if err != nil {
			_ = m.Kill()
			<-m.Done()
		}
	}
	_ = m.Close()
	return d.afterStop(context.WithoutCancel(ctx), vm, store.VMStopped, exit.Reason), nil
}

func (d *Daemon) removeVM(ctx context.Context, req api.VMRemoveRequest) error {
	vm, err := d.vmLookup(ctx, req.Name)
	if err != nil {
		return err
	}
	unlock := d.lockVM(vm.ID)
	defer unlock()
	if d.machine(vm.ID) != nil {
		if !req.Force {
			return api.Errorf(api.CodeConflict, "stop it first, or pass --force", "VM %q is running", vm.Name)
		}
		if vm, err = d.stopLocked(ctx, vm.ID, 10, false); err != nil {
			return err
		}
	}
	spec := parseSpec(vm)
	ctx = context.WithoutCancel(ctx)
	var errs []error
	if err := d.detachNetwork(ctx, vm.ID, spec.Network.TAP, true); err != nil {
		errs = append(errs, err)
	}
	for _, dir := range []string{spec.RunDir, spec.Dir} {
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
	d.vms.mu.Lock()
	delete(d.vms.locks, vm.ID)
	d.vms.mu.Unlock()
	return errors.Join(errs...)
}

// reconcileVMs runs at daemon start, before networking: live VMMs are reattached; VMs whose
// VMM is gone are marked stopped with their TAP dropped from the spec (the network
// reconcile then deletes the TAP as unreferenced; the lease stays for the next start).
func (d *Daemon) reconcileVMs(ctx context.Context) {
	vms, err := d.store.ListVMs(ctx)
	if err != nil {
		d.log.Warn("could not list VMs to reconcile", "err", err)
		return
	}
	// A daemon killed between spawning a VMM and recording it leaves a VMM no spec names:
	// found by its run dir, it is ended below with the VM's other leftovers.
	procs, err := scanVMMProcs("/proc", d.opts.Layout.RuntimeDir)
	if err != nil {
		d.log.Warn("could not scan for VMM processes", "err", err)
	}
	killUnrecorded := func(vm store.VM, runDir string) {
		for _, p := range procs {
			if runDir != "" && p.runDir == filepath.Clean(runDir) {
				if err := killStray("/proc", p.pid, d.opts.Layout.RuntimeDir); err != nil {
					d.log.Warn("could not end a VMM of an interrupted start", "vm", vm.Name, "pid", p.pid, "err", err)
				} else {
					d.log.Warn("ended a VMM of an interrupted start", "vm", vm.Name, "pid", p.pid)
				}
			}
		}
	}
	for _, vm := range vms {
		if spec := parseSpec(vm); spec.Builder {
			// An image build the daemon did not finish: its image is gone with the staging
			// files (image cleanup), so its builder VM goes too (the lease with the row).
			if spec.VMM != nil {
				if drv, err := d.driver(spec.VMM.Driver, spec.VMM.Accel); err == nil {
					if m, err := drv.Reattach(ctx, *spec.VMM); err == nil {
						_ = m.Kill()
						<-m.Done()
						_ = m.Close()
					}
				}
			}
			killUnrecorded(vm, spec.RunDir)
			_ = os.RemoveAll(spec.RunDir)
			_ = os.RemoveAll(spec.Dir)
			_ = d.vms.keys.Unpin(sshkeys.HostAlias(vm.ID))
			if err := d.store.DeleteVM(ctx, vm.ID); err != nil {
				d.log.Warn("could not remove an interrupted build's VM", "vm", vm.Name, "err", err)
			} else {
				d.log.Warn("removed the builder VM of an interrupted image build", "vm", vm.Name)
			}
			continue
		}
		switch vm.State {
		case store.VMCreated:
			// A create interrupted before its disks were done (the daemon was killed): it
			// never existed for the user, so it goes, with whatever it had written.
			spec := parseSpec(vm)
			if !spec.Creating {
				continue
			}
			if spec.Dir != "" {
				_ = os.RemoveAll(spec.Dir)
			}
			// The disks stage pins the host key before the row loses Creating.
			_ = d.vms.keys.Unpin(sshkeys.HostAlias(vm.ID))
			if err := d.store.DeleteVM(ctx, vm.ID); err != nil {
				d.log.Warn("could not remove an interrupted create", "vm", vm.Name, "err", err)
			} else {
				d.log.Warn("removed a VM whose create was interrupted", "vm", vm.Name)
			}
			continue
		case store.VMRunning, store.VMStarting, store.VMStopping:
		default:
			continue
		}
		spec := parseSpec(vm)
		reason := "the daemon stopped while the VM was starting"
		if spec.VMM != nil && vm.State != store.VMStarting {
			drv, err := d.driver(spec.VMM.Driver, spec.VMM.Accel)
			if err == nil {
				rctx, cancel := context.WithTimeout(ctx, 15*time.Second)
				m, err := drv.Reattach(rctx, *spec.VMM)
				cancel()
				if err == nil {
					d.setMachine(vm.ID, m)
					go d.watchMachine(vm.ID, m)
					d.log.Info("reattached running VM", "vm", vm.Name, "pid", m.PID())
					continue
				}
				reason = "crashed: its VMM was gone when the daemon started"
				if !errors.Is(err, vmm.ErrGone) {
					// Its VMM may still run: it is ended below, as a second VMM on the same
					// disks (the next start) would corrupt them.
					reason = "crashed: could not reattach (its VMM was ended): " + err.Error()
					d.log.Warn("could not reattach a running VM; ending its VMM", "vm", vm.Name, "err", err)
				}
			}
		} else if spec.VMM != nil {
			// Interrupted mid-start: the VMM may still run without an agent; end it.
			if drv, err := d.driver(spec.VMM.Driver, spec.VMM.Accel); err == nil {
				if m, err := drv.Reattach(ctx, *spec.VMM); err == nil {
					_ = m.Kill()
					<-m.Done()
					_ = m.Close()
				}
			}
		}
		killUnrecorded(vm, spec.RunDir)
		removeRunSockets(spec.RunDir)
		spec.Network.TAP, spec.VMM, spec.LastExit = "", nil, reason
		state := store.VMStopped
		if strings.HasPrefix(reason, "crashed") {
			state = store.VMError
		}
		vm.State, vm.Spec = state, spec.raw()
		if err := d.store.PutVM(ctx, vm); err != nil {
			d.log.Warn("could not record a VM's state", "vm", vm.Name, "err", err)
		}
		d.log.Warn("VM is no longer running", "vm", vm.Name, "reason", reason)
	}
}

func (d *Daemon) vmToAPI(ctx context.Context, vm store.VM) api.VM {
	spec := parseSpec(vm)
	out := api.VM{ID: vm.ID, Name: vm.Name, Kernel: spec.Kernel, State: string(vm.State), Driver: spec.Driver,
		Accel: spec.Accel, DriverReason: spec.DriverReason, CPUs: spec.CPUs, MemoryMiB: spec.MemoryMiB,
		Dir: spec.Dir, RunDir: spec.RunDir, ConsoleLog: spec.ConsoleLog, Stages: spec.Stages, LastExit: spec.LastExit,
		CreatedAt: vm.CreatedAt, UpdatedAt: vm.UpdatedAt, Disks: []api.VMDisk{},
		Network: api.VMNetwork{TAP: spec.Network.TAP, IP: spec.Network.IP, Gateway: spec.Network.Gateway, MAC: spec.Network.MAC,
			DNS: spec.Network.DNS, Note: spec.Network.Note},
		SSH: api.VMSSH{Ready: spec.SSHReady && vm.State == store.VMRunning, Available: !spec.SSHAbsent && spec.SSHHostKey != "",
			HostKey: strings.TrimSpace(spec.SSHHostKey), Note: spec.SSHNote}}
	if spec.SSHHostKey != "" {
		out.SSH.HostKeyAlias = sshkeys.HostAlias(vm.ID)
	}
	if vm.State == store.VMError {
		out.State = "crashed"
	}
	if m := d.machine(vm.ID); m != nil {
		out.PID = m.PID()
	}
	if img, err := d.store.GetImage(ctx, vm.ImageID); err == nil {
		out.Image = img.Name
		out.Disks = append(out.Disks, diskInfo("root", img.RootfsPath, true))
	}
	out.Disks = append(out.Disks, diskInfo("layer", spec.layerDisk(), false), diskInfo("work", spec.workDisk(), false))
	return out
}

func diskInfo(role, path string, ro bool) api.VMDisk {
	d := api.VMDisk{Role: role, Path: path, ReadOnly: ro}
	var st unixStat
	if statFile(path, &st) == nil {
		d.SizeBytes, d.UsedBytes = st.size, st.used
	}
	return d
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

// consoleTail returns the last n non-empty lines of a console log.
func consoleTail(path string, n int) []string {
	if path == "" {
		return nil
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	if len(data) > 64<<10 {
		data = data[len(data)-64<<10:]
	}
	var lines []string
	for _, l := range strings.Split(strings.ReplaceAll(string(data), "\r", ""), "\n") {
		if strings.TrimSpace(l) != "" {
			lines = append(lines, l)
		}
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return lines
}
