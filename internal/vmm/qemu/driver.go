// Package qemu runs banger VMs on `qemu-system-x86_64 -M microvm`, with KVM or with
// software emulation (TCG), controlled over QMP. The guest agent is reached over
// vhost-vsock when the host has a usable /dev/vhost-vsock, else over a virtio-serial port
// whose chardev is a Unix socket in the VM's run directory.
//
// QEMU runs as a child of the daemon in its own session (so terminal signals aimed at the
// daemon do not reach it) and writes everything to files, so it keeps running when the
// daemon exits; a new daemon finds it again with Reattach.
package qemu

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"time"

	"github.com/banger-vm/banger/internal/agent/agentclient"
	"github.com/banger-vm/banger/internal/hostinfo"
	"github.com/banger-vm/banger/internal/vmm"
	"github.com/banger-vm/banger/internal/vmm/proc"
)

// Accelerators.
const (
	AccelKVM = "kvm"
	AccelTCG = "tcg"
)

// DriverName is the driver's name in vmm.State.
const DriverName = "qemu"

// Config configures the driver.
type Config struct {
	// Binary is the QEMU to run; default qemu-system-x86_64 found on PATH.
	Binary string
	// Accel is "kvm" or "tcg" (default): the caller decides with vmm.Choose, after a real
	// KVM probe. Under "tcg" the guest gets tsc_early_khz=<host TSC kHz>.
	Accel string
	// CPUModel is QEMU's -cpu; default "host" with KVM, "max" with TCG.
	CPUModel string
	// AgentTransport forces "serial" or "vsock"; empty picks vsock when /dev/vhost-vsock is
	// usable, else serial.
	AgentTransport string
	// TSCKHz overrides the host TSC frequency given to TCG guests; 0 measures it
	// (hostinfo.TSCKHz). If it cannot be measured the key is left out.
	TSCKHz int
	// ConsoleCap bounds the console log (console.log plus console.log.1) in bytes; 0 means
	// proc.DefaultConsoleCap.
	ConsoleCap int64
	// Sandbox is "auto" (default: QEMU's seccomp sandbox when this QEMU has it), "on"
	// (required: Start fails without it) or "off".
	Sandbox string
	// QMPTimeout bounds QEMU's QMP handshake after Start, which goes on in the background:
	// a QEMU that has not answered by then is killed. 0 means 30s.
	QMPTimeout time.Duration
}

// Driver starts and reattaches QEMU VMs. It is safe for concurrent use.
type Driver struct {
	cfg Config

	// vhostVsock is the vhost-vsock device; a variable so tests can point it elsewhere.
	vhostVsock string

	tscOnce sync.Once
	tsc     int

	sandboxMu     sync.Mutex
	sandboxProbed bool
	sandboxOK     bool
	sandboxDetail string
}

// New returns a driver for cfg, with defaults filled in.
func New(cfg Config) *Driver {
	if cfg.Binary == "" {
		cfg.Binary = "qemu-system-x86_64"
	}
	if cfg.Accel == "" {
		cfg.Accel = AccelTCG
	}
	if cfg.Sandbox == "" {
		cfg.Sandbox = SandboxAuto
	}
	if cfg.QMPTimeout <= 0 {
		cfg.QMPTimeout = startQMPTimeout
	}
	if cfg.CPUModel == "" {
		cfg.CPUModel = "max"
		if cfg.Accel == AccelKVM {
			cfg.CPUModel = "host"
		}
	}
	return &Driver{cfg: cfg, vhostVsock: "/dev/vhost-vsock"}
}

var (
	_ vmm.Driver     = (*Driver)(nil)
	_ vmm.BareBooter = (*Driver)(nil)
	_ vmm.Warmer     = (*Driver)(nil)
)

// Warm does what the first Start would otherwise pay for: it finds QEMU, probes its
// sandbox support and measures the host's TSC frequency (for TCG guests).
func (d *Driver) Warm(ctx context.Context) error {
	bin, err := exec.LookPath(d.cfg.Binary)
	if err != nil {
		return fmt.Errorf("qemu: %w (apt-get install qemu-system-x86)", err)
	}
	if d.cfg.Accel == AccelTCG {
		d.tscKHz()
	}
	_, err = d.useSandbox(ctx, bin)
	return err
}

// Name is "qemu".
func (d *Driver) Name() string { return DriverName }

// Timeouts for QMP to answer.
const (
	// startQMPTimeout is the default Config.QMPTimeout. QMP answers once QEMU has set the
	// machine up (the kernel loaded) and its main loop runs, well before the guest boots:
	// a few hundred milliseconds normally, seconds on a badly loaded host.
	startQMPTimeout = 30 * time.Second
	// reattachQMPTimeout bounds Reattach's QMP handshake.
	reattachQMPTimeout = 10 * time.Second
)

