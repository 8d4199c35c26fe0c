package firecracker

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
)

// The request and response bodies below mirror the definitions of Firecracker's API
// description (swagger: ../shared/firecracker/firecracker-api.yaml) field for field, for the
// subset banger uses. The contract test validates every request the Client sends against
// that file, unknown fields included, so a typo here fails CI rather than a boot.

// BootSource is the body of PUT /boot-source (definition BootSource).
type BootSource struct {
	KernelImagePath string `json:"kernel_image_path"`
	InitrdPath      string `json:"initrd_path,omitempty"`
	BootArgs        string `json:"boot_args,omitempty"`
}

// Drive is the body of PUT /drives/{drive_id} (definition Drive), a virtio-block drive.
type Drive struct {
	DriveID      string `json:"drive_id"`
	PathOnHost   string `json:"path_on_host"`
	IsRootDevice bool   `json:"is_root_device"`
	// IsReadOnly is optional in the schema but required for virtio-block drives; always sent.
	IsReadOnly bool `json:"is_read_only"`
}

// NetworkInterface is the body of PUT /network-interfaces/{iface_id}.
type NetworkInterface struct {
	IfaceID     string `json:"iface_id"`
	HostDevName string `json:"host_dev_name"`
	GuestMAC    string `json:"guest_mac,omitempty"`
}

// Vsock is the body of PUT /vsock. (vsock_id is deprecated upstream and not sent.)
type Vsock struct {
	GuestCID uint32 `json:"guest_cid"`
	UDSPath  string `json:"uds_path"`
}

// MachineConfig is the body of PUT /machine-config (definition MachineConfiguration).
type MachineConfig struct {
	VCPUCount  int `json:"vcpu_count"`
	MemSizeMiB int `json:"mem_size_mib"`
}

// ActionType is InstanceActionInfo.action_type.
type ActionType string

const (
	ActionInstanceStart  ActionType = "InstanceStart"
	ActionSendCtrlAltDel ActionType = "SendCtrlAltDel"
	ActionFlushMetrics   ActionType = "FlushMetrics"
)

// InstanceActionInfo is the body of PUT /actions.
type InstanceActionInfo struct {
	ActionType ActionType `json:"action_type"`
}

// VMState is Vm.state, the body of PATCH /vm.
type VMState string

const (
	VMPaused  VMState = "Paused"
	VMResumed VMState = "Resumed"
)

// VM is the body of PATCH /vm.
type VM struct {
	State VMState `json:"state"`
}

// InstanceInfo is the answer to GET /.
type InstanceInfo struct {
	AppName    string `json:"app_name"`
	ID         string `json:"id"`
	State      string `json:"state"` // "Not started", "Running" or "Paused"
	VMMVersion string `json:"vmm_version"`
}

// FirecrackerVersion is the answer to GET /version.
type FirecrackerVersion struct {
	FirecrackerVersion string `json:"firecracker_version"`
}

// APIError is a Firecracker API call that did not succeed: what was asked and what
// Firecracker said (its Error.fault_message).
type APIError struct {
	Method, Path string
	Status       int
	FaultMessage string
}

func (e *APIError) Error() string {
	msg := e.FaultMessage
	if msg == "" {
		msg = "(no fault message)"
	}
	return fmt.Sprintf("firecracker %s %s: %d %s: %s", e.Method, e.Path, e.Status, http.StatusText(e.Status), msg)
}

// Client is a typed client for the Firecracker API on its Unix socket. It is safe for
// concurrent use.
type Client struct {
	socket string
	hc     *http.Client
	tr     *http.Transport
}

// apiBase is the URL prefix of every request; the host is ignored by Firecracker (the
// transport dials the socket) and matches the API description's host.
const apiBase = "http://localhost"

// NewClient returns a client for the API socket at socketPath.
func NewClient(socketPath string) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socketPath)
		},
		DisableCompression: true,
		MaxIdleConns:       2,
	}
	return &Client{socket: socketPath, hc: &http.Client{Transport: tr}, tr: tr}
}

// Socket returns the API socket path.
func (c *Client) Socket() string { return c.socket }

// Close drops idle connections.
func (c *Client) Close() error {
	c.tr.CloseIdleConnections()
	return nil
}

// PutMachineConfig sets vCPUs and memory (pre-boot).
func (c *Client) PutMachineConfig(ctx context.Context, mc MachineConfig) error {
	return c.call(ctx, http.MethodPut, "/machine-config", mc, nil)
}

// PutBootSource sets the kernel, initrd and command line (pre-boot).
func (c *Client) PutBootSource(ctx context.Context, bs BootSource) error {
	return c.call(ctx, http.MethodPut, "/boot-source", bs, nil)
}

// PutDrive adds or replaces a drive (pre-boot). The path id is d.DriveID.
func (c *Client) PutDrive(ctx context.Context, d Drive) error {
	return c.call(ctx, http.MethodPut, "/drives/"+url.PathEscape(d.DriveID), d, nil)
}

// PartialDrive is the body of PATCH /drives/{drive_id} (definition PartialDrive).
type PartialDrive struct {
	DriveID    string `json:"drive_id"`
	PathOnHost string `json:"path_on_host,omitempty"`
}

