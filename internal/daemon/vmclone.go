package daemon

// Warm start: a new VM whose image and shape have a template starts as a clone of it. Its
// writable disks are copies of the template's (reflinks where the filesystem can), its VMM
// restores the template's snapshot with the memory file mapped copy-on-write, and its
// agent then takes on the VM's own identity (hostname, network, machine-id, SSH host key,
// fresh entropy, the host's clock). A clone that fails to restore boots cold instead, on
// freshly built disks, and says why.

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/banger-vm/banger/internal/agent"
	"github.com/banger-vm/banger/internal/api"
	"github.com/banger-vm/banger/internal/lifecycle"
	"github.com/banger-vm/banger/internal/revert"
	"github.com/banger-vm/banger/internal/sshkeys"
	"github.com/banger-vm/banger/internal/store"
	"github.com/banger-vm/banger/internal/system"
	"github.com/banger-vm/banger/internal/termutil"
	"github.com/banger-vm/banger/internal/vmm"
)

// warmStart is a create's choice to restore a template, and what the clone needs of it.
type warmStart struct {
	// src is what the clone restores: a template (tpl set), or a user snapshot (snap set).
	src interface {
		snapshot() vmm.Snapshot
		workDisk() string
		layerDisk() string
	}
	tpl      *template
	snap     *userSnapshot
	restorer vmm.Restorer
	boot     api.VMBoot
	params   createParams
	// hostPriv is the VM's own SSH host key, for the agent to install (never stored).
	hostPriv, hostPub []byte
}

// pickBoot decides whether a new VM restores a template. When it does not, the boot says
// why, and a template build is queued in the background where one would help.
func (d *Daemon) pickBoot(ctx context.Context, req api.VMCreateRequest, p createParams) (*warmStart, api.VMBoot) {
	cold := func(format string, a ...any) (*warmStart, api.VMBoot) {
		return nil, api.VMBoot{Mode: api.BootCold, Reason: fmt.Sprintf(format, a...)}
	}
	switch {
	case !req.Start:
		return cold("created without --start: its first start restores a template if there is one by then")
	case req.Cold:
		return cold("--cold was given")
	case !d.opts.Config.VM.WarmStart:
		return cold("warm start is off ([vm] warm_start = false)")
	}
	choice, err := d.chooseVMM()
	if err != nil {
		return cold("%v", err)
	}
	r, why := d.restorer(ctx, choice)
	if why != "" {
		return cold("%s", why)
	}
	shape := d.shapeOf(p)
	in, err := d.templateInputs(ctx, p.img, p.kernel, choice, shape)
	if err != nil {
		return cold("no template can be made: %v", err)
	}
	key := in.key()
	dir := filepath.Join(d.vms.tpl.dir, key)
	tpl, err := loadTemplate(dir)
	if err == nil {
		return &warmStart{src: tpl, tpl: tpl, restorer: r, params: p,
			boot: api.VMBoot{Mode: api.BootWarm, Template: key, Reason: "restored from the template of image " + p.img.Name + " and this shape"}}, api.VMBoot{}
	}
	d.queueTemplateBuild(p.img, p.kernel, shape, key)
	if !errors.Is(err, os.ErrNotExist) {
		d.log.Warn("a warm-start template is broken; retiring it", "dir", dir, "err", err)
		d.retireTemplate(dir)
		return cold("the template was broken (%v): a new one is being built", err)
	}
	for _, t := range d.listTemplates() {
		if t.meta.Inputs.ImageID == p.img.ID && t.meta.Inputs.templateShape == shape {
			return cold("the image's template is of another kernel, guest agent build or VMM: a new one is being built")
		}
	}
	return cold("no template of image %s for %d vCPUs, %d MiB, %s disk yet: one is being built", p.img.Name, p.cpus, p.memoryMiB, sizeText(p.diskBytes))
}

func sizeText(n int64) string { return fmt.Sprintf("%d MiB", n>>20) }

// cloneDisks gives a clone copies of the template's writable disks and a new host key of
// its own, which the agent installs after the restore. It returns the key's public line.
func (d *Daemon) cloneDisks(ctx context.Context, spec vmSpec, w *warmStart) ([]byte, error) {
	priv, pub, err := sshkeys.NewKey("banger vm " + w.params.name)
	if err != nil {
		return nil, err
	}
	for _, c := range [][2]string{{w.src.workDisk(), spec.workDisk()}, {w.src.layerDisk(), spec.layerDisk()}} {
		if _, err := system.CloneFile(ctx, c[0], c[1]); err != nil {
			return nil, fmt.Errorf("copy the template's disk: %w", err)
		}
	}
	w.hostPriv, w.hostPub = priv, pub
	return pub, nil
}

