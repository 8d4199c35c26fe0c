package vmm

import (
	"context"
	"time"

	"github.com/banger-vm/banger/internal/kvm"
	"github.com/banger-vm/banger/internal/system/hosttools"
)

// FirecrackerMinVersion is the oldest Firecracker banger drives: 1.8 added ACPI device
// discovery, which Debian kernels need (they lack VIRTIO_MMIO_CMDLINE_DEVICES). The
// firecracker driver, doctor and host detection all use this one constant.
const FirecrackerMinVersion = "1.8"

// HostProbe says where to look for the host's VMMs and KVM.
type HostProbe struct {
	FirecrackerPath string // explicit binary, or "" to search
	QEMUPath        string // explicit binary, or "" to search
	SearchPath      string // overrides PATH when non-empty (tests)
	KVMDevice       string // "" means /dev/kvm
}

// HostFacts is what the probes found, for callers that also report the details (doctor).
type HostFacts struct {
	KVM            kvm.ProbeResult
	Firecracker    hosttools.HostTool
	FirecrackerErr error
	QEMU           hosttools.HostTool
	QEMUErr        error
}

// ProbeHost runs the real KVM probe (a guest instruction, not a stat of /dev/kvm) and looks
// up both VMMs and their versions.
func ProbeHost(ctx context.Context, p HostProbe) HostFacts {
	var f HostFacts
	f.KVM = kvm.Probe(ctx, p.KVMDevice)
	f.Firecracker, f.FirecrackerErr = hosttools.LookupTool(ctx, "firecracker", p.FirecrackerPath, p.SearchPath, "--version")
	f.QEMU, f.QEMUErr = hosttools.LookupTool(ctx, "qemu-system-x86_64", p.QEMUPath, p.SearchPath, "--version")
	return f
}

// Host is what the choice of VMM needs from f.
func (f HostFacts) Host() Host {
	return Host{
		KVMUsable:     f.KVM.Status == kvm.StatusUsable,
		KVMStatus:     string(f.KVM.Status),
		FirecrackerOK: f.FirecrackerErr == nil && f.Firecracker.Path != "" && hosttools.VersionAtLeast(f.Firecracker.Version, FirecrackerMinVersion),
		QEMUOK:        f.QEMUErr == nil && f.QEMU.Path != "",
	}
}

// DetectHost builds the Host that Choose decides on, from the real probes. The paths are the
// configured binaries ("" searches PATH).
func DetectHost(ctx context.Context, firecrackerPath, qemuPath string) Host {
	return ProbeHost(ctx, HostProbe{FirecrackerPath: firecrackerPath, QEMUPath: qemuPath}).Host()
}

// BareBoot is one boot by the bare VMM command: the baseline of `banger bench create`.
type BareBoot struct {
	// Argv is what ran, binary first.
	Argv []string
	// AgentReady is from starting the process to the guest agent answering /v1/healthz.
	AgentReady time.Duration
	// SameArgv says Argv is the command line Start itself runs for the spec (qemu), so the
	// two can be compared; false when the bare boot configures the VM another way
	// (firecracker's --config-file instead of its API).
	SameArgv bool
}

// BareBooter is a driver that can boot a spec with its VMM command alone, with none of the
// driver's or the daemon's bookkeeping, to measure what that bookkeeping costs.
type BareBooter interface {
	BootBare(ctx context.Context, spec MachineSpec) (BareBoot, error)
}
