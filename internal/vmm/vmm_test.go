package vmm

import (
	"strings"
	"testing"
)

func TestChoose(t *testing.T) {
	all := Host{KVMUsable: true, KVMStatus: "usable", FirecrackerOK: true, QEMUOK: true}
	pvm := Host{KVMStatus: "unusable", QEMUOK: true}
	cases := []struct {
		pref         string
		h            Host
		driver, acc  string
		errSubstring string
	}{
		{"auto", all, "firecracker", "kvm", ""},
		{"", all, "firecracker", "kvm", ""},
		{"auto", Host{KVMUsable: true, KVMStatus: "usable", QEMUOK: true}, "qemu", "kvm", ""},
		{"auto", pvm, "qemu", "tcg", ""},
		{"auto", Host{KVMStatus: "absent"}, "", "", "no VMM can run here"},
		{"qemu", all, "qemu", "kvm", ""},
		{"qemu", pvm, "qemu", "tcg", ""},
		{"qemu", Host{KVMUsable: true}, "", "", "qemu-system-x86_64 is missing"},
		{"firecracker", all, "firecracker", "kvm", ""},
		{"firecracker", pvm, "", "", "no usable firecracker and KVM unusable"},
		{"hyperv", all, "", "", "unknown vmm.driver"},
	}
	for _, c := range cases {
		got, err := Choose(c.pref, c.h)
		if c.errSubstring != "" {
			if err == nil || !strings.Contains(err.Error(), c.errSubstring) {
				t.Errorf("Choose(%q, %+v) = %+v, %v; want error with %q", c.pref, c.h, got, err, c.errSubstring)
			}
			continue
		}
		if err != nil || got.Driver != c.driver || got.Accel != c.acc || got.Reason == "" {
			t.Errorf("Choose(%q, %+v) = %+v, %v; want %s/%s", c.pref, c.h, got, err, c.driver, c.acc)
		}
	}
}

func TestMachineSpecValidate(t *testing.T) {
	good := MachineSpec{Kernel: "/k", VCPUs: 1, MemoryMiB: 256, RunDir: "/r", Drives: []Drive{{ID: "rootfs", Role: RoleRoot}, {ID: "work", Role: RoleWork}}}
	if err := good.Validate(); err != nil {
		t.Fatal(err)
	}
	bad := map[string]func(*MachineSpec){
		"no kernel":                      func(s *MachineSpec) { s.Kernel = "" },
		"need at least 1":                func(s *MachineSpec) { s.VCPUs = 0 },
		"need at least 64":               func(s *MachineSpec) { s.MemoryMiB = 16 },
		"no run directory":               func(s *MachineSpec) { s.RunDir = "" },
		"must be 1-20 characters":        func(s *MachineSpec) { s.Drives[1].ID = strings.Repeat("x", 21) },
		"use a-z":                        func(s *MachineSpec) { s.Drives[1].ID = "Work Disk" },
		"used twice":                     func(s *MachineSpec) { s.Drives[1].ID = "rootfs" },
		"exactly one root drive, have 2": func(s *MachineSpec) { s.Drives[1].Role = RoleRoot },
		"exactly one root drive, have 0": func(s *MachineSpec) { s.Drives[0].Role = RoleExtra },
		"must be read-only":              func(s *MachineSpec) { s.Drives = append(s.Drives, Drive{ID: "modules", Role: RoleModules}) },
		"at most one modules drive": func(s *MachineSpec) {
			s.Drives = append(s.Drives, Drive{ID: "m1", Role: RoleModules, ReadOnly: true}, Drive{ID: "m2", Role: RoleModules, ReadOnly: true})
		},
	}
	for want, mutate := range bad {
		s := good
		s.Drives = append([]Drive(nil), good.Drives...)
		mutate(&s)
		if err := s.Validate(); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: got %v", want, err)
		}
	}
}
