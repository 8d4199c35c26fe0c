package vmm

import (
	"fmt"
	"strings"
)

// Host is what the choice of VMM depends on.
type Host struct {
	KVMUsable     bool
	KVMStatus     string // the probe's verdict, for the reason text
	FirecrackerOK bool   // a firecracker >= the minimum version is available
	QEMUOK        bool
}

// Choice is the VMM a VM will run on, and why.
type Choice struct {
	Driver string // "firecracker" or "qemu"
	Accel  string // "kvm" or "tcg" (qemu); "kvm" for firecracker
	Reason string
}

// Choose resolves vmm.driver ("auto", "firecracker" or "qemu") on this host: auto picks
// firecracker when it and KVM work, else qemu with KVM, else qemu with software emulation.
func Choose(pref string, h Host) (Choice, error) {
	var why []string
	if !h.FirecrackerOK {
		why = append(why, "no usable firecracker")
	}
	if !h.KVMUsable {
		why = append(why, "KVM "+h.KVMStatus)
	}
	qemu := func(reason string) Choice {
		if h.KVMUsable {
			return Choice{Driver: "qemu", Accel: "kvm", Reason: reason}
		}
		return Choice{Driver: "qemu", Accel: "tcg", Reason: reason}
	}
	switch pref {
	case "firecracker":
		if h.FirecrackerOK && h.KVMUsable {
			return Choice{Driver: "firecracker", Accel: "kvm", Reason: "configured"}, nil
		}
		return Choice{}, fmt.Errorf("vmm.driver = firecracker, but %s", strings.Join(why, " and "))
	case "qemu":
		if !h.QEMUOK {
			return Choice{}, fmt.Errorf("vmm.driver = qemu, but qemu-system-x86_64 is missing")
		}
		return qemu("configured"), nil
	case "auto", "":
	default:
		return Choice{}, fmt.Errorf("unknown vmm.driver %q: use auto, firecracker or qemu", pref)
	}
	switch {
	case h.FirecrackerOK && h.KVMUsable:
		return Choice{Driver: "firecracker", Accel: "kvm", Reason: "firecracker and KVM work"}, nil
	case h.QEMUOK:
		return qemu("auto: " + strings.Join(why, " and ")), nil
	}
	return Choice{}, fmt.Errorf("no VMM can run here: %s and qemu-system-x86_64 is missing", strings.Join(why, ", "))
}
