package firecracker

import (
	"bufio"
	"bytes"
	"context"
	"debug/elf"
	"encoding/binary"
	"encoding/json"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/banger-vm/banger/internal/vmm"
)

// tinyVmlinux writes a minimal x86_64 ET_EXEC (all the kernel preparation checks): one
// PT_LOAD of 16 bytes at 0x1000000.
func tinyVmlinux(t *testing.T, path string) {
	hdr := elf.Header64{Type: uint16(elf.ET_EXEC), Machine: uint16(elf.EM_X86_64), Version: 1,
		Entry: 0x1000000, Phoff: 64, Ehsize: 64, Phentsize: 56, Phnum: 1, Shentsize: 64}
	copy(hdr.Ident[:], elf.ELFMAG)
	hdr.Ident[elf.EI_CLASS], hdr.Ident[elf.EI_DATA], hdr.Ident[elf.EI_VERSION] = byte(elf.ELFCLASS64), byte(elf.ELFDATA2LSB), 1
	ph := elf.Prog64{Type: uint32(elf.PT_LOAD), Off: 0x1000, Vaddr: 0xffffffff81000000, Paddr: 0x1000000, Filesz: 16, Memsz: 16}
	var b bytes.Buffer
	binary.Write(&b, binary.LittleEndian, hdr)
	binary.Write(&b, binary.LittleEndian, ph)
	f := make([]byte, 0x1000+16)
	copy(f, b.Bytes())
	if err := os.WriteFile(path, f, 0o644); err != nil {
		t.Fatal(err)
	}
}

