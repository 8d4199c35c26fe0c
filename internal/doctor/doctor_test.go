package doctor

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/banger-vm/banger/internal/api"
	"github.com/banger-vm/banger/internal/config"
	"github.com/banger-vm/banger/internal/kvm"
	"github.com/banger-vm/banger/internal/system/hosttools"
	"github.com/banger-vm/banger/internal/vmm/qemu"
)

func TestRegistryOrderTimeoutAndPanic(t *testing.T) {
	r := NewRegistry(200 * time.Millisecond)
	r.Register("slow-but-ok", func(context.Context) api.CheckResult { time.Sleep(50 * time.Millisecond); return Pass("fine") })
	r.Register("hangs", func(ctx context.Context) api.CheckResult { <-make(chan struct{}); return Pass("never") })
	r.Register("panics", func(context.Context) api.CheckResult { panic("boom") })
	r.Register("silent", func(context.Context) api.CheckResult { return api.CheckResult{} })
	r.Register("warns", func(context.Context) api.CheckResult { return Warnf("do x", "meh %d", 1) })
	start := time.Now()
	res := r.Run(context.Background())
	if time.Since(start) > 5*time.Second {
		t.Fatal("a hanging check held up the run")
	}
	want := []struct {
		name   string
		status api.CheckStatus
		detail string
	}{
		{"slow-but-ok", api.Pass, "fine"},
		{"hangs", api.Fail, "did not finish within 200ms"},
		{"panics", api.Fail, "check crashed: boom"},
		{"silent", api.Fail, "no verdict"},
		{"warns", api.Warn, "meh 1"},
	}
	if len(res) != len(want) {
		t.Fatalf("got %d results", len(res))
	}
	for i, w := range want {
		if res[i].Name != w.name || res[i].Status != w.status || !strings.Contains(res[i].Detail, w.detail) {
			t.Errorf("result %d = %+v, want %s %s %q", i, res[i], w.name, w.status, w.detail)
		}
	}
	if !Failed(res) || Failed(res[:1]) || Failed(res[4:]) {
		t.Error("Failed() is wrong")
	}
	defer func() {
		if recover() == nil {
			t.Error("duplicate registration accepted")
		}
	}()
	r.Register("warns", nil)
}

// fakeTool writes an executable script that prints a version, like a real tool would.
func fakeTool(t *testing.T, dir, name, output string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte("#!/bin/sh\necho '"+output+"'\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestFirecrackerCheckVersions(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	look := func(explicit string) toolFact {
		tool, err := hosttools.LookupTool(ctx, "firecracker", explicit, dir, "--version")
		return toolFact{tool, err}
	}
	if r := firecrackerCheck("auto", look("")); r.Status != api.Warn || !strings.Contains(r.Detail, "not found") || !strings.Contains(r.Hint, ">= 1.8") {
		t.Errorf("missing: %+v", r)
	}
	if r := firecrackerCheck("firecracker", look("")); r.Status != api.Fail {
		t.Errorf("missing but configured: %+v", r)
	}
	old := fakeTool(t, dir, "fc-old", "Firecracker v1.5.1")
	if r := firecrackerCheck("auto", look(old)); r.Status != api.Warn || !strings.Contains(r.Detail, "version 1.5.1; banger needs >= 1.8") {
		t.Errorf("old: %+v", r)
	}
	good := fakeTool(t, dir, "firecracker", "Firecracker v1.10.1")
	if r := firecrackerCheck("auto", look("")); r.Status != api.Pass || !strings.Contains(r.Detail, "1.10.1") || !strings.Contains(r.Detail, good) {
		t.Errorf("good on search path: %+v", r)
	}
	if r := firecrackerCheck("auto", look(filepath.Join(dir, "nope"))); r.Status != api.Warn || !strings.Contains(r.Detail, "does not exist") {
		t.Errorf("configured path missing: %+v", r)
	}
	garbled := fakeTool(t, dir, "fc-garbled", "hello")
	if r := firecrackerCheck("auto", look(garbled)); r.Status != api.Warn || !strings.Contains(r.Detail, "cannot tell its version") {
		t.Errorf("garbled: %+v", r)
	}
}

