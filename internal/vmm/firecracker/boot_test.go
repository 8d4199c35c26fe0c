package firecracker

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/banger-vm/banger/internal/kvm"
	"github.com/banger-vm/banger/internal/testsupport"
	"github.com/banger-vm/banger/internal/vmm"
	"github.com/banger-vm/banger/internal/vmm/proc"
)

// TestRealBoot boots the shared fixture (Debian's cloud kernel, banger's initramfs, a busybox
// root) under a real Firecracker and checks the agent answers. It runs wherever a
// firecracker >= 1.8 is on PATH and KVM really runs guests; otherwise it skips saying which
// is missing.
func TestRealBoot(t *testing.T) {
	bin, err := exec.LookPath("firecracker")
	if err != nil {
		t.Skip("no firecracker binary on PATH")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	v, line, err := BinaryVersion(ctx, bin)
	if err != nil {
		t.Skipf("firecracker on PATH (%s) does not report a version: %v", bin, err)
	}
	if !VersionOK(v) {
		t.Skipf("firecracker %s is older than %d.%d.%d", line, MinVersion[0], MinVersion[1], MinVersion[2])
	}
	if p := kvm.Probe(ctx, ""); p.Status != kvm.StatusUsable {
		t.Skipf("KVM not usable here: %s", p.String())
	}
	assets := testsupport.GuestAssets(t)
	dir := t.TempDir()
	fx, err := testsupport.BuildBootFixture(dir, assets)
	if err != nil {
		t.Fatal(err)
	}
	run := shortDir(t)
	spec := vmm.MachineSpec{
		Name: "boot-test", Kernel: fx.Assets.Kernel, Initramfs: fx.Initramfs,
		Cmdline: "console=ttyS0 banger.hostname=fc-test",
		Drives:  []vmm.Drive{{ID: "root", Path: fx.Rootfs, ReadOnly: true, Role: vmm.RoleRoot}},
		VCPUs:   2, MemoryMiB: 512, RunDir: run,
	}
	d := New(Config{Binary: bin, KernelCacheDir: filepath.Join(dir, "vmlinux")})
	start := time.Now()
	m, err := d.Start(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Kill()
	actx, acancel := context.WithTimeout(ctx, 60*time.Second)
	defer acancel()
	h, err := m.Agent().WaitReady(actx)
	if err != nil {
		tail := proc.ConsoleTail(m.State().ConsoleLog, 40)
		t.Fatalf("agent: %v\nconsole:\n%s", err, fmt.Sprint(tail))
	}
	t.Logf("agent %s answered %v after start (kernel %+v)", h.AgentVersion, time.Since(start), h.Kernel)
	info, err := m.Stop(ctx, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if !info.Clean {
		t.Errorf("stop: %+v", info)
	}
	for _, s := range []string{apiSocketName, vsockSocketName} {
		if exists(filepath.Join(run, s)) {
			t.Errorf("%s left behind", s)
		}
	}
}
