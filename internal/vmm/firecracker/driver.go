// Package firecracker is banger's Firecracker driver: it spawns `firecracker` (optionally
// under its jailer), configures the VM through the REST API on its Unix socket with a small
// typed client (the Go SDK is not used), boots it, and talks to the guest agent over
// Firecracker's hybrid vsock.
package firecracker

import (
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
	"time"

	"github.com/banger-vm/banger/internal/agent"
	"github.com/banger-vm/banger/internal/agent/agentclient"
	"github.com/banger-vm/banger/internal/kernelimage"
	"github.com/banger-vm/banger/internal/revert"
	"github.com/banger-vm/banger/internal/vmm"
	"github.com/banger-vm/banger/internal/vmm/proc"
)

// Name is the driver's name (vmm.Driver.Name, the daemon's vmm column).
const Name = "firecracker"

// GuestCID is the guest's vsock context id: 3 is the first one not reserved, and each VM
// has its own vsock device, so every guest can use it.
const GuestCID = 3

// MinVersion is vmm.FirecrackerMinVersion as numbers (major, minor, patch).
var MinVersion = parseVersion(vmm.FirecrackerMinVersion)

// parseVersion reads "1.8" or "v1.10.1"; missing parts are 0.
func parseVersion(s string) [3]int {
	var v [3]int
	for i, part := range strings.SplitN(strings.TrimPrefix(s, "v"), ".", 3) {
		v[i], _ = strconv.Atoi(part)
	}
	return v
}

// File names inside the VM's RunDir (or the jail's root).
const (
	apiSocketName   = "fc.sock"
	vsockSocketName = "vsock.sock"
	consoleLogName  = "console.log"
	// consoleFIFOName is Firecracker's stdout and stderr (the serial console); the daemon
	// copies it into the capped console.log.
	consoleFIFOName = "console.fifo"
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
	// ConsoleCap bounds the console log (console.log plus console.log.1) in bytes; 0 means
	// proc.DefaultConsoleCap.
	ConsoleCap int64
}

// Driver starts Firecracker VMs. It holds its configuration and what it learnt of the
// binary's version.
type Driver struct {
	cfg      Config
	versions versionCache
}

// New returns a driver.
func New(cfg Config) *Driver {
	if cfg.StartTimeout <= 0 {
		cfg.StartTimeout = 10 * time.Second
	}
	return &Driver{cfg: cfg}
}

var (
	_ vmm.Driver     = (*Driver)(nil)
	_ vmm.BareBooter = (*Driver)(nil)
)

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
	// driveLinks: the drives are links in the run dir (linkDrives), removed with the VM.
	driveLinks bool
}

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

	lay, argv, err := d.spawnLayout(bin, spec)
	if err != nil {
		return nil, err
	}

	// Everything from here on is undone on failure.
	undo := revert.New()
	defer undo.Fail()
	if d.cfg.Jailer != nil {
		undo.Add(func() { os.RemoveAll(lay.chrootDir) })
		if err := stageJail(&lay, vmlinux, spec); err != nil {
			return nil, err
		}
	} else {
		lay.kernelGuest, lay.initGuest = vmlinux, spec.Initramfs
		// Every VM may be saved (a template, vm pause, vm snapshot), and a restore reopens
		// the paths recorded at boot: see linkDrives.
		undo.Add(func() { unlinkDrives(spec.RunDir) })
		if err := linkDrives(&lay, spec); err != nil {
			return nil, err
		}
	}

	// Firecracker writes the guest's serial console (and its own messages) to its stdout:
	// a FIFO the supervisor copies into the capped console log.
	p, err := proc.Spawn(proc.Options{Argv: argv, Dir: spec.RunDir, Console: d.console(spec.RunDir)})
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", argv[0], err)
	}
	m := newMachine(d, p, lay, spec.RunDir, spec.AgentPort)
	m.st.MemoryFile = spec.MemoryFile // where Snapshot writes the RAM
	undo.Add(func() { m.Kill() })
	if m.st.StartTime == 0 {
		return nil, m.withConsole(fmt.Errorf("firecracker (pid %d) exited at once", m.pid))
	}

	if err := m.waitAPI(ctx, d.cfg.StartTimeout); err != nil {
		return nil, err
	}
	if err := m.configure(ctx, spec, lay, cmdline); err != nil {
		return nil, m.withConsole(err)
	}
	if err := m.api.Action(ctx, ActionInstanceStart); err != nil {
		return nil, m.withConsole(fmt.Errorf("boot: %w", err))
	}
	undo.Success()
	return m, nil
}

