package daemon

// The VM lifecycle against the fake driver: create, start, stop, restart, remove and
// reconcile, and a failure at every start stage, after which nothing runs or stays leased.

import (
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/banger-vm/banger/internal/api"
	"github.com/banger-vm/banger/internal/config"
	"github.com/banger-vm/banger/internal/lifecycle"
	"github.com/banger-vm/banger/internal/paths"
	"github.com/banger-vm/banger/internal/store"
	"github.com/banger-vm/banger/internal/system/ext4"
	"github.com/banger-vm/banger/internal/system/hosttools"
	"github.com/banger-vm/banger/internal/vmm"
)

// fakeEnv is a daemon whose VMs run on a fake driver.
type fakeEnv struct {
	t       *testing.T
	l       paths.Layout
	cfg     config.Config
	drv     *fakeDriver
	d       *Daemon
	withNet bool

	mu     sync.Mutex
	faults map[string]error
}

// newFakeEnv starts a daemon on the fake driver with a kernel and an image installed. As
// root it also runs the real helper in a test network namespace, so starts lease an
// address and take a TAP; otherwise VMs boot without a network.
func newFakeEnv(t *testing.T) *fakeEnv {
	t.Helper()
	e := &fakeEnv{t: t, l: testLayout(t), cfg: config.Defaults(), drv: newFakeDriver(), faults: map[string]error{}}
	bin := t.TempDir()
	for _, name := range []string{"banger-init", "banger-agent", "bzImage", "rootfs.ext4"} {
		if err := os.WriteFile(filepath.Join(bin, name), []byte("fake "+name), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	e.cfg.Runtime.InitPath, e.cfg.Runtime.AgentPath = filepath.Join(bin, "banger-init"), filepath.Join(bin, "banger-agent")
	e.cfg.Network.HelperSocket = filepath.Join(bin, "no-helper.sock")
	if os.Geteuid() == 0 {
		_, socket := testHelper(t)
		e.cfg.Network.HelperSocket, e.cfg.Network.TAPPoolSize, e.withNet = socket, 1, true
	}
	kdir := filepath.Join(e.l.DataDir, "kernels", "k1")
	must(0, os.MkdirAll(kdir, 0o755))
	must(0, os.WriteFile(filepath.Join(kdir, "kernel.json"),
		[]byte(`{"id":"k1","release":"6.1.0-fake","bzimage":"`+filepath.Join(bin, "bzImage")+`"}`), 0o644))
	e.start()
	must(0, e.d.store.PutImage(context.Background(), store.Image{ID: "img1", Name: "img",
		RootfsPath: filepath.Join(bin, "rootfs.ext4"), KernelRef: "k1"}))
	return e
}

func (e *fakeEnv) start() {
	e.t.Helper()
	d, err := Start(context.Background(), Options{Layout: e.l, Config: e.cfg, Version: "test",
		NewDriver: func(name, accel string) (vmm.Driver, error) { return e.drv, nil },
		Host:      func() vmm.Host { return vmm.Host{QEMUOK: true, KVMStatus: "not probed (test)"} },
		fault:     e.fault})
	if err != nil {
		e.t.Fatalf("start daemon: %v", err)
	}
	e.d = d
	e.t.Cleanup(func() { _ = d.Shutdown(context.Background()) })
	if e.withNet {
		waitFor(e.t, d.networkReady)
	}
}

// restart shuts the daemon down (its VMs keep running) and starts a new one.
func (e *fakeEnv) restart() {
	e.t.Helper()
	must(0, e.d.Shutdown(context.Background()))
	e.start()
}

func (e *fakeEnv) fault(point string) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.faults[point]
}

func (e *fakeEnv) failAt(point string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.faults = map[string]error{point: errors.New("injected failure at " + point)}
}

func (e *fakeEnv) create(name string, start bool) (api.VM, error) {
	return e.d.createVM(context.Background(), api.VMCreateRequest{Name: name, Image: "img", DiskSize: "256M", Start: start}, func(api.Progress) {})
}

func (e *fakeEnv) record(name string) (store.VM, vmRecord) {
	e.t.Helper()
	vm, err := e.d.store.GetVMByName(context.Background(), name)
	if err != nil {
		e.t.Fatalf("VM %s: %v", name, err)
	}
	rec, err := parseRecord(vm)
	if err != nil {
		e.t.Fatal(err)
	}
	return vm, rec
}

// assertNothingRuns checks that no VMM runs, no socket is left in the VM's run dir, no TAP
// is recorded or handed out, and no per-VM lock lingers.
func (e *fakeEnv) assertNothingRuns(name string) {
	e.t.Helper()
	if pids := e.drv.running(); len(pids) != 0 {
		e.t.Errorf("VMMs still running: %v", pids)
	}
	if vm, err := e.d.store.GetVMByName(context.Background(), name); err == nil {
		rec, _ := parseRecord(vm)
		if vm.State == store.VMRunning || vm.State == store.VMStarting || rec.VMM != nil || rec.Network.TAP != "" {
			e.t.Errorf("VM %s: state %s, vmm %+v, tap %q", name, vm.State, rec.VMM, rec.Network.TAP)
		}
		ents, _ := os.ReadDir(rec.RunDir)
		for _, ent := range ents {
			if ent.Type()&os.ModeSocket != 0 {
				e.t.Errorf("socket %s left in the run dir", ent.Name())
			}
		}
		if e.d.machine(vm.ID) != nil {
			e.t.Errorf("VM %s still has a machine", name)
		}
	}
	if e.withNet {
		_, used, _, _ := e.d.net.pool.Level()
		if used != 0 {
			e.t.Errorf("%d TAPs still handed out", used)
		}
	}
	// The watcher of a stopped VM takes its lock once more on its way out.
	waitFor(e.t, func() bool {
		e.d.vms.mu.Lock()
		defer e.d.vms.mu.Unlock()
		return len(e.d.vms.locks) == 0
	})
}

func TestFakeLifecycle(t *testing.T) {
	e := newFakeEnv(t)
	ctx := context.Background()
	vm, err := e.create("dev", false)
	if err != nil {
		t.Fatal(err)
	}
	if vm.State != "created" || vm.Driver != "qemu" {
		t.Fatalf("created VM: state %s driver %s", vm.State, vm.Driver)
	}
	_, rec := e.record("dev")
	for _, p := range []string{rec.workDisk(), rec.layerDisk()} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("disk: %v", err)
		}
	}

	vm, err = e.d.startVM(ctx, "dev", func(api.Progress) {})
	if err != nil {
		t.Fatal(err)
	}
	if vm.State != "running" || vm.PID == 0 || len(e.drv.running()) != 1 {
		t.Fatalf("started VM: %+v, running %v", vm, e.drv.running())
	}
	spec := e.drv.specs[len(e.drv.specs)-1]
	if !strings.Contains(spec.Cmdline, "banger.hostname=dev") || len(spec.Drives) != 3 || spec.Drives[0].Role != vmm.RoleRoot || !spec.Drives[0].ReadOnly {
		t.Errorf("machine spec: cmdline %q drives %+v", spec.Cmdline, spec.Drives)
	}
	if e.withNet && (vm.Network.TAP == "" || vm.Network.IP == "" || !strings.Contains(spec.Cmdline, "banger.ip="+vm.Network.IP)) {
		t.Errorf("network: %+v, cmdline %q", vm.Network, spec.Cmdline)
	}
	if vm.SSH.Available || !strings.Contains(vm.SSH.Note, "no sshd") {
		t.Errorf("ssh: %+v", vm.SSH)
	}
	if _, err := e.d.startVM(ctx, "dev", func(api.Progress) {}); err == nil || !strings.Contains(err.Error(), "already running") {
		t.Errorf("second start: %v", err)
	}

	firstPID := vm.PID
	vm, err = e.d.restartVM(ctx, api.VMStopRequest{Name: "dev", TimeoutSeconds: 5}, func(api.Progress) {})
	if err != nil {
		t.Fatal(err)
	}
	if vm.State != "running" || vm.PID == firstPID || len(e.drv.running()) != 1 {
		t.Fatalf("restarted VM: state %s pid %d (was %d), running %v", vm.State, vm.PID, firstPID, e.drv.running())
	}

	vm, err = e.d.stopVM(ctx, api.VMStopRequest{Name: "dev", TimeoutSeconds: 5})
	if err != nil {
		t.Fatal(err)
	}
	if vm.State != "stopped" || vm.LastExit != "guest powered off" {
		t.Fatalf("stopped VM: state %s, last exit %q", vm.State, vm.LastExit)
	}
	e.assertNothingRuns("dev")

	// A guest that ignores the power-off is killed when the timeout runs out.
	e.drv.ignoreStop = true
	if _, err := e.d.startVM(ctx, "dev", func(api.Progress) {}); err != nil {
		t.Fatal(err)
	}
	if vm, err = e.d.stopVM(ctx, api.VMStopRequest{Name: "dev", TimeoutSeconds: 0.2}); err != nil || vm.State != "stopped" {
		t.Fatalf("stop of a guest ignoring power off: %+v %v", vm, err)
	}
	e.assertNothingRuns("dev")
	e.drv.ignoreStop = false

	if _, err := e.d.startVM(ctx, "dev", func(api.Progress) {}); err != nil {
		t.Fatal(err)
	}
	if err := e.d.removeVM(ctx, api.VMRemoveRequest{Name: "dev"}); err == nil || !strings.Contains(err.Error(), "is running") {
		t.Fatalf("rm of a running VM without --force: %v", err)
	}
	if err := e.d.removeVM(ctx, api.VMRemoveRequest{Name: "dev", Force: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.d.store.GetVMByName(ctx, "dev"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("removed VM still in the store: %v", err)
	}
	for _, dir := range []string{rec.Dir, rec.RunDir} {
		if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("removed VM's %s: %v", dir, err)
		}
	}
	if e.withNet {
		if _, err := e.d.store.GetLeaseByVM(ctx, vm.ID); err == nil {
			t.Error("removed VM's lease is still held")
		}
	}
	e.assertNothingRuns("dev")
}

