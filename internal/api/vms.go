package api

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/banger-vm/banger/internal/agent"
)

// VMCreateRequest is POST /v1/vms/create (streamed). Sizes are strings like "512M" or
// "8G" so the daemon can refuse bad values with one clear message.
type VMCreateRequest struct {
	Name     string `json:"name,omitempty"`  // "" = generated
	Image    string `json:"image,omitempty"` // "" = images.default
	Kernel   string `json:"kernel,omitempty"`
	CPUs     int    `json:"cpus,omitempty"`
	Memory   string `json:"memory,omitempty"`
	DiskSize string `json:"disk_size,omitempty"`
	// Start boots the VM and waits for its agent (and its sshd, unless SkipSSHWait: for a
	// caller that only uses the agent, like vm run -- CMD).
	Start       bool `json:"start,omitempty"`
	SkipSSHWait bool `json:"skip_ssh_wait,omitempty"`
	// Cold boots the VM even when a template of its image and shape could be restored.
	Cold bool `json:"cold,omitempty"`
	// From names a user snapshot to clone: the VM gets its processes and files, with its
	// own identity, and the snapshot's image and shape (leave those fields empty).
	From string `json:"from,omitempty"`
	// Ports are port forwards, each [HOSTIP:]HOSTPORT:GUESTPORT[/tcp|/udp] or
	// GUESTPORT[/udp] (a free host port is picked and kept); they listen on the host while
	// the VM runs.
	Ports []string `json:"ports,omitempty"`
	// Mounts are host folders, each SRC:DST[:ro] with SRC an absolute host directory and
	// DST a guest path; they are mounted in the guest whenever it runs.
	Mounts []string `json:"mounts,omitempty"`
	// PublishAll forwards every TCP port the guest listens on (1024 and up, on 127.0.0.1
	// or a wildcard address) from the same port on the host's 127.0.0.1, while it runs.
	PublishAll bool `json:"publish_all,omitempty"`
}

// VMPortsRequest is POST /v1/vms/ports: add forwards (as in VMCreateRequest.Ports) and
// remove others, named by their host side (HOSTPORT or HOSTIP:HOSTPORT, with /tcp or /udp
// to name only that protocol's forward).
type VMPortsRequest struct {
	Name   string   `json:"name"`
	Add    []string `json:"add,omitempty"`
	Remove []string `json:"remove,omitempty"`
}

// VMResizeRequest is POST /v1/vms/resize: grow the VM's work disk (/root) to Disk (like
// "40G"), offline or online.
type VMResizeRequest struct {
	Name string `json:"name"`
	Disk string `json:"disk"`
}

// VMPort is one port forward of a VM: HostIP:HostPort on the host to GuestPort on the
// guest's loopback, Proto "tcp" or "udp". Listening says it accepts connections now; Error why it does not while
// the VM runs.
type VMPort struct {
	HostIP    string `json:"host_ip"`
	HostPort  int    `json:"host_port"`
	GuestPort int    `json:"guest_port"`
	Proto     string `json:"proto"`
	Listening bool   `json:"listening"`
	Error     string `json:"error,omitempty"`
	// Auto marks a forward --publish-all made for a port the guest listens on.
	Auto bool `json:"auto,omitempty"`
}

// VMMount is a host folder shared with a VM, and whether it is mounted in the guest now.
type VMMount struct {
	Source   string `json:"source"`
	Target   string `json:"target"`
	ReadOnly bool   `json:"read_only"`
	Mounted  bool   `json:"mounted"`
	Error    string `json:"error,omitempty"`
}

// VMRequest names a VM (start, health, ...).
type VMRequest struct {
	Name string `json:"name"`
}

// VMStopRequest is POST /v1/vms/stop.
type VMStopRequest struct {
	Name           string  `json:"name"`
	TimeoutSeconds float64 `json:"timeout_seconds,omitempty"` // 0 = 30 s
	Force          bool    `json:"force,omitempty"`           // kill at once
}

// VMRemoveRequest is POST /v1/vms/rm.
type VMRemoveRequest struct {
	Name  string `json:"name"`
	Force bool   `json:"force,omitempty"` // stop a running VM first
}

// VMDisk is one disk of a VM.
type VMDisk struct {
	Role      string `json:"role"`
	Path      string `json:"path"`
	ReadOnly  bool   `json:"read_only"`
	SizeBytes int64  `json:"size_bytes"`
	UsedBytes int64  `json:"used_bytes"`
}

// VMNetwork is a VM's network, when it has one.
type VMNetwork struct {
	TAP     string   `json:"tap,omitempty"`
	IP      string   `json:"ip,omitempty"`
	Gateway string   `json:"gateway,omitempty"`
	MAC     string   `json:"mac,omitempty"`
	DNS     []string `json:"dns,omitempty"`
	// Note says why there is no network ("no root helper answers ...").
	Note string `json:"note,omitempty"`
}

