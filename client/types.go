package client

import (
	"github.com/banger-vm/banger/internal/agent"
	"github.com/banger-vm/banger/internal/api"
)

// The daemon's API types. They are aliases of banger's internal API types, so a value is
// exactly what the daemon sends and the CLI prints with --json; the fields are documented
// on each type.

// VMs.
type (
	// VM is a VM as the daemon shows it: state, driver, shape, network, SSH, disks, port
	// forwards, host folders and the stages of its last start.
	VM = api.VM
	// VMCreateRequest describes a VM to create (CreateVM): name, image, shape, whether to
	// start it, the snapshot to clone (From), port forwards and host folders.
	VMCreateRequest = api.VMCreateRequest
	// VMStopRequest says how to stop a VM (StopVM, RestartVM).
	VMStopRequest = api.VMStopRequest
	// VMRemoveRequest names a VM to remove (RemoveVM); Force stops a running VM first.
	VMRemoveRequest = api.VMRemoveRequest
	// VMResizeRequest grows a VM's work disk (ResizeVM).
	VMResizeRequest = api.VMResizeRequest
	// VMPortsRequest adds and removes a VM's port forwards (ChangePorts).
	VMPortsRequest = api.VMPortsRequest
	// VMExecRequest is the daemon's exec request; Command is the SDK's richer form.
	VMExecRequest = api.VMExecRequest
	// VMPort is one port forward of a VM.
	VMPort = api.VMPort
	// VMMount is a host folder shared with a VM.
	VMMount = api.VMMount
	// VMDisk is one disk of a VM.
	VMDisk = api.VMDisk
	// VMNetwork is a VM's network (address, gateway, TAP), or why it has none.
	VMNetwork = api.VMNetwork
	// VMSSH says how to reach a VM's sshd.
	VMSSH = api.VMSSH
	// VMBoot says how the last start booted a VM (warm, cold or resumed) and why.
	VMBoot = api.VMBoot
	// VMPaused is a paused VM's saved state.
	VMPaused = api.VMPaused
	// VMHealth is a VM agent's health answer.
	VMHealth = api.VMHealth
	// Stage is one timed stage of an operation.
	Stage = api.Stage
	// Progress is one progress report of a long operation (a finished stage, bytes
	// pulled): pass a func(Progress) to the methods that take one, or nil.
	Progress = api.Progress
	// ExitStatus is how a command run in a VM ended: its exit code (128+N when killed by
	// signal N, like a shell; 127 when the command does not exist) and the signal.
	ExitStatus = agent.ExitStatus
)

// Snapshots.
type (
	// Snapshot is a saved running VM (memory, processes and disks) that new VMs can clone
	// (VMCreateRequest.From, Fork).
	Snapshot = api.Snapshot
	// SnapshotCreateRequest names the VM to save and the snapshot to make.
	SnapshotCreateRequest = api.SnapshotCreateRequest
	// ForkResult is what Fork made: the snapshot and the clones that started.
	ForkResult = api.ForkResult
)

// Images and kernels.
type (
	// Image is a registered image.
	Image = api.Image
	// ImageInspect is an image with its packages and warm-start templates.
	ImageInspect = api.ImageInspect
	// Template is a warm-start template of an image (a booted snapshot new VMs restore).
	Template = api.Template
	// ImagePullRequest names an image to pull (a catalog name or an OCI reference).
	ImagePullRequest = api.ImagePullRequest
	// ImageImportRequest names a local tar or ext4 file to import as an image.
	ImageImportRequest = api.ImageImportRequest
	// ImageBuildRequest describes an image to build from another one.
	ImageBuildRequest = api.ImageBuildRequest
	// BuildCopy is a host file or directory to copy into a built image.
	BuildCopy = api.BuildCopy
	// ImageWarmRequest asks for an image's warm-start template for a machine shape.
	ImageWarmRequest = api.ImageWarmRequest
	// KernelPullRequest names the Debian suite whose cloud kernel to fetch.
	KernelPullRequest = api.KernelPullRequest
	// KernelImportRequest names an unpacked kernel package directory to register.
	KernelImportRequest = api.KernelImportRequest
)

// The daemon.
type (
	// StatusResponse is the daemon's identity: version, pid, uid, socket, directories.
	StatusResponse = api.StatusResponse
	// DoctorResponse is the daemon's host checks.
	DoctorResponse = api.DoctorResponse
	// CheckResult is one doctor check.
	CheckResult = api.CheckResult
	// EventFilter selects lifecycle events (Events).
	EventFilter = api.EventFilter
	// Event is one recorded lifecycle stage.
	Event = api.Event
	// LeaksResponse is a leak scan (Leaks, FixLeaks).
	LeaksResponse = api.LeaksResponse
	// Leak is one thing the daemon owns that nothing references.
	Leak = api.Leak
	// BenchCreateRequest configures BenchCreate.
	BenchCreateRequest = api.BenchCreateRequest
	// BenchCreateResult is BenchCreate's measurement.
	BenchCreateResult = api.BenchCreateResult
)

// VM states as VM.State shows them (the daemon's store states; a test keeps them equal).
const (
	StateCreated  = "created"
	StateStarting = "starting"
	StateRunning  = "running"
	StateStopping = "stopping"
	StateStopped  = "stopped"
	// StatePaused: the VM's whole state is saved on disk (PauseVM); no VMM runs.
	StatePaused = "paused"
	// StateCrashed: the VMM ended without the guest shutting down.
	StateCrashed = "crashed"
	// StateError: the daemon cannot use the VM as recorded.
	StateError = "error"
)