// startPoints are where a start can fail: each stage of the table, and the store writes
// after the VMM runs. The identity stage is only a clone's (the fake driver builds no
// templates): the warm-start e2e test covers it; the thaw and clock stages are only a
// restored saved state's (pause_test.go).
func startPoints(d *Daemon) []string {
	var points []string
	for _, s := range d.startSteps() {
		if s.name == stageIdentity || s.name == stageClock.name || s.name == stageThaw.name {
			continue
		}
		points = append(points, "stage "+s.name)
	}
	return append(points, "store vmm", "store running")
}

func TestFakeStartFailsCleanlyAtEveryPoint(t *testing.T) {
	e := newFakeEnv(t)
	ctx := context.Background()
	for _, point := range startPoints(e.d) {
		t.Run(point, func(t *testing.T) {
			e.t = t
			name := "vm-" + strings.NewReplacer(" ", "-").Replace(strings.TrimPrefix(strings.TrimPrefix(point, "stage "), "store "))
			if len(name) > 32 {
				name = name[:32]
			}
			name = strings.TrimRight(name, "-")
			if _, err := e.create(name, false); err != nil {
				t.Fatal(err)
			}
			// Only then does the sshd stage run (the fake's sshd never answers).
			e.drv.hasSSHD = point == "stage "+stageSSH
			e.failAt(point)
			defer e.failAt("")
			vm, _ := e.record(name)
			var err error
			if point == "stage "+stageSSH {
				// A normal VM runs without a working sshd; a boot that needs it fails.
				_, rec := e.record(name)
				unlock := e.d.lockVM(vm.ID)
				_, err = e.d.startLocked(ctx, vm, newTimings(e.d, vm.ID), func(api.Progress) {}, builderBootProfile(rec.workDisk()))
				unlock()
			} else {
				_, err = e.d.startVM(ctx, name, func(api.Progress) {})
			}
			if err == nil || !strings.Contains(err.Error(), "injected failure at "+point) {
				t.Fatalf("start: %v", err)
			}
			var ae *api.Error
			if strings.HasPrefix(point, "stage ") && (!errors.As(err, &ae) || ae.Hint == "" || !strings.Contains(ae.Message, "failed at stage "+strings.TrimPrefix(point, "stage "))) {
				t.Errorf("error %v: want the stage named, with a hint", err)
			}
			e.assertNothingRuns(name)
			got, rec := e.record(name)
			if got.State != store.VMStopped || !strings.HasPrefix(rec.LastExit, "start failed: ") {
				t.Errorf("after the failure: state %s, last exit %q", got.State, rec.LastExit)
			}

			// The same failure inside create --start removes the VM altogether.
			_, err = e.create(name+"-c", true)
			if err == nil && point != "stage "+stageSSH {
				t.Fatal("create --start succeeded")
			}
			if point != "stage "+stageSSH {
				if _, gerr := e.d.store.GetVMByName(ctx, name+"-c"); !errors.Is(gerr, store.ErrNotFound) {
					t.Errorf("failed create left its row: %v", gerr)
				}
			} else {
				// Tolerated for a normal VM: it runs without SSH.
				must(0, e.d.removeVM(ctx, api.VMRemoveRequest{Name: name + "-c", Force: true}))
			}
			e.assertNothingRuns(name + "-c")
			must(0, e.d.removeVM(ctx, api.VMRemoveRequest{Name: name}))
		})
	}
	ents, err := os.ReadDir(e.l.VMsDir)
	if err != nil || len(ents) != 0 {
		t.Errorf("VM directories left: %v %v", ents, err)
	}
}