// shortDir is a private directory with a short path (Unix socket paths are limited).
func shortDir(t *testing.T) string {
	d, err := os.MkdirTemp("", "fc")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

type fixture struct {
	dir, log string
	spec     vmm.MachineSpec
	drv      *Driver
}

// newFixture sets up a fake firecracker run with modes (see fake_test.go).
func newFixture(t *testing.T, modes string) *fixture {
	dir := shortDir(t)
	f := &fixture{dir: dir, log: filepath.Join(dir, "requests.jsonl")}
	t.Setenv(fakeEnv, modes)
	t.Setenv("BANGER_FAKE_FC_LOG", f.log)
	// Under -race the runtime sleeps 1s at exit by default; the fake must exit promptly
	// like Firecracker does.
	t.Setenv("GORACE", "atexit_sleep_ms=0")
	tinyVmlinux(t, filepath.Join(dir, "vmlinux"))
	for _, n := range []string{"initrd", "root.ext4", "layer.ext4", "work.ext4", "mods.ext4"} {
		os.WriteFile(filepath.Join(dir, n), []byte("x"), 0o644)
	}
	run := filepath.Join(dir, "run")
	os.Mkdir(run, 0o700)
	mac, _ := net.ParseMAC("02:fc:00:00:00:01")
	f.spec = vmm.MachineSpec{
		Name: "dev", Kernel: filepath.Join(dir, "vmlinux"), Initramfs: filepath.Join(dir, "initrd"),
		Cmdline: "console=ttyS0 banger.ip=172.30.0.2/24",
		Drives: []vmm.Drive{
			{ID: "mods", Path: filepath.Join(dir, "mods.ext4"), ReadOnly: true, Role: vmm.RoleModules},
			{ID: "root", Path: filepath.Join(dir, "root.ext4"), ReadOnly: true, Role: vmm.RoleRoot},
			{ID: "layer", Path: filepath.Join(dir, "layer.ext4"), Role: vmm.RoleLayer},
			{ID: "work", Path: filepath.Join(dir, "work.ext4"), Role: vmm.RoleWork},
		},
		NICs:  []vmm.NIC{{TAP: "bgtap0", MAC: mac}},
		VCPUs: 2, MemoryMiB: 256, RunDir: run,
	}
	f.drv = New(Config{Binary: os.Args[0], KernelCacheDir: filepath.Join(dir, "cache"), StartTimeout: 5 * time.Second, ConsoleCap: fakeConsoleCap})
	return f
}

func (f *fixture) requests(t *testing.T) []recorded {
	data, err := os.ReadFile(f.log)
	if err != nil {
		t.Fatal(err)
	}
	var out []recorded
	sc := bufio.NewScanner(strings.NewReader(string(data)))
	for sc.Scan() {
		var r recorded
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatal(err)
		}
		out = append(out, r)
	}
	return out
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func exists(p string) bool { _, err := os.Lstat(p); return err == nil }

// start starts f's machine; the test stops at an error.
func (f *fixture) start(t *testing.T, ctx context.Context) vmm.Machine {
	t.Helper()
	m, err := f.drv.Start(ctx, f.spec)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// startFailing starts f's machine for a test where the start must fail, checks the failed
// start left no firecracker, socket or file behind, and returns its error.
func (f *fixture) startFailing(t *testing.T) error {
	t.Helper()
	_, err := f.drv.Start(ctxT(t), f.spec)
	pidsOf(t, f)
	assertNoLeftovers(t, f, 0)
	return err
}

// mustStop stops m within timeout; the test stops at an error.
func mustStop(t *testing.T, ctx context.Context, m vmm.Machine, timeout time.Duration) vmm.ExitInfo {
	t.Helper()
	info, err := m.Stop(ctx, timeout)
	if err != nil {
		t.Fatal(err)
	}
	return info
}

// processGone reports whether pid no longer exists (our children are reaped by Wait).
func processGone(pid int) bool {
	return errors.Is(syscall.Kill(pid, 0), syscall.ESRCH)
}

func assertNoLeftovers(t *testing.T, f *fixture, pid int) {
	t.Helper()
	if pid > 0 && !processGone(pid) {
		t.Errorf("firecracker pid %d still exists", pid)
	}
	for _, s := range []string{apiSocketName, vsockSocketName} {
		if p := filepath.Join(f.spec.RunDir, s); exists(p) {
			t.Errorf("%s left behind", p)
		}
	}
}

func TestStartConfiguresAndStopsThroughAgent(t *testing.T) {
	f := newFixture(t, "ok")
	ctx := ctxT(t)
	m := f.start(t, ctx)
	defer m.Kill()
	if _, err := m.Agent().WaitReady(ctx); err != nil {
		t.Fatalf("agent: %v", err)
	}
	reqs := f.requests(t)
	var got []string
	for _, r := range reqs {
		got = append(got, r.Method+" "+r.Path)
	}
	want := []string{"PUT /machine-config", "PUT /boot-source", "PUT /drives/mods", "PUT /drives/root",
		"PUT /drives/layer", "PUT /drives/work", "PUT /network-interfaces/eth0", "PUT /vsock", "PUT /actions"}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("requests:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	var bs BootSource
	json.Unmarshal(reqs[1].Body, &bs)
	// Drives are named in attach order; mods is vda, so root is vdb.
	for _, w := range []string{"console=ttyS0", "banger.ip=172.30.0.2/24", "reboot=k", "panic=1", "pci=off",
		"banger.modules=/dev/vda", "banger.root=/dev/vdb", "banger.layer=/dev/vdc", "banger.work=/dev/vdd", "banger.agent=vsock", "banger.agent_port=1024"} {
		if !strings.Contains(" "+bs.BootArgs+" ", " "+w+" ") {
			t.Errorf("boot_args %q lacks %s", bs.BootArgs, w)
		}
	}
	if strings.Count(bs.BootArgs, "console=") != 1 {
		t.Errorf("boot_args %q: console set twice", bs.BootArgs)
	}
	if bs.KernelImagePath != f.spec.Kernel || bs.InitrdPath != f.spec.Initramfs {
		t.Errorf("boot source %+v", bs)
	}
	for i, r := range reqs[2:6] {
		var d Drive
		json.Unmarshal(r.Body, &d)
		sd := f.spec.Drives[i]
		// A link in the run dir (Firecracker's working directory) to the drive, so that a
		// saved state names paths a restore can point at another VM's disks.
		target, err := os.Readlink(filepath.Join(f.spec.RunDir, d.PathOnHost))
		if d.IsRootDevice || d.DriveID != sd.ID || d.PathOnHost != "drive-"+sd.ID || err != nil || target != sd.Path || d.IsReadOnly != sd.ReadOnly {
			t.Errorf("drive %d: %+v, link to %q %v", i, d, target, err)
		}
	}
	var ni NetworkInterface
	json.Unmarshal(reqs[6].Body, &ni)
	if ni.HostDevName != "bgtap0" || ni.GuestMAC != "02:fc:00:00:00:01" {
		t.Errorf("nic %+v", ni)
	}
	var vs Vsock
	json.Unmarshal(reqs[7].Body, &vs)
	if vs.GuestCID != 3 || vs.UDSPath != "vsock.sock" {
		t.Errorf("vsock %+v", vs)
	}
	if string(reqs[8].Body) != `{"action_type":"InstanceStart"}` {
		t.Errorf("last request %s", reqs[8].Body)
	}

	st := m.State()
	if st.PID != m.PID() || st.StartTime == 0 || st.AgentTransport != "hybrid-vsock" ||
		st.VsockCID != 3 || st.AgentPort != 1024 || st.ControlSocket != filepath.Join(f.spec.RunDir, "fc.sock") ||
		st.ConsoleLog != filepath.Join(f.spec.RunDir, "console.log") {
		t.Errorf("state %+v", st)
	}

	info := mustStop(t, ctx, m, 10*time.Second)
	if !info.Clean || info.Reason != "guest powered off" {
		t.Errorf("exit %+v", info)
	}
	if len(info.ConsoleTail) == 0 || !strings.Contains(strings.Join(info.ConsoleTail, "\n"), "Power down") {
		t.Errorf("console tail %q", info.ConsoleTail)
	}
	assertNoLeftovers(t, f, st.PID)
}

func TestStopFallsBackToCtrlAltDel(t *testing.T) {
	f := newFixture(t, "ignore-power")
	ctx := ctxT(t)
	m := f.start(t, ctx)
	m.Agent().WaitReady(ctx)
	info := mustStop(t, ctx, m, 1500*time.Millisecond)
	if !info.Clean || !strings.Contains(info.Reason, "Ctrl-Alt-Del") {
		t.Errorf("exit %+v", info)
	}
	assertNoLeftovers(t, f, m.PID())
}

func TestStopKillsWhenTimeoutRunsOut(t *testing.T) {
	f := newFixture(t, "ignore-power,ignore-button")
	ctx := ctxT(t)
	m := f.start(t, ctx)
	start := time.Now()
	info := mustStop(t, ctx, m, 600*time.Millisecond)
	if info.Clean || !strings.Contains(info.Reason, "signal 9") || !strings.Contains(info.Reason, "timed out") {
		t.Errorf("exit %+v", info)
	}
	if time.Since(start) < 600*time.Millisecond {
		t.Errorf("killed before the timeout ran out")
	}
	// ctrl-alt-del was tried before the kill.
	reqs := f.requests(t)
	if last := reqs[len(reqs)-1]; string(last.Body) != `{"action_type":"SendCtrlAltDel"}` {
		t.Errorf("last request %s %s", last.Path, last.Body)
	}
	assertNoLeftovers(t, f, m.PID())
}

func TestStartFailsMidConfigureLeavesNothing(t *testing.T) {
	f := newFixture(t, "fail=PUT /drives/work")
	err := f.startFailing(t)
	var ae *APIError
	if !errors.As(err, &ae) || ae.Status != 400 || !strings.Contains(ae.FaultMessage, "No such file") {
		t.Fatalf("err = %v, want the API's fault message", err)
	}
	for _, w := range []string{"drive work (work)", "PUT /drives/work", "fake: cannot", "console"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error lacks %q: %v", w, err)
		}
	}
}

// pidsOf checks no fake firecracker of this fixture survives (by its API socket argument).
func pidsOf(t *testing.T, f *fixture) {
	t.Helper()
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		cmd, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && strings.Contains(string(cmd), filepath.Join(f.spec.RunDir, apiSocketName)) {
			if st, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "stat")); !strings.Contains(string(st), ") Z") {
				t.Errorf("process %s still running: %q", e.Name(), cmd)
			}
		}
	}
}

