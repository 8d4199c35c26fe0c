// Package firecracker is banger's Firecracker driver: it spawns `firecracker` (optionally
// under its jailer), configures the VM through the REST API on its Unix socket with a small
// typed client (the Go SDK is not used), boots it, and talks to the guest agent over
// Firecracker's hybrid vsock.
package firecracker

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/banger-vm/banger/internal/agent"
	"github.com/banger-vm/banger/internal/agent/agentclient"
	"github.com/banger-vm/banger/internal/kernelimage"
	"github.com/banger-vm/banger/internal/vmm"
)

// Name is the driver's name in vmm.State.Driver.
const Name = "firecracker"

// GuestCID is the guest's vsock context id: 3 is the first one not reserved, and each VM
// has its own vsock device, so every guest can use it.
const GuestCID = 3

// MinVersion is the oldest Firecracker banger drives: 1.8 added ACPI device discovery,
// which Debian kernels need (they lack VIRTIO_MMIO_CMDLINE_DEVICES).
var MinVersion = [3]int{1, 8, 0}

// File names inside the VM's RunDir (or the jail's root).
const (
	apiSocketName   = "fc.sock"
	vsockSocketName = "vsock.sock"
	consoleLogName  = "console.log"
)

// Config configures the driver.
type Config struct {
	// Binary is the firecracker executable; empty means "firecracker" on PATH.
	Binary string
	// KernelCacheDir holds vmlinux files extracted from bzImages (kernelimage.Ensure);
	// empty means <user cache dir>/banger/vmlinux.
	KernelCacheDir string
	// Jailer, when set, runs Firecracker under the jailer.
	Jailer *JailerConfig
	// StartTimeout bounds how long Firecracker may take to open its API socket
	// (default 10s).
	StartTimeout time.Duration
	// PollInterval is how often a reattached VM's process is checked (default 250ms).
	PollInterval time.Duration
}

// Driver starts Firecracker VMs. It holds no state besides its configuration.
type Driver struct {
	cfg Config
}

// New returns a driver.
func New(cfg Config) *Driver {
	if cfg.StartTimeout <= 0 {
		cfg.StartTimeout = 10 * time.Second
	}
	if cfg.PollInterval <= 0 {
		cfg.PollInterval = 250 * time.Millisecond
	}
	return &Driver{cfg: cfg}
}

var _ vmm.Driver = (*Driver)(nil)

// Name implements vmm.Driver.
func (d *Driver) Name() string { return Name }

func (d *Driver) binary() (string, error) {
	b := d.cfg.Binary
	if b == "" {
		b = "firecracker"
	}
	p, err := exec.LookPath(b)
	if err != nil {
		return "", fmt.Errorf("firecracker binary: %w (install Firecracker >= %d.%d or set the driver's binary path)", err, MinVersion[0], MinVersion[1])
	}
	return filepath.Abs(p)
}

func (d *Driver) kernelCacheDir() (string, error) {
	if d.cfg.KernelCacheDir != "" {
		return d.cfg.KernelCacheDir, nil
	}
	c, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("kernel cache: %w (set the driver's KernelCacheDir)", err)
	}
	return filepath.Join(c, "banger", "vmlinux"), nil
}

// layout says where the VM's files are, on the host and as Firecracker sees them (they
// differ inside a jail).
type layout struct {
	apiHost, vsockHost     string // host paths of the sockets
	apiGuest, vsockGuest   string // the same paths as passed to Firecracker
	console                string
	chrootDir, chrootRoot  string // jailer only
	kernelGuest, initGuest string
	driveGuest             []string
}

// unixPathMax is sun_path's size on Linux, including the terminating NUL.
const unixPathMax = 108

