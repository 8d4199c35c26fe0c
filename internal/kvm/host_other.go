//go:build !linux

package kvm

// PVMHost reports whether the host's KVM is the PVM hypervisor; never on
// non-Linux hosts.
func PVMHost() bool { return false }
