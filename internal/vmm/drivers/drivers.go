// Package drivers wires banger's VMM drivers (qemu, firecracker) from its configuration.
// It is the one place that knows the concrete drivers, so the daemon depends only on the
// vmm interfaces and tests can hand it a fake.
package drivers

import (
	"fmt"

	"github.com/banger-vm/banger/internal/vmm"
	"github.com/banger-vm/banger/internal/vmm/firecracker"
	"github.com/banger-vm/banger/internal/vmm/qemu"
)

// Config is what the drivers need from banger's configuration.
type Config struct {
	QEMUPath        string // runtime.qemu_path; empty: qemu-system-x86_64 on PATH
	FirecrackerPath string // runtime.firecracker_path; empty: firecracker on PATH
	// KernelCacheDir holds the ELF vmlinux files Firecracker boots, extracted from bzImages.
	KernelCacheDir string
}

// Factory returns a constructor of the driver for a VMM name and acceleration.
func Factory(cfg Config) func(name, accel string) (vmm.Driver, error) {
	return func(name, accel string) (vmm.Driver, error) {
		switch name {
		case qemu.DriverName:
			return qemu.New(qemu.Config{Binary: cfg.QEMUPath, Accel: accel}), nil
		case firecracker.Name:
			return firecracker.New(firecracker.Config{Binary: cfg.FirecrackerPath, KernelCacheDir: cfg.KernelCacheDir}), nil
		}
		return nil, fmt.Errorf("unknown VMM driver %q: banger has %q and %q", name, qemu.DriverName, firecracker.Name)
	}
}
