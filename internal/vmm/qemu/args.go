package qemu

import (
	"fmt"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/banger-vm/banger/internal/agent"
	"github.com/banger-vm/banger/internal/vmm"
)

// Agent transports, as recorded in vmm.State.AgentTransport.
const (
	TransportSerial = "serial"
	TransportVsock  = "vsock"
)

// Files QEMU makes in the spec's RunDir.
const (
	qmpSocketName   = "qmp.sock"
	agentSocketName = "agent.sock"
	consoleLogName  = "console.log"
	// consoleFIFOName is where QEMU writes the serial console (-chardev pipe); the daemon
	// copies it into the capped console.log.
	consoleFIFOName = "console.fifo"
	// qemuLogName gets QEMU's own stdout and stderr. A file, not a pipe to the daemon: the
	// VM outlives a daemon restart and must not get EPIPE (or SIGPIPE) when it writes then.
	qemuLogName = "qemu.log"
)

// layout is where one VM's files are and how its agent is reached.
type layout struct {
	QMPSocket   string
	AgentSocket string // serial transport only
	ConsoleLog  string
	ConsoleFIFO string
	QEMULog     string
	Transport   string
	CID         uint32 // vsock transport only
	AgentPort   uint32
}

func newLayout(runDir, transport string, cid, port uint32) layout {
	l := layout{
		QMPSocket:   filepath.Join(runDir, qmpSocketName),
		ConsoleLog:  filepath.Join(runDir, consoleLogName),
		ConsoleFIFO: filepath.Join(runDir, consoleFIFOName),
		QEMULog:     filepath.Join(runDir, qemuLogName),
		Transport:   transport,
		AgentPort:   port,
	}
	if l.AgentPort == 0 {
		l.AgentPort = agent.DefaultVsockPort
	}
	if transport == TransportSerial {
		l.AgentSocket = filepath.Join(runDir, agentSocketName)
	} else {
		l.CID = cid
	}
	return l
}

// opt escapes a value inside a QEMU option string, where ',' separates keys.
func opt(s string) string { return strings.ReplaceAll(s, ",", ",,") }

// roleKeys are the banger-init command line keys for drive roles; RoleExtra has none.
var roleKeys = map[vmm.DriveRole]string{
	vmm.RoleRoot:    "banger.root",
	vmm.RoleLayer:   "banger.layer",
	vmm.RoleWork:    "banger.work",
	vmm.RoleModules: "banger.modules",
}

// defaultBootArgs are what QEMU microvm guests need unless the caller set the key: the
// console on the first serial port (the console FIFO), reboot by triple fault and reboot at
// once on panic (QEMU runs with -no-reboot, so both end the VM instead of leaving a dead
// guest running).
var defaultBootArgs = []string{"console=ttyS0", "reboot=t", "panic=-1"}

// withDefaults appends each default whose key the command line does not set yet.
func withDefaults(cmdline string, defaults []string) []string {
	args := strings.Fields(cmdline)
	keys := map[string]bool{}
	for _, a := range args {
		k, _, _ := strings.Cut(a, "=")
		keys[k] = true
	}
	for _, d := range defaults {
		if k, _, _ := strings.Cut(d, "="); !keys[k] {
			args = append(args, d)
		}
	}
	return args
}

// kernelCmdline is the spec's base command line plus the keys that depend on how this
// driver attaches things: QEMU's console/reboot/panic defaults, virtio-blk serials naming
// the drives, the agent's channel, and for TCG the host's TSC frequency (the guest's clock
// calibration hangs under load without it) and a TSC taken as reliable.
func kernelCmdline(spec vmm.MachineSpec, l layout, accel string, tscKHz int) string {
	parts := withDefaults(spec.Cmdline, defaultBootArgs)
	for _, d := range spec.Drives {
		if key, ok := roleKeys[d.Role]; ok {
			parts = append(parts, key+"=serial:"+d.ID)
		}
	}
	parts = append(parts, "banger.agent="+l.Transport)
	if l.Transport == TransportVsock && l.AgentPort != agent.DefaultVsockPort {
		parts = append(parts, "banger.agent_port="+strconv.FormatUint(uint64(l.AgentPort), 10))
	}
	if accel == AccelTCG && tscKHz > 0 && !strings.Contains(spec.Cmdline, "tsc_early_khz=") {
		parts = append(parts, "tsc_early_khz="+strconv.Itoa(tscKHz))
	}
	// Under TCG every vCPU reads the host's own TSC, so it is synchronized, but the guest's
	// check of that runs emulated and slow, fails, and moves the clock to jiffies, which
	// ran 10-26% slow on a loaded host here.
	if accel == AccelTCG && !strings.Contains(spec.Cmdline, "tsc=") {
		parts = append(parts, "tsc=reliable")
	}
	return strings.Join(parts, " ")
}