// Start implements vmm.Driver: spawn, wait for the API, configure, boot. On any failure
// after the spawn the process is killed and its sockets (and jail) removed.
func (d *Driver) Start(ctx context.Context, spec vmm.MachineSpec) (_ vmm.Machine, err error) {
	if err := spec.Validate(); err != nil {
		return nil, err
	}
	if spec.AgentPort == 0 {
		spec.AgentPort = agent.DefaultVsockPort
	}
	if len(spec.Drives) > 26*27 {
		return nil, fmt.Errorf("machine spec: %d drives is too many", len(spec.Drives))
	}
	bin, err := d.binary()
	if err != nil {
		return nil, err
	}
	cacheDir, err := d.kernelCacheDir()
	if err != nil {
		return nil, err
	}
	// Released Firecracker loads only ELF vmlinux on x86_64: extract it from a bzImage.
	vmlinux, err := kernelimage.Ensure(cacheDir, spec.Kernel)
	if err != nil {
		return nil, fmt.Errorf("prepare the kernel for firecracker: %w", err)
	}
	cmdline, err := bootArgs(spec, spec.AgentPort)
	if err != nil {
		return nil, err
	}

	lay := layout{console: filepath.Join(spec.RunDir, consoleLogName)}
	var argv []string
	var jailID string
	if j := d.cfg.Jailer; j != nil {
		jailID = jailerID(spec.Name, spec.RunDir)
		lay.chrootDir = j.chrootDir(bin, jailID)
		lay.chrootRoot = j.chrootRoot(bin, jailID)
		lay.apiGuest, lay.vsockGuest = "/"+apiSocketName, "/"+vsockSocketName
		lay.apiHost = filepath.Join(lay.chrootRoot, apiSocketName)
		lay.vsockHost = filepath.Join(lay.chrootRoot, vsockSocketName)
		if argv, err = jailerArgv(*j, jailID, bin, []string{"--api-sock", lay.apiGuest}); err != nil {
			return nil, err
		}
	} else {
		lay.apiHost = filepath.Join(spec.RunDir, apiSocketName)
		lay.vsockHost = filepath.Join(spec.RunDir, vsockSocketName)
		lay.apiGuest, lay.vsockGuest = lay.apiHost, lay.vsockHost
		argv = []string{bin, "--api-sock", lay.apiHost}
	}
	for _, p := range []string{lay.apiHost, lay.vsockHost} {
		if len(p) >= unixPathMax {
			return nil, fmt.Errorf("socket path %s is %d bytes, longer than Unix sockets allow (%d): use a shorter run directory", p, len(p), unixPathMax-1)
		}
	}
	if err := clearStaleSockets(lay.apiHost, lay.vsockHost); err != nil {
		return nil, err
	}

	// Everything from here on is undone on failure.
	var undo []func()
	defer func() {
		if err != nil {
			for i := len(undo) - 1; i >= 0; i-- {
				undo[i]()
			}
		}
	}()
	if d.cfg.Jailer != nil {
		undo = append(undo, func() { os.RemoveAll(lay.chrootDir) })
		if err := stageJail(&lay, vmlinux, spec); err != nil {
			return nil, err
		}
	} else {
		lay.kernelGuest, lay.initGuest = vmlinux, spec.Initramfs
		for _, dr := range spec.Drives {
			lay.driveGuest = append(lay.driveGuest, dr.Path)
		}
	}

	// Firecracker writes the guest's serial console to its stdout. The file is handed to
	// the child directly (no pipe through the daemon), so the console keeps being logged
	// when the daemon restarts.
	console, err := os.OpenFile(lay.console, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("console log: %w", err)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = console, console
	cmd.Dir = spec.RunDir
	// Own session: a signal to the daemon's process group (Ctrl-C on its terminal) must not
	// take the VMs down; they outlive a daemon restart and are reattached.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	err = cmd.Start()
	console.Close()
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", argv[0], err)
	}
	m := newMachine(d, cmd.Process.Pid, lay, spec.RunDir, spec.AgentPort)
	m.proc = cmd.Process
	undo = append(undo, func() { m.Kill(); <-m.done })
	if m.st.StartTime, err = processStartTime(m.pid); err != nil {
		return nil, fmt.Errorf("firecracker (pid %d): read its start time: %w", m.pid, err)
	}
	go m.waitChild(cmd)

	if err := m.waitAPI(ctx, d.cfg.StartTimeout); err != nil {
		return nil, err
	}
	if err := m.configure(ctx, spec, lay, cmdline); err != nil {
		return nil, m.withConsole(err)
	}
	if err := m.api.Action(ctx, ActionInstanceStart); err != nil {
		return nil, m.withConsole(fmt.Errorf("boot: %w", err))
	}
	return m, nil
}

// clearStaleSockets removes sockets left by an earlier Firecracker of this run directory,
// refusing when one still answers (a VM is running there).
func clearStaleSockets(paths ...string) error {
	for _, p := range paths {
		if c, err := net.DialTimeout("unix", p, 200*time.Millisecond); err == nil {
			c.Close()
			return fmt.Errorf("%s is in use: a VMM is still running for this VM", p)
		}
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("remove stale socket: %w", err)
		}
	}
	return nil
}