// VMSSH is how to reach a VM's sshd.
type VMSSH struct {
	// Ready is true once sshd answered in the last start.
	Ready bool `json:"ready"`
	// Available is true when the VM has banger's SSH keys and its image an sshd (it may
	// not have been waited for).
	Available bool `json:"available"`
	// HostKeyAlias is the name the VM's host key is pinned under in banger's known_hosts
	// (ssh -o HostKeyAlias=...).
	HostKeyAlias string `json:"host_key_alias,omitempty"`
	// HostKey is the VM's public host key (authorized_keys form).
	HostKey string `json:"host_key,omitempty"`
	// Note says why there is no SSH (the image has no sshd, ...).
	Note string `json:"note,omitempty"`
}

// VM is a VM as the API shows it.
type VM struct {
	ID           string    `json:"id"`
	Name         string    `json:"name"`
	Image        string    `json:"image"`
	Kernel       string    `json:"kernel"`
	State        string    `json:"state"`
	Driver       string    `json:"driver"`
	Accel        string    `json:"accel,omitempty"`
	DriverReason string    `json:"driver_reason,omitempty"`
	CPUs         int       `json:"cpus"`
	MemoryMiB    int       `json:"memory_mib"`
	PID          int       `json:"pid,omitempty"`
	Dir          string    `json:"dir"`
	RunDir       string    `json:"run_dir,omitempty"`
	ConsoleLog   string    `json:"console_log,omitempty"`
	Network      VMNetwork `json:"network"`
	SSH          VMSSH     `json:"ssh"`
	Disks        []VMDisk  `json:"disks"`
	// Boot says how the last start booted the VM, and why.
	Boot *VMBoot `json:"boot,omitempty"`
	// Stages are the timed stages of the last start.
	Stages []Stage `json:"stages,omitempty"`
	// Paused is set while the VM is paused.
	Paused *VMPaused `json:"paused,omitempty"`
	// Ports are its port forwards.
	Ports []VMPort `json:"ports"`
	// PublishAll says the VM publishes every TCP port its guest listens on.
	PublishAll bool `json:"publish_all,omitempty"`
	// Mounts are its host folders.
	Mounts    []VMMount `json:"mounts"`
	LastExit  string    `json:"last_exit,omitempty"`
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
}

// Boot modes of VMBoot.
const (
	BootWarm = "warm" // restored from a template (a booted snapshot of the image)
	BootCold = "cold" // booted the kernel
	// BootResume: the VM's own state, saved by vm pause, restored.
	BootResume = "resume"
)

// VMPaused is a paused VM's saved state.
type VMPaused struct {
	At        time.Time `json:"at"`
	SizeBytes int64     `json:"size_bytes"`
	StateFile string    `json:"state_file"`
}

// VMBoot is how a start booted a VM: warm (a clone of Template) or cold, with the reason.
type VMBoot struct {
	Mode     string `json:"mode"`
	Reason   string `json:"reason"`
	Template string `json:"template,omitempty"`
	// Snapshot names the user snapshot a clone restored.
	Snapshot string `json:"snapshot,omitempty"`
}

// VMsResponse answers GET /v1/vms.
type VMsResponse struct {
	VMs []VM `json:"vms"`
}

// VMHealth answers GET /v1/vms/health.
type VMHealth struct {
	Name    string  `json:"name"`
	State   string  `json:"state"`
	Agent   bool    `json:"agent"`
	Detail  string  `json:"detail"`
	RTTMS   float64 `json:"rtt_ms,omitempty"`
	Network string  `json:"network,omitempty"`
}

// VMExecRequest is POST /v1/vms/exec, sent with Connection: Upgrade and Upgrade:
// banger-exec.v1. The daemon answers 101 and from then on relays the guest agent's exec
// stream unchanged (frames: see package agent); errors before that are typed as usual.
type VMExecRequest struct {
	Name string   `json:"name"`
	Argv []string `json:"argv"`
	Env  []string `json:"env,omitempty"`
	Cwd  string   `json:"cwd,omitempty"`
	TTY  bool     `json:"tty,omitempty"`
	Rows uint16   `json:"rows,omitempty"`
	Cols uint16   `json:"cols,omitempty"`
}

// VMs lists the VMs.
func (c *Client) VMs(ctx context.Context) ([]VM, error) {
	out, err := get[VMsResponse](ctx, c, "/vms", nil)
	return out.VMs, err
}

// InspectVM returns one VM.
func (c *Client) InspectVM(ctx context.Context, name string) (VM, error) {
	return get[VM](ctx, c, "/vms/inspect", url.Values{"name": {name}})
}

// CreateVM creates (and with req.Start boots) a VM, reporting each stage to progress.
func (c *Client) CreateVM(ctx context.Context, req VMCreateRequest, progress func(Progress)) (VM, error) {
	return streamed[VM](ctx, c, "/vms/create", req, progress)
}

// StartVM boots a stopped VM and waits for its agent.
func (c *Client) StartVM(ctx context.Context, name string, progress func(Progress)) (VM, error) {
	return streamed[VM](ctx, c, "/vms/start", VMRequest{Name: name}, progress)
}

