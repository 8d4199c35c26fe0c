package daemon

// The VM model: a VM's spec (what the user asked for, fixed at create) and its status (what
// is running now), stored together as the row's spec JSON, plus the API view of both.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/banger-vm/banger/internal/api"
	"github.com/banger-vm/banger/internal/portfwd"
	"github.com/banger-vm/banger/internal/sshkeys"
	"github.com/banger-vm/banger/internal/store"
	"github.com/banger-vm/banger/internal/vmm"
)

// Defaults and limits of a VM's resources.
const (
	defaultCPUs      = 2
	defaultMemoryMiB = 1024
	minMemoryMiB     = 128
	maxMemoryMiB     = 256 << 10
	maxCPUs          = 64
	minDiskBytes     = 256 << 20
	maxDiskBytes     = 16 << 40
	layerDiskBytes   = 4 << 30
)

// vmSpec is what the user asked for: set by create, never changed by a start or a stop.
type vmSpec struct {
	Kernel    string `json:"kernel"`
	CPUs      int    `json:"cpus"`
	MemoryMiB int    `json:"memory_mib"`
	DiskBytes int64  `json:"disk_bytes"`
	Dir       string `json:"dir"`
	RunDir    string `json:"run_dir"`
	// SSHHostKey is the VM's public host key, pinned in banger's known_hosts.
	SSHHostKey string `json:"ssh_host_key,omitempty"`
	// Builder marks an image build's temporary VM (it boots the image being built, Rootfs,
	// read-write): only the build starts it, and reconcile removes it with the build.
	Builder bool   `json:"builder,omitempty"`
	Rootfs  string `json:"rootfs,omitempty"`
	// Template, on a builder, is the key of the warm-start template it builds.
	Template string `json:"template,omitempty"`
	// Ports are the VM's port forwards (listening while it runs).
	Ports []portfwd.Spec `json:"ports,omitempty"`
	// Mounts are the VM's host folders (mounted in the guest while it runs).
	Mounts []hostMountSpec `json:"mounts,omitempty"`
	// PublishAll forwards every TCP port the guest listens on (publish.go).
	PublishAll bool `json:"publish_all,omitempty"`
}

// vmNetwork is the network part of a VM's status; "tap" is what network.go's reconcile reads.
type vmNetwork struct {
	TAP     string   `json:"tap,omitempty"`
	IP      string   `json:"ip,omitempty"`
	Prefix  int      `json:"prefix,omitempty"`
	Gateway string   `json:"gateway,omitempty"`
	MAC     string   `json:"mac,omitempty"`
	DNS     []string `json:"dns,omitempty"`
	Note    string   `json:"note,omitempty"`
}

// vmStatus is what is true now: how the VM runs (or why it stopped). The VMM's name is the
// row's VMM column, nowhere else.
type vmStatus struct {
	Network      vmNetwork   `json:"network"`
	Accel        string      `json:"accel,omitempty"`
	DriverReason string      `json:"driver_reason,omitempty"`
	VMM          *vmm.State  `json:"vmm,omitempty"`
	ConsoleLog   string      `json:"console_log,omitempty"`
	Stages       []api.Stage `json:"stages,omitempty"`
	Boot         *api.VMBoot `json:"boot,omitempty"`
	LastExit     string      `json:"last_exit,omitempty"`
	SSHReady     bool        `json:"ssh_ready,omitempty"`
	SSHAbsent    bool        `json:"ssh_absent,omitempty"` // no sshd or no banger key: vm ssh cannot work
	SSHNote      string      `json:"ssh_note,omitempty"`
	// Creating is set while create builds the disks: a row still marked so when the daemon
	// starts is an interrupted create, which reconcile removes.
	Creating bool `json:"creating,omitempty"`
	// Paused is the saved state of a paused VM; Pausing is set while a pause saves it.
	Paused  *vmPaused `json:"paused,omitempty"`
	Pausing bool      `json:"pausing,omitempty"`
	// FromSnapshot names the user snapshot the VM was created from.
	FromSnapshot string `json:"from_snapshot,omitempty"`
}

// vmRecord is a VM row's JSON document: the spec and the status side by side (flattened,
// the format rows have always had).
type vmRecord struct {
	vmSpec
	vmStatus
}

// parseRecord decodes a VM row's document. A row that does not decode is reported, not
// treated as empty: acting on a zero spec would lose track of the VM's disks and VMM.
func parseRecord(vm store.VM) (vmRecord, error) {
	var r vmRecord
	if len(vm.Spec) == 0 {
		return r, nil
	}
	if err := json.Unmarshal(vm.Spec, &r); err != nil {
		return r, fmt.Errorf("VM %q has a corrupt record in the state database: %w", vm.Name, err)
	}
	return r, nil
}

func (r vmRecord) raw() json.RawMessage {
	b, _ := json.Marshal(r) // plain data: cannot fail
	return b
}

