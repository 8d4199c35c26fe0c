//go:build integration

// Package guestboot boots Debian's cloud kernel with banger's initramfs (banger-init +
// banger-agent) and a small busybox root filesystem under QEMU's microvm machine, invoking
// QEMU directly (the VMM driver is tested elsewhere), and checks the guest side end to end.
//
//	sudo scripts/fetch-test-assets.sh && go test -tags integration ./test/guestboot/
package guestboot

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/banger-vm/banger/internal/agent"
	"github.com/banger-vm/banger/internal/agent/agentclient"
	"github.com/banger-vm/banger/internal/guestinit"
	"github.com/banger-vm/banger/internal/system/ext4"
	"github.com/banger-vm/banger/internal/testsupport"
)

// fixture is what every boot shares: the kernel, one initramfs, one read-only image.
type fixture struct {
	testsupport.BootFixture
	qemu string
	ext4 *ext4.Toolkit
}

var (
	fixtureOnce sync.Once
	shared      fixture
	fixtureErr  error
	fixtureDir  string
)

func TestMain(m *testing.M) {
	code := m.Run()
	if fixtureDir != "" {
		os.RemoveAll(fixtureDir)
	}
	os.Exit(code)
}

func getFixture(t testing.TB) fixture {
	t.Helper()
	assets := testsupport.GuestAssets(t)
	qemu := testsupport.RequireQEMU(t)
	fixtureOnce.Do(func() {
		fixtureDir, fixtureErr = os.MkdirTemp("", "banger-guestboot-")
		if fixtureErr != nil {
			return
		}
		shared = fixture{qemu: qemu, ext4: ext4.New()}
		shared.BootFixture, fixtureErr = testsupport.BuildBootFixture(fixtureDir, assets)
	})
	if fixtureErr != nil {
		t.Fatal(fixtureErr)
	}
	return shared
}

// vm is one running guest.
type vm struct {
	t       testing.TB
	dir     string
	console string
	layer   string
	work    string
	cmd     *exec.Cmd
	exited  chan struct{}
	exitErr error
	agent   *agentclient.Client
	started time.Time
}

type bootOptions struct {
	rootfs     string // image; default the busybox fixture
	rootSpec   string // banger.root; default serial:rootfs
	deviceWait int
	noAgent    bool
	modules    string              // a kernel modules disk, attached read-only as banger.modules
	workFiles  []ext4.InjectedFile // more files on the work disk
}