func TestStartFirecrackerExitsEarly(t *testing.T) {
	f := newFixture(t, "exit-early")
	err := f.startFailing(t)
	if err == nil || !strings.Contains(err.Error(), "exited before its API socket appeared") ||
		!strings.Contains(err.Error(), "exit status 1") || !strings.Contains(err.Error(), "bad configuration, giving up") {
		t.Fatalf("err = %v", err)
	}
}

func TestStartNoAPISocket(t *testing.T) {
	f := newFixture(t, "no-socket")
	f.drv.cfg.StartTimeout = 300 * time.Millisecond
	err := f.startFailing(t)
	if err == nil || !strings.Contains(err.Error(), "did not open its API socket") {
		t.Fatalf("err = %v", err)
	}
}

func TestStartRefusesBadSpecAndMissingBinary(t *testing.T) {
	f := newFixture(t, "ok")
	bad := f.spec
	bad.Cmdline += " banger.root=/dev/sda"
	if _, err := f.drv.Start(ctxT(t), bad); err == nil || !strings.Contains(err.Error(), "banger.root") {
		t.Errorf("err = %v", err)
	}
	d := New(Config{Binary: filepath.Join(f.dir, "no-such-firecracker")})
	if _, err := d.Start(ctxT(t), f.spec); err == nil || !strings.Contains(err.Error(), "firecracker binary") {
		t.Errorf("err = %v", err)
	}
	bz := f.spec
	bz.Kernel = filepath.Join(f.dir, "initrd") // not a kernel
	if _, err := f.drv.Start(ctxT(t), bz); err == nil || !strings.Contains(err.Error(), "prepare the kernel") {
		t.Errorf("err = %v", err)
	}
	if exists(f.log) {
		t.Error("a firecracker was started for a spec that cannot work")
	}
}