// warmFirstStart makes the first start of a VM created without --start a clone, when a
// template of its shape exists: the VM has never run, so its disks are swapped for copies
// of the template's (the old ones are kept aside until the copies are in place) and it
// gets a new host key. Otherwise profile stays a cold boot, with pickBoot's reason.
func (d *Daemon) warmFirstStart(ctx context.Context, vm store.VM, profile *bootProfile, timings *lifecycle.Recorder, progress progressFunc) (store.VM, error) {
	rec, err := parseRecord(vm)
	if err != nil {
		return vm, err
	}
	img, err := d.store.GetImage(ctx, vm.ImageID)
	if err != nil {
		return vm, err
	}
	k, err := d.images.Kernel(rec.Kernel)
	if err != nil {
		return vm, nil // startLocked says the kernel is missing
	}
	p := createParams{name: vm.Name, img: img, kernel: k, cpus: rec.CPUs, memoryMiB: rec.MemoryMiB, diskBytes: rec.DiskBytes}
	warm, coldBoot := d.pickBoot(ctx, api.VMCreateRequest{Start: true}, p)
	if warm == nil {
		profile.boot = coldBoot
		return vm, nil
	}
	err = runStage(ctx, timings, progress, disksStage(), func(ctx context.Context) error {
		undo := revert.New()
		defer undo.Fail()
		for _, disk := range []string{rec.workDisk(), rec.layerDisk()} {
			aside := disk + ".before-warm-start"
			if err := os.Rename(disk, aside); err != nil {
				return err
			}
			undo.Add(func() { _ = os.Rename(aside, disk) })
		}
		hostKey, err := d.cloneDisks(ctx, rec.vmSpec, warm)
		if err != nil {
			return err
		}
		if err := d.vms.keys.Pin(sshkeys.HostAlias(vm.ID), hostKey); err != nil {
			return err
		}
		oldKey := []byte(rec.SSHHostKey)
		undo.Add(func() { _ = d.vms.keys.Pin(sshkeys.HostAlias(vm.ID), oldKey) })
		rec.SSHHostKey = string(hostKey)
		vm.Spec = rec.raw()
		if err := d.store.PutVM(ctx, vm); err != nil {
			return err
		}
		undo.Success()
		for _, disk := range []string{rec.workDisk(), rec.layerDisk()} {
			_ = os.Remove(disk + ".before-warm-start")
		}
		return nil
	})
	if err != nil {
		return vm, err
	}
	profile.warm, profile.boot = warm, api.VMBoot{}
	return vm, nil
}

// restoreClone restores b's VM from its template. When the restore fails for the template's
// sake (a corrupt state, a VMM that rejects it), the template is retired, the VM's disks are
// built fresh and the start goes on cold: it returns no machine and no error.
func (d *Daemon) restoreClone(ctx context.Context, b *boot, ms vmm.MachineSpec) (vmm.Machine, error) {
	w := b.profile.warm
	err := d.fault("restore")
	if err == nil {
		var m vmm.Machine
		if m, err = w.restorer.Restore(ctx, ms, w.src.snapshot()); err == nil {
			return m, nil
		}
	}
	if ctx.Err() != nil || w.tpl == nil {
		// A clone of a user snapshot is its processes, or it is nothing: no cold boot.
		return nil, err
	}
	return nil, d.fallBackCold(ctx, b, err)
}

// fallBackCold turns a failed restore into a cold boot on fresh disks.
func (d *Daemon) fallBackCold(ctx context.Context, b *boot, cause error) error {
	w := b.profile.warm
	d.log.Warn("restoring a clone failed; booting it cold and retiring the template", "vm", b.vm.Name, "template", w.tpl.meta.Key, "err", cause)
	d.retireTemplate(w.tpl.dir)
	d.queueTemplateBuild(w.params.img, w.params.kernel, w.tpl.meta.Inputs.templateShape, w.tpl.meta.Key)
	for _, p := range []string{b.rec.workDisk(), b.rec.layerDisk()} {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	hostPub, err := d.buildDisks(ctx, b.rec.vmSpec, w.params)
	if err != nil {
		return fmt.Errorf("rebuild the disks for a cold boot: %w", err)
	}
	if err := d.vms.keys.Pin(sshkeys.HostAlias(b.vm.ID), hostPub); err != nil {
		return err
	}
	b.rec.SSHHostKey = string(hostPub)
	b.rec.Boot = &api.VMBoot{Mode: api.BootCold, Reason: "restoring the template failed (" + firstLine(cause.Error()) + "): booted cold; the template is being rebuilt"}
	b.profile.warm = nil
	return d.save(ctx, b)
}

// stepIdentity has a clone's agent take on the VM's own identity, before the VM counts as
// ready: until then it is the template's (its hostname, address, host key, RNG state).
func (d *Daemon) stepIdentity(ctx context.Context, b *boot) error {
	w := b.profile.warm
	entropy := make([]byte, 256)
	if _, err := rand.Read(entropy); err != nil {
		return err
	}
	req := agent.IdentityRequest{Hostname: b.vm.Name, Entropy: entropy, UnixNano: time.Now().UnixNano(),
		SSHHostKey: &agent.SSHHostKey{Private: string(w.hostPriv), Public: string(w.hostPub)}}
	if n := b.rec.Network; n.TAP != "" {
		ip, err := netip.ParseAddr(n.IP)
		if err != nil {
			return fmt.Errorf("the VM's lease: %w", err)
		}
		req.Network = &agent.IdentityNetwork{Address: netip.PrefixFrom(ip, n.Prefix).String(), Gateway: n.Gateway, DNS: n.DNS, MAC: n.MAC}
	}
	res, err := b.m.Agent().Identity(ctx, req)
	if err != nil {
		return err
	}
	var took []any
	for _, st := range res.Steps {
		took = append(took, termutil.SanitizeString(truncate(st.Name, 64)), st.DurationMS)
	}
	d.log.Debug("clone took on its identity", append([]any{"vm", b.vm.Name}, took...)...)
	for _, st := range res.Steps {
		if st.Note != "" {
			// The guest's words: bounded and made inert before they reach a log or terminal.
			d.log.Info("clone identity step", "vm", b.vm.Name, "step", termutil.SanitizeString(truncate(st.Name, 64)),
				"note", termutil.SanitizeString(truncate(st.Note, 256)))
		}
	}
	return nil
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}