// boot starts QEMU with per-VM writable layer and work disks over the shared image.
func boot(t testing.TB, f fixture, o bootOptions) *vm {
	t.Helper()
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "bgr-vm-") // short: the agent socket path must fit sun_path
	if err != nil {
		t.Fatal(err)
	}
	v := &vm{t: t, dir: dir, console: filepath.Join(dir, "console.log"), layer: filepath.Join(dir, "layer.ext4"),
		work: filepath.Join(dir, "work.ext4"), exited: make(chan struct{})}
	t.Cleanup(func() {
		v.kill()
		if t.Failed() {
			t.Logf("console of %s:\n%s", dir, v.consoleText())
		}
		os.RemoveAll(dir)
	})
	if err := f.ext4.CreateExt4(ctx, v.layer, 256<<20, ext4.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.ext4.BuildWorkDisk(ctx, ext4.WorkDiskSpec{Path: v.work, SizeBytes: 256 << 20,
		Inject: append([]ext4.InjectedFile{{Path: "on-work-disk", Data: []byte("work\n"), Mode: 0o644}}, o.workFiles...)}); err != nil {
		t.Fatal(err)
	}
	root := o.rootSpec
	if root == "" {
		root = "serial:rootfs"
	}
	wait := o.deviceWait
	if wait == 0 {
		wait = 30
	}
	rootfs := o.rootfs
	if rootfs == "" {
		rootfs = f.Rootfs
	}
	agentSock := filepath.Join(dir, "agent.sock")
	cmdline := fmt.Sprintf("console=ttyS0 reboot=t panic=-1 tsc_early_khz=%d banger.root=%s banger.layer=serial:layer banger.work=serial:work banger.agent=serial banger.hostname=guest-%d banger.device_wait=%d",
		f.TSCKHz, root, os.Getpid()%1000, wait)
	args := []string{
		"-M", "microvm,acpi=on", "-accel", "tcg", "-cpu", "max", "-smp", "2", "-m", "512",
		"-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
		"-kernel", f.Assets.Kernel, "-initrd", f.Initramfs, "-append", cmdline,
		"-chardev", "file,id=con,path=" + v.console, "-serial", "chardev:con",
		"-drive", "id=root,file=" + rootfs + ",format=raw,if=none,readonly=on",
		"-device", "virtio-blk-device,drive=root,serial=rootfs",
		"-drive", "id=layer,file=" + v.layer + ",format=raw,if=none",
		"-device", "virtio-blk-device,drive=layer,serial=layer",
		"-drive", "id=work,file=" + v.work + ",format=raw,if=none",
		"-device", "virtio-blk-device,drive=work,serial=work",
		"-device", "virtio-serial-device",
		"-chardev", "socket,id=agent,path=" + agentSock + ",server=on,wait=off",
		"-device", "virtserialport,chardev=agent,name=banger.agent",
	}
	if o.modules != "" {
		args[slices.Index(args, "-append")+1] += " banger.modules=serial:modules"
		args = append(args, "-drive", "id=modules,file="+o.modules+",format=raw,if=none,readonly=on",
			"-device", "virtio-blk-device,drive=modules,serial=modules")
	}
	v.cmd = exec.Command(f.qemu, args...)
	var stderr bytes.Buffer
	v.cmd.Stderr = &stderr
	v.started = time.Now()
	if err := v.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		v.exitErr = v.cmd.Wait()
		if stderr.Len() > 0 {
			v.exitErr = fmt.Errorf("%v: %s", v.exitErr, strings.TrimSpace(stderr.String()))
		}
		close(v.exited)
	}()
	if o.noAgent {
		return v
	}
	// QEMU creates the socket at start-up; the agent answers once the guest has booted.
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, err := os.Stat(agentSock); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("qemu did not create %s", agentSock)
		}
		time.Sleep(10 * time.Millisecond)
	}
	v.agent = agentclient.NewSerial(agentSock)
	t.Cleanup(func() { v.agent.Close() })
	return v
}

func (v *vm) waitReady(timeout time.Duration) time.Duration {
	v.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	done := make(chan error, 1)
	go func() { _, err := v.agent.WaitReady(ctx); done <- err }()
	select {
	case err := <-done:
		if err != nil {
			v.t.Fatalf("agent not ready within %s: %v", timeout, err)
		}
	case <-v.exited:
		v.t.Fatalf("qemu exited before the agent answered: %v", v.exitErr)
	}
	return time.Since(v.started)
}

func (v *vm) kill() {
	if v.cmd != nil && v.cmd.Process != nil {
		_ = v.cmd.Process.Kill()
		<-v.exited
	}
}

func (v *vm) waitExit(timeout time.Duration) bool {
	select {
	case <-v.exited:
		return true
	case <-time.After(timeout):
		return false
	}
}

func (v *vm) consoleText() string {
	data, _ := os.ReadFile(v.console)
	return string(data)
}

// exec runs argv in the guest and returns stdout, stderr and the exit code.
func (v *vm) exec(argv ...string) (string, string, int) {
	v.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var out, errb bytes.Buffer
	st, err := v.agent.Exec(ctx, agent.ExecRequest{Argv: argv}, nil, &out, &errb)
	if err != nil {
		v.t.Fatalf("exec %q: %v", argv, err)
	}
	return out.String(), errb.String(), st.Code
}

func (v *vm) poweroff() {
	v.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := v.agent.Power(ctx, "poweroff"); err != nil {
		v.t.Fatalf("power off: %v", err)
	}
	if !v.waitExit(60 * time.Second) {
		v.t.Fatal("guest did not power off within 60s")
	}
}

