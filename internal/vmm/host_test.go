package vmm

import (
	"context"
	"errors"
	"testing"

	"github.com/banger-vm/banger/internal/kvm"
	"github.com/banger-vm/banger/internal/system/hosttools"
)

func TestHostFactsHost(t *testing.T) {
	usable := kvm.ProbeResult{Status: kvm.StatusUsable}
	fc := func(v string) hosttools.HostTool { return hosttools.HostTool{Path: "/fc", Version: v} }
	q := hosttools.HostTool{Path: "/q", Version: "7.2.0"}
	for name, c := range map[string]struct {
		f    HostFacts
		want Host
	}{
		"all":           {HostFacts{KVM: usable, Firecracker: fc("1.10.1"), QEMU: q}, Host{KVMUsable: true, KVMStatus: "usable", FirecrackerOK: true, QEMUOK: true}},
		"minimum":       {HostFacts{KVM: usable, Firecracker: fc(FirecrackerMinVersion), QEMU: q}, Host{KVMUsable: true, KVMStatus: "usable", FirecrackerOK: true, QEMUOK: true}},
		"old fc":        {HostFacts{KVM: usable, Firecracker: fc("1.7.9"), QEMU: q}, Host{KVMUsable: true, KVMStatus: "usable", QEMUOK: true}},
		"broken tools":  {HostFacts{KVM: kvm.ProbeResult{Status: kvm.StatusUnusable}, Firecracker: fc("1.10"), FirecrackerErr: errors.New("x"), QEMU: q, QEMUErr: errors.New("y")}, Host{KVMStatus: "unusable"}},
		"nothing found": {HostFacts{KVM: kvm.ProbeResult{Status: kvm.StatusAbsent}}, Host{KVMStatus: "absent"}},
	} {
		if got := c.f.Host(); got != c.want {
			t.Errorf("%s: %+v, want %+v", name, got, c.want)
		}
	}
}

func TestDetectHostRunsTheProbes(t *testing.T) {
	// The real probes on this host; their verdicts agree with asking them directly.
	h := DetectHost(context.Background(), "", "")
	k := kvm.Probe(context.Background(), "")
	qt, qerr := hosttools.LookupTool(context.Background(), "qemu-system-x86_64", "", "", "--version")
	if h.KVMStatus != string(k.Status) || h.KVMUsable != (k.Status == kvm.StatusUsable) || h.QEMUOK != (qerr == nil && qt.Path != "") {
		t.Errorf("DetectHost = %+v; kvm %s, qemu %q %v", h, k.Status, qt.Path, qerr)
	}
}