func TestFakeStartFailuresFromTheVMM(t *testing.T) {
	e := newFakeEnv(t)
	ctx := context.Background()
	must(e.create("a", false))

	e.drv.startErr = errors.New("qemu-system-x86_64: could not open disk")
	_, err := e.d.startVM(ctx, "a", func(api.Progress) {})
	if err == nil || !strings.Contains(err.Error(), "starting the vmm") || !strings.Contains(err.Error(), "could not open disk") {
		t.Fatalf("start with a failing VMM: %v", err)
	}
	e.assertNothingRuns("a")
	e.drv.startErr = nil

	// A VMM that dies during boot fails the agent stage at once, with the console's lines.
	e.drv.exitAtBoot = true
	_, err = e.d.startVM(ctx, "a", func(api.Progress) {})
	if err == nil || !strings.Contains(err.Error(), "the VMM exited: killed by signal 11") || !strings.Contains(err.Error(), "banger-init: ready") {
		t.Fatalf("start with a VMM dying at boot: %v", err)
	}
	e.assertNothingRuns("a")
}

func TestFakeCrashAndReconcile(t *testing.T) {
	e := newFakeEnv(t)
	ctx := context.Background()
	must(e.create("a", true))
	must(e.create("b", true))

	// A VMM that dies while the daemon watches is recorded as a crash.
	_, rec := e.record("a")
	e.drv.mu.Lock()
	e.drv.machines[rec.VMM.PID].exit(vmm.ExitInfo{Reason: "killed by signal 9", At: time.Now()})
	e.drv.mu.Unlock()
	waitFor(t, func() bool { vm, _ := e.record("a"); return vm.State == store.VMCrashed })
	if vm := e.d.vmToAPI(ctx, must(e.d.store.GetVMByName(ctx, "a"))); vm.State != "crashed" || !strings.Contains(vm.LastExit, "signal 9") {
		t.Fatalf("crashed VM: state %s, last exit %q", vm.State, vm.LastExit)
	}

	// VMs outlive the daemon: a new one reattaches them.
	e.restart()
	_, rec = e.record("b")
	if m := e.d.machine(must(e.d.store.GetVMByName(ctx, "b")).ID); m == nil || m.PID() != rec.VMM.PID {
		t.Fatalf("b was not reattached")
	}
	// One that died while no daemon ran is found crashed by the next one.
	must(0, e.d.Shutdown(ctx))
	e.drv.crash()
	e.start()
	vm, rec := e.record("b")
	if vm.State != store.VMCrashed || rec.VMM != nil || !strings.Contains(rec.LastExit, "gone when the daemon started") {
		t.Fatalf("after reconcile: state %s, record %+v", vm.State, rec.vmStatus)
	}
	// And it starts again.
	if _, err := e.d.startVM(ctx, "b", func(api.Progress) {}); err != nil {
		t.Fatal(err)
	}
}

