package daemon

import (
	"context"
	"fmt"

	"github.com/banger-vm/banger/internal/image"
	"github.com/banger-vm/banger/internal/vmm"
)

// modulesDriveID names the kernel's modules disk among a VM's drives (its virtio-blk serial
// under QEMU).
const modulesDriveID = "modules"

// modulesDrives returns the read-only drive holding k's module tree, which banger-init
// mounts at /lib/modules/<release> so modprobe works in the guest. The disk is built at
// kernel pull/import; a kernel installed before that gets it here, once (about a second
// for Debian's cloud kernel). A kernel without modules gives no drive. The driver adds the
// banger.modules= key for however it names the device.
func (d *Daemon) modulesDrives(ctx context.Context, k image.Kernel) ([]vmm.Drive, error) {
	disk, err := d.images.EnsureModulesDisk(ctx, k)
	if err != nil {
		return nil, fmt.Errorf("kernel modules disk: %w", err)
	}
	if disk == "" {
		return nil, nil
	}
	return []vmm.Drive{{ID: modulesDriveID, Path: disk, ReadOnly: true, Role: vmm.RoleModules}}, nil
}