func TestReattach(t *testing.T) {
	f := newFixture(t, "ok")
	ctx := ctxT(t)
	m := f.start(t, ctx)
	defer m.Kill()
	st := m.State()
	m.Close()

	// A later daemon: a new driver, from the persisted state (through JSON, as stored).
	b, _ := json.Marshal(st)
	var st2 vmm.State
	json.Unmarshal(b, &st2)
	d2 := New(Config{Binary: os.Args[0]})
	m2, err := d2.Reattach(ctx, st2)
	if err != nil {
		t.Fatal(err)
	}
	if m2.PID() != st.PID || m2.State() != st {
		t.Errorf("reattached state %+v, want %+v", m2.State(), st)
	}
	if _, err := m2.Agent().WaitReady(ctx); err != nil {
		t.Fatalf("agent after reattach: %v", err)
	}
	select {
	case <-m2.Done():
		t.Fatal("done while running")
	case <-time.After(100 * time.Millisecond):
	}

	// A wrong start time is another process; so is a PID that does not exist.
	wrong := st2
	wrong.StartTime++
	if _, err := d2.Reattach(ctx, wrong); !errors.Is(err, vmm.ErrGone) {
		t.Errorf("wrong start time: %v", err)
	}

	info := mustStop(t, ctx, m2, 5*time.Second)
	if !info.Clean {
		t.Errorf("exit %+v", info)
	}
	<-m.Done() // the original child handle sees it too
	assertNoLeftovers(t, f, st.PID)
	if _, err := d2.Reattach(ctx, st2); !errors.Is(err, vmm.ErrGone) {
		t.Errorf("reattach to an exited VM: %v", err)
	}
}

func TestReattachedKillIsDetectedByPolling(t *testing.T) {
	f := newFixture(t, "ok")
	ctx := ctxT(t)
	m := f.start(t, ctx)
	m2, err := New(Config{}).Reattach(ctx, m.State())
	if err != nil {
		t.Fatal(err)
	}
	if err := m2.Kill(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-m2.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("reattached machine did not notice the exit")
	}
	if i := m2.Exit(); i.Clean || i.Reason == "" {
		t.Errorf("exit %+v", i)
	}
	<-m.Done()
	if i := m.Exit(); !strings.Contains(i.Reason, "signal 9") {
		t.Errorf("child exit %+v", i)
	}
	assertNoLeftovers(t, f, m.PID())
}

func TestGuestDisk(t *testing.T) {
	for i, want := range map[int]string{0: "/dev/vda", 1: "/dev/vdb", 25: "/dev/vdz", 26: "/dev/vdaa", 27: "/dev/vdab", 52: "/dev/vdba"} {
		if got := guestDisk(i); got != want {
			t.Errorf("guestDisk(%d) = %s, want %s", i, got, want)
		}
	}
}

