package qemu

// Real boots: Debian's cloud kernel, banger's initramfs and a busybox image under QEMU TCG
// (or KVM where it works). They skip without the assets, and fail without them under
// BANGER_REQUIRE_ASSETS=1 (CI). Boots run one after another: the hosts have 2 cores.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/banger-vm/banger/internal/agent"
	"github.com/banger-vm/banger/internal/agent/agentclient"
	"github.com/banger-vm/banger/internal/system/ext4"
	"github.com/banger-vm/banger/internal/testsupport"
	"github.com/banger-vm/banger/internal/vmm"
	"github.com/banger-vm/banger/internal/vmm/proc"
)

var (
	fixtureOnce sync.Once
	fixture     testsupport.BootFixture
	fixtureErr  error
	fixtureDir  string
)

func TestMain(m *testing.M) {
	if modes, ok := os.LookupEnv(fakeQEMUEnv); ok {
		os.Exit(fakeQEMU(os.Args[1:], modes))
	}
	code := m.Run()
	if fixtureDir != "" {
		os.RemoveAll(fixtureDir)
	}
	os.Exit(code)
}

// getFixture builds the kernel+initramfs+image once per test binary (it builds Go binaries).
func getFixture(t testing.TB) (testsupport.BootFixture, string) {
	t.Helper()
	assets := testsupport.GuestAssets(t)
	qemu := testsupport.RequireQEMU(t)
	fixtureOnce.Do(func() {
		if fixtureDir, fixtureErr = os.MkdirTemp("", "banger-qemu-fixture-"); fixtureErr != nil {
			return
		}
		fixture, fixtureErr = testsupport.BuildBootFixture(fixtureDir, assets)
	})
	if fixtureErr != nil {
		t.Fatal(fixtureErr)
	}
	return fixture, qemu
}

// testDriver uses virtio-serial for the agent, the channel every host has; TestBootVsock
// covers vhost-vsock where the host has it.
func testDriver(qemu string, f testsupport.BootFixture) *Driver {
	return New(Config{Binary: qemu, Accel: AccelTCG, TSCKHz: f.TSCKHz, AgentTransport: TransportSerial})
}

// vmFiles is one VM's run directory and disks.
type vmFiles struct {
	run, layer, work string
}