func sha256File(t testing.TB, p string) string {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

func TestGuestBoots(t *testing.T) {
	f := getFixture(t)
	imageSum := sha256File(t, f.Rootfs)
	v := boot(t, f, bootOptions{})
	took := v.waitReady(3 * time.Minute)
	t.Logf("agent ready %s after qemu start", took.Round(time.Millisecond))

	ctx := context.Background()
	h, err := v.agent.Health(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if h.Kernel.Release != f.Assets.KernelRelease {
		t.Errorf("healthz kernel %+v, want %s", h.Kernel, f.Assets.KernelRelease)
	}
	if stages := bootStages(t, h); len(stages) == 0 || stages[len(stages)-1].Name != "total" {
		t.Errorf("healthz boot stages: %+v", stages)
	}

	// exec: exact stdout, stderr and exit codes.
	out, errs, code := v.exec("sh", "-c", "printf 'out\\n'; printf 'err\\n' >&2; exit 0")
	if out != "out\n" || errs != "err\n" || code != 0 {
		t.Errorf("exec 0: %q %q %d", out, errs, code)
	}
	if out, errs, code = v.exec("sh", "-c", "echo nope >&2; exit 1"); out != "" || errs != "nope\n" || code != 1 {
		t.Errorf("exec 1: %q %q %d", out, errs, code)
	}
	if _, errs, code = v.exec("no-such-command"); code != 127 || !strings.Contains(errs, "not found") {
		t.Errorf("exec 127: %q %d", errs, code)
	}
	if out, _, _ = v.exec("hostname"); out != fmt.Sprintf("guest-%d\n", os.Getpid()%1000) {
		t.Errorf("hostname %q", out)
	}

	// /root is the work disk.
	if out, _, code = v.exec("cat", "/root/on-work-disk"); out != "work\n" || code != 0 {
		t.Errorf("/root is not the work disk: %q %d", out, code)
	}
	if out, _, _ = v.exec("sh", "-c", "grep ' /root ' /proc/mounts"); !strings.Contains(out, "ext4") {
		t.Errorf("/root mount: %q", out)
	}
	if _, _, code = v.exec("sh", "-c", "echo kept > /root/written-in-guest && echo layer > /etc/written-in-guest && cat /etc/banger-test >/dev/null && sync"); code != 0 {
		t.Fatalf("write in guest: exit %d", code)
	}
	v.poweroff()

	// The write to /etc landed in the writable layer; the image did not change at all.
	if got := sha256File(t, f.Rootfs); got != imageSum {
		t.Errorf("the image changed: %s -> %s", imageSum, got)
	}
	data, err := f.ext4.ReadExt4File(ctx, v.layer, "/upper/etc/written-in-guest")
	if err != nil || string(data) != "layer\n" {
		t.Errorf("layer file: %q, %v", data, err)
	}
	data, err = f.ext4.ReadExt4File(ctx, v.work, "/written-in-guest")
	if err != nil || string(data) != "kept\n" {
		t.Errorf("work disk file: %q, %v", data, err)
	}
	if err := f.ext4.FsckExt4(ctx, v.work); err != nil {
		t.Errorf("work disk not clean after power off: %v", err)
	}
}

func TestTwoGuestsShareOneImage(t *testing.T) {
	f := getFixture(t)
	a := boot(t, f, bootOptions{})
	b := boot(t, f, bootOptions{})
	a.waitReady(4 * time.Minute)
	b.waitReady(4 * time.Minute)
	for i, v := range []*vm{a, b} {
		if _, _, code := v.exec("sh", "-c", fmt.Sprintf("echo %d > /etc/who", i)); code != 0 {
			t.Fatalf("guest %d write: exit %d", i, code)
		}
	}
	for i, v := range []*vm{a, b} {
		if out, _, _ := v.exec("cat", "/etc/who"); out != fmt.Sprintf("%d\n", i) {
			t.Errorf("guest %d sees %q: layers are not separate", i, out)
		}
	}
}

func TestWrongRootDevicePowersOffWithClearLine(t *testing.T) {
	f := getFixture(t)
	v := boot(t, f, bootOptions{rootSpec: "serial:nope", deviceWait: 3, noAgent: true})
	if !v.waitExit(3 * time.Minute) {
		t.Fatalf("guest with a wrong root device did not power off; console:\n%s", v.consoleText())
	}
	console := v.consoleText()
	re := regexp.MustCompile(`banger-init: FATAL: mount root: device serial:nope did not appear within 3s: .*block devices present: .*serial rootfs`)
	if !re.MatchString(console) {
		t.Fatalf("console lacks the clear FATAL line:\n%s", console)
	}
}

// TestSystemdImageGetsAgentUnit boots a Debian root with systemd: banger-init must hand over
// to systemd and the agent must come up as the runtime unit it wrote, with no change to the
// image.
func TestSystemdImageGetsAgentUnit(t *testing.T) {
	f := getFixture(t)
	tarPath := filepath.Join(f.Assets.Dir, "debian-systemd.tar")
	tarFile, err := os.Open(tarPath)
	if err != nil {
		msg := "no " + tarPath + ": run scripts/fetch-test-assets.sh"
		if os.Getenv("BANGER_REQUIRE_ASSETS") == "1" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	defer tarFile.Close()
	img := filepath.Join(t.TempDir(), "debian.ext4")
	if _, err := f.ext4.BuildExt4FromTar(context.Background(), img, tarFile, 0); err != nil {
		t.Fatal(err)
	}
	sum := sha256File(t, img)
	v := boot(t, f, bootOptions{rootfs: img})
	took := v.waitReady(4 * time.Minute)
	t.Logf("agent ready under systemd %s after qemu start", took.Round(time.Millisecond))
	h, err := v.agent.Health(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if h.PID1 != "systemd" {
		t.Fatalf("pid 1 is %q, want systemd", h.PID1)
	}
	if out, _, code := v.exec("systemctl", "is-active", "banger-agent.service"); code != 0 || out != "active\n" {
		t.Errorf("banger-agent.service: %q exit %d", out, code)
	}
	if out, _, _ := v.exec("sh", "-c", "systemctl show -p FragmentPath banger-agent.service"); !strings.Contains(out, "/run/systemd/system/banger-agent.service") {
		t.Errorf("unit not from /run: %q", out)
	}
	if out, _, code := v.exec("cat", "/root/on-work-disk"); code != 0 || out != "work\n" {
		t.Errorf("/root under systemd: %q %d", out, code)
	}
	v.poweroff()
	if got := sha256File(t, img); got != sum {
		t.Error("the image changed")
	}
}

// BenchmarkBoot boots the guest b.N times and reports medians: the kernel's own boot time
// (until it runs /init), banger-init's time to a switched root, from /init to the agent
// running, and host wall time from QEMU start to the agent answering.
func BenchmarkBoot(b *testing.B) {
	f := getFixture(b)
	var kernel, initTotal, initToAgent, wall []float64
	for i := 0; i < b.N; i++ {
		v := boot(b, f, bootOptions{})
		took := v.waitReady(3 * time.Minute)
		h, err := v.agent.Health(context.Background())
		if err != nil {
			b.Fatal(err)
		}
		for _, s := range bootStages(b, h) {
			if s.Name == "total" {
				initTotal = append(initTotal, s.DurationMS)
			}
		}
		if k, ok := kernelInitTime(v.consoleText()); ok {
			kernel = append(kernel, k)
			// The agent's start, on the guest's clock, minus when the kernel ran /init.
			agentStart := (h.UptimeSeconds - h.AgentUptimeSeconds) * 1000
			initToAgent = append(initToAgent, agentStart-k)
		}
		wall = append(wall, float64(took.Milliseconds()))
		v.kill()
	}
	b.ReportMetric(median(kernel), "kernel-ms")
	b.ReportMetric(median(initTotal), "init-ms")
	b.ReportMetric(median(initToAgent), "init-to-agent-ms")
	b.ReportMetric(median(wall), "wall-ms")
}

// kernelInitTime is the kernel timestamp (ms) of "Run /init as init process".
func kernelInitTime(console string) (float64, bool) {
	sc := bufio.NewScanner(strings.NewReader(console))
	re := regexp.MustCompile(`^\[\s*([0-9.]+)\] Run /init as init process`)
	for sc.Scan() {
		if m := re.FindStringSubmatch(sc.Text()); m != nil {
			s, err := strconv.ParseFloat(m[1], 64)
			return s * 1000, err == nil
		}
	}
	return 0, false
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	return s[len(s)/2]
}

func bootStages(t testing.TB, h *agent.Health) []guestinit.Stage {
	t.Helper()
	var stages []guestinit.Stage
	if err := json.Unmarshal(h.BootStages, &stages); err != nil {
		t.Fatalf("boot stages %q: %v", h.BootStages, err)
	}
	return stages
}