func newTimings(d *Daemon, id string) *lifecycle.Recorder {
	return lifecycle.New("vm.start", id, d.log, d.store)
}

func TestStartTableIsComplete(t *testing.T) {
	seen := map[string]bool{}
	for _, s := range (&Daemon{}).startSteps() {
		if s.deadline <= 0 || s.hint == "" || s.run == nil || seen[s.name] {
			t.Errorf("stage %q: deadline %s, hint %q, run set %v, duplicate %v", s.name, s.deadline, s.hint, s.run != nil, seen[s.name])
		}
		seen[s.name] = true
	}
	for _, want := range []string{stageAgent, stageSSH} {
		if !seen[want] {
			t.Errorf("no %q stage (bench reads it)", want)
		}
	}
}

func TestParseRecordReportsCorruptRows(t *testing.T) {
	if _, err := parseRecord(store.VM{Name: "x", Spec: []byte(`{"cpus":"two"}`)}); err == nil || !strings.Contains(err.Error(), "corrupt record") {
		t.Fatalf("corrupt record: %v", err)
	}
	rec, err := parseRecord(store.VM{Name: "x", Spec: []byte(`{"cpus":2,"network":{"tap":"t"},"driver":"qemu"}`)})
	if err != nil || rec.CPUs != 2 || rec.Network.TAP != "t" {
		t.Fatalf("record %+v, %v", rec, err)
	}
}

