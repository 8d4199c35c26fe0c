// Package vmm is the one interface banger drives virtual machine monitors through, with one
// subpackage per VMM (firecracker, qemu). The daemon speaks only this interface.
package vmm

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/banger-vm/banger/internal/agent/agentclient"
)

// DriveRole says what a disk is to banger-init; the driver turns it into the right
// banger.<role>= command line key for how its devices are named in the guest.
type DriveRole string

const (
	RoleRoot  DriveRole = "root"  // the image, attached read-only
	RoleLayer DriveRole = "layer" // the per-VM writable overlay
	RoleWork  DriveRole = "work"  // mounted at /root
	// RoleModules is the kernel's module tree (a read-only per-kernel disk), mounted at
	// /lib/modules/<release> so modprobe works in the guest.
	RoleModules DriveRole = "modules"
	RoleExtra   DriveRole = "extra" // anything else
)

// Drive is a disk image attached to the VM.
type Drive struct {
	ID       string // short, unique within the VM: [a-z0-9_-], at most 20 characters
	Path     string
	ReadOnly bool
	Role     DriveRole
}

// NIC is a network interface backed by a host TAP device.
type NIC struct {
	TAP string
	MAC net.HardwareAddr
}

// MachineSpec is everything a driver needs to start a VM.
type MachineSpec struct {
	Name      string
	Kernel    string // bzImage (qemu) or ELF vmlinux (firecracker prepares it itself)
	Initramfs string
	// Cmdline is the base kernel command line (banger.ip, banger.hostname, ...). The driver
	// adds its VMM's own console=, reboot= and panic= defaults for each key not set here,
	// and the device, agent and clock keys that depend on how it attaches things.
	Cmdline   string
	Drives    []Drive
	NICs      []NIC
	VCPUs     int
	MemoryMiB int
	// RunDir holds the VM's sockets and the console log; it must exist, be private to the
	// user, and be short enough for Unix socket paths (about 80 bytes).
	RunDir string
	// AgentPort is the guest agent's vsock port (default 1024).
	AgentPort uint32
	// MemoryFile, when set, is a file the guest's RAM lives in (created at MemoryMiB) rather
	// than anonymous memory, shared with the VMM's mapping: a snapshot of the VM then needs
	// to save no RAM (Snapshotter), and clones map the file copy-on-write (Restorer). A VMM
	// that cannot boot with RAM in a file (Firecracker) writes the RAM there when the VM is
	// snapshotted, and sets the VM up so that clones can be restored from it.
	MemoryFile string
}

// Validate reports the first problem with the spec in words a user can act on.
func (s MachineSpec) Validate() error {
	switch {
	case s.Kernel == "":
		return errors.New("machine spec: no kernel")
	case s.VCPUs < 1:
		return fmt.Errorf("machine spec: %d vCPUs: need at least 1", s.VCPUs)
	case s.MemoryMiB < 64:
		return fmt.Errorf("machine spec: %d MiB of memory: need at least 64", s.MemoryMiB)
	case s.RunDir == "":
		return errors.New("machine spec: no run directory")
	}
	roots, modules := 0, 0
	seen := map[string]bool{}
	for _, d := range s.Drives {
		if d.ID == "" || len(d.ID) > 20 {
			return fmt.Errorf("machine spec: drive id %q must be 1-20 characters", d.ID)
		}
		for _, r := range d.ID {
			if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
				return fmt.Errorf("machine spec: drive id %q: use a-z, 0-9, '-' and '_'", d.ID)
			}
		}
		if seen[d.ID] {
			return fmt.Errorf("machine spec: drive id %q used twice", d.ID)
		}
		seen[d.ID] = true
		switch d.Role {
		case RoleRoot:
			roots++
		case RoleModules:
			modules++
			if !d.ReadOnly {
				return fmt.Errorf("machine spec: modules drive %q must be read-only: every VM of the kernel shares it", d.ID)
			}
		}
	}
	if roots != 1 {
		return fmt.Errorf("machine spec: need exactly one root drive, have %d", roots)
	}
	if modules > 1 {
		return fmt.Errorf("machine spec: at most one modules drive, have %d", modules)
	}
	return nil
}

// ExitInfo says why a VM stopped.
type ExitInfo struct {
	// Reason is one line: "guest powered off", "killed by signal 9", "exit status 1", ...
	Reason string
	// Clean is true when the guest shut itself down (power off), false for crashes and kills.
	Clean bool
	// ConsoleTail holds the last lines of the serial console, to show with the reason.
	ConsoleTail []string
	At          time.Time
}

