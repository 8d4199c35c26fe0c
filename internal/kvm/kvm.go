// Package kvm answers one question for banger: can this host run stock guest
// kernels with hardware virtualization through /dev/kvm?
//
// Opening /dev/kvm is not enough to know. Some hosts expose a /dev/kvm whose
// hypervisor cannot run ordinary guests (for example a nested PVM hypervisor,
// which runs only PVM-aware guest kernels, so stock kernels die with "KVM
// internal error"). Probe therefore creates a throwaway VM and really runs a
// few guest instructions in the CPU modes a stock x86_64 boot uses: 16-bit real
// mode (firmware such as SeaBIOS/qboot under QEMU) and 64-bit long mode with
// paging (how Firecracker enters a vmlinux, and where every Linux kernel ends
// up). The long-mode guest also runs a short timed loop: a hypervisor can
// accept a guest and then emulate its kernel-mode code instruction by
// instruction (PVM does this for stock kernels, at about a million
// instructions per second), which makes a stock kernel take minutes to boot.
// The verdict is "usable" only if both guests completed, at hardware speed.
//
// The probe uses raw ioctls through golang.org/x/sys/unix: no cgo, no helper
// processes.
package kvm

import (
	"fmt"
	"time"
)

// DefaultDevice is the KVM device node Probe opens when given "".
const DefaultDevice = "/dev/kvm"

// DefaultTimeout bounds the guest runs when the caller's context has no
// earlier deadline. A healthy probe finishes in milliseconds; a guest that
// spins (a broken hypervisor that never exits) is interrupted after this.
const DefaultTimeout = 2 * time.Second

// Status is the probe's verdict.
type Status string

const (
	// StatusUsable: guest code ran in real mode and in 64-bit long mode.
	StatusUsable Status = "usable"
	// StatusAbsent: there is no KVM device (no node, or no driver behind it).
	StatusAbsent Status = "absent"
	// StatusNoAccess: the device exists but this user may not open it.
	StatusNoAccess Status = "no-access"
	// StatusUnusable: the device opens but cannot run a stock guest (wrong
	// device, API mismatch, VM/vCPU creation refused, guest failed or hung).
	StatusUnusable Status = "unusable"
)

// Check is the outcome of running one tiny guest program.
type Check struct {
	// Mode names the CPU mode the guest ran in: "real-mode" or "long-mode".
	Mode string
	// OK is true when the guest wrote the expected value to the expected
	// port and then halted.
	OK bool
	// Exits lists the VM exits seen, in order, e.g. "KVM_EXIT_IO", "KVM_EXIT_HLT".
	Exits []string
	// Detail is one line: what happened.
	Detail string
	// GuestTime is the wall time from the first KVM_RUN to the guest's OUT.
	GuestTime time.Duration
}

// ProbeResult is what Probe found. Detail and Hint are always set and are
// written to be shown to a user as is (banger doctor, vm inspect).
type ProbeResult struct {
	Status Status
	// Device is the path that was probed.
	Device string
	// APIVersion is KVM_GET_API_VERSION (12 on every real KVM), 0 if not reached.
	APIVersion int
	// Detail is one line saying what happened.
	Detail string
	// Hint says how to fix it, or what banger will do instead.
	Hint string
	// ExitReason is the last VM exit of the deciding guest run
	// ("KVM_EXIT_HLT" when usable, e.g. "KVM_EXIT_INTERNAL_ERROR" when not),
	// or "" when no guest ran.
	ExitReason string
	// Hypervisor describes the host's KVM implementation when known, e.g.
	// "kvm_intel", "kvm_pvm (PVM)"; nested hosts get ", nested" appended.
	Hypervisor string
	// Checks holds the per-mode guest runs, in the order they ran.
	Checks []Check
	// Elapsed is how long the probe took.
	Elapsed time.Duration
}

// String renders the result as one line for logs and test failures.
func (r ProbeResult) String() string {
	return fmt.Sprintf("%s: %s: %s (%s)", r.Device, r.Status, r.Detail, r.Hint)
}

// Hints, shared by all platforms.
const (
	hintUsable = "hardware virtualization will be used (Firecracker, or QEMU with -accel kvm)"
	hintTCG    = "software emulation (QEMU TCG) will be used; guests work but run slower"
	hintAbsent = "enable VT-x/AMD-V in firmware and load kvm_intel or kvm_amd (modprobe kvm_intel); until then " + hintTCG
)
