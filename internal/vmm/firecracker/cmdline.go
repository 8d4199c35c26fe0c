package firecracker

import (
	"fmt"
	"strings"

	"github.com/banger-vm/banger/internal/vmm"
)

// guestDisk names the guest block device of the index-th drive Firecracker attaches:
// virtio-blk devices have no serials in Firecracker, so the guest names them /dev/vda,
// /dev/vdb, ... in the order they were added (then vdaa, vdab, ... like the kernel's
// virtblk_name_format).
func guestDisk(index int) string {
	name := ""
	for n := index; ; n = n/26 - 1 {
		name = string(rune('a'+n%26)) + name
		if n < 26 {
			break
		}
	}
	return "/dev/vd" + name
}

// defaultBootArgs are Firecracker's recommended kernel arguments: the serial console (which
// Firecracker writes to its stdout), reboot through the keyboard controller and reboot on
// panic (both make Firecracker exit instead of leaving a dead guest running), and no PCI
// probing (devices are virtio-mmio, discovered through ACPI since Firecracker 1.8).
var defaultBootArgs = []string{"console=ttyS0", "reboot=k", "panic=1", "pci=off"}

// bootArgs returns the kernel command line for spec: its base Cmdline, the defaults it
// does not set itself, the banger-init device keys for the drives in attach order, and the
// agent's channel.
func bootArgs(spec vmm.MachineSpec, port uint32) (string, error) {
	args := strings.Fields(spec.Cmdline)
	has := func(key string) bool {
		for _, a := range args {
			if k, _, _ := strings.Cut(a, "="); k == key {
				return true
			}
		}
		return false
	}
	for _, d := range defaultBootArgs {
		k, _, _ := strings.Cut(d, "=")
		if !has(k) {
			args = append(args, d)
		}
	}
	for _, k := range []string{"banger.root", "banger.layer", "banger.work", "banger.modules", "banger.agent", "banger.agent_port"} {
		if has(k) {
			return "", fmt.Errorf("machine spec: the command line sets %s, which the firecracker driver decides", k)
		}
	}
	for i, d := range spec.Drives {
		switch d.Role {
		case vmm.RoleRoot, vmm.RoleLayer, vmm.RoleWork, vmm.RoleModules:
			args = append(args, fmt.Sprintf("banger.%s=%s", d.Role, guestDisk(i)))
		}
	}
	args = append(args, "banger.agent=vsock", fmt.Sprintf("banger.agent_port=%d", port))
	return strings.Join(args, " "), nil
}