// A record that does not decode is marked error at the next daemon start, shown as such,
// and `vm rm` still removes the VM and its directories.
func TestCorruptRecordIsMarkedAndRemovable(t *testing.T) {
	e := newFakeEnv(t)
	ctx := context.Background()
	must(e.create("a", false))
	vm, rec := e.record("a")
	vm.Spec = []byte(`{"cpus":"many","dir":17}`)
	must(0, e.d.store.PutVM(ctx, vm))
	e.restart()
	got := e.d.vmToAPI(ctx, must(e.d.store.GetVMByName(ctx, "a")))
	if got.State != "error" || !strings.Contains(got.LastExit, "corrupt record") {
		t.Fatalf("corrupt VM: state %s, last exit %q", got.State, got.LastExit)
	}
	if _, err := e.d.startVM(ctx, "a", func(api.Progress) {}); err == nil || !strings.Contains(err.Error(), "corrupt record") {
		t.Fatalf("start of a corrupt VM: %v", err)
	}
	must(0, e.d.removeVM(ctx, api.VMRemoveRequest{Name: "a"}))
	if _, err := os.Stat(rec.Dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("corrupt VM's directory after rm: %v", err)
	}
}

// vm logs shows the rotated older half first, and a follower keeps up across a rotation.
func TestLogsAcrossConsoleRotation(t *testing.T) {
	e := newFakeEnv(t)
	ctx := context.Background()
	vm := must(e.create("a", true))
	_, rec := e.record("a")
	must(0, os.WriteFile(rec.ConsoleLog+".1", []byte("older half\n"), 0o600))
	c := api.NewClient(e.l.Socket, "test")
	read := func(follow bool) string {
		rc, err := c.VMLogs(ctx, "a", follow)
		if err != nil {
			t.Fatal(err)
		}
		defer rc.Close()
		b, _ := io.ReadAll(rc)
		return string(b)
	}
	if got := read(false); got != "older half\nfake boot\nbanger-init: ready\n" {
		t.Fatalf("logs = %q", got)
	}

	got := make(chan string, 1)
	go func() { got <- read(true) }()
	time.Sleep(300 * time.Millisecond) // let the follower reach the end of the log
	f, err := os.OpenFile(rec.ConsoleLog, os.O_APPEND|os.O_WRONLY, 0)
	must(0, err)
	_, _ = f.WriteString("before the rotation\n")
	f.Close()
	must(0, os.Rename(rec.ConsoleLog, rec.ConsoleLog+".1"))
	must(0, os.WriteFile(rec.ConsoleLog, []byte("after the rotation\n"), 0o600))
	time.Sleep(500 * time.Millisecond) // the follower polls every 200 ms
	must(e.d.stopVM(ctx, api.VMStopRequest{Name: vm.Name, TimeoutSeconds: 5}))
	out := <-got
	if !strings.Contains(out, "before the rotation\n") || !strings.HasSuffix(out, "after the rotation\n") {
		t.Fatalf("followed logs = %q", out)
	}
}

