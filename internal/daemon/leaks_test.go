package daemon

import (
	"context"
	"database/sql"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/banger-vm/banger/internal/api"
	"github.com/banger-vm/banger/internal/config"
	"github.com/banger-vm/banger/internal/helper"
	"github.com/banger-vm/banger/internal/store"
)

// TestLeakHelperProcess is not a test: it is the stray "VMM" the leak tests start (this
// test binary with argv[0] set to qemu-system-x86_64). It blocks until its stdin closes.
func TestLeakHelperProcess(t *testing.T) {
	if os.Getenv("BANGER_LEAK_HELPER") != "1" {
		return
	}
	_, _ = io.Copy(io.Discard, os.Stdin)
	os.Exit(0)
}

// startStrayVMM starts this test binary looking like a QEMU of runDir: argv[0]
// qemu-system-x86_64, working directory runDir, a -qmp socket path in it.
func startStrayVMM(t *testing.T, runDir string) *exec.Cmd {
	t.Helper()
	// "--": the test binary's flag parsing must stop there, or it exits at once on -qmp.
	cmd := exec.Command(os.Args[0], "-test.run=^TestLeakHelperProcess$", "--", "-qmp", "unix:"+filepath.Join(runDir, "qmp.sock")+",server=on,wait=off")
	cmd.Args[0] = "qemu-system-x86_64"
	cmd.Dir = runDir
	cmd.Env = append(os.Environ(), "BANGER_LEAK_HELPER=1")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stdin.Close()
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	return cmd
}

// leaveSocket binds a Unix socket at p and closes it without removing the file, as a VMM
// killed with SIGKILL does.
func leaveSocket(t *testing.T, p string) {
	t.Helper()
	ln, err := net.Listen("unix", p)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
}