func (d *Driver) tscKHz() int {
	if d.cfg.TSCKHz > 0 {
		return d.cfg.TSCKHz
	}
	d.tscOnce.Do(func() {
		// Not fatal: without the key the guest calibrates its clock itself, which works
		// on an idle host and is merely at risk of hanging on a loaded one.
		d.tsc, _ = hostinfo.TSCKHz()
	})
	return d.tsc
}

// check finds what would make QEMU fail, and says it in banger's words, before starting it.
func (d *Driver) check(spec vmm.MachineSpec) error {
	if err := spec.Validate(); err != nil {
		return err
	}
	switch d.cfg.Accel {
	case AccelKVM, AccelTCG:
	default:
		return fmt.Errorf("qemu: unknown accelerator %q: use kvm or tcg", d.cfg.Accel)
	}
	switch d.cfg.Sandbox {
	case SandboxAuto, SandboxOn, SandboxOff:
	default:
		return fmt.Errorf("qemu: unknown sandbox setting %q: use auto, on or off", d.cfg.Sandbox)
	}
	fi, err := os.Stat(spec.RunDir)
	if err != nil {
		return fmt.Errorf("machine spec: run directory: %w", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("machine spec: run directory %s is not a directory", spec.RunDir)
	}
	// Whoever can reach the QMP socket controls the VM.
	if fi.Mode().Perm()&0o077 != 0 {
		return fmt.Errorf("machine spec: run directory %s is mode %04o: it must be private to its owner (chmod 700)", spec.RunDir, fi.Mode().Perm())
	}
	for _, name := range []string{qmpSocketName, agentSocketName} {
		if err := proc.CheckSocketPath(filepath.Join(spec.RunDir, name)); err != nil {
			return fmt.Errorf("machine spec: run directory %s is too long: %w", spec.RunDir, err)
		}
	}
	files := []struct{ what, path string }{{"kernel", spec.Kernel}}
	if spec.Initramfs != "" {
		files = append(files, struct{ what, path string }{"initramfs", spec.Initramfs})
	}
	for _, dr := range spec.Drives {
		files = append(files, struct{ what, path string }{"drive " + dr.ID, dr.Path})
	}
	for _, f := range files {
		fi, err := os.Stat(f.path)
		if err != nil {
			return fmt.Errorf("machine spec: %s: %w", f.what, err)
		}
		if !fi.Mode().IsRegular() && fi.Mode()&os.ModeDevice == 0 {
			return fmt.Errorf("machine spec: %s %s is not a file", f.what, f.path)
		}
	}
	roles := map[vmm.DriveRole]int{}
	for _, dr := range spec.Drives {
		roles[dr.Role]++
	}
	for _, r := range []vmm.DriveRole{vmm.RoleLayer, vmm.RoleWork} {
		if roles[r] > 1 {
			return fmt.Errorf("machine spec: %d %s drives: at most one", roles[r], r)
		}
	}
	for _, n := range spec.NICs {
		// As root, QEMU would silently create a missing TAP, unattached to any bridge; as a
		// user it would fail with a cryptic TUNSETIFF error. The root helper makes TAPs.
		if n.TAP == "" || len(n.TAP) > 15 {
			return fmt.Errorf("machine spec: TAP name %q: must be 1-15 characters", n.TAP)
		}
		if _, err := os.Stat(filepath.Join("/sys/class/net", n.TAP, "tun_flags")); err != nil {
			if _, err2 := os.Stat(filepath.Join("/sys/class/net", n.TAP)); err2 == nil {
				return fmt.Errorf("machine spec: network device %s is not a TAP device", n.TAP)
			}
			return fmt.Errorf("machine spec: TAP device %s does not exist (the banger helper creates it: is it running?)", n.TAP)
		}
		if len(n.MAC) != 0 && len(n.MAC) != 6 {
			return fmt.Errorf("machine spec: MAC %s of TAP %s: want 6 bytes", n.MAC, n.TAP)
		}
	}
	return nil
}

// agentChannel picks the agent transport: vhost-vsock when the device can be opened (and
// then a free CID), else virtio-serial.
func (d *Driver) agentChannel() (string, uint32, error) {
	random := func() uint32 { return 3 + rand.Uint32N(1<<31) } // 0-2 are reserved
	switch d.cfg.AgentTransport {
	case TransportSerial:
		return TransportSerial, 0, nil
	case TransportVsock:
		cid, err := reserveCID(d.vhostVsock, random)
		if err != nil {
			return "", 0, fmt.Errorf("qemu: agent over vsock: %w", err)
		}
		return TransportVsock, cid, nil
	case "":
		if cid, err := reserveCID(d.vhostVsock, random); err == nil {
			return TransportVsock, cid, nil
		}
		return TransportSerial, 0, nil
	}
	return "", 0, fmt.Errorf("qemu: unknown agent transport %q: use serial or vsock", d.cfg.AgentTransport)
}

// removeSockets removes the sockets QEMU makes in runDir (after QEMU is gone).
func removeSockets(runDir string) {
	for _, name := range []string{qmpSocketName, agentSocketName} {
		p := filepath.Join(runDir, name)
		if fi, err := os.Lstat(p); err == nil && fi.Mode()&os.ModeSocket != 0 {
			_ = os.Remove(p)
		}
	}
}

// CommandLine returns the QEMU binary and arguments Start would run for spec (with the
// agent transport picked now), for `banger vm inspect` and for running QEMU by hand: QEMU
// makes the QMP socket itself there (-qmp), where Start passes it one already listening.
func (d *Driver) CommandLine(spec vmm.MachineSpec) (string, []string, error) {
	if err := d.check(spec); err != nil {
		return "", nil, err
	}
	transport, cid, err := d.agentChannel()
	if err != nil {
		return "", nil, err
	}
	sandbox, err := d.useSandbox(context.Background(), d.cfg.Binary)
	if err != nil {
		return "", nil, err
	}
	l := newLayout(spec.RunDir, transport, cid, spec.AgentPort)
	return d.cfg.Binary, qemuArgs(spec, l, d.argOpts(sandbox)), nil
}

// argOpts are the driver settings qemuArgs needs.
func (d *Driver) argOpts(sandbox bool) argOptions {
	return argOptions{Accel: d.cfg.Accel, CPU: d.cfg.CPUModel, TSCKHz: d.tscKHz(), Sandbox: sandbox}
}

// qmpFD is the descriptor QEMU gets its listening QMP socket on: the first of
// proc.Options.ExtraFiles.
const qmpFD = 3

// spawn starts QEMU for spec with its QMP socket made here and passed in (listenQMP). With
// connect set it also returns a connection to that socket, made before QEMU runs (queued
// until QEMU's monitor accepts it). On error nothing is left: no process, no sockets.
func (d *Driver) spawn(bin string, spec vmm.MachineSpec, l layout, o argOptions, connect, dieWithParent bool) (argv []string, p *proc.Process, c net.Conn, err error) {
	o.QMPFD = qmpFD
	argv = append([]string{bin}, qemuArgs(spec, l, o)...)
	// Sockets left by a VM that died uncleanly would be in the way.
	removeSockets(spec.RunDir)
	ln, err := listenQMP(l.QMPSocket)
	if err != nil {
		return argv, nil, nil, err
	}
	defer ln.Close() // QEMU has its own copy
	defer func() {
		if err != nil {
			if c != nil {
				c.Close()
			}
			removeSockets(spec.RunDir)
		}
	}()
	if connect {
		if c, err = net.Dial("unix", l.QMPSocket); err != nil {
			return argv, nil, nil, fmt.Errorf("qmp socket: %w", err)
		}
	}
	p, err = proc.Spawn(proc.Options{Argv: argv, Dir: spec.RunDir, Log: l.QEMULog, Console: d.console(l),
		ExtraFiles: []*os.File{ln}, DieWithParent: dieWithParent})
	if err != nil {
		return argv, nil, nil, err
	}
	return argv, p, c, nil
}

// console is where QEMU's serial console goes: a FIFO copied into the capped console.log.
func (d *Driver) console(l layout) *proc.Console {
	return &proc.Console{FIFO: l.ConsoleFIFO, Log: l.ConsoleLog, Cap: d.cfg.ConsoleCap}
}

// Start boots spec and returns once QEMU runs; it waits neither for QEMU's own setup nor
// for the guest agent (Agent().WaitReady does). QMP's handshake goes on in the background
// on a connection made before QEMU started: QEMU answers it only once its main loop runs,
// after it has loaded the kernel, and that is QEMU's own boot, which the caller's wait for
// the agent already covers. A QEMU that fails from here on ends, closing Done, with Exit
// saying why (its own words from qemu.log, or that QMP did not answer within
// Config.QMPTimeout, for which it is killed). If Start fails, QEMU is killed and its
// sockets removed; console.log and qemu.log stay in RunDir to explain what happened.
func (d *Driver) Start(ctx context.Context, spec vmm.MachineSpec) (vmm.Machine, error) {
	m, err := d.launch(ctx, spec, false)
	if err != nil {
		return nil, err
	}
	return m, nil
}

// launch spawns QEMU for spec, booting it or (restore) waiting for a migration stream with
// the memory file mapped copy-on-write, and starts the QMP handshake in the background.
func (d *Driver) launch(ctx context.Context, spec vmm.MachineSpec, restore bool) (*machine, error) {
	if err := d.check(spec); err != nil {
		return nil, err
	}
	bin, err := exec.LookPath(d.cfg.Binary)
	if err != nil {
		return nil, fmt.Errorf("qemu: %w (apt-get install qemu-system-x86)", err)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("start %s: %w", spec.Name, context.Cause(ctx))
	}
	transport, cid, err := d.agentChannel()
	if err != nil {
		return nil, err
	}
	sandbox, err := d.useSandbox(ctx, bin)
	if err != nil {
		return nil, err
	}
	l := newLayout(spec.RunDir, transport, cid, spec.AgentPort)
	o := d.argOpts(sandbox)
	o.PrivateMemory, o.Incoming = restore, restore
	_, p, conn, err := d.spawn(bin, spec, l, o, true, false)
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", spec.Name, err)
	}
	st := vmm.State{
		PID:            p.PID(),
		StartTime:      p.StartTime(),
		RunDir:         spec.RunDir,
		ConsoleLog:     l.ConsoleLog,
		ControlSocket:  l.QMPSocket,
		AgentSocket:    l.AgentSocket,
		AgentTransport: l.Transport,
		VsockCID:       l.CID,
		AgentPort:      l.AgentPort,
		Accel:          d.cfg.Accel,
		MemoryFile:     spec.MemoryFile,
	}
	m := newMachine(st, l, p)
	m.agent = agentClient(l)
	go m.connectQMP(conn, d.cfg.QMPTimeout)
	return m, nil
}