// Creates copy the image's work disk template and the layer template: each VM gets the
// seed's files and banger's key, its own host key, and clean filesystems; a replaced seed
// makes a new template.
func TestCreatesCopyDiskTemplates(t *testing.T) {
	e := newFakeEnv(t)
	ctx := context.Background()
	tk := e.d.images.Ext4
	seedWith := func(name string) string {
		src := t.TempDir()
		must(0, os.WriteFile(filepath.Join(src, name), []byte(name+"\n"), 0o644))
		seed := filepath.Join(t.TempDir(), "work-seed.ext4")
		must(0, tk.CreateExt4(ctx, seed, 64<<20, ext4.CreateOptions{SourceDir: src}))
		return seed
	}
	templates := func() []string {
		m, _ := filepath.Glob(filepath.Join(e.l.CacheDir, "disks", "*.ext4"))
		return m
	}
	// A daemon start's warm-up builds the layer template and a work template for each image.
	// newFakeEnv adds img1 after its daemon started (that warm-up may have missed it): start
	// again.
	e.restart()
	must(0, e.d.waitWarmUp(ctx))
	if got := templates(); len(got) != 2 || !slices.ContainsFunc(got, func(p string) bool { return strings.Contains(filepath.Base(p), "work-img1-") }) {
		t.Fatalf("templates after the warm-up: %v, want img1's work and the layer", got)
	}
	img := must(e.d.store.GetImage(ctx, "img1"))
	img.WorkSeedPath = seedWith("hello.txt")
	must(0, e.d.store.PutImage(ctx, img))
	// Adding an image ends with building its template: the two creates below only copy it.
	e.d.vms.disks.forgetImage(img.ID)
	e.d.imageAdded(ctx, img, nil)
	if got := templates(); len(got) != 2 {
		t.Fatalf("templates after the image was added: %v", got)
	}

	fsck := func(disk string) {
		t.Helper()
		// e2fsck lives in /usr/sbin, which is not on an unprivileged user's PATH.
		e2fsck := hosttools.LookPathIn("e2fsck", "")
		if e2fsck == "" {
			t.Fatal("no e2fsck in PATH or the sbin directories (apt-get install e2fsprogs)")
		}
		if out, err := exec.Command(e2fsck, "-fn", disk).CombinedOutput(); err != nil {
			t.Fatalf("e2fsck %s: %v\n%s", disk, err, out)
		}
	}
	var hostKeys []string
	// The default size, which the image's template is built at.
	create := func(name string) (api.VM, error) {
		return e.d.createVM(ctx, api.VMCreateRequest{Name: name, Image: "img"}, func(api.Progress) {})
	}
	for _, name := range []string{"a", "b"} {
		must(create(name))
		_, rec := e.record(name)
		fsck(rec.workDisk())
		fsck(rec.layerDisk())
		if got, err := tk.ReadExt4File(ctx, rec.workDisk(), "/hello.txt"); err != nil || string(got) != "hello.txt\n" {
			t.Errorf("%s: seed file %q, %v", name, got, err)
		}
		keys, err := tk.ReadExt4File(ctx, rec.workDisk(), "/.ssh/authorized_keys")
		if err != nil || !strings.HasPrefix(string(keys), "ssh-ed25519 ") {
			t.Errorf("%s: authorized_keys %q, %v", name, keys, err)
		}
		pub, err := tk.ReadExt4File(ctx, rec.layerDisk(), "/upper/etc/ssh/ssh_host_ed25519_key.pub")
		if err != nil || strings.TrimSpace(string(pub)) != strings.TrimSpace(rec.SSHHostKey) {
			t.Errorf("%s: host key on the layer %q, %v (record %q)", name, pub, err, rec.SSHHostKey)
		}
		if conf, err := tk.ReadExt4File(ctx, rec.layerDisk(), "/upper/etc/ssh/sshd_config.d/banger.conf"); err != nil || string(conf) != sshdDropIn {
			t.Errorf("%s: sshd drop-in on the layer %q, %v", name, conf, err)
		}
		hostKeys = append(hostKeys, string(pub))
	}
	if hostKeys[0] == hostKeys[1] {
		t.Error("two VMs got the same host key")
	}
	if got := templates(); len(got) != 2 {
		t.Fatalf("templates after two creates: %v, want one work and one layer", got)
	}

	// A rebuilt image has a new seed: the next VM gets its files, not the old template's.
	img.WorkSeedPath = seedWith("bye.txt")
	must(0, e.d.store.PutImage(ctx, img))
	must(create("c"))
	_, rec := e.record("c")
	if _, err := tk.ReadExt4File(ctx, rec.workDisk(), "/bye.txt"); err != nil {
		t.Errorf("c: new seed's file: %v", err)
	}
	if _, err := tk.ReadExt4File(ctx, rec.workDisk(), "/hello.txt"); err == nil {
		t.Error("c: the old seed's file is on the new VM's disk")
	}
	if got := templates(); len(got) != 3 {
		t.Fatalf("templates after the seed changed: %v", got)
	}
	// Removing the image drops its work templates (the layer template stays).
	e.d.vms.disks.forgetImage(img.ID)
	if got := templates(); len(got) != 1 || !strings.Contains(filepath.Base(got[0]), "layer-") {
		t.Fatalf("templates after forgetting the image: %v", got)
	}
}
