package daemon

// vm resize: grow a VM's work disk (/root). A stopped VM's disk file and filesystem grow
// on the host (e2fsck, then resize2fs); a running VM's file grows, its VMM tells the guest
// (QMP block_resize, Firecracker PATCH /drives), and the guest agent grows the mounted
// filesystem (the kernel's online resize). Shrinking is refused.

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"

	"github.com/banger-vm/banger/internal/api"
	"github.com/banger-vm/banger/internal/store"
	"github.com/banger-vm/banger/internal/units"
	"github.com/banger-vm/banger/internal/vmm"
)

// workDriveID is the work disk's drive id in the VMM (vmm.Drive.ID of RoleWork).
const workDriveID = "work"

func (d *Daemon) resizeVM(ctx context.Context, req api.VMResizeRequest) (api.VM, error) {
	n, err := units.ParseSize(req.Disk)
	if err != nil {
		return api.VM{}, api.Errorf(api.CodeBadRequest, "pass --disk like 40G", "invalid disk size: %v", err)
	}
	n &^= 1<<20 - 1
	if n > maxDiskBytes {
		return api.VM{}, api.Errorf(api.CodeBadRequest, "pass --disk up to 16T", "invalid disk size %q: %s is out of range", req.Disk, units.FormatSize(n))
	}
	vm, unlock, err := d.lockedVM(ctx, req.Name)
	if err != nil {
		return api.VM{}, err
	}
	defer unlock()
	rec, err := parseRecord(vm)
	if err != nil {
		return api.VM{}, err
	}
	disk := rec.workDisk()
	fi, err := os.Stat(disk)
	if err != nil {
		return api.VM{}, fmt.Errorf("the VM's work disk: %w", err)
	}
	switch {
	case rec.Builder:
		return api.VM{}, api.Errorf(api.CodeConflict, "", "VM %q is an image build's temporary VM", vm.Name)
	case n < fi.Size():
		return api.VM{}, api.Errorf(api.CodeBadRequest, "pass a size of at least "+units.FormatSize(fi.Size()),
			"VM %q's work disk is %s: shrinking is not supported", vm.Name, units.FormatSize(fi.Size()))
	case n == fi.Size():
		return d.vmToAPI(ctx, vm), nil
	case vm.State == store.VMPaused:
		return api.VM{}, api.Errorf(api.CodeConflict, "resume it first (`banger vm resume "+vm.Name+"`)",
			"VM %q is paused: its saved state knows the disk's old size", vm.Name)
	}
	m := d.machine(vm.ID)
	switch {
	case m == nil && vm.State != store.VMRunning:
		// Offline: the file and the filesystem grow together, or neither does.
		if err := d.images.Ext4.GrowExt4(ctx, disk, n); err != nil {
			return api.VM{}, api.Errorf(api.CodeUnavailable, "check free space and `e2fsck -f` the disk", "resize VM %q: %v", vm.Name, err)
		}
	case m != nil:
		if err := d.resizeOnline(ctx, vm, m, disk, fi.Size(), n); err != nil {
			return api.VM{}, err
		}
	default:
		return api.VM{}, api.Errorf(api.CodeConflict, "wait for it, or stop it", "VM %q is %s", vm.Name, vm.State)
	}
	rec.DiskBytes = n
	if vm, err = d.putRecord(ctx, vm, rec); err != nil {
		return api.VM{}, err
	}
	return d.vmToAPI(ctx, vm), nil
}

// resizeOnline grows a running VM's work disk. Until the guest has seen the bigger disk the
// file is given its old size back on failure; after that, the disk stays grown.
func (d *Daemon) resizeOnline(ctx context.Context, vm store.VM, m vmm.Machine, disk string, old, n int64) error {
	r, ok := m.(vmm.DriveResizer)
	if !ok {
		return api.Errorf(api.CodeUnavailable, "stop it and resize it offline", "the %s driver cannot grow a running VM's disk", vm.VMM)
	}
	if err := os.Truncate(disk, n); err != nil {
		return api.Errorf(api.CodeUnavailable, "check the data dir's filesystem", "grow VM %q's work disk: %v", vm.Name, err)
	}
	if err := r.ResizeDrive(ctx, workDriveID, n); err != nil {
		_ = os.Truncate(disk, old)
		return api.Errorf(api.CodeUnavailable, "stop it and resize it offline", "resize VM %q: %v", vm.Name, err)
	}
	res, err := m.Agent().ResizeFS(ctx, "/root", n)
	if err != nil {
		hint := "grow it in the guest (`resize2fs` on the disk mounted at /root), or stop and start the VM"
		return api.Errorf(api.CodeUnavailable, hint, "VM %q's disk grew to %s but its filesystem did not: %v", vm.Name, units.FormatSize(n), err)
	}
	d.log.Info("VM disk grown online", "vm", vm.Name, "device", res.Device, "before", res.BeforeBytes, "after", res.AfterBytes)
	return nil
}

func (d *Daemon) handleVMResize(w http.ResponseWriter, r *http.Request) error {
	var req api.VMResizeRequest
	if err := decodeBody(r, &req); err != nil {
		return err
	}
	if req.Disk == "" {
		return api.Errorf(api.CodeBadRequest, "pass --disk SIZE", "nothing to resize")
	}
	vm, err := d.resizeVM(r.Context(), req)
	if err != nil {
		var ae *api.Error
		if !errors.As(err, &ae) {
			return api.Errorf(api.CodeInternal, "see the daemon log", "%v", err)
		}
		return err
	}
	writeJSON(w, http.StatusOK, vm)
	return nil
}
