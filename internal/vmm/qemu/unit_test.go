package qemu

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/banger-vm/banger/internal/hostinfo"
	"github.com/banger-vm/banger/internal/vmm"
)

func TestParseProcStat(t *testing.T) {
	// comm may hold spaces and parentheses: fields count from the last ')'.
	line := "4242 (we (ird) ) comm) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 3 0 987654 1000 10 18446744073709551615\n"
	st, err := vmm.ParseProcStat([]byte(line))
	if err != nil || st.State != 'S' || st.StartTime != 987654 {
		t.Fatalf("vmm.ParseProcStat = %+v, %v", st, err)
	}
	for _, bad := range []string{"", "1 (x) S 1 2", "1 (x) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 notanumber"} {
		if _, err := vmm.ParseProcStat([]byte(bad)); err == nil {
			t.Errorf("vmm.ParseProcStat(%q): no error", bad)
		}
	}
	self, err := vmm.ReadProcStat(os.Getpid())
	if err != nil || self.StartTime == 0 {
		t.Fatalf("own stat: %+v, %v", self, err)
	}
	if err := vmm.SameProcess(os.Getpid(), self.StartTime); err != nil {
		t.Errorf("vmm.SameProcess(self): %v", err)
	}
	if err := vmm.SameProcess(os.Getpid(), self.StartTime+1); err == nil || !strings.Contains(err.Error(), "another process") {
		t.Errorf("vmm.SameProcess(self, wrong start): %v", err)
	}
}

func testSpec(dir string) vmm.MachineSpec {
	return vmm.MachineSpec{
		Name: "t", Kernel: "/k/vmlinuz", Initramfs: "/k/initrd", Cmdline: "console=ttyS0 panic=-1",
		Drives: []vmm.Drive{
			{ID: "rootfs", Path: "/img/root,fs.ext4", ReadOnly: true, Role: vmm.RoleRoot},
			{ID: "layer", Path: "/vm/layer.ext4", Role: vmm.RoleLayer},
			{ID: "work", Path: "/vm/work.ext4", Role: vmm.RoleWork},
			{ID: "mods", Path: "/k/mods.ext4", ReadOnly: true, Role: vmm.RoleModules},
		},
		NICs:  []vmm.NIC{{TAP: "bgr0", MAC: net.HardwareAddr{0x02, 0xbb, 0, 0, 0, 1}}},
		VCPUs: 2, MemoryMiB: 512, RunDir: dir,
	}
}