func TestVMMChoice(t *testing.T) {
	usable := kvm.ProbeResult{Status: kvm.StatusUsable}
	unusable := kvm.ProbeResult{Status: kvm.StatusUnusable}
	fc := toolFact{tool: hosttools.HostTool{Path: "/fc", Version: "1.10.0"}}
	oldFC := toolFact{tool: hosttools.HostTool{Path: "/fc", Version: "1.4.0"}}
	none := toolFact{}
	q := toolFact{tool: hosttools.HostTool{Path: "/q", Version: "7.2.0"}}
	cases := []struct {
		driver string
		k      kvm.ProbeResult
		fc, q  toolFact
		status api.CheckStatus
		detail string
	}{
		{"auto", usable, fc, q, api.Pass, "firecracker with KVM (firecracker and KVM work)"},
		{"auto", usable, oldFC, q, api.Pass, "qemu with KVM"},
		{"auto", unusable, fc, q, api.Warn, "qemu with software emulation (TCG) (auto: KVM unusable)"},
		{"auto", unusable, none, q, api.Warn, "no usable firecracker and KVM unusable"},
		{"auto", unusable, none, none, api.Fail, "no VMM can run here"},
		{"firecracker", unusable, fc, q, api.Fail, "vmm.driver = firecracker, but KVM unusable"},
		{"firecracker", usable, fc, none, api.Pass, "firecracker with KVM (configured)"},
		{"qemu", usable, fc, q, api.Pass, "qemu with KVM (configured)"},
		{"qemu", unusable, none, q, api.Warn, "TCG"},
		{"qemu", usable, fc, none, api.Fail, "qemu-system-x86_64 is missing"},
		{"vmware", usable, fc, q, api.Fail, "unknown vmm.driver"},
	}
	for _, c := range cases {
		r := vmmCheck(c.driver, c.k, c.fc, c.q)
		if r.Status != c.status || !strings.Contains(r.Detail, c.detail) {
			t.Errorf("%s kvm=%s fc=%q q=%q: got %s %q, want %s containing %q", c.driver, c.k.Status, c.fc.tool.Path, c.q.tool.Path, r.Status, r.Detail, c.status, c.detail)
		}
	}
}

func TestE2fsprogsMissing(t *testing.T) {
	dir := t.TempDir()
	r := e2fsprogsCheck(context.Background(), dir)
	if r.Status != api.Fail || !strings.Contains(r.Detail, "mkfs.ext4, debugfs, e2fsck") || !strings.Contains(r.Hint, "apt-get install e2fsprogs") {
		t.Fatalf("no e2fsprogs: %+v", r)
	}
	fakeTool(t, dir, "mkfs.ext4", "mke2fs 1.47.0 (5-Feb-2023)")
	r = e2fsprogsCheck(context.Background(), dir)
	if r.Status != api.Fail || strings.Contains(r.Detail, "mkfs.ext4") {
		t.Fatalf("partial e2fsprogs: %+v", r)
	}
}

func TestE2fsprogsHere(t *testing.T) {
	r := e2fsprogsCheck(context.Background(), "")
	if hosttools.LookPathIn("debugfs", "") == "" {
		t.Skip("e2fsprogs not installed here (apt-get install e2fsprogs)")
	}
	if r.Status != api.Pass || !strings.Contains(r.Detail, "version 1.") {
		t.Fatalf("e2fsprogs installed but check says %+v", r)
	}
}

func TestDiskSpace(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "not", "yet", "created")
	if r := diskSpaceCheck(dir, 0); r.Status != api.Pass || !strings.Contains(r.Detail, "free on the filesystem of "+dir) {
		t.Errorf("plenty: %+v", r)
	}
	if r := diskSpaceCheck(dir, 1<<60); r.Status != api.Warn || !strings.Contains(r.Detail, "below doctor.min_free_space") {
		t.Errorf("below threshold: %+v", r)
	}
}

func TestHostChecksRegistered(t *testing.T) {
	r := NewRegistry(time.Minute)
	RegisterHostChecks(r, HostOptions{Config: config.Defaults(), DataDir: t.TempDir(), KVMDevice: "/nonexistent/kvm"})
	if got := strings.Join(r.Names(), ","); got != "kvm,firecracker,qemu,vmm,qemu-sandbox,e2fsprogs,disk-space,update" {
		t.Fatalf("checks = %s", got)
	}
	res := r.Run(context.Background())
	if res[0].Status != api.Warn || !strings.Contains(res[0].Hint+res[0].Detail, "emulation") {
		t.Errorf("absent KVM: %+v", res[0])
	}
}

func TestQEMUSandboxCheck(t *testing.T) {
	ctx := context.Background()
	q := toolFact{tool: hosttools.HostTool{Path: "/q", Version: "7.2.0"}}
	yes := func(context.Context, string) (bool, string, error) { return true, "", nil }
	no := func(context.Context, string) (bool, string, error) { return false, "seccomp support is disabled", nil }
	broken := func(context.Context, string) (bool, string, error) { return false, "", errors.New("hung") }
	for _, c := range []struct {
		q      toolFact
		probe  sandboxProbe
		status api.CheckStatus
		detail string
	}{
		{q, yes, api.Pass, "QEMU sandbox: on"},
		{q, no, api.Warn, "QEMU sandbox: unsupported (seccomp support is disabled)"},
		{q, broken, api.Warn, "probe failed: hung"},
		{toolFact{}, yes, api.Warn, "no usable qemu"},
	} {
		if r := qemuSandboxCheck(ctx, c.q, c.probe); r.Status != c.status || !strings.Contains(r.Detail, c.detail) {
			t.Errorf("got %s %q, want %s with %q", r.Status, r.Detail, c.status, c.detail)
		}
	}
	// The real probe on the real QEMU, where there is one.
	qp := hosttools.LookPathIn("qemu-system-x86_64", "")
	if qp == "" {
		t.Skip("no qemu-system-x86_64 here (apt-get install qemu-system-x86)")
	}
	r := qemuSandboxCheck(ctx, toolFact{tool: hosttools.HostTool{Path: qp}}, qemu.SandboxSupported)
	t.Logf("%s: %s", r.Status, r.Detail)
	if r.Status == api.Fail {
		t.Errorf("real probe: %+v", r)
	}
}
