package doctor

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/banger-vm/banger/internal/api"
	"github.com/banger-vm/banger/internal/config"
	"github.com/banger-vm/banger/internal/kvm"
	"github.com/banger-vm/banger/internal/system/hosttools"
	"github.com/banger-vm/banger/internal/units"
	"github.com/banger-vm/banger/internal/vmm"
	"github.com/banger-vm/banger/internal/vmm/qemu"
)

// MinFirecrackerVersion is vmm.FirecrackerMinVersion: the oldest Firecracker with ACPI
// device discovery, which the guest kernels banger boots rely on.
const MinFirecrackerVersion = vmm.FirecrackerMinVersion

// hardMinFreeSpace is the floor below which nothing banger does can succeed (an image pull
// alone needs more).
const hardMinFreeSpace = 1 << 30

const firecrackerHint = "install firecracker >= " + MinFirecrackerVersion + " from its GitHub releases (firecracker-microvm/firecracker) onto PATH, or set runtime.firecracker_path"

// HostOptions is what the host checks look at.
type HostOptions struct {
	Config     config.Config
	DataDir    string
	KVMDevice  string // "" means /dev/kvm
	SearchPath string // overrides PATH for tool lookups when non-empty (tests)
}

// hostFacts are gathered once and shared by the checks that need them (the vmm check needs
// the KVM, firecracker and qemu facts).
type hostFacts struct {
	kvm         func() kvm.ProbeResult
	firecracker func() toolFact
	qemu        func() toolFact
}

type toolFact struct {
	tool hosttools.HostTool
	err  error
}

// RegisterHostChecks adds the checks that need no daemon: KVM, VMMs, e2fsprogs, disk space.
func RegisterHostChecks(r *Registry, o HostOptions) {
	lookup := func(name, explicit string, args ...string) func() toolFact {
		return sync.OnceValue(func() toolFact {
			// A background context: the result is shared between checks and must not be cut
			// short by whichever check asked first.
			t, err := hosttools.LookupTool(context.Background(), name, explicit, o.SearchPath, args...)
			return toolFact{t, err}
		})
	}
	f := hostFacts{
		kvm: sync.OnceValue(func() kvm.ProbeResult {
			return kvm.Probe(context.Background(), o.KVMDevice)
		}),
		firecracker: lookup("firecracker", o.Config.Runtime.FirecrackerPath, "--version"),
		qemu:        lookup("qemu-system-x86_64", o.Config.Runtime.QEMUPath, "--version"),
	}
	r.Register("kvm", func(context.Context) api.CheckResult { return kvmCheck(f.kvm()) })
	r.Register("firecracker", func(context.Context) api.CheckResult { return firecrackerCheck(o.Config.VMM.Driver, f.firecracker()) })
	r.Register("qemu", func(context.Context) api.CheckResult { return qemuCheck(o.Config.VMM.Driver, f.qemu()) })
	r.Register("vmm", func(context.Context) api.CheckResult {
		return vmmCheck(o.Config.VMM.Driver, f.kvm(), f.firecracker(), f.qemu())
	})
	r.Register("qemu-sandbox", func(ctx context.Context) api.CheckResult {
		return qemuSandboxCheck(ctx, f.qemu(), qemu.SandboxSupported)
	})
	r.Register("e2fsprogs", func(ctx context.Context) api.CheckResult { return e2fsprogsCheck(ctx, o.SearchPath) })
	r.Register("disk-space", func(context.Context) api.CheckResult {
		return diskSpaceCheck(o.DataDir, o.Config.Doctor.MinFreeSpace)
	})
	registerUpdateChecks(r)
}

func kvmCheck(p kvm.ProbeResult) api.CheckResult {
	switch p.Status {
	case kvm.StatusUsable:
		return Pass("%s", p.Detail)
	case kvm.StatusAbsent, kvm.StatusUnusable:
		return Warnf(p.Hint, "%s", p.Detail)
	default:
		return Warnf(p.Hint, "%s", p.Detail)
	}
}

func firecrackerCheck(driver string, f toolFact) api.CheckResult {
	sev := Warnf
	if driver == "firecracker" {
		sev = Failf // the user asked for it explicitly: nothing can run without it
	}
	switch {
	case f.err != nil:
		return sev(firecrackerHint, "firecracker is configured but unusable: %v", f.err)
	case f.tool.Path == "":
		detail := "firecracker not found on PATH"
		if driver != "firecracker" {
			detail += "; VMs will use qemu"
		}
		return sev(firecrackerHint, "%s", detail)
	case f.tool.Version == "":
		return sev(firecrackerHint, "%s: cannot tell its version from %q", f.tool.Path, f.tool.Output)
	case !hosttools.VersionAtLeast(f.tool.Version, MinFirecrackerVersion):
		return sev(firecrackerHint, "%s is version %s; banger needs >= %s", f.tool.Path, f.tool.Version, MinFirecrackerVersion)
	}
	return Pass("%s version %s", f.tool.Path, f.tool.Version)
}