// PauseVM saves a running VM's whole state in its directory and ends its VMM, reporting
// each stage to progress.
func (c *Client) PauseVM(ctx context.Context, name string, progress func(Progress)) (VM, error) {
	return streamed[VM](ctx, c, "/vms/pause", VMRequest{Name: name}, progress)
}

// ResumeVM restores a paused VM, its processes as they were (StartVM does the same).
func (c *Client) ResumeVM(ctx context.Context, name string, progress func(Progress)) (VM, error) {
	return streamed[VM](ctx, c, "/vms/resume", VMRequest{Name: name}, progress)
}

// StopVM stops a VM.
func (c *Client) StopVM(ctx context.Context, req VMStopRequest) (VM, error) {
	return post[VM](ctx, c, "/vms/stop", req)
}

// RestartVM stops a VM (if running) and boots it again, reporting each stage.
func (c *Client) RestartVM(ctx context.Context, req VMStopRequest, progress func(Progress)) (VM, error) {
	return streamed[VM](ctx, c, "/vms/restart", req, progress)
}

// RemoveVM deletes a VM and its disks.
func (c *Client) RemoveVM(ctx context.Context, req VMRemoveRequest) error {
	return c.do(ctx, http.MethodPost, "/vms/rm", nil, req, nil)
}

// VMHealth asks the VM's agent whether it is healthy.
// ResizeVM grows a VM's work disk; it returns the VM.
func (c *Client) ResizeVM(ctx context.Context, req VMResizeRequest) (VM, error) {
	return post[VM](ctx, c, "/vms/resize", req)
}

// ChangePorts adds and removes a VM's port forwards; it returns the VM.
func (c *Client) ChangePorts(ctx context.Context, req VMPortsRequest) (VM, error) {
	return post[VM](ctx, c, "/vms/ports", req)
}

func (c *Client) VMHealth(ctx context.Context, name string) (VMHealth, error) {
	return get[VMHealth](ctx, c, "/vms/health", url.Values{"name": {name}})
}

// ExecStream starts argv in the VM and returns the exec stream (drive it with
// agentclient.AttachExec).
func (c *Client) ExecStream(ctx context.Context, req VMExecRequest) (io.ReadWriteCloser, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	return c.upgrade(ctx, "/vms/exec", nil, body, agent.ExecUpgradeProtocol)
}

// Forward connects to a TCP port on the VM's loopback through its agent.
func (c *Client) Forward(ctx context.Context, name string, port int) (io.ReadWriteCloser, error) {
	return c.upgrade(ctx, "/vms/forward", url.Values{"name": {name}, "port": {strconv.Itoa(port)}}, nil, agent.ForwardUpgradeProtocol)
}

// upgrade POSTs body to path asking to switch to protocol and returns the connection.
func (c *Client) upgrade(ctx context.Context, path string, query url.Values, body []byte, protocol string) (io.ReadWriteCloser, error) {
	req, err := c.newRequest(ctx, http.MethodPost, path, query, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", protocol)
	resp, err := c.send(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		if err := errorOf(resp, path); err != nil {
			return nil, err
		}
		resp.Body.Close()
		return nil, &Error{Code: CodeInternal, Message: fmt.Sprintf("daemon answered %s to %s instead of switching protocols", resp.Status, path)}
	}
	rwc, ok := resp.Body.(io.ReadWriteCloser)
	if !ok {
		resp.Body.Close()
		return nil, &Error{Code: CodeInternal, Message: "upgraded connection is not writable"}
	}
	return rwc, nil
}

// VMLogs returns the VM's serial console log; with follow it keeps streaming until ctx ends
// or the VM stops. The caller closes the reader.
func (c *Client) VMLogs(ctx context.Context, name string, follow bool) (io.ReadCloser, error) {
	q := url.Values{"name": {name}, "follow": {strconv.FormatBool(follow)}}
	req, err := c.newRequest(ctx, http.MethodGet, "/vms/logs", q, nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.send(req)
	if err != nil {
		return nil, err
	}
	if err := errorOf(resp, "/vms/logs"); err != nil {
		return nil, err
	}
	return resp.Body, nil
}

// maxErrorBody bounds an error answer: one message and a hint.
const maxErrorBody = 1 << 20

// errorOf turns a non-2xx answer into its Error (closing the body).
func errorOf(resp *http.Response, path string) error {
	if resp.StatusCode < 300 {
		return nil
	}
	defer resp.Body.Close()
	var eb ErrorBody
	if json.NewDecoder(io.LimitReader(resp.Body, maxErrorBody)).Decode(&eb) == nil && eb.Error != nil {
		return eb.Error
	}
	return &Error{Code: CodeInternal, Message: fmt.Sprintf("daemon answered %s to %s", resp.Status, path)}
}

// KernelImportRequest is POST /v1/kernels/import.
type KernelImportRequest struct {
	Path  string `json:"path"`
	Suite string `json:"suite,omitempty"`
}

// ImportKernel registers an unpacked kernel package directory as a kernel.
func (c *Client) ImportKernel(ctx context.Context, req KernelImportRequest) (json.RawMessage, error) {
	return streamed[json.RawMessage](ctx, c, "/kernels/import", req, nil)
}