// State is what the daemon persists to find a running VM again after it restarts.
type State struct {
	PID int `json:"pid"`
	// StartTime is the process start time in clock ticks since boot (/proc/PID/stat field
	// 22): together with PID it identifies the process, so a reused PID is not mistaken for
	// the VM.
	StartTime  uint64 `json:"start_time"`
	RunDir     string `json:"run_dir"`
	ConsoleLog string `json:"console_log"`
	// Driver-specific sockets and settings.
	ControlSocket  string `json:"control_socket,omitempty"` // QMP or the Firecracker API
	AgentSocket    string `json:"agent_socket,omitempty"`
	AgentTransport string `json:"agent_transport"` // "serial", "vsock" or "hybrid-vsock"
	VsockCID       uint32 `json:"vsock_cid,omitempty"`
	AgentPort      uint32 `json:"agent_port,omitempty"`
	Accel          string `json:"accel,omitempty"`
	// MemoryFile is the file the guest's RAM is in (MachineSpec.MemoryFile, or the
	// snapshot's a clone maps), "" for anonymous memory.
	MemoryFile string `json:"memory_file,omitempty"`
}

// Machine is a running VM.
type Machine interface {
	// State is what to persist for Reattach.
	State() State
	PID() int
	// Agent is a client for the guest agent over this VM's channel.
	Agent() *agentclient.Client
	// Done is closed when the VMM process has exited; Exit then says why.
	Done() <-chan struct{}
	Exit() ExitInfo
	// Stop shuts the guest down gracefully: agent power off, then an ACPI power button
	// (or Ctrl-Alt-Del), then kill when timeout runs out. It returns once the VMM is gone.
	Stop(ctx context.Context, timeout time.Duration) (ExitInfo, error)
	// Kill ends the VMM at once.
	Kill() error
	// Close releases the driver's connections to a VM without stopping it (daemon exit).
	Close() error
}

// Driver starts VMs on one VMM.
type Driver interface {
	Name() string
	// Start boots spec. If any step fails, nothing is left running and the sockets are gone.
	// It may return before the VMM has finished setting itself up (the guest boots after
	// that anyway): a VMM that fails later ends, closing Done, and Exit says why.
	Start(ctx context.Context, spec MachineSpec) (Machine, error)
	// Reattach finds a VM started by an earlier daemon from its persisted state. It fails
	// with ErrGone when the process is no longer that VM.
	Reattach(ctx context.Context, st State) (Machine, error)
}

// Snapshot is a paused VM saved to files, to restore clones of it from.
type Snapshot struct {
	Driver string `json:"driver"`
	// MemoryFile is the guest's RAM as of the snapshot. Clones map it copy-on-write, so it
	// must not change while any clone runs.
	MemoryFile string `json:"memory_file"`
	// StateFile is the VMM's device and vCPU state.
	StateFile string `json:"state_file"`
}

// Snapshotter is a Machine that can be saved as a Snapshot: Snapshot pauses the guest and
// writes its state into dir; the VM stays paused (the caller usually kills it). The VM must
// have been started with MachineSpec.MemoryFile.
type Snapshotter interface {
	Snapshot(ctx context.Context, dir string) (Snapshot, error)
}

// StateSaver is a Machine that can be saved whole, RAM included, to resume the same VM
// later (vm pause) or clone it (a user snapshot): SaveState pauses the guest and writes all
// its state to path; the VM stays paused (the caller usually kills it, or lets it run on
// with Continuer). A VMM that keeps RAM in the state (QEMU's migration stream) returns no
// MemoryFile; one that keeps it apart (Firecracker) writes it to SavedMemoryPath(path) and
// returns that as MemoryFile. The caller keeps the two files together and gives Restore
// the Snapshot as returned.
type StateSaver interface {
	SaveState(ctx context.Context, path string) (Snapshot, error)
}

// SavedMemoryPath is where SaveState(path) puts the guest's RAM when its VMM keeps it
// apart from the device state, so that callers can find (and remove) both from path.
func SavedMemoryPath(statePath string) string { return statePath + ".memory" }

// DriveResizer is a Machine that can tell its guest a drive's backing file grew (to
// bytes): the guest sees the new capacity without a restart. The caller grows the file
// first.
type DriveResizer interface {
	ResizeDrive(ctx context.Context, driveID string, bytes int64) error
}

// Continuer is a Machine whose guest can be let run again after its VMM stopped it for a
// save that did not finish (the daemon was killed mid-pause). It is harmless on a running
// guest.
type Continuer interface {
	Continue(ctx context.Context) error
}

// Restorer is a Driver that starts clones of a Snapshot: spec says where the clone's own
// files are (its disks, which must be copies of the snapshotted VM's as of the snapshot, its
// run dir, its NICs); its shape must be the snapshotted VM's. The clone runs when Restore
// returns, its agent reachable on the clone's own channel. A Snapshot without a MemoryFile
// (StateSaver) brings back the saved VM itself, its RAM read from the state.
type Restorer interface {
	Restore(ctx context.Context, spec MachineSpec, snap Snapshot) (Machine, error)
}

// RestoreProber is a Restorer that can say up front whether restores work on this host
// (a VMM too old for them, say), so that no template is built for nothing.
type RestoreProber interface {
	CanRestore(ctx context.Context) error
}

// Warmer is a driver with one-time work (probes of the host and of the VMM binary) that it
// can do ahead of the first Start, so that start does not pay for it.
type Warmer interface {
	Warm(ctx context.Context) error
}

// ErrGone means the VMM process of a persisted State no longer exists (or its PID now
// belongs to another process).
var ErrGone = errors.New("the VM's process is gone")