// PatchDrive updates a drive of a running VM; the same path_on_host makes Firecracker
// read the file's size again and tell the guest.
func (c *Client) PatchDrive(ctx context.Context, d PartialDrive) error {
	return c.call(ctx, http.MethodPatch, "/drives/"+url.PathEscape(d.DriveID), d, nil)
}

// PutNetworkInterface adds a network interface backed by a TAP device (pre-boot).
func (c *Client) PutNetworkInterface(ctx context.Context, n NetworkInterface) error {
	return c.call(ctx, http.MethodPut, "/network-interfaces/"+url.PathEscape(n.IfaceID), n, nil)
}

// PutVsock sets up the vsock device; Firecracker listens on v.UDSPath (pre-boot).
func (c *Client) PutVsock(ctx context.Context, v Vsock) error {
	return c.call(ctx, http.MethodPut, "/vsock", v, nil)
}

// Action runs a synchronous action: InstanceStart boots the configured VM, SendCtrlAltDel
// presses Ctrl-Alt-Del on the guest's keyboard controller.
func (c *Client) Action(ctx context.Context, a ActionType) error {
	return c.call(ctx, http.MethodPut, "/actions", InstanceActionInfo{ActionType: a}, nil)
}

// PatchVM pauses or resumes the VM.
func (c *Client) PatchVM(ctx context.Context, s VMState) error {
	return c.call(ctx, http.MethodPatch, "/vm", VM{State: s}, nil)
}

// SnapshotCreateParams is PUT /snapshot/create's body: the guest memory and the microVM
// state go into two files (the VM must be paused).
type SnapshotCreateParams struct {
	MemFilePath  string `json:"mem_file_path"`
	SnapshotPath string `json:"snapshot_path"`
	SnapshotType string `json:"snapshot_type,omitempty"` // SnapshotFull (default) or "Diff"
}

// SnapshotFull is a snapshot of all the guest's memory.
const SnapshotFull = "Full"

// MemoryBackend is where a restored VM's memory comes from: BackendType "File" maps
// BackendPath privately (clones of one snapshot share its pages).
type MemoryBackend struct {
	BackendType string `json:"backend_type"`
	BackendPath string `json:"backend_path"`
}

// MemoryBackendFile is MemoryBackend.BackendType for a memory file.
const MemoryBackendFile = "File"

// NetworkOverride gives a restored interface another TAP (a clone's own).
type NetworkOverride struct {
	IfaceID     string `json:"iface_id"`
	HostDevName string `json:"host_dev_name"`
}

// VsockOverride gives a restored vsock device another Unix socket (a clone's own).
type VsockOverride struct {
	UDSPath string `json:"uds_path"`
}

// SnapshotLoadParams is PUT /snapshot/load's body, sent to a fresh Firecracker.
type SnapshotLoadParams struct {
	SnapshotPath     string            `json:"snapshot_path"`
	MemBackend       *MemoryBackend    `json:"mem_backend,omitempty"`
	ResumeVM         bool              `json:"resume_vm,omitempty"`
	NetworkOverrides []NetworkOverride `json:"network_overrides,omitempty"`
	VsockOverride    *VsockOverride    `json:"vsock_override,omitempty"`
	// ClockRealtime advances kvmclock by the wall-clock time since the snapshot (x86_64).
	ClockRealtime bool `json:"clock_realtime,omitempty"`
}

// CreateSnapshot writes a snapshot of the paused VM.
func (c *Client) CreateSnapshot(ctx context.Context, p SnapshotCreateParams) error {
	return c.call(ctx, http.MethodPut, "/snapshot/create", p, nil)
}

// LoadSnapshot restores a snapshot into this (fresh) Firecracker.
func (c *Client) LoadSnapshot(ctx context.Context, p SnapshotLoadParams) error {
	return c.call(ctx, http.MethodPut, "/snapshot/load", p, nil)
}

// InstanceInfo asks GET /.
func (c *Client) InstanceInfo(ctx context.Context) (InstanceInfo, error) {
	var ii InstanceInfo
	err := c.call(ctx, http.MethodGet, "/", nil, &ii)
	return ii, err
}

// Version asks GET /version.
func (c *Client) Version(ctx context.Context) (string, error) {
	var v FirecrackerVersion
	err := c.call(ctx, http.MethodGet, "/version", nil, &v)
	return v.FirecrackerVersion, err
}

// call sends one request; a non-2xx answer becomes an *APIError.
func (c *Client) call(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, apiBase+path, body)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "application/json")
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		// Strip net/http's URL noise: the socket is what the reader needs.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return fmt.Errorf("firecracker %s %s (API socket %s): %w", method, path, c.socket, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return fmt.Errorf("firecracker %s %s: read answer: %w", method, path, err)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		ae := &APIError{Method: method, Path: path, Status: resp.StatusCode}
		var fault struct {
			FaultMessage string `json:"fault_message"`
		}
		if json.Unmarshal(data, &fault) == nil && fault.FaultMessage != "" {
			ae.FaultMessage = fault.FaultMessage
		} else {
			ae.FaultMessage = strings.TrimSpace(string(data))
		}
		return ae
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("firecracker %s %s: decode answer %q: %w", method, path, head(data, 200), err)
		}
	}
	return nil
}

func head(b []byte, n int) []byte {
	if len(b) > n {
		return b[:n]
	}
	return b
}