// newVM makes a short run directory (sun_path) with fresh layer and work disks, and a spec.
func newVM(t testing.TB, f testsupport.BootFixture) (vmFiles, vmm.MachineSpec) {
	t.Helper()
	run, err := os.MkdirTemp("", "bgr-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(run) })
	v := vmFiles{run: run, layer: filepath.Join(run, "layer.ext4"), work: filepath.Join(run, "work.ext4")}
	ctx := context.Background()
	e := ext4.New()
	if err := e.CreateExt4(ctx, v.layer, 256<<20, ext4.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.BuildWorkDisk(ctx, ext4.WorkDiskSpec{Path: v.work, SizeBytes: 256 << 20,
		Inject: []ext4.InjectedFile{{Path: "on-work-disk", Data: []byte("work\n"), Mode: 0o644}}}); err != nil {
		t.Fatal(err)
	}
	spec := vmm.MachineSpec{
		Name:      "test",
		Kernel:    f.Assets.Kernel,
		Initramfs: f.Initramfs,
		Cmdline:   "console=ttyS0 reboot=t panic=-1 banger.hostname=qemu-driver banger.device_wait=30",
		Drives: []vmm.Drive{
			{ID: "rootfs", Path: f.Rootfs, ReadOnly: true, Role: vmm.RoleRoot},
			{ID: "layer", Path: v.layer, Role: vmm.RoleLayer},
			{ID: "work", Path: v.work, Role: vmm.RoleWork},
		},
		VCPUs: 2, MemoryMiB: 512, RunDir: run,
	}
	return v, spec
}

// start boots spec and makes sure the VM is gone when the test ends.
func start(t testing.TB, d *Driver, spec vmm.MachineSpec) vmm.Machine {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	m, err := d.Start(ctx, spec)
	if err != nil {
		t.Fatalf("start: %v", err)
	}
	t.Cleanup(func() {
		_ = m.Kill()
		_ = m.Close()
		if t.Failed() {
			data, _ := os.ReadFile(filepath.Join(spec.RunDir, consoleLogName))
			t.Logf("console of %s:\n%s", spec.RunDir, data)
		}
	})
	return m
}

// waitReady waits for the agent (TCG boots are slow on a loaded host) or for QEMU to end.
func waitReady(t testing.TB, m vmm.Machine) *agent.Health {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	type res struct {
		h   *agent.Health
		err error
	}
	ch := make(chan res, 1)
	go func() { h, err := m.Agent().WaitReady(ctx); ch <- res{h, err} }()
	select {
	case r := <-ch:
		if r.err != nil {
			t.Fatalf("agent: %v", r.err)
		}
		return r.h
	case <-m.Done():
		t.Fatalf("qemu exited before the agent answered: %s", m.Exit().Reason)
	}
	return nil
}

func execOut(t testing.TB, c *agentclient.Client, argv ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var out, errb bytes.Buffer
	st, err := c.Exec(ctx, agent.ExecRequest{Argv: argv}, nil, &out, &errb)
	if err != nil || st.Code != 0 {
		t.Fatalf("exec %q: %v %v: %s", argv, st, err, errb.String())
	}
	return out.String()
}

// processesWith lists the processes whose command line mentions s (our VMs' run dirs).
func processesWith(s string) []string {
	var found []string
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	for _, d := range dirs {
		data, err := os.ReadFile(filepath.Join(d, "cmdline"))
		if err != nil || !bytes.Contains(data, []byte(s)) {
			continue
		}
		if st, err := vmm.ReadProcStat(atoiOr(filepath.Base(d))); err == nil && st.State == 'Z' {
			continue
		}
		found = append(found, filepath.Base(d)+": "+string(bytes.ReplaceAll(data, []byte{0}, []byte{' '})))
	}
	return found
}

func atoiOr(s string) int { n, _ := strconv.Atoi(s); return n }

func socketsIn(dir string) []string {
	var found []string
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if e.Type()&os.ModeSocket != 0 {
			found = append(found, e.Name())
		}
	}
	return found
}

// assertNothingLeft checks no QEMU for runDir runs and no socket is left in it.
func assertNothingLeft(t *testing.T, runDir string) {
	t.Helper()
	if p := processesWith(runDir); len(p) != 0 {
		t.Errorf("processes left for %s: %q", runDir, p)
	}
	if s := socketsIn(runDir); len(s) != 0 {
		t.Errorf("sockets left in %s: %q", runDir, s)
	}
}

// makeTAP creates a TAP device for the test, or returns "" when it cannot (not root).
func makeTAP(t *testing.T) string { t.Helper(); return makeTAPn(t, 0) }

// makeTAPn is makeTAP for the test's n-th TAP (0-9).
func makeTAPn(t *testing.T, n int) string {
	t.Helper()
	name := fmt.Sprintf("bgrq%d", os.Getpid()%100000)
	if n > 0 {
		name = fmt.Sprintf("bgrq%d-%d", os.Getpid()%100000, n)
	}
	if out, err := exec.Command("ip", "tuntap", "add", "dev", name, "mode", "tap").CombinedOutput(); err != nil {
		t.Logf("no TAP for the NIC check (%v: %s)", err, bytes.TrimSpace(out))
		return ""
	}
	t.Cleanup(func() { _ = exec.Command("ip", "link", "del", name).Run() })
	return name
}

func TestBootExecStop(t *testing.T) {
	f, qemu := getFixture(t)
	d := testDriver(qemu, f)
	v, spec := newVM(t, f)
	mac := net.HardwareAddr{0x02, 0xbb, 0x00, 0x12, 0x34, 0x56}
	tap := makeTAP(t)
	if tap != "" {
		spec.NICs = []vmm.NIC{{TAP: tap, MAC: mac}}
	}
	began := time.Now()
	m := start(t, d, spec)
	started := time.Since(began)
	st := m.State()
	if st.PID != m.PID() || st.PID <= 0 || st.StartTime == 0 || st.AgentTransport != TransportSerial ||
		st.Accel != AccelTCG || st.ControlSocket != filepath.Join(v.run, "qmp.sock") || st.AgentSocket != filepath.Join(v.run, "agent.sock") ||
		st.ConsoleLog != filepath.Join(v.run, "console.log") || st.RunDir != v.run {
		t.Errorf("state %+v", st)
	}
	h := waitReady(t, m)
	t.Logf("Start returned after %s, agent ready after %s", started.Round(time.Millisecond), time.Since(began).Round(time.Millisecond))
	if h.Kernel.Release != f.Assets.KernelRelease {
		t.Errorf("healthz kernel %+v, want %s", h.Kernel, f.Assets.KernelRelease)
	}
	if got := strings.TrimSpace(execOut(t, m.Agent(), "uname", "-r")); got != f.Assets.KernelRelease {
		t.Errorf("uname -r = %q, want %q", got, f.Assets.KernelRelease)
	}
	if got := execOut(t, m.Agent(), "cat", "/root/on-work-disk"); got != "work\n" {
		t.Errorf("/root is not the work disk: %q", got)
	}
	if tap != "" {
		if got := strings.TrimSpace(execOut(t, m.Agent(), "cat", "/sys/class/net/eth0/address")); got != mac.String() {
			t.Errorf("guest eth0 MAC %q, want %s", got, mac)
		}
	}
	execOut(t, m.Agent(), "sh", "-c", "echo kept > /root/written && sync")

	const timeout = time.Minute
	stopBegan := time.Now()
	ei, err := m.Stop(context.Background(), timeout)
	took := time.Since(stopBegan)
	t.Logf("Stop took %s: %+v", took.Round(time.Millisecond), ei.Reason)
	if err != nil || !ei.Clean || ei.Reason != "guest powered off" || took > timeout || len(ei.ConsoleTail) == 0 || ei.At.IsZero() {
		t.Fatalf("stop: %+v, %v after %s", ei, err, took)
	}
	if !isClosed(m.Done()) || !reflectEqualExit(m.Exit(), ei) {
		t.Errorf("Done/Exit after Stop: %+v", m.Exit())
	}
	e := ext4.New()
	if err := e.FsckExt4(context.Background(), v.work); err != nil {
		t.Errorf("work disk not clean after Stop: %v", err)
	}
	if data, err := e.ReadExt4File(context.Background(), v.work, "/written"); err != nil || string(data) != "kept\n" {
		t.Errorf("work disk file: %q, %v", data, err)
	}
	// Stop of a stopped VM just says how it ended.
	if ei2, err := m.Stop(context.Background(), time.Second); err != nil || ei2.Reason != ei.Reason {
		t.Errorf("second Stop: %+v, %v", ei2, err)
	}
	assertNothingLeft(t, v.run)
}

func reflectEqualExit(a, b vmm.ExitInfo) bool {
	return a.Reason == b.Reason && a.Clean == b.Clean && a.At.Equal(b.At) && strings.Join(a.ConsoleTail, "\n") == strings.Join(b.ConsoleTail, "\n")
}

func TestKill(t *testing.T) {
	f, qemu := getFixture(t)
	v, spec := newVM(t, f)
	m := start(t, testDriver(qemu, f), spec)
	// Let the kernel print something first.
	deadline := time.Now().Add(time.Minute)
	for len(proc.ConsoleTail(filepath.Join(v.run, consoleLogName), 1)) == 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if err := m.Kill(); err != nil {
		t.Fatal(err)
	}
	ei := m.Exit()
	if ei.Reason != "killed by signal 9 (SIGKILL)" || ei.Clean || len(ei.ConsoleTail) == 0 {
		t.Fatalf("exit after Kill: %+v", ei)
	}
	if err := m.Kill(); err != nil {
		t.Errorf("second Kill: %v", err)
	}
	assertNothingLeft(t, v.run)
}

func TestVMMDiesFromOutside(t *testing.T) {
	f, qemu := getFixture(t)
	v, spec := newVM(t, f)
	m := start(t, testDriver(qemu, f), spec)
	waitReady(t, m)
	if err := syscall.Kill(m.PID(), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	select {
	case <-m.Done():
	case <-time.After(30 * time.Second):
		t.Fatal("Done not closed 30s after the VMM was killed")
	}
	ei := m.Exit()
	if ei.Reason != "killed by signal 9 (SIGKILL)" || ei.Clean || len(ei.ConsoleTail) == 0 {
		t.Fatalf("exit: %+v", ei)
	}
	t.Logf("reason %q, console tail:\n%s", ei.Reason, strings.Join(ei.ConsoleTail, "\n"))
	assertNothingLeft(t, v.run)
}

func TestReattach(t *testing.T) {
	f, qemu := getFixture(t)
	v, spec := newVM(t, f)
	m := start(t, testDriver(qemu, f), spec)
	waitReady(t, m)
	st := m.State()
	// The daemon exits: connections dropped, the VM runs on.
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if isClosed(m.Done()) {
		t.Fatal("Close stopped the VM")
	}

	d2 := testDriver(qemu, f) // the new daemon
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	wrong := st
	wrong.StartTime++
	if _, err := d2.Reattach(ctx, wrong); !errors.Is(err, vmm.ErrGone) {
		t.Errorf("Reattach with a wrong start time: %v, want ErrGone", err)
	}
	m2, err := d2.Reattach(ctx, st)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m2.Kill(); m2.Close() })
	if m2.State() != st {
		t.Errorf("reattached state %+v, want %+v", m2.State(), st)
	}
	if got := strings.TrimSpace(execOut(t, m2.Agent(), "uname", "-r")); got != f.Assets.KernelRelease {
		t.Errorf("uname -r after reattach = %q", got)
	}
	ei, err := m2.Stop(ctx, time.Minute)
	if err != nil || !ei.Clean || ei.Reason != "guest powered off" || len(ei.ConsoleTail) == 0 {
		t.Fatalf("stop after reattach: %+v, %v", ei, err)
	}
	<-m.Done() // the first handle (our child) sees it too
	if _, err := d2.Reattach(ctx, st); !errors.Is(err, vmm.ErrGone) {
		t.Errorf("Reattach of a dead VM: %v, want ErrGone", err)
	}
	assertNothingLeft(t, v.run)
}

