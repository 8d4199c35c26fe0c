package daemon

// Creating a VM: validate the request, register the row, build the work disk and the
// writable layer; with Start it boots too. A failed create leaves nothing of the VM.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/banger-vm/banger/internal/api"
	"github.com/banger-vm/banger/internal/image"
	"github.com/banger-vm/banger/internal/lifecycle"
	"github.com/banger-vm/banger/internal/revert"
	"github.com/banger-vm/banger/internal/sshkeys"
	"github.com/banger-vm/banger/internal/store"
	"github.com/banger-vm/banger/internal/system/ext4"
	"github.com/banger-vm/banger/internal/units"
	"github.com/banger-vm/banger/internal/vmm"
)

// createParams is a validated create request.
type createParams struct {
	name string
	// from is the user snapshot the VM clones (vm create --from): its image and shape.
	from      *userSnapshot
	img       store.Image
	kernel    image.Kernel
	cpus      int
	memoryMiB int
	diskBytes int64
}

func (d *Daemon) validateCreate(ctx context.Context, req api.VMCreateRequest) (createParams, error) {
	p := createParams{name: req.Name, cpus: req.CPUs, memoryMiB: defaultMemoryMiB, diskBytes: ext4.DefaultWorkDiskSize}
	if p.name == "" {
		p.name = generateName()
	}
	if err := validVMName(p.name); err != nil {
		return p, err
	}
	if req.From != "" {
		return d.validateCloneOf(ctx, req, p)
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

// chooseVMM resolves the configured VMM on this host, as an API error the user can act on.
func (d *Daemon) chooseVMM() (vmm.Choice, error) {
	choice, err := vmm.Choose(d.opts.Config.VMM.Driver, d.vms.host())
	if err != nil {
		return choice, api.Errorf(api.CodeUnavailable, "see `banger doctor`", "%v", err)
	}
	return choice, nil
}

// defaultRecord is what is known of a VM whose record does not decode: where create put
// its directories.
func (d *Daemon) defaultRecord(id string) vmRecord {
	return vmRecord{vmSpec: vmSpec{Dir: filepath.Join(d.opts.Layout.VMsDir, id), RunDir: filepath.Join(d.opts.Layout.RuntimeDir, "v", id)}}
}

// newVMRecord is the first record of a VM: its spec, and the VMM it is to run on.
func (d *Daemon) newVMRecord(id string, p createParams, choice vmm.Choice) vmRecord {
	rec := d.defaultRecord(id)
	rec.Kernel, rec.CPUs, rec.MemoryMiB, rec.DiskBytes = p.kernel.ID, p.cpus, p.memoryMiB, p.diskBytes
	rec.Accel, rec.DriverReason = choice.Accel, choice.Reason
	return rec
}

// createVM registers a VM and builds its disks; with req.Start it boots it too. On failure
// nothing of the VM is left.
func (d *Daemon) createVM(ctx context.Context, req api.VMCreateRequest, progress progressFunc) (api.VM, error) {
	p, err := d.validateCreate(ctx, req)
	if err != nil {
		return api.VM{}, err
	}
	ports, err := d.parsePorts(ctx, req.Ports, "", nil)
	if err != nil {
		return api.VM{}, err
	}
	mounts, err := parseMounts(req.Mounts)
	if err != nil {
		return api.VM{}, err
	}
	choice, err := d.chooseVMM()
	if err != nil {
		return api.VM{}, err
	}
	id := randomHex(6)
	unlock := d.lockVM(id)
	defer unlock()
	rec := d.newVMRecord(id, p, choice)
	rec.Creating, rec.Ports, rec.Mounts, rec.PublishAll = true, ports, mounts, req.PublishAll
	var warm *warmStart
	var coldBoot api.VMBoot
	if p.from != nil {
		release := d.useSnapshot(p.from.meta.Name)
		defer release()
		if warm, err = d.snapshotClone(p); err != nil {
			return api.VM{}, err
		}
		rec.FromSnapshot = p.from.meta.Name
		choice.Driver = p.from.meta.Driver
	} else {
		warm, coldBoot = d.pickBoot(ctx, req, p)
	}
	row := store.VM{ID: id, Name: p.name, ImageID: p.img.ID, State: store.VMCreated, VMM: choice.Driver, Spec: rec.raw()}

	r := revert.New()
	defer r.Fail()
	if err := d.store.PutVM(ctx, row); err != nil {
		if errors.Is(err, store.ErrConflict) {
			return api.VM{}, api.Errorf(api.CodeConflict, "pick another name, or remove the other VM", "a VM named %q already exists", p.name)
		}
		return api.VM{}, err
	}
	r.Add(func() { _ = d.store.DeleteVM(context.WithoutCancel(ctx), id) })
	if err := os.MkdirAll(rec.Dir, 0o700); err != nil {
		return api.VM{}, err
	}
	r.Add(func() { _ = os.RemoveAll(rec.Dir); _ = os.RemoveAll(rec.RunDir) })
	timings := lifecycle.New("vm.create", id, d.log, d.store).Deferred()
	defer timings.Flush(context.WithoutCancel(ctx))
	if err := runStage(ctx, timings, progress, disksStage(), func(ctx context.Context) error {
		var hostKey []byte
		var err error
		if warm != nil {
			hostKey, err = d.cloneDisks(ctx, rec.vmSpec, warm)
		} else {
			hostKey, err = d.buildDisks(ctx, rec.vmSpec, p)
		}
		if err != nil {
			return err
		}
		rec.SSHHostKey = string(hostKey)
		if err := d.vms.keys.Pin(sshkeys.HostAlias(id), hostKey); err != nil {
			return err
		}
		r.Add(func() { _ = d.vms.keys.Unpin(sshkeys.HostAlias(id)) })
		return nil
	}); err != nil {
		return api.VM{}, err
	}
	rec.Creating = false
	row.Spec = rec.raw()
	if err := d.store.PutVM(ctx, row); err != nil {
		return api.VM{}, err
	}
	if req.Start {
		profile, err := d.vmBootProfile(ctx, row, req.SkipSSHWait)
		if err != nil {
			return api.VM{}, err
		}
		profile.warm, profile.boot = warm, coldBoot
		if row, err = d.startLocked(ctx, row, timings, progress, profile); err != nil {
			return api.VM{}, err
		}
	}
	r.Success()
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
// parallel, as copies of the disk templates. It returns the host key's public line.
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
		work <- d.vms.disks.workDisk(ctx, p.img.ID, p.img.WorkSeedPath, p.diskBytes, userKey, spec.workDisk())
	}()
	err = d.vms.disks.layer(ctx, spec.layerDisk())
	if err == nil {
		// The template has the directories and the sshd drop-in: only the key is new.
		err = e.AddExt4Files(ctx, spec.layerDisk(), hostKeyFiles("/upper", hostPriv, hostPub))
	}
	if werr := <-work; werr != nil {
		return nil, werr
	}
	return hostPub, err
}

// authorizeKey adds key to /root/.ssh/authorized_keys on the work disk (the disk's root is
// /root), keeping what the image's seed put there.
func authorizeKey(ctx context.Context, e *ext4.Toolkit, work string, key []byte) error {
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
func authorizedKeysEntries(home string, existing, key []byte) []ext4.Ext4Entry {
	keys := append([]byte{}, existing...)
	if len(keys) > 0 && !bytes.HasSuffix(keys, []byte("\n")) {
		keys = append(keys, '\n')
	}
	return []ext4.Ext4Entry{
		{Path: home + "/.ssh", Dir: true, Mode: 0o700},
		{Path: home + "/.ssh/authorized_keys", Data: append(keys, key...), Mode: 0o600},
	}
}

// hostKeyEntries are a VM's own SSH host key and the drop-in that makes sshd serve only
// it, under root (an image path: the layer's upper dir, or an image build's root).
func hostKeyEntries(root string, priv, pub []byte) []ext4.Ext4Entry {
	return append(hostKeyFiles(root, priv, pub), sshdDropInEntry(root))
}

// hostKeyFiles are the host key pair alone, for a layer copied from the template (which
// has the directories and the drop-in).
func hostKeyFiles(root string, priv, pub []byte) []ext4.Ext4Entry {
	return []ext4.Ext4Entry{
		{Path: root + "/etc/ssh/ssh_host_ed25519_key", Data: priv, Mode: 0o600},
		{Path: root + "/etc/ssh/ssh_host_ed25519_key.pub", Data: pub, Mode: 0o644},
	}
}

func sshdDropInEntry(root string) ext4.Ext4Entry {
	return ext4.Ext4Entry{Path: root + "/etc/ssh/sshd_config.d/banger.conf", Data: []byte(sshdDropIn), Mode: 0o644}
}

// validateCloneOf is a create --from's validation: the VM is the snapshot's image and shape.
func (d *Daemon) validateCloneOf(ctx context.Context, req api.VMCreateRequest, p createParams) (createParams, error) {
	if req.Image != "" || req.Kernel != "" || req.CPUs != 0 || req.Memory != "" || req.DiskSize != "" {
		return p, api.Errorf(api.CodeBadRequest, "drop --image, --kernel, --cpus, --memory and --disk-size",
			"a clone of a snapshot has the snapshot's image, kernel and shape")
	}
	if req.Cold {
		return p, api.Errorf(api.CodeBadRequest, "drop --cold", "a clone of a snapshot restores it: it cannot boot cold")
	}
	s, err := d.loadSnapshot(req.From)
	if err != nil {
		return p, err
	}
	m := s.meta
	img, err := d.store.GetImage(ctx, m.ImageID)
	if err != nil {
		return p, api.Errorf(api.CodeNotFound, "the snapshot cannot be restored without it; remove the snapshot",
			"the image of snapshot %q (%s) is gone", m.Name, m.ImageName)
	}
	k, err := d.images.Kernel(m.Kernel)
	if err != nil {
		return p, api.Errorf(api.CodeNotFound, "import the kernel again, or remove the snapshot", "the kernel of snapshot %q (%s) is gone", m.Name, m.Kernel)
	}
	p.from, p.img, p.kernel, p.cpus, p.memoryMiB, p.diskBytes = s, img, k, m.CPUs, m.MemoryMiB, m.DiskBytes
	return p, nil
}