func TestQEMUArgs(t *testing.T) {
	spec := testSpec("/run/b/vm1")
	l := newLayout(spec.RunDir, TransportSerial, 0, 0)
	got := qemuArgs(spec, l, argOptions{Accel: AccelTCG, CPU: "max", TSCKHz: 2500000, Sandbox: true})
	want := []string{
		"-M", "microvm,acpi=on", "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
		"-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
		"-accel", "tcg", "-cpu", "max", "-smp", "2", "-m", "512",
		"-kernel", "/k/vmlinuz", "-initrd", "/k/initrd",
		"-append", "console=ttyS0 panic=-1 reboot=t banger.root=serial:rootfs banger.layer=serial:layer banger.work=serial:work banger.modules=serial:mods banger.agent=serial tsc_early_khz=2500000 tsc=reliable",
		"-chardev", "pipe,id=con,path=/run/b/vm1/console.fifo", "-serial", "chardev:con",
		"-qmp", "unix:/run/b/vm1/qmp.sock,server=on,wait=off",
		"-drive", "id=rootfs,file=/img/root,,fs.ext4,format=raw,if=none,readonly=on",
		"-device", "virtio-blk-device,drive=rootfs,serial=rootfs",
		"-drive", "id=layer,file=/vm/layer.ext4,format=raw,if=none",
		"-device", "virtio-blk-device,drive=layer,serial=layer",
		"-drive", "id=work,file=/vm/work.ext4,format=raw,if=none",
		"-device", "virtio-blk-device,drive=work,serial=work",
		"-drive", "id=mods,file=/k/mods.ext4,format=raw,if=none,readonly=on",
		"-device", "virtio-blk-device,drive=mods,serial=mods",
		"-netdev", "tap,id=net0,ifname=bgr0,script=no,downscript=no",
		"-device", "virtio-net-device,netdev=net0,mac=02:bb:00:00:00:01",
		"-device", "virtio-serial-device",
		"-chardev", "socket,id=agent,path=/run/b/vm1/agent.sock,server=on,wait=off",
		"-device", "virtserialport,chardev=agent,name=banger.agent",
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("args:\n got %q\nwant %q", got, want)
	}

	// vhost-vsock, KVM: no TSC key, a non-default port is passed on, no serial devices.
	spec.AgentPort = 2000
	l = newLayout(spec.RunDir, TransportVsock, 77, spec.AgentPort)
	got = qemuArgs(spec, l, argOptions{Accel: AccelKVM, CPU: "host", TSCKHz: 2500000})
	joined := strings.Join(got, " ")
	for _, w := range []string{"-accel kvm -cpu host", "-device vhost-vsock-device,guest-cid=77", "banger.agent=vsock banger.agent_port=2000", "-qmp unix:/run/b/vm1/qmp.sock,"} {
		if !strings.Contains(joined, w) {
			t.Errorf("vsock args lack %q: %s", w, joined)
		}
	}
	for _, no := range []string{"tsc_early_khz", "tsc=reliable", "virtio-serial", "agent.sock", "-sandbox"} {
		if strings.Contains(joined, no) {
			t.Errorf("vsock/kvm args have %q: %s", no, joined)
		}
	}
	// A tsc_early_khz the caller set is kept, not doubled; the default port is not spelled out.
	spec.Cmdline = "console=ttyS0 tsc_early_khz=1000"
	spec.AgentPort = 0
	cl := kernelCmdline(spec, newLayout(spec.RunDir, TransportVsock, 9, 0), AccelTCG, 2500000)
	if strings.Count(cl, "tsc_early_khz") != 1 || strings.Contains(cl, "agent_port") || strings.Count(cl, "tsc=reliable") != 1 {
		t.Errorf("cmdline %q", cl)
	}
	// A tsc= the caller chose is theirs.
	spec.Cmdline = "console=ttyS0 tsc=unstable"
	if cl := kernelCmdline(spec, newLayout(spec.RunDir, TransportVsock, 9, 0), AccelTCG, 2500000); strings.Contains(cl, "tsc=reliable") {
		t.Errorf("cmdline %q overrides the caller's tsc=", cl)
	}
	spec.Cmdline = "console=ttyS0 tsc_early_khz=1000"
	// RAM in a file: shared for a VM to snapshot, copy-on-write and waiting for the state
	// for a clone.
	spec.MemoryFile = "/snap/mem,x"
	for _, c := range []struct {
		o    argOptions
		want []string
		not  string
	}{
		{argOptions{Accel: AccelTCG}, []string{"-M microvm,acpi=on,memory-backend=microvm.ram ", "-object memory-backend-file,id=microvm.ram,size=512M,mem-path=/snap/mem,,x,share=on"}, "-incoming"},
		{argOptions{Accel: AccelTCG, PrivateMemory: true, Incoming: true}, []string{"mem-path=/snap/mem,,x,share=off", "-incoming defer"}, "share=on"},
	} {
		joined := strings.Join(qemuArgs(spec, l, c.o), " ")
		for _, w := range c.want {
			if !strings.Contains(joined, w) {
				t.Errorf("memory file args lack %q: %s", w, joined)
			}
		}
		if strings.Contains(joined, c.not) {
			t.Errorf("memory file args have %q: %s", c.not, joined)
		}
	}
	spec.MemoryFile = ""

	// Start's form: QEMU gets its QMP socket already listening, on a descriptor.
	got = qemuArgs(spec, l, argOptions{Accel: AccelTCG, CPU: "max", QMPFD: 3})
	joined = strings.Join(got, " ")
	if !strings.Contains(joined, "-chardev socket,id=qmp,fd=3,server=on,wait=off -mon chardev=qmp,mode=control") || strings.Contains(joined, "-qmp") {
		t.Errorf("args with a passed QMP socket: %s", joined)
	}
}