// stageJail hard-links the kernel, initramfs and drives into the jail (Firecracker cannot
// see outside it) and fills in the paths Firecracker is to use.
func stageJail(lay *layout, vmlinux string, spec vmm.MachineSpec) error {
	if err := os.MkdirAll(lay.chrootRoot, 0o755); err != nil {
		return fmt.Errorf("jail: %w", err)
	}
	link := func(src, name string) (string, error) {
		dst := filepath.Join(lay.chrootRoot, name)
		os.Remove(dst)
		if err := os.Link(src, dst); err != nil {
			if errors.Is(err, syscall.EXDEV) {
				return "", fmt.Errorf("jail: %s is on another filesystem than the jailer's chroot base: put them on the same filesystem", src)
			}
			return "", fmt.Errorf("jail: %w", err)
		}
		return "/" + name, nil
	}
	var err error
	if lay.kernelGuest, err = link(vmlinux, "vmlinux"); err != nil {
		return err
	}
	if spec.Initramfs != "" {
		if lay.initGuest, err = link(spec.Initramfs, "initrd"); err != nil {
			return err
		}
	}
	for _, dr := range spec.Drives {
		p, err := link(dr.Path, "drive-"+dr.ID)
		if err != nil {
			return err
		}
		lay.driveGuest = append(lay.driveGuest, p)
	}
	return nil
}

// Reattach implements vmm.Driver.
func (d *Driver) Reattach(ctx context.Context, st vmm.State) (vmm.Machine, error) {
	if st.Driver != Name {
		return nil, fmt.Errorf("reattach: state of driver %q, not %s", st.Driver, Name)
	}
	if st.PID <= 0 || st.ControlSocket == "" || st.AgentSocket == "" {
		return nil, fmt.Errorf("reattach: incomplete state (pid %d, sockets %q %q)", st.PID, st.ControlSocket, st.AgentSocket)
	}
	// Pin the process first (a pidfd keeps meaning this process even if the PID is reused
	// later), then check it is still the one we started.
	pidfd, perr := vmm.PidfdOpen(st.PID)
	if perr != nil && !errors.Is(perr, syscall.ENOSYS) {
		return nil, fmt.Errorf("%w: pid %d: %v", vmm.ErrGone, st.PID, perr)
	}
	started, err := processStartTime(st.PID)
	if err != nil || started != st.StartTime {
		if pidfd >= 0 {
			syscall.Close(pidfd)
		}
		if err != nil {
			return nil, fmt.Errorf("%w: pid %d: %v", vmm.ErrGone, st.PID, err)
		}
		return nil, fmt.Errorf("%w: pid %d now belongs to another process (started at tick %d, the VM at %d)", vmm.ErrGone, st.PID, started, st.StartTime)
	}
	lay := layout{apiHost: st.ControlSocket, vsockHost: st.AgentSocket, console: st.ConsoleLog}
	if j := d.cfg.Jailer; j != nil {
		// The API socket sits in <chroot dir>/root/.
		if dir := filepath.Dir(filepath.Dir(st.ControlSocket)); strings.HasPrefix(dir, j.chrootBase()+string(filepath.Separator)) {
			lay.chrootDir = dir
		}
	}
	port := st.AgentPort
	if port == 0 {
		port = agent.DefaultVsockPort
	}
	m := newMachine(d, st.PID, lay, st.RunDir, port)
	m.st.StartTime = st.StartTime
	m.pidfd = pidfd
	go m.pollGone()
	return m, nil
}

// --- version ---------------------------------------------------------------------------

var versionRe = regexp.MustCompile(`v?(\d+)\.(\d+)\.(\d+)`)

// BinaryVersion runs `<binary> --version` and returns the version (major, minor, patch)
// from its first line ("Firecracker v1.10.1").
func BinaryVersion(ctx context.Context, binary string) ([3]int, string, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, binary, "--version").Output()
	if err != nil {
		return [3]int{}, "", fmt.Errorf("%s --version: %w", binary, err)
	}
	line, _, _ := strings.Cut(string(out), "\n")
	m := versionRe.FindStringSubmatch(line)
	if m == nil {
		return [3]int{}, line, fmt.Errorf("%s --version: no version in %q", binary, line)
	}
	var v [3]int
	for i := range v {
		v[i], _ = strconv.Atoi(m[i+1])
	}
	return v, line, nil
}

// VersionOK reports whether v is at least MinVersion.
func VersionOK(v [3]int) bool {
	for i := range v {
		if v[i] != MinVersion[i] {
			return v[i] > MinVersion[i]
		}
	}
	return true
}

// --- console ---------------------------------------------------------------------------

// consoleTailLines is how many console lines an ExitInfo or error carries.
const consoleTailLines = 20

// consoleTail returns the last n lines of the console log.
func consoleTail(path string, n int) []string {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	const window = 64 << 10
	if fi, err := f.Stat(); err == nil && fi.Size() > window {
		f.Seek(fi.Size()-window, 0)
	}
	var lines []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64<<10), window)
	for sc.Scan() {
		l := strings.TrimRight(sc.Text(), "\r")
		lines = append(lines, l)
		if len(lines) > n {
			lines = lines[1:]
		}
	}
	return lines
}

// agentClient is the agent client for a VM's vsock socket.
func agentClient(vsockHost string, port uint32) *agentclient.Client {
	return agentclient.NewHybridVsock(vsockHost, port)
}
