//go:build linux && amd64

package kvm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

var allStatuses = map[Status]bool{StatusUsable: true, StatusAbsent: true, StatusNoAccess: true, StatusUnusable: true}

func checkWellFormed(t *testing.T, r ProbeResult) {
	t.Helper()
	if !allStatuses[r.Status] {
		t.Errorf("status %q is not one of the defined statuses", r.Status)
	}
	if r.Detail == "" || r.Hint == "" || r.Device == "" {
		t.Errorf("Detail, Hint and Device must be set: %+v", r)
	}
	if strings.Contains(r.Detail, "\n") {
		t.Errorf("Detail must be one line: %q", r.Detail)
	}
}

// TestProbeThisHost runs the real probe and checks the verdict against what
// is known about this host from independent sources: whether the device node
// exists, and whether /sys/module shows the PVM hypervisor (which emulates
// stock guest kernels, so the verdict must be "unusable").
// BANGER_KVM_EXPECT=<status> pins the expected verdict on CI machines.
func TestProbeThisHost(t *testing.T) {
	r := Probe(context.Background(), "")
	t.Logf("verdict: %s", r)
	for _, c := range r.Checks {
		t.Logf("  %s ok=%v exits=%v time=%s: %s", c.Mode, c.OK, c.Exits, c.GuestTime, c.Detail)
	}
	checkWellFormed(t, r)
	if r.Device != DefaultDevice {
		t.Errorf("Device = %q, want the default %q", r.Device, DefaultDevice)
	}

	if want := os.Getenv("BANGER_KVM_EXPECT"); want != "" && string(r.Status) != want {
		t.Fatalf("BANGER_KVM_EXPECT=%s but probe says %s", want, r.Status)
	}
	if _, err := os.Stat(DefaultDevice); errors.Is(err, os.ErrNotExist) {
		if r.Status != StatusAbsent {
			t.Fatalf("%s does not exist, want %s, got %s", DefaultDevice, StatusAbsent, r.Status)
		}
		return
	}
	if r.Status == StatusAbsent {
		t.Fatalf("%s exists but probe says absent", DefaultDevice)
	}
	if r.Status == StatusNoAccess || r.Status == StatusAbsent {
		return
	}
	if r.APIVersion != kvmAPIVersion {
		t.Errorf("APIVersion = %d, want %d once the device opened", r.APIVersion, kvmAPIVersion)
	}
	if PVMHost() {
		if r.Status != StatusUnusable {
			t.Fatalf("host runs kvm_pvm, which cannot run stock guests at hardware speed; probe says %s", r.Status)
		}
		if !strings.Contains(r.Detail, "kvm_pvm") {
			t.Errorf("Detail should name the PVM hypervisor: %q", r.Detail)
		}
	}
	switch r.Status {
	case StatusUsable:
		if len(r.Checks) != len(guestPrograms) || r.ExitReason != "KVM_EXIT_HLT" {
			t.Errorf("usable needs every guest to halt: %+v", r)
		}
		for _, c := range r.Checks {
			if !c.OK {
				t.Errorf("usable but %s failed: %s", c.Mode, c.Detail)
			}
		}
	case StatusUnusable:
		if !strings.Contains(r.Hint, "TCG") {
			t.Errorf("unusable Hint should say TCG will be used: %q", r.Hint)
		}
	}
}

func TestProbeMissingDevice(t *testing.T) {
	dev := filepath.Join(t.TempDir(), "no-such-kvm")
	r := Probe(context.Background(), dev)
	checkWellFormed(t, r)
	if r.Status != StatusAbsent || r.Device != dev || !strings.Contains(r.Detail, dev) {
		t.Fatalf("want absent naming %s, got %s", dev, r)
	}
}

// /dev/null opens read-write for anyone but answers no KVM ioctl.
func TestProbeNotKVMDevice(t *testing.T) {
	r := Probe(context.Background(), "/dev/null")
	checkWellFormed(t, r)
	if r.Status != StatusUnusable || !strings.Contains(r.Detail, "not a KVM device") || r.APIVersion != 0 {
		t.Fatalf("want unusable 'not a KVM device', got %s", r)
	}
}

func TestProbeRegularFile(t *testing.T) {
	f := filepath.Join(t.TempDir(), "kvm")
	if err := os.WriteFile(f, nil, 0o666); err != nil {
		t.Fatal(err)
	}
	r := Probe(context.Background(), f)
	checkWellFormed(t, r)
	if r.Status != StatusUnusable || !strings.Contains(r.Detail, "not a character device") {
		t.Fatalf("want unusable 'not a character device', got %s", r)
	}
}

func TestProbeCanceledContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	r := Probe(ctx, "")
	checkWellFormed(t, r)
	if r.Status != StatusUnusable || !strings.Contains(r.Detail, "canceled") {
		t.Fatalf("want unusable 'canceled', got %s", r)
	}
}

// openKVMOrSkip skips tests that need a KVM that runs guests at all.
func openKVMOrSkip(t *testing.T) {
	t.Helper()
	f, err := os.OpenFile(DefaultDevice, os.O_RDWR, 0)
	if err != nil {
		t.Skipf("needs an openable %s: %v", DefaultDevice, err)
	}
	f.Close()
}