// TestReattachKill: a reattached VM (not our child) is killed through its pidfd and the
// reason says so.
func TestReattachKill(t *testing.T) {
	f, qemu := getFixture(t)
	v, spec := newVM(t, f)
	m := start(t, testDriver(qemu, f), spec)
	st := m.State()
	m.Close()
	m2, err := testDriver(qemu, f).Reattach(context.Background(), st)
	if err != nil {
		t.Fatal(err)
	}
	if err := m2.Kill(); err != nil {
		t.Fatal(err)
	}
	if ei := m2.Exit(); ei.Reason != "killed by signal 9 (SIGKILL)" || ei.Clean {
		t.Errorf("exit %+v", ei)
	}
	<-m.Done()
	assertNothingLeft(t, v.run)
}

func TestFailedStartsLeaveNothing(t *testing.T) {
	f, qemu := getFixture(t)
	d := testDriver(qemu, f)
	garbage := filepath.Join(t.TempDir(), "vmlinuz-garbage")
	if err := os.WriteFile(garbage, bytes.Repeat([]byte("not a kernel "), 100), 0o600); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name   string
		mutate func(*vmm.MachineSpec)
		ctx    func() (context.Context, context.CancelFunc)
		want   string
	}{
		{"missing kernel", func(s *vmm.MachineSpec) { s.Kernel = "/nonexistent/vmlinuz" }, nil, "kernel: stat /nonexistent/vmlinuz: no such file"},
		{"missing TAP", func(s *vmm.MachineSpec) { s.NICs = []vmm.NIC{{TAP: "bgr-nonexist0"}} }, nil, "TAP device bgr-nonexist0 does not exist"},
		// Passes our checks; QEMU itself refuses it and the error carries its words.
		{"kernel QEMU cannot load", func(s *vmm.MachineSpec) { s.Kernel = garbage }, nil, "qemu exited: exit status 1: qemu: linux kernel too old"},
		{"cancelled", nil, func() (context.Context, context.CancelFunc) {
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			return ctx, cancel
		}, "context canceled"},
		// QMP never answers (a wedged VMM: here one stopped before it could start): the
		// driver gives up at its QMP timeout and must kill what it started.
		{"QMP never answers", nil, nil, "killed by signal 9 (SIGKILL): qmp "},
	}
	wedged := filepath.Join(t.TempDir(), "wedged-qemu")
	if err := os.WriteFile(wedged, []byte("#!/bin/sh\nkill -STOP $$\nexec "+qemu+" \"$@\"\n"), 0o700); err != nil {
		t.Fatal(err)
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d := d
			if c.name == "QMP never answers" {
				// Sandbox off: the probe would meet the same wedged binary (TestSandboxProbe
				// covers the probe).
				d = New(Config{Binary: wedged, TSCKHz: f.TSCKHz, AgentTransport: TransportSerial, Sandbox: SandboxOff, QMPTimeout: 500 * time.Millisecond})
			}
			v, spec := newVM(t, f)
			if c.mutate != nil {
				c.mutate(&spec)
			}
			ctx, cancel := context.WithCancel(context.Background())
			if c.ctx != nil {
				ctx, cancel = c.ctx()
			}
			defer cancel()
			m, err := d.Start(ctx, spec)
			if err == nil {
				// Start returns once QEMU runs: what fails later ends the VM, and Exit says why.
				select {
				case <-m.Done():
					err = errors.New("qemu exited: " + m.Exit().Reason)
				case <-time.After(2 * time.Minute):
					m.Kill()
					t.Fatal("Start succeeded and QEMU kept running")
				}
				m.Close()
			}
			t.Logf("error: %v", err)
			if !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %q lacks %q", err, c.want)
			}
			assertNothingLeft(t, v.run)
		})
	}
}