const qemuHint = "install it: apt-get install qemu-system-x86 (or set runtime.qemu_path)"

func qemuCheck(driver string, f toolFact) api.CheckResult {
	sev := Warnf
	if driver != "firecracker" {
		sev = Failf
	}
	switch {
	case f.err != nil:
		return sev(qemuHint, "qemu-system-x86_64 is unusable: %v", f.err)
	case f.tool.Path == "":
		return sev(qemuHint, "qemu-system-x86_64 not found on PATH")
	}
	return Pass("%s version %s", f.tool.Path, f.tool.Version)
}

// vmmCheck says which VMM vmm.driver resolves to on this host and why: the same choice the
// VM lifecycle makes, through vmm.Choose.
func vmmCheck(driver string, k kvm.ProbeResult, fc, q toolFact) api.CheckResult {
	// The same facts-to-Host rule as the daemon's (vmm.DetectHost), on the facts the other
	// checks already gathered.
	c, err := vmm.Choose(driver, vmm.HostFacts{
		KVM: k, Firecracker: fc.tool, FirecrackerErr: fc.err, QEMU: q.tool, QEMUErr: q.err,
	}.Host())
	switch {
	case err != nil && strings.Contains(err.Error(), "qemu-system-x86_64 is missing"):
		return Failf(qemuHint, "%v", err)
	case err != nil:
		return Failf("set vmm.driver = \"auto\" to fall back to qemu, or fix the checks above", "%v", err)
	case c.Driver == "qemu" && c.Accel == "tcg":
		return Warnf("software emulation works but is slower; a host with working KVM and firecracker boots VMs in about a second",
			"qemu with software emulation (TCG) (%s)", c.Reason)
	}
	return Pass("%s with %s (%s)", c.Driver, strings.ToUpper(c.Accel), c.Reason)
}

// sandboxProbe is qemu.SandboxSupported (a variable for tests).
type sandboxProbe func(ctx context.Context, binary string) (bool, string, error)

// qemuSandboxCheck says whether QEMU VMs run under QEMU's seccomp sandbox (the qemu driver
// uses it whenever this probe passes).
func qemuSandboxCheck(ctx context.Context, q toolFact, probe sandboxProbe) api.CheckResult {
	if q.err != nil || q.tool.Path == "" {
		return Warnf(qemuHint, "QEMU sandbox: unknown, no usable qemu-system-x86_64")
	}
	ok, detail, err := probe(ctx, q.tool.Path)
	switch {
	case err != nil:
		return Warnf("check that qemu-system-x86_64 runs", "QEMU sandbox: probe failed: %v", err)
	case !ok:
		return Warnf("use a QEMU built with seccomp support (Debian's qemu-system-x86 is); VMs run unconfined until then",
			"QEMU sandbox: unsupported (%s)", detail)
	}
	return Pass("QEMU sandbox: on (seccomp: obsolete, elevateprivileges, spawn and resourcecontrol denied)")
}

func e2fsprogsCheck(ctx context.Context, searchPath string) api.CheckResult {
	var found, missing []string
	var version string
	for _, tool := range []string{"mkfs.ext4", "debugfs", "e2fsck"} {
		t, err := hosttools.LookupTool(ctx, tool, "", searchPath, "-V")
		if err != nil || t.Path == "" {
			missing = append(missing, tool)
			continue
		}
		found = append(found, tool)
		if version == "" {
			version = t.Version
		}
	}
	if len(missing) > 0 {
		return Failf("install them: apt-get install e2fsprogs", "missing %s: banger builds every disk with e2fsprogs", strings.Join(missing, ", "))
	}
	return Pass("%s version %s", strings.Join(found, ", "), version)
}

func diskSpaceCheck(dataDir string, minFree int64) api.CheckResult {
	// The data dir may not exist before the first daemon start: measure its nearest parent.
	dir := dataDir
	for {
		if _, err := os.Stat(dir); err == nil || !errors.Is(err, os.ErrNotExist) {
			break
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			break
		}
		dir = parent
	}
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return Failf("check that the data dir exists and is readable, or set data_dir", "cannot measure free space of %s: %v", dir, err)
	}
	free := int64(st.Bavail) * int64(st.Bsize)
	detail := fmt.Sprintf("%s free on the filesystem of %s", units.FormatSize(free), dataDir)
	hint := "free some space there, or point data_dir at a bigger filesystem"
	switch {
	case free < hardMinFreeSpace:
		return Failf(hint, "%s: too little to build images or disks", detail)
	case free < minFree:
		return Warnf(hint, "%s: below doctor.min_free_space (%s)", detail, units.FormatSize(minFree))
	}
	return Pass("%s", detail)
}