func TestJailerArgv(t *testing.T) {
	j := JailerConfig{Binary: "/usr/bin/jailer", UID: 1000, GID: 1000, ChrootBase: "/srv/banger-jail",
		CgroupVersion: 2, ParentCgroup: "banger", Cgroups: []string{"cpu.max=50000 100000"},
		NetNS: "/var/run/netns/banger", ResourceLimits: []string{"no-file=1024"}}
	got, err := jailerArgv(j, "banger-dev", "/usr/bin/firecracker", []string{"--api-sock", "/fc.sock"})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"/usr/bin/jailer", "--id", "banger-dev", "--exec-file", "/usr/bin/firecracker",
		"--uid", "1000", "--gid", "1000", "--parent-cgroup", "banger", "--cgroup-version", "2",
		"--cgroup", "cpu.max=50000 100000", "--chroot-base-dir", "/srv/banger-jail",
		"--netns", "/var/run/netns/banger", "--resource-limit", "no-file=1024", "--", "--api-sock", "/fc.sock"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("argv\n%q\nwant\n%q", got, want)
	}
	// Minimal: only the required flags, jailer defaults for the rest.
	got, _ = jailerArgv(JailerConfig{Binary: "jailer"}, "x", "/opt/fc/firecracker-v1.10", nil)
	if strings.Join(got, " ") != "jailer --id x --exec-file /opt/fc/firecracker-v1.10 --uid 0 --gid 0" {
		t.Errorf("minimal argv %q", got)
	}
	if d := j.chrootRoot("/usr/bin/firecracker", "banger-dev"); d != "/srv/banger-jail/firecracker/banger-dev/root" {
		t.Errorf("chroot root %s", d)
	}
	for name, bad := range map[string]JailerConfig{
		"no binary":  {},
		"cgroup v3":  {Binary: "j", CgroupVersion: 3},
		"netns rel":  {Binary: "j", NetNS: "netns/x"},
		"cgroup fmt": {Binary: "j", Cgroups: []string{"cpu.max"}},
		"neg uid":    {Binary: "j", UID: -1},
	} {
		if _, err := jailerArgv(bad, "x", "/usr/bin/firecracker", nil); err == nil {
			t.Errorf("%s accepted", name)
		}
	}
	if _, err := jailerArgv(JailerConfig{Binary: "j"}, "bad_id!", "/usr/bin/firecracker", nil); err == nil {
		t.Error("bad id accepted")
	}
	if _, err := jailerArgv(JailerConfig{Binary: "j"}, "x", "/usr/bin/qemu", nil); err == nil {
		t.Error("exec file without firecracker in its name accepted")
	}
	for in, want := range map[string]string{"dev": "banger-dev", "my_vm.1": "banger-my-vm-1", "": "banger-vm-run"} {
		if got := jailerID(in, "/x/run"); got != want || !jailerIDRe.MatchString(got) {
			t.Errorf("jailerID(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestVersionOK(t *testing.T) {
	for v, ok := range map[[3]int]bool{{1, 8, 0}: true, {1, 10, 1}: true, {2, 0, 0}: true, {1, 7, 9}: false, {0, 25, 0}: false} {
		if VersionOK(v) != ok {
			t.Errorf("VersionOK(%v) != %v", v, ok)
		}
	}
}

// TestBootArgsDefaults: the driver adds Firecracker's own console, reboot, panic and pci
// keys, and never a second one of a key the caller set (the daemon may or may not pass
// them), so a caller's reboot=t or panic=-1 is kept but not doubled.
func TestBootArgsDefaults(t *testing.T) {
	spec := vmm.MachineSpec{Drives: []vmm.Drive{{ID: "root", Role: vmm.RoleRoot}}}
	tail := " banger.root=/dev/vda banger.agent=vsock banger.agent_port=1024"
	for in, want := range map[string]string{
		"":                                    "console=ttyS0 reboot=k panic=1 pci=off",
		"banger.hostname=a":                   "banger.hostname=a console=ttyS0 reboot=k panic=1 pci=off",
		"console=ttyS0 reboot=t panic=-1 x=1": "console=ttyS0 reboot=t panic=-1 x=1 pci=off",
		"console=hvc0 pci=on":                 "console=hvc0 pci=on reboot=k panic=1",
	} {
		spec.Cmdline = in
		got, err := bootArgs(spec, 1024)
		if err != nil || got != want+tail {
			t.Errorf("bootArgs(%q) = %q, %v; want %q", in, got, err, want+tail)
		}
	}
}