func mkdirs(t *testing.T, dirs ...string) {
	t.Helper()
	for _, d := range dirs {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
}

// leakDaemon is a daemon without a root helper, and a leak scope whose temp dir is the
// test's own (the host's /tmp and /dev/shm are shared with other work).
func leakDaemon(t *testing.T) (*Daemon, leakScope) {
	t.Helper()
	l := testLayout(t)
	cfg := config.Defaults()
	cfg.Network.HelperSocket = filepath.Join(t.TempDir(), "none.sock")
	d, err := Start(context.Background(), Options{Layout: l, Config: cfg, Version: "test"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Shutdown(context.Background()) })
	sc := d.leakScope()
	sc.tmpDirs = []string{t.TempDir()}
	return d, sc
}

func leaksByKind(res api.LeaksResponse) map[api.LeakKind][]api.Leak {
	out := map[api.LeakKind][]api.Leak{}
	for _, l := range res.Leaks {
		out[l.Kind] = append(out[l.Kind], l)
	}
	return out
}

func TestLeakCheckCleanState(t *testing.T) {
	ctx := context.Background()
	d, sc := leakDaemon(t)
	// A stopped VM with its directories is referenced, not a leak.
	if err := d.store.PutImage(ctx, store.Image{ID: "img1", Name: "img", RootfsPath: "/nonexistent"}); err != nil {
		t.Fatal(err)
	}
	spec := vmSpec{Dir: filepath.Join(d.opts.Layout.VMsDir, "aaaa"), RunDir: filepath.Join(d.opts.Layout.RuntimeDir, "v", "aaaa")}
	mkdirs(t, spec.Dir, spec.RunDir)
	if err := os.WriteFile(filepath.Join(spec.RunDir, "console.log"), []byte("boot\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := d.store.PutVM(ctx, store.VM{ID: "aaaa", Name: "kept", ImageID: "img1", State: store.VMStopped, VMM: "qemu", Spec: vmRecord{vmSpec: spec}.raw()}); err != nil {
		t.Fatal(err)
	}
	res, err := d.findLeaks(ctx, sc)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Leaks) != 0 {
		t.Fatalf("clean state reports leaks: %+v", res.Leaks)
	}
	if res.Checked[api.LeakDir] != 2 {
		t.Errorf("checked %d VM dirs, want 2", res.Checked[api.LeakDir])
	}
	if _, ok := res.Skipped[api.LeakTAP]; !ok {
		t.Error("TAPs were not reported as unchecked without a helper")
	}

	// The same through the API.
	c := api.NewClient(d.opts.Layout.Socket, "test")
	if _, err := c.Leaks(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestLeakCheckFindsAndFixesLeaks(t *testing.T) {
	ctx := context.Background()
	d, sc := leakDaemon(t)
	l := d.opts.Layout
	if err := d.store.PutImage(ctx, store.Image{ID: "img1", Name: "img", RootfsPath: "/nonexistent"}); err != nil {
		t.Fatal(err)
	}

	// A stopped VM whose QMP socket was left behind (its VMM was killed).
	stopped := vmSpec{Dir: filepath.Join(l.VMsDir, "bbbb"), RunDir: filepath.Join(l.RuntimeDir, "v", "bbbb")}
	mkdirs(t, stopped.Dir, stopped.RunDir)
	if err := d.store.PutVM(ctx, store.VM{ID: "bbbb", Name: "old", ImageID: "img1", State: store.VMStopped, VMM: "qemu", Spec: vmRecord{vmSpec: stopped}.raw()}); err != nil {
		t.Fatal(err)
	}
	staleSock := filepath.Join(stopped.RunDir, "qmp.sock")
	leaveSocket(t, staleSock)
	// A disk build's staging tree inside that VM's directory.
	inVMStaging := filepath.Join(stopped.Dir, ".work.ext4.seed-123")
	mkdirs(t, inVMStaging)

	// A VM directory and a run directory no row references, with a VMM process and its
	// socket in the run dir.
	strayDir := filepath.Join(l.VMsDir, "deadbeef0001")
	strayRun := filepath.Join(l.RuntimeDir, "v", "deadbeef0001")
	mkdirs(t, strayDir, strayRun)
	if err := os.WriteFile(filepath.Join(strayDir, "work.ext4"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	straySock := filepath.Join(strayRun, "qmp.sock")
	leaveSocket(t, straySock)
	proc := startStrayVMM(t, strayRun)

	// A lease whose VM is gone (written with foreign keys off, as a crashed or hand-edited
	// store could have it).
	db, err := sql.Open("sqlite", "file:"+l.StateDB+"?_pragma=foreign_keys(0)&_pragma=busy_timeout(5000)")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.ExecContext(ctx, `INSERT INTO network_leases(ip, vm_id, mac, leased_at) VALUES ('172.30.0.9', 'gone', '02:00:00:00:00:09', 1)`); err != nil {
		t.Fatal(err)
	}
	db.Close()

	// Staging left by interrupted builds.
	imgStaging := filepath.Join(l.ImagesDir, ".staging-42")
	tmpStaging := filepath.Join(sc.tmpDirs[0], ".layer.ext4.write-7")
	mkdirs(t, imgStaging, tmpStaging, sc.initramfs, sc.disks)
	partial := filepath.Join(sc.initramfs, ".initramfs-1.tmp")
	partialDisk := filepath.Join(sc.disks, "work-img-0123."+"ext4"+templateTmpSuffix)
	for _, p := range []string{partial, partialDisk} {
		if err := os.WriteFile(p, nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}

	// Builds take minutes: only staging older than that is removed by --fix.
	old := time.Now().Add(-2 * stagingFixAge)
	for _, p := range []string{imgStaging, partial, partialDisk} {
		if err := os.Chtimes(p, old, old); err != nil {
			t.Fatal(err)
		}
	}

	res, err := d.findLeaks(ctx, sc)
	if err != nil {
		t.Fatal(err)
	}
	got := leaksByKind(res)
	want := map[api.LeakKind][]string{
		api.LeakProcess: {"pid " + strconv.Itoa(proc.Process.Pid)},
		api.LeakSocket:  {straySock, staleSock},
		api.LeakDir:     {strayDir, strayRun},
		api.LeakLease:   {"172.30.0.9"},
		api.LeakStaging: {inVMStaging, imgStaging, partial, partialDisk, tmpStaging},
	}
	for kind, whats := range want {
		var have []string
		for _, l := range got[kind] {
			have = append(have, l.What)
			if l.Detail == "" || l.Fix == "" {
				t.Errorf("%s %s: no detail or fix: %+v", kind, l.What, l)
			}
		}
		slices.Sort(have)
		slices.Sort(whats)
		if !slices.Equal(have, whats) {
			t.Errorf("%s leaks = %q, want %q", kind, have, whats)
		}
	}
	for _, l := range got[api.LeakSocket] {
		if l.What == staleSock && !strings.Contains(l.Detail, "VM old (stopped)") {
			t.Errorf("stale socket detail %q does not name the stopped VM", l.Detail)
		}
	}
	if len(got[api.LeakTAP]) != 0 {
		t.Errorf("TAP leaks without a helper: %+v", got[api.LeakTAP])
	}

	// --fix removes all but the fresh staging (a build may be running), and a second scan
	// shows only that.
	fixed, err := d.fixLeaks(ctx, sc)
	if err != nil {
		t.Fatal(err)
	}
	// What --fix did: no errors, nothing fixed that the scan had not reported, and (checked
	// below) everything but the fresh staging gone. The exact count is not compared: a leak
	// can vanish by itself between the scans (a process exiting under load).
	if len(fixed.FixErrors) != 0 {
		t.Errorf("fix errors: %q", fixed.FixErrors)
	}
	for _, f := range fixed.Fixed {
		if !slices.ContainsFunc(res.Leaks, func(l api.Leak) bool { return l.Kind == f.Kind && l.What == f.What }) {
			t.Errorf("--fix removed %s %s, which the scan had not reported", f.Kind, f.What)
		}
	}
	if len(fixed.Leaks) != 1 || fixed.Leaks[0].What != tmpStaging || fixed.Leaks[0].Fixable {
		t.Errorf("leaks after --fix: %+v, want only the fresh %s, not fixable", fixed.Leaks, tmpStaging)
	}
	if err := proc.Wait(); err == nil {
		t.Error("the stray VMM exited 0; want it killed")
	}
	for _, p := range []string{strayDir, strayRun, staleSock, imgStaging, partial, partialDisk, inVMStaging} {
		if _, err := os.Lstat(p); !os.IsNotExist(err) {
			t.Errorf("%s still there after --fix: %v", p, err)
		}
	}
	if _, err := os.Stat(stopped.Dir); err != nil {
		t.Errorf("the stopped VM's directory was removed: %v", err)
	}
}

func TestLeakCheckLeavesRunningBenchAlone(t *testing.T) {
	ctx := context.Background()
	d, sc := leakDaemon(t)
	dir := filepath.Join(d.opts.Layout.RuntimeDir, "v", "bfeed")
	release, err := holdBenchDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	leaveSocket(t, filepath.Join(dir, "qmp.sock"))
	res, err := d.findLeaks(ctx, sc)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Leaks) != 0 {
		t.Fatalf("a bench in progress is reported: %+v", res.Leaks)
	}
	release()
	res, err = d.findLeaks(ctx, sc)
	if err != nil {
		t.Fatal(err)
	}
	if k := leaksByKind(res); len(k[api.LeakDir]) != 1 || len(k[api.LeakSocket]) != 1 {
		t.Fatalf("a bench dir left behind (lock released) is not reported: %+v", res.Leaks)
	}
}

func TestRunDirOf(t *testing.T) {
	runs := "/run/user/1/banger/v/"
	for in, want := range map[string]string{
		"/run/user/1/banger/v/abc":                          runs + "abc",
		"/run/user/1/banger/v/abc/qmp.sock":                 runs + "abc",
		"/run/user/1/banger/v/abc/qmp.sock,server=on":       runs + "abc",
		"/run/user/1/banger/v/abc,server=on":                runs + "abc",
		"/run/user/1/banger/vms/abc":                        "",
		"/run/user/1/banger/v/":                             "",
		"/elsewhere/run/user/1/banger/v/abc":                "",
		"/run/user/1/banger/v/abc/../../../../etc/passwd/x": runs + "abc",
	} {
		if got := runDirOf(in, runs); got != want {
			t.Errorf("runDirOf(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestLeakCheckFindsTAPsBeyondThePool(t *testing.T) {
	ops, socket := testHelper(t) // a real helper in a test network namespace
	ctx := context.Background()
	l := testLayout(t)
	cfg := config.Defaults()
	cfg.Network.HelperSocket = socket
	cfg.Network.TAPPoolSize = 2
	d, err := Start(ctx, Options{Layout: l, Config: cfg, Version: "test"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Shutdown(context.Background()) })
	waitFor(t, func() bool { free, _, _, _ := d.net.pool.Level(); return free == 2 })
	sc := d.leakScope()
	sc.tmpDirs = []string{t.TempDir()}
	res, err := d.findLeaks(ctx, sc)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Leaks) != 0 || res.Checked[api.LeakTAP] != 2 || res.Skipped[api.LeakTAP] != "" {
		t.Fatalf("a warm pool is reported: leaks %+v, checked %v, skipped %v", res.Leaks, res.Checked, res.Skipped)
	}

	// A per-VM TAP of a VM that is gone, and a pool TAP beyond the pool's size.
	for _, name := range []string{"bgr-gone1", "tap-pool-50"} {
		if r := ops.Do(helper.Request{Op: helper.OpCreateTAP, Name: name}); !r.OK {
			t.Fatal(r.Error)
		}
	}
	res, err = d.findLeaks(ctx, sc)
	if err != nil {
		t.Fatal(err)
	}
	taps := leaksByKind(res)[api.LeakTAP]
	if len(taps) != 2 || taps[0].What != "bgr-gone1" || !taps[0].Fixable || taps[1].What != "tap-pool-50" || taps[1].Fixable ||
		!strings.Contains(taps[1].Detail, "tap_pool_size = 2") {
		t.Fatalf("TAP leaks = %+v", taps)
	}
	fixed, err := d.fixLeaks(ctx, sc)
	if err != nil {
		t.Fatal(err)
	}
	if len(fixed.Fixed) != 1 || fixed.Fixed[0].What != "bgr-gone1" || len(fixed.Leaks) != 1 || fixed.Leaks[0].What != "tap-pool-50" {
		t.Fatalf("after --fix: fixed %+v, left %+v", fixed.Fixed, fixed.Leaks)
	}
	for _, dev := range ops.Do(helper.Request{Op: helper.OpList}).Devices {
		if dev.Name == "bgr-gone1" {
			t.Fatal("bgr-gone1 still exists after --fix")
		}
	}
}

// A daemon that starts cleans what nothing references, and keeps what a VM does.
func TestStartCleansLeftovers(t *testing.T) {
	ctx := context.Background()
	l := testLayout(t)
	d := startDaemon(t, l)
	if err := d.store.PutImage(ctx, store.Image{ID: "img1", Name: "img", RootfsPath: "/nonexistent"}); err != nil {
		t.Fatal(err)
	}
	kept := vmSpec{Dir: filepath.Join(l.VMsDir, "keep00000001"), RunDir: filepath.Join(l.RuntimeDir, "v", "keep00000001")}
	if err := d.store.PutVM(ctx, store.VM{ID: "keep00000001", Name: "kept", ImageID: "img1", State: store.VMStopped, Spec: vmRecord{vmSpec: kept}.raw()}); err != nil {
		t.Fatal(err)
	}
	strayDir := filepath.Join(l.VMsDir, "deadbeef0002")
	strayRun := filepath.Join(l.RuntimeDir, "v", "deadbeef0002")
	mkdirs(t, kept.Dir, strayDir, strayRun)
	leaveSocket(t, filepath.Join(strayRun, "qmp.sock"))
	proc := startStrayVMM(t, strayRun)
	if err := d.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	startDaemon(t, l)
	for _, p := range []string{strayDir, strayRun} {
		if _, err := os.Lstat(p); !os.IsNotExist(err) {
			t.Errorf("%s survived the daemon's start: %v", p, err)
		}
	}
	if _, err := os.Stat(kept.Dir); err != nil {
		t.Errorf("the directory of a VM was removed: %v", err)
	}
	if err := proc.Wait(); err == nil {
		t.Error("the stray VMM exited 0; want it killed at start")
	}
}