// TestProbeSpinningGuestTimesOut swaps in a guest that loops forever
// ("jmp $") and checks the probe still returns, promptly, saying why. This
// exercises the kick path (immediate_exit + signal to the vCPU thread).
func TestProbeSpinningGuestTimesOut(t *testing.T) {
	openKVMOrSkip(t)
	saved := guestPrograms
	t.Cleanup(func() { guestPrograms = saved })
	guestPrograms = []guestProgram{{mode: "spin", setup: func(mem []byte, regs *kvmRegs, sregs *kvmSregs) {
		copy(mem[rmCode:], []byte{0xeb, 0xfe}) // jmp $
		setupRealModeRegs(regs, sregs)
	}}}

	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	r := Probe(ctx, "")
	took := time.Since(start)
	t.Logf("%s (took %s)", r, took)
	checkWellFormed(t, r)
	if r.Status != StatusUnusable || !strings.Contains(r.Detail, "timed out") {
		t.Fatalf("want unusable after the deadline, got %s", r)
	}
	if len(r.Checks) != 1 || r.Checks[0].OK {
		t.Errorf("want one failed check, got %+v", r)
	}
	// A hang guard, not a speed claim: without the kick the probe would never return.
	if took > 10*time.Second {
		t.Errorf("probe took %s to give up on a spinning guest", took)
	}
}

// TestProbeNoAccess runs the probe as an unprivileged user against the real
// /dev/kvm. Root bypasses file modes, so as root the test binary re-executes
// itself as nobody (uid/gid 65534); the copy lives in a 0755 directory
// because go test's build directory is private to root.
func TestProbeNoAccess(t *testing.T) {
	if os.Getenv("BANGER_KVM_NOACCESS_CHILD") == "1" {
		fmt.Println("STATUS", Probe(context.Background(), os.Getenv("BANGER_KVM_DEVICE")))
		return
	}
	st, err := os.Stat(DefaultDevice)
	if err != nil {
		t.Skipf("no %s to be denied: %v", DefaultDevice, err)
	}
	sys := st.Sys().(*syscall.Stat_t)
	if st.Mode().Perm()&0o006 != 0 || sys.Gid == 65534 {
		t.Skipf("%s (%v, gid %d) is open to others, so nobody is not denied", DefaultDevice, st.Mode(), sys.Gid)
	}
	if os.Geteuid() != 0 {
		r := Probe(context.Background(), "")
		if f, err := os.OpenFile(DefaultDevice, os.O_RDWR, 0); err == nil {
			f.Close()
			t.Skip("not root, and this user may open /dev/kvm: cannot construct a denied user")
		}
		if r.Status != StatusNoAccess {
			t.Fatalf("this user cannot open %s, want no-access, got %s", DefaultDevice, r)
		}
		return
	}

	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	// t.TempDir makes a private parent and child; open both to others.
	dir := t.TempDir()
	for _, d := range []string{filepath.Dir(dir), dir} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for d := filepath.Dir(dir); d != "/"; d = filepath.Dir(d) {
		if fi, err := os.Stat(d); err != nil || fi.Mode().Perm()&0o001 == 0 {
			t.Skipf("%s is not searchable by others, nobody cannot run the test binary", d)
		}
	}
	bin := filepath.Join(dir, "kvm.test")
	copyFile(t, exe, bin, 0o755)

	cmd := exec.Command(bin, "-test.run=^TestProbeNoAccess$", "-test.count=1")
	cmd.Env = append(os.Environ(), "BANGER_KVM_NOACCESS_CHILD=1", "BANGER_KVM_DEVICE="+DefaultDevice, "USER=nobody")
	cmd.Dir = dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	t.Logf("child as nobody:\n%s", out)
	if err != nil {
		t.Fatalf("child failed: %v", err)
	}
	var line string
	for _, l := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(l, "STATUS ") {
			line = l
		}
	}
	if !strings.Contains(line, ": "+string(StatusNoAccess)+": permission denied opening "+DefaultDevice) ||
		!strings.Contains(line, "group kvm") {
		t.Fatalf("want no-access with a group-kvm hint, got %q", line)
	}
}

func copyFile(t *testing.T, src, dst string, mode os.FileMode) {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, mode)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}

// The guest images are checked byte for byte where the ABI matters.
func TestGDTEntryMatchesFirecracker(t *testing.T) {
	// Values from Firecracker's gdt.rs tests / the canonical flat descriptors.
	for _, tc := range []struct {
		flags uint16
		want  uint64
	}{
		{0xa09b, 0x00af9b000000ffff}, // 64-bit code
		{0xc093, 0x00cf93000000ffff}, // flat data
		{0x808b, 0x008f8b000000ffff}, // TSS
	} {
		if got := gdtEntry(tc.flags, 0, 0xfffff); got != tc.want {
			t.Errorf("gdtEntry(%#x) = %#x, want %#x", tc.flags, got, tc.want)
		}
	}
}
