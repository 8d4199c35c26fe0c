//go:build linux

package kvm

import (
	"os"
	"path/filepath"
	"strings"
)

// sysModuleDir is where the kernel lists loaded modules (and built-in ones
// that have parameters). A variable so tests can point it elsewhere.
var sysModuleDir = "/sys/module"

// cpuinfoPath is read for the "hypervisor" CPU flag (this host is itself a VM).
var cpuinfoPath = "/proc/cpuinfo"

// PVMHost reports whether the host's KVM is the PVM hypervisor (module
// kvm_pvm). PVM runs guests without hardware virtualization extensions and
// needs PVM-aware guest kernels; stock kernels fail on it. This is read from
// /sys only, independently of Probe, so callers (and tests) can cross-check
// Probe's verdict.
func PVMHost() bool {
	_, err := os.Stat(filepath.Join(sysModuleDir, "kvm_pvm"))
	return err == nil
}

// hypervisorInfo names the KVM implementation backing /dev/kvm, from
// /sys/module, for the probe's Detail. Returns "" when nothing is known.
func hypervisorInfo() string {
	var parts []string
	for _, m := range []struct{ mod, label string }{
		{"kvm_pvm", "kvm_pvm (PVM)"},
		{"kvm_intel", "kvm_intel"},
		{"kvm_amd", "kvm_amd"},
	} {
		if _, err := os.Stat(filepath.Join(sysModuleDir, m.mod)); err == nil {
			parts = append(parts, m.label)
		}
	}
	if len(parts) == 0 {
		return ""
	}
	s := strings.Join(parts, " + ")
	if nestedHost() {
		s += ", host is itself a VM"
	}
	return s
}

// nestedHost reports whether the CPU advertises the "hypervisor" flag, i.e.
// this host runs under another hypervisor and any KVM here is nested.
func nestedHost() bool {
	b, err := os.ReadFile(cpuinfoPath)
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if !strings.HasPrefix(line, "flags") {
			continue
		}
		_, flags, ok := strings.Cut(line, ":")
		if !ok {
			return false
		}
		for _, f := range strings.Fields(flags) {
			if f == "hypervisor" {
				return true
			}
		}
		return false
	}
	return false
}