// argOptions are the driver settings that shape QEMU's command line.
type argOptions struct {
	Accel, CPU string
	TSCKHz     int
	Sandbox    bool // run under QEMU's seccomp sandbox (sandboxArg)
	// QMPFD, when > 0, is the file descriptor of a listening QMP socket the caller made and
	// passes to QEMU; 0 has QEMU create the socket itself (a command line to run by hand).
	QMPFD int
	// PrivateMemory maps spec.MemoryFile copy-on-write (a clone) instead of shared (a VM to
	// snapshot).
	PrivateMemory bool
	// Incoming starts QEMU waiting for a migration stream (-incoming defer): a restore.
	Incoming bool
}

// ramBackendID names a file-backed RAM backend as QEMU names the microvm machine's default
// RAM: a migration stream names its RAM blocks, so a VM saved whole (vm pause) resumes
// into plain RAM whether it ran from a memory file (a clone) or not.
const ramBackendID = "microvm.ram"

// qemuArgs is QEMU's argument list (without argv[0]) for spec.
func qemuArgs(spec vmm.MachineSpec, l layout, o argOptions) []string {
	machine := "microvm,acpi=on"
	if spec.MemoryFile != "" {
		machine += ",memory-backend=" + ramBackendID
	}
	a := []string{
		"-M", machine,
		"-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
	}
	if o.Sandbox {
		a = append(a, "-sandbox", sandboxArg)
	}
	a = append(a,
		"-accel", o.Accel, "-cpu", o.CPU,
		"-smp", strconv.Itoa(spec.VCPUs), "-m", strconv.Itoa(spec.MemoryMiB),
		"-kernel", spec.Kernel,
	)
	if spec.MemoryFile != "" {
		share := "on"
		if o.PrivateMemory {
			share = "off"
		}
		a = append(a, "-object", fmt.Sprintf("memory-backend-file,id=%s,size=%dM,mem-path=%s,share=%s", ramBackendID, spec.MemoryMiB, opt(spec.MemoryFile), share))
	}
	if o.Incoming {
		a = append(a, "-incoming", "defer")
	}
	if spec.Initramfs != "" {
		a = append(a, "-initrd", spec.Initramfs)
	}
	a = append(a, "-append", kernelCmdline(spec, l, o.Accel, o.TSCKHz))
	a = append(a,
		// A FIFO QEMU opens read-write (the pipe chardev): it never gets EPIPE while no
		// daemon reads, and QEMU holds the guest's UART back when the FIFO is full.
		"-chardev", "pipe,id=con,path="+opt(l.ConsoleFIFO),
		"-serial", "chardev:con",
	)
	if o.QMPFD > 0 {
		a = append(a, "-chardev", "socket,id=qmp,fd="+strconv.Itoa(o.QMPFD)+",server=on,wait=off", "-mon", "chardev=qmp,mode=control")
	} else {
		a = append(a, "-qmp", "unix:"+opt(l.QMPSocket)+",server=on,wait=off")
	}
	for _, d := range spec.Drives {
		drive := fmt.Sprintf("id=%s,file=%s,format=raw,if=none", d.ID, opt(d.Path))
		if d.ReadOnly {
			drive += ",readonly=on"
		}
		// serial= is what the guest sees (/sys/block/*/serial): banger.<role>=serial:<id>.
		a = append(a, "-drive", drive, "-device", fmt.Sprintf("virtio-blk-device,drive=%s,serial=%s", d.ID, d.ID))
	}
	for i, n := range spec.NICs {
		id := "net" + strconv.Itoa(i)
		a = append(a, "-netdev", fmt.Sprintf("tap,id=%s,ifname=%s,script=no,downscript=no", id, opt(n.TAP)))
		dev := "virtio-net-device,netdev=" + id
		if len(n.MAC) != 0 {
			dev += ",mac=" + n.MAC.String()
		}
		a = append(a, "-device", dev)
	}
	switch l.Transport {
	case TransportVsock:
		a = append(a, "-device", fmt.Sprintf("vhost-vsock-device,guest-cid=%d", l.CID))
	default:
		a = append(a,
			"-device", "virtio-serial-device",
			"-chardev", "socket,id=agent,path="+opt(l.AgentSocket)+",server=on,wait=off",
			"-device", "virtserialport,chardev=agent,name="+agentPortName,
		)
	}
	return a
}

// agentPortName is the virtio-serial port banger-init looks for (banger.agent_name default).
const agentPortName = "banger.agent"