func (s vmSpec) workDisk() string  { return filepath.Join(s.Dir, "work.ext4") }
func (s vmSpec) layerDisk() string { return filepath.Join(s.Dir, "layer.ext4") }

// stopKind says how a VM ended, so the stored state follows from a type, not from words.
type stopKind int

const (
	stopClean   stopKind = iota // powered off, stopped or killed on request
	stopCrashed                 // the VMM ended without the guest shutting down
)

func (k stopKind) state() store.VMState {
	if k == stopCrashed {
		return store.VMCrashed
	}
	return store.VMStopped
}

// validVMName is the API's rule, shared with clients that check names before asking.
func validVMName(name string) error { return api.ValidVMName(name) }

var (
	nameAdjectives = []string{"brisk", "calm", "eager", "fuzzy", "gentle", "happy", "jolly", "keen", "lucky", "mellow", "nimble", "plucky", "quiet", "rapid", "sunny", "witty"}
	nameNouns      = []string{"otter", "badger", "falcon", "lynx", "heron", "panda", "gecko", "marten", "puffin", "walrus", "koala", "bison", "ferret", "robin", "newt", "yak"}
)

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func generateName() string {
	b := make([]byte, 2)
	_, _ = rand.Read(b)
	return nameAdjectives[b[0]%16] + "-" + nameNouns[b[1]%16] + "-" + randomHex(2)
}

// vmLookup finds a VM by name (or id).
func (d *Daemon) vmLookup(ctx context.Context, name string) (store.VM, error) {
	if name == "" {
		return store.VM{}, api.Errorf(api.CodeBadRequest, "name the VM", "missing VM name")
	}
	vm, err := d.store.GetVMByName(ctx, name)
	if errors.Is(err, store.ErrNotFound) {
		vm, err = d.store.GetVM(ctx, name)
	}
	if errors.Is(err, store.ErrNotFound) {
		return vm, api.Errorf(api.CodeNotFound, "list VMs with `banger vm ls`", "VM %q not found", name)
	}
	return vm, err
}

func (d *Daemon) vmToAPI(ctx context.Context, vm store.VM) api.VM {
	rec, err := parseRecord(vm)
	out := api.VM{ID: vm.ID, Name: vm.Name, Kernel: rec.Kernel, State: string(vm.State), Driver: vm.VMM,
		Accel: rec.Accel, DriverReason: rec.DriverReason, CPUs: rec.CPUs, MemoryMiB: rec.MemoryMiB,
		Dir: rec.Dir, RunDir: rec.RunDir, ConsoleLog: rec.ConsoleLog, Stages: rec.Stages, Boot: rec.Boot, LastExit: rec.LastExit,
		CreatedAt: vm.CreatedAt, UpdatedAt: vm.UpdatedAt, Disks: []api.VMDisk{}, Ports: []api.VMPort{}, Mounts: []api.VMMount{},
		Network: api.VMNetwork{TAP: rec.Network.TAP, IP: rec.Network.IP, Gateway: rec.Network.Gateway, MAC: rec.Network.MAC,
			DNS: rec.Network.DNS, Note: rec.Network.Note},
		SSH: api.VMSSH{Ready: rec.SSHReady && vm.State == store.VMRunning, Available: !rec.SSHAbsent && rec.SSHHostKey != "",
			HostKey: strings.TrimSpace(rec.SSHHostKey), Note: rec.SSHNote}}
	if err != nil {
		out.LastExit = err.Error()
		return out
	}
	if rec.SSHHostKey != "" {
		out.SSH.HostKeyAlias = sshkeys.HostAlias(vm.ID)
	}
	out.Ports, out.PublishAll = d.portsToAPI(vm.ID, rec.Ports), rec.PublishAll
	out.Mounts = d.mountsToAPI(vm.ID, rec.Mounts)
	if m := d.machine(vm.ID); m != nil {
		out.PID = m.PID()
	}
	if p := rec.Paused; p != nil && vm.State == store.VMPaused {
		out.Paused = &api.VMPaused{At: p.At, SizeBytes: p.Bytes, StateFile: p.StateFile}
	}
	if img, err := d.store.GetImage(ctx, vm.ImageID); err == nil {
		out.Image = img.Name
		out.Disks = append(out.Disks, diskInfo("root", img.RootfsPath, true))
	}
	out.Disks = append(out.Disks, diskInfo("layer", rec.layerDisk(), false), diskInfo("work", rec.workDisk(), false))
	return out
}

func diskInfo(role, path string, ro bool) api.VMDisk {
	d := api.VMDisk{Role: role, Path: path, ReadOnly: ro}
	var st unixStat
	if statFile(path, &st) == nil {
		d.SizeBytes, d.UsedBytes = st.size, st.used
	}
	return d
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}