// TestKernelCmdlineDefaults: the driver adds QEMU's console, reboot and panic keys, and
// never a second one of a key the caller set (the daemon may or may not pass them).
func TestKernelCmdlineDefaults(t *testing.T) {
	l := newLayout("/r", TransportSerial, 0, 0)
	for in, want := range map[string]string{
		"":                                    "console=ttyS0 reboot=t panic=-1 banger.agent=serial",
		"banger.hostname=a":                   "banger.hostname=a console=ttyS0 reboot=t panic=-1 banger.agent=serial",
		"console=ttyS0 reboot=t panic=-1 x=1": "console=ttyS0 reboot=t panic=-1 x=1 banger.agent=serial",
		"console=hvc0 panic=5":                "console=hvc0 panic=5 reboot=t banger.agent=serial",
		"  reboot=k  ":                        "reboot=k console=ttyS0 panic=-1 banger.agent=serial",
	} {
		spec := vmm.MachineSpec{Cmdline: in}
		if got := kernelCmdline(spec, l, AccelKVM, 0); got != want {
			t.Errorf("kernelCmdline(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestNewDefaults(t *testing.T) {
	d := New(Config{})
	if d.cfg.Binary != "qemu-system-x86_64" || d.cfg.Accel != AccelTCG || d.cfg.CPUModel != "max" || d.Name() != "qemu" || d.cfg.Sandbox != SandboxAuto {
		t.Errorf("defaults %+v", d.cfg)
	}
	if d := New(Config{Accel: AccelKVM}); d.cfg.CPUModel != "host" {
		t.Errorf("kvm cpu %q", d.cfg.CPUModel)
	}
}

// TestStartRejects covers the checks Start makes before it runs anything.
func TestStartRejects(t *testing.T) {
	dir := t.TempDir()
	files := map[string]string{}
	for _, f := range []string{"vmlinuz", "initrd", "root.ext4", "work.ext4"} {
		p := filepath.Join(dir, f)
		if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
		files[f] = p
	}
	run, err := os.MkdirTemp("", "bgr-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(run) })
	good := func() vmm.MachineSpec {
		return vmm.MachineSpec{
			Name: "t", Kernel: files["vmlinuz"], Initramfs: files["initrd"],
			Drives: []vmm.Drive{
				{ID: "rootfs", Path: files["root.ext4"], ReadOnly: true, Role: vmm.RoleRoot},
				{ID: "work", Path: files["work.ext4"], Role: vmm.RoleWork},
			},
			VCPUs: 1, MemoryMiB: 256, RunDir: run,
		}
	}
	public := t.TempDir()
	if err := os.Chmod(public, 0o755); err != nil {
		t.Fatal(err)
	}
	long := filepath.Join(dir, strings.Repeat("d", 110))
	if err := os.Mkdir(long, 0o700); err != nil {
		t.Fatal(err)
	}
	cases := map[string]struct {
		cfg    Config
		mutate func(*vmm.MachineSpec)
	}{
		"no kernel":                    {mutate: func(s *vmm.MachineSpec) { s.Kernel = "" }},
		"need at least 64":             {mutate: func(s *vmm.MachineSpec) { s.MemoryMiB = 8 }},
		"need exactly one root drive":  {mutate: func(s *vmm.MachineSpec) { s.Drives[0].Role = vmm.RoleExtra }},
		"unknown accelerator \"hvf\"":  {cfg: Config{Accel: "hvf"}},
		"kernel: stat /nonexistent":    {mutate: func(s *vmm.MachineSpec) { s.Kernel = "/nonexistent/vmlinuz" }},
		"initramfs: stat /nonexistent": {mutate: func(s *vmm.MachineSpec) { s.Initramfs = "/nonexistent/initrd" }},
		"drive work: stat":             {mutate: func(s *vmm.MachineSpec) { s.Drives[1].Path = "/nonexistent/work" }},
		"is not a file":                {mutate: func(s *vmm.MachineSpec) { s.Drives[1].Path = dir }},
		"2 work drives: at most one": {mutate: func(s *vmm.MachineSpec) {
			s.Drives = append(s.Drives, vmm.Drive{ID: "w2", Path: files["work.ext4"], Role: vmm.RoleWork})
		}},
		"run directory: stat":           {mutate: func(s *vmm.MachineSpec) { s.RunDir = "/nonexistent/run" }},
		"private to its owner":          {mutate: func(s *vmm.MachineSpec) { s.RunDir = public }},
		"Unix sockets allow 107":        {mutate: func(s *vmm.MachineSpec) { s.RunDir = long }},
		"TAP device bgr-nonexist0 does": {mutate: func(s *vmm.MachineSpec) { s.NICs = []vmm.NIC{{TAP: "bgr-nonexist0"}} }},
		"lo is not a TAP device":        {mutate: func(s *vmm.MachineSpec) { s.NICs = []vmm.NIC{{TAP: "lo"}} }},
		"must be 1-15 characters":       {mutate: func(s *vmm.MachineSpec) { s.NICs = []vmm.NIC{{TAP: "a-very-long-tap-name"}} }},
		"unknown agent transport":       {cfg: Config{AgentTransport: "pigeon"}},
		"unknown sandbox setting":       {cfg: Config{Sandbox: "maybe"}},
		"agent over vsock: open":        {cfg: Config{AgentTransport: TransportVsock}},
		"executable file not found":     {cfg: Config{Binary: "no-such-qemu-xyz"}},
	}
	for want, c := range cases {
		t.Run(want, func(t *testing.T) {
			spec := good()
			if c.mutate != nil {
				c.mutate(&spec)
			}
			d := New(c.cfg)
			d.vhostVsock = filepath.Join(dir, "no-vhost-vsock") // as on this host: absent
			m, err := d.Start(context.Background(), spec)
			if err == nil {
				m.Kill()
				t.Fatalf("Start succeeded, want error with %q", want)
			}
			if !strings.Contains(err.Error(), want) {
				t.Fatalf("Start: %v\nwant error with %q", err, want)
			}
		})
	}
	// Without a usable /dev/vhost-vsock, auto picks virtio-serial.
	d := New(Config{})
	d.vhostVsock = filepath.Join(dir, "no-vhost-vsock")
	if tr, _, err := d.agentChannel(); err != nil || tr != TransportSerial {
		t.Errorf("agentChannel without vhost-vsock = %q, %v", tr, err)
	}
}

func TestExitReason(t *testing.T) {
	run := func(script string) *os.ProcessState {
		t.Helper()
		cmd := exec.Command("sh", "-c", script)
		_ = cmd.Run()
		return cmd.ProcessState
	}
	exit0, exit1, killed := run("exit 0"), run("exit 1"), run("kill -9 $$")
	console := []string{"[ 1.0] reboot: Power down"}
	panicConsole := []string{"[ 1.0] Kernel panic - not syncing: Attempted to kill init!", "[ 1.1] Rebooting in 1 seconds.."}
	log := []string{"qemu-system-x86_64: -netdev tap: could not configure /dev/net/tun: Operation not permitted"}
	cases := []struct {
		ps      *os.ProcessState
		sd      *shutdownEvent
		killed  bool
		note    string
		console []string
		log     []string
		reason  string
		clean   bool
	}{
		{exit0, &shutdownEvent{true, "guest-shutdown"}, false, "", console, nil, "guest powered off", true},
		{exit0, nil, false, "", console, nil, "guest powered off", true},
		{exit0, &shutdownEvent{true, "guest-reset"}, false, "", console, nil, "guest rebooted (QEMU runs with -no-reboot, so the VM stopped)", true},
		{exit0, &shutdownEvent{true, "guest-reset"}, false, "", panicConsole, nil, "guest kernel panicked", false},
		{exit0, &shutdownEvent{false, "host-signal"}, false, "", console, nil, "qemu was stopped by a signal on the host", false},
		{exit0, nil, false, "", console, []string{"qemu-system-x86_64: terminating on signal 15 from pid 1"}, "qemu was stopped by a signal on the host: qemu-system-x86_64: terminating on signal 15 from pid 1", false},
		{exit0, &shutdownEvent{false, "host-qmp-quit"}, false, "", nil, nil, "qemu was told to quit over QMP", false},
		{exit1, nil, false, "", nil, log, "exit status 1: " + log[0], false},
		{killed, nil, false, "", nil, nil, "killed by signal 9 (SIGKILL)", false},
		{killed, nil, true, "the guest did not shut down within 10s", nil, nil, "killed by signal 9 (SIGKILL): the guest did not shut down within 10s", false},
		{nil, nil, true, "", nil, nil, "killed by signal 9 (SIGKILL)", false},
		{nil, &shutdownEvent{true, "guest-shutdown"}, false, "", nil, nil, "guest powered off", true},
		{nil, nil, false, "", nil, nil, "qemu exited (status unknown: it was started by an earlier daemon)", false},
	}
	for i, c := range cases {
		reason, clean := exitReason(c.ps, c.sd, c.killed, c.note, c.console, c.log)
		if reason != c.reason || clean != c.clean {
			t.Errorf("case %d: %q, %v; want %q, %v", i, reason, clean, c.reason, c.clean)
		}
	}
}

// fakeQMP serves QMP on a Unix socket: greeting, capabilities, query-status, quit (with a
// SHUTDOWN event). silent makes it accept and say nothing.
func fakeQMP(t *testing.T, silent bool) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "bgr-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	path := filepath.Join(dir, "qmp.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func(c net.Conn) {
				defer c.Close()
				if silent { // reads what it is sent, answers nothing
					_, _ = io.Copy(io.Discard, c)
					return
				}
				write := func(s string) { c.Write([]byte(s + "\r\n")) }
				serveQMPConn(c, write, map[string]func(id string) bool{
					"qmp_capabilities": func(string) bool { write(`{"return": {}}`); return true },
					"query-status": func(id string) bool {
						write(`{"event": "RESUME", "data": {}, "timestamp": {"seconds": 1, "microseconds": 2}}`)
						write(`{"return": {"status": "running", "singlestep": false, "running": true}` + id + "}")
						return true
					},
					"quit": func(id string) bool {
						write(`{"return": {}` + id + "}")
						write(`{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "SHUTDOWN", "data": {"guest": false, "reason": "host-qmp-quit"}}`)
						return false
					},
				})
			}(c)
		}
	}()
	return path
}

func TestQMPClient(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	q, err := dialQMP(ctx, fakeQMP(t, false))
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	if st, err := q.queryStatus(ctx); err != nil || st != "running" {
		t.Fatalf("query-status = %q, %v", st, err)
	}
	if _, err := q.run(ctx, "no-such-command", nil); err == nil || !strings.Contains(err.Error(), "CommandNotFound") {
		t.Fatalf("unknown command: %v", err)
	}
	if _, err := q.run(ctx, "quit", nil); err != nil {
		t.Fatalf("quit: %v", err)
	}
	q.waitEventsDone(5 * time.Second)
	if sd := q.lastShutdown(); sd == nil || sd.Guest || sd.Reason != "host-qmp-quit" {
		t.Fatalf("shutdown event %+v", sd)
	}
	if _, err := q.run(ctx, "query-status", nil); err == nil {
		t.Fatal("command on a closed connection succeeded")
	}
}

func TestQMPSilentServerTimesOut(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := dialQMP(ctx, fakeQMP(t, true))
	if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 5*time.Second {
		t.Fatalf("dial of a silent QMP: %v after %s", err, time.Since(start))
	}
	if _, err := dialQMP(context.Background(), filepath.Join(t.TempDir(), "none.sock")); !errors.Is(err, syscall.ENOENT) {
		t.Fatalf("dial of a missing socket: %v", err)
	}
}

// TestSandboxProbe: the real QEMU here supports the sandbox; a binary that is not a
// sandbox-capable QEMU does not, and sandbox = on then refuses to start; a probe cut short
// by ctx is reported, not remembered.
func TestSandboxProbe(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	noSeccomp := filepath.Join(dir, "qemu-without-seccomp")
	os.WriteFile(noSeccomp, []byte("#!/bin/sh\necho 'qemu-system-x86_64: -sandbox on: There is no option group sandbox' >&2\nexit 1\n"), 0o700)
	ok, detail, err := SandboxSupported(ctx, noSeccomp)
	if ok || err != nil || !strings.Contains(detail, "no option group sandbox") {
		t.Errorf("no seccomp: %v %q %v", ok, detail, err)
	}
	if _, _, err := SandboxSupported(ctx, filepath.Join(dir, "missing")); err == nil {
		t.Error("missing binary: no error")
	}
	d := New(Config{Binary: noSeccomp, Sandbox: SandboxOn})
	if _, err := d.useSandbox(ctx, noSeccomp); err == nil || !strings.Contains(err.Error(), "cannot run sandboxed") {
		t.Errorf("sandbox = on without support: %v", err)
	}
	if on, err := New(Config{Sandbox: SandboxAuto}).useSandbox(ctx, noSeccomp); on || err != nil {
		t.Errorf("auto without support: %v %v", on, err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	d = New(Config{})
	if _, err := d.useSandbox(cctx, noSeccomp); err == nil || d.sandboxProbed {
		t.Errorf("cancelled probe: %v, remembered %v", err, d.sandboxProbed)
	}
	q, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		t.Skip("no qemu-system-x86_64 here (apt-get install qemu-system-x86)")
	}
	if ok, detail, err := SandboxSupported(ctx, q); !ok || err != nil {
		t.Errorf("real qemu: %v %q %v", ok, detail, err)
	}
}

// TestWarm: Warm does the probes the first Start would (the sandbox, the TSC), so Start
// finds them done; a missing QEMU is an error that says what to install.
func TestWarm(t *testing.T) {
	ctx := context.Background()
	if err := New(Config{Binary: filepath.Join(t.TempDir(), "no-qemu")}).Warm(ctx); err == nil || !strings.Contains(err.Error(), "apt-get install qemu-system-x86") {
		t.Errorf("warm without qemu: %v", err)
	}
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Skip("no qemu-system-x86_64 here (apt-get install qemu-system-x86)")
	}
	d := New(Config{Accel: AccelTCG})
	if err := d.Warm(ctx); err != nil {
		t.Fatal(err)
	}
	d.sandboxMu.Lock()
	probed := d.sandboxProbed
	d.sandboxMu.Unlock()
	if !probed {
		t.Error("Warm did not probe the sandbox")
	}
	// "cpu MHz" may move between reads: that Warm measured it at all is the point.
	if _, err := hostinfo.TSCKHz(); err == nil && d.tsc <= 0 {
		t.Errorf("Warm did not measure the TSC (%d kHz) though the host has one", d.tsc)
	}
}