func agentClient(l layout) *agentclient.Client {
	if l.Transport == TransportVsock {
		return agentclient.NewVsock(l.CID, l.AgentPort)
	}
	return agentclient.NewSerial(l.AgentSocket)
}

// Reattach finds a VM an earlier daemon started, from its persisted State: the process must
// still be the one that started at st.StartTime (else vmm.ErrGone). It reconnects QMP and
// builds a new agent client; the VM is not the daemon's child now, so its end is watched
// through a pidfd and its exit status is unknown.
func (d *Driver) Reattach(ctx context.Context, st vmm.State) (_ vmm.Machine, err error) {
	port := st.AgentPort
	l := layout{
		QMPSocket:   st.ControlSocket,
		AgentSocket: st.AgentSocket,
		ConsoleLog:  st.ConsoleLog,
		ConsoleFIFO: filepath.Join(st.RunDir, consoleFIFOName),
		QEMULog:     filepath.Join(st.RunDir, qemuLogName),
		Transport:   st.AgentTransport,
		CID:         st.VsockCID,
		AgentPort:   port,
	}
	if l.QMPSocket == "" {
		l.QMPSocket = filepath.Join(st.RunDir, qmpSocketName)
	}
	if l.ConsoleLog == "" {
		l.ConsoleLog = filepath.Join(st.RunDir, consoleLogName)
	}
	switch l.Transport {
	case TransportSerial:
		if l.AgentSocket == "" {
			l.AgentSocket = filepath.Join(st.RunDir, agentSocketName)
		}
	case TransportVsock:
	default:
		return nil, fmt.Errorf("reattach qemu pid %d: unknown agent transport %q", st.PID, l.Transport)
	}
	p, err := proc.Attach(st.PID, st.StartTime, d.console(l))
	if err != nil {
		return nil, fmt.Errorf("reattach qemu: %w", err)
	}
	m := newMachine(st, l, p)
	defer func() {
		if err != nil {
			p.Release()
			m.Close()
			m.qmpEnded(nil, err)
		}
	}()
	qctx, cancel := context.WithTimeout(ctx, reattachQMPTimeout)
	defer cancel()
	q, err := dialQMP(qctx, l.QMPSocket)
	if err == nil {
		if _, err = q.queryStatus(qctx); err != nil {
			q.Close()
		}
	}
	if err != nil {
		select {
		case <-m.done:
			return nil, fmt.Errorf("reattach qemu: %w: pid %d exited", vmm.ErrGone, st.PID)
		default:
		}
		return nil, fmt.Errorf("reattach qemu pid %d: QMP does not answer on %s: %w", st.PID, l.QMPSocket, err)
	}
	m.agent = agentClient(l)
	m.qmpEnded(q, nil)
	return m, nil
}