// BenchmarkBootRawVsDriver boots the same guest to agent-ready with QEMU run by hand (the
// driver's exact command line) and through the driver, alternating, and reports the
// medians and their ratio (goal: driver/raw <= 1.05). Run with -benchtime 5x.
func BenchmarkBootRawVsDriver(b *testing.B) {
	f, qemu := getFixture(b)
	d := testDriver(qemu, f)
	var raw, drv []float64
	for i := 0; i < b.N; i++ {
		// Alternate which goes first, so neither gains from the other's leftovers (page
		// cache, CPU frequency, the previous VM's exit still being cleaned up).
		if i%2 == 0 {
			raw = append(raw, bootRaw(b, d, f))
			drv = append(drv, bootDriver(b, d, f))
		} else {
			drv = append(drv, bootDriver(b, d, f))
			raw = append(raw, bootRaw(b, d, f))
		}
	}
	r, dr := median(raw), median(drv)
	b.ReportMetric(r, "raw-ms")
	b.ReportMetric(dr, "driver-ms")
	b.ReportMetric(dr/r, "driver/raw")
	b.ReportMetric(0, "ns/op")
	b.Logf("n=%d raw %v driver %v", len(raw), raw, drv)
}

func bootRaw(b *testing.B, d *Driver, f testsupport.BootFixture) float64 {
	_, spec := newVM(b, f)
	bin, args, err := d.CommandLine(spec)
	if err != nil {
		b.Fatal(err)
	}
	// The console FIFO QEMU opens, drained as a script would (cat console.fifo > log).
	fifo := filepath.Join(spec.RunDir, consoleFIFOName)
	if err := proc.MakeFIFO(fifo); err != nil {
		b.Fatal(err)
	}
	con, err := os.OpenFile(fifo, os.O_RDWR, 0)
	if err != nil {
		b.Fatal(err)
	}
	defer con.Close()
	go io.Copy(io.Discard, con)
	began := time.Now()
	cmd := exec.Command(bin, args...)
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	sock := filepath.Join(spec.RunDir, agentSocketName)
	for { // as a hand-written script would: wait for the socket, then ask the agent
		if _, err := os.Stat(sock); err == nil {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	c := agentclient.NewSerial(sock)
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if _, err := c.WaitReady(ctx); err != nil {
		b.Fatal(err)
	}
	return float64(time.Since(began).Microseconds()) / 1000
}

func bootDriver(b *testing.B, d *Driver, f testsupport.BootFixture) float64 {
	_, spec := newVM(b, f)
	began := time.Now()
	m, err := d.Start(context.Background(), spec)
	if err != nil {
		b.Fatal(err)
	}
	defer func() { m.Kill(); m.Close() }()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if _, err := m.Agent().WaitReady(ctx); err != nil {
		b.Fatal(err)
	}
	return float64(time.Since(began).Microseconds()) / 1000
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	if len(s)%2 == 0 {
		return (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return s[len(s)/2]
}

// TestStopEscalates: with no agent to ask (connections dropped) and a guest that ignores
// the ACPI button (busybox, no systemd), Stop kills at the timeout and says why; a
// cancelled ctx kills at once.
func TestStopEscalates(t *testing.T) {
	f, qemu := getFixture(t)
	d := testDriver(qemu, f)
	for _, c := range []struct {
		name    string
		timeout time.Duration
		cancel  bool
		reason  string
	}{
		{"timeout", time.Second, false, "killed by signal 9 (SIGKILL): the guest did not shut down within 1s"},
		{"cancelled", time.Minute, true, "killed by signal 9 (SIGKILL): stop was cancelled"},
	} {
		t.Run(c.name, func(t *testing.T) {
			v, spec := newVM(t, f)
			m := start(t, d, spec)
			m.Close()
			ctx, cancel := context.WithCancel(context.Background())
			if c.cancel {
				cancel()
			}
			defer cancel()
			began := time.Now()
			ei, err := m.Stop(ctx, c.timeout)
			took := time.Since(began)
			if c.cancel != (err != nil) || ei.Reason != c.reason || ei.Clean || took > c.timeout+10*time.Second {
				t.Fatalf("Stop: %+v, %v after %s", ei, err, took)
			}
			assertNothingLeft(t, v.run)
		})
	}
}

func TestBootVsock(t *testing.T) {
	f, qemu := getFixture(t)
	if _, err := reserveCID("/dev/vhost-vsock", func() uint32 { return 3 + uint32(os.Getpid()) }); err != nil {
		t.Skipf("no usable vhost-vsock here (%v): the agent goes over virtio-serial", err)
	}
	d := New(Config{Binary: qemu, Accel: AccelTCG, TSCKHz: f.TSCKHz}) // auto: picks vsock
	v, spec := newVM(t, f)
	m := start(t, d, spec)
	if st := m.State(); st.AgentTransport != TransportVsock || st.VsockCID < 3 || st.AgentSocket != "" {
		t.Fatalf("state %+v", st)
	}
	waitReady(t, m)
	if got := strings.TrimSpace(execOut(t, m.Agent(), "uname", "-r")); got != f.Assets.KernelRelease {
		t.Errorf("uname -r = %q", got)
	}
	if ei, err := m.Stop(context.Background(), time.Minute); err != nil || !ei.Clean {
		t.Fatalf("stop: %+v, %v", ei, err)
	}
	assertNothingLeft(t, v.run)
}