// spawnLayout says where a VM's sockets are, on the host and as Firecracker sees them, and
// gives the command that starts Firecracker (under the jailer when configured). Sockets an
// earlier Firecracker of the run dir left are cleared.
func (d *Driver) spawnLayout(bin string, spec vmm.MachineSpec) (layout, []string, error) {
	lay := layout{console: filepath.Join(spec.RunDir, consoleLogName)}
	var argv []string
	if j := d.cfg.Jailer; j != nil {
		jailID := jailerID(spec.Name, spec.RunDir)
		lay.chrootDir, lay.chrootRoot = j.chrootDir(bin, jailID), j.chrootRoot(bin, jailID)
		lay.apiGuest, lay.vsockGuest = "/"+apiSocketName, "/"+vsockSocketName
		lay.apiHost, lay.vsockHost = filepath.Join(lay.chrootRoot, apiSocketName), filepath.Join(lay.chrootRoot, vsockSocketName)
		var err error
		if argv, err = jailerArgv(*j, jailID, bin, []string{"--api-sock", lay.apiGuest}); err != nil {
			return lay, nil, err
		}
	} else {
		lay.apiHost, lay.vsockHost = filepath.Join(spec.RunDir, apiSocketName), filepath.Join(spec.RunDir, vsockSocketName)
		lay.apiGuest, lay.vsockGuest = lay.apiHost, lay.vsockHost
		argv = []string{bin, "--api-sock", lay.apiHost}
	}
	for _, p := range []string{lay.apiHost, lay.vsockHost} {
		if err := proc.CheckSocketPath(p); err != nil {
			return lay, nil, err
		}
	}
	if err := clearStaleSockets(lay.apiHost, lay.vsockHost); err != nil {
		return lay, nil, err
	}
	return lay, argv, nil
}

// console is where Firecracker's stdout goes.
func (d *Driver) console(runDir string) *proc.Console {
	return &proc.Console{
		FIFO: filepath.Join(runDir, consoleFIFOName), Log: filepath.Join(runDir, consoleLogName),
		Cap: d.cfg.ConsoleCap, Stdout: true,
	}
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
	if err := linkIntoJail(lay.chrootRoot, vmlinux, "vmlinux"); err != nil {
		return err
	}
	lay.kernelGuest = "/vmlinux"
	if spec.Initramfs != "" {
		if err := linkIntoJail(lay.chrootRoot, spec.Initramfs, "initrd"); err != nil {
			return err
		}
		lay.initGuest = "/initrd"
	}
	return stageJailDrives(lay, spec)
}

// Reattach implements vmm.Driver.
func (d *Driver) Reattach(ctx context.Context, st vmm.State) (vmm.Machine, error) {
	if st.ControlSocket == "" || st.AgentSocket == "" {
		return nil, fmt.Errorf("reattach: incomplete state (pid %d, sockets %q %q)", st.PID, st.ControlSocket, st.AgentSocket)
	}
	p, err := proc.Attach(st.PID, st.StartTime, d.console(st.RunDir))
	if err != nil {
		return nil, fmt.Errorf("reattach firecracker: %w", err)
	}
	lay := layout{apiHost: st.ControlSocket, vsockHost: st.AgentSocket, console: st.ConsoleLog}
	lay.driveLinks = d.cfg.Jailer == nil
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
	return newMachine(d, p, lay, st.RunDir, port), nil
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

// consoleTailLines is how many console lines an ExitInfo or error carries.
const consoleTailLines = 20

// agentClient is the agent client for a VM's vsock socket.
func agentClient(vsockHost string, port uint32) *agentclient.Client {
	return agentclient.NewHybridVsock(vsockHost, port)
}
