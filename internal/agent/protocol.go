// Package agent holds the wire protocol shared by the guest agent (banger-agent, package
// agentserver) and its host-side client (package agentclient): request and response types,
// typed errors, the exec stream frames and the virtio-serial session handshake.
//
// It imports only the standard library so the host binary pulls in nothing guest-specific.
package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"path"
	"strings"
	"time"
)

// Transport defaults shared by the guest agent and the host.
const (
	// DefaultVsockPort is the AF_VSOCK (and Firecracker hybrid vsock) port the agent listens on.
	DefaultVsockPort = 1024
	// DefaultSerialPortName is the virtio-serial port name (virtserialport,name=...).
	DefaultSerialPortName = "banger.agent"
	// BootStagesPath is where banger-init leaves its boot-stage timings (a JSON array of
	// {"name","duration_ms"}); /v1/healthz passes it through unchanged.
	BootStagesPath = "/run/banger/boot-stages.json"
)

// API paths (all under /v1).
const (
	PathHealth = "/v1/healthz"
	PathExec   = "/v1/exec"
	PathFiles  = "/v1/files"
	PathPower  = "/v1/power"
	// PathForward (POST, upgraded to ForwardUpgradeProtocol) connects to a TCP port on the
	// guest's loopback (query "port") and then carries that connection's bytes both ways.
	// The host reaches the guest's sshd this way with or without a guest network.
	// With "proto=udp" (upgraded to ForwardUDPUpgradeProtocol) it carries framed
	// datagrams to and from a UDP port instead: see datagram.go.
	PathForward = "/v1/forward"
	// PathListeners (GET) answers ListenersResponse: the TCP ports the guest listens on
	// where a forward reaches them (127.0.0.1 or a wildcard address), for --publish-all.
	PathListeners = "/v1/listeners"
	// PathIdentity (POST, IdentityRequest) makes a clone of a snapshot its own machine.
	PathIdentity = "/v1/identity"
	// PathSync (POST, no body) flushes every filesystem to its disk (sync(2)) and answers
	// SyncResponse: the host saves a VM's state (vm pause, vm snapshot) right after.
	PathSync = "/v1/sync"
	// PathClock (POST, ClockRequest) sets the wall clock and reseeds the random pool: a
	// resumed VM's clock stopped at its pause.
	PathClock = "/v1/clock"
	// PathFreeze (POST, FreezeRequest) syncs and freezes (FIFREEZE) the guest's writable
	// disk filesystems for a save, answering FreezeResponse; PathThaw (POST, no body)
	// thaws them, answering ThawResponse. The agent thaws by itself after
	// FreezeRequest.ThawAfterMS of guest time if no thaw comes.
	PathFreeze = "/v1/freeze"
	PathThaw   = "/v1/thaw"
	// PathResizeFS (POST, ResizeFSRequest) grows the ext4 filesystem mounted at a path to
	// fill its disk, online, once the disk has grown to at least SizeBytes (vm resize).
	PathResizeFS = "/v1/resizefs"
	// PathMount (POST, upgraded to MountUpgradeProtocol) mounts a host folder at the
	// guest path in query "path" ("ro=1" read-only): a FUSE filesystem whose operations
	// are hostfs requests the agent sends on the upgraded connection, which the host
	// answers. Closing the connection unmounts it; a new mount at the same path replaces
	// the old one.
	PathMount = "/v1/mount"
)

// ResizeFSRequest names the mount point to grow and the disk size the host made.
type ResizeFSRequest struct {
	Path      string `json:"path"`
	SizeBytes int64  `json:"size_bytes"`
}

// ResizeFSResponse says what grew: the device, its size, and the filesystem's size before
// and after.
type ResizeFSResponse struct {
	Device      string `json:"device"`
	DeviceBytes int64  `json:"device_bytes"`
	BeforeBytes int64  `json:"before_bytes"`
	AfterBytes  int64  `json:"after_bytes"`
}

// Bounds of FreezeRequest.ThawAfterMS.
const (
	MinThawAfterMS = 1000
	MaxThawAfterMS = 10 * 60 * 1000
)

// FreezeRequest asks for a freeze that the agent undoes by itself after ThawAfterMS.
type FreezeRequest struct {
	ThawAfterMS int64 `json:"thaw_after_ms"`
}

// FreezeResponse lists the mount points frozen, and those that could not be (with why:
// they were synced only).
type FreezeResponse struct {
	Frozen     []string `json:"frozen"`
	Skipped    []string `json:"skipped,omitempty"`
	DurationMS float64  `json:"duration_ms"`
}

// ThawResponse lists the mount points thawed.
type ThawResponse struct {
	Thawed []string `json:"thawed"`
}

// ListenersResponse lists the guest's listening TCP ports, ascending, at most
// MaxListeners of them.
type ListenersResponse struct {
	TCP []int `json:"tcp"`
}

// MaxListeners bounds a ListenersResponse.
const MaxListeners = 1024

// ForwardUpgradeProtocol is the Upgrade header value of a forwarded TCP connection.
const ForwardUpgradeProtocol = "banger-forward.v1"

// mountPointsOfTheSystem are guest paths a host folder must not cover.
var mountPointsOfTheSystem = []string{"/proc", "/sys", "/dev", "/run", "/lib/modules", "/bin", "/sbin", "/usr", "/lib", "/etc", "/boot"}

// CheckMountPoint says why p cannot take a host folder: it must be an absolute clean guest
// path, not / and not in the system's own directories.
func CheckMountPoint(p string) error {
	if !path.IsAbs(p) || path.Clean(p) != p || p == "/" || len(p) > 1024 || strings.ContainsAny(p, "\x00\n") {
		return fmt.Errorf("mount point %q: want an absolute, clean guest path below /, like /root/src or /mnt/data", p)
	}
	for _, f := range mountPointsOfTheSystem {
		if p == f || strings.HasPrefix(p, f+"/") {
			return fmt.Errorf("mount point %q: %s belongs to the guest's system; use a path like /root/src or /mnt/data", p, f)
		}
	}
	return nil
}

// MountUpgradeProtocol is the Upgrade header value of a host folder's hostfs stream.
const MountUpgradeProtocol = "banger-mount.v1"

// IsUpgrade reports whether r asks to switch its connection to protocol (Connection:
// Upgrade and Upgrade: protocol), as exec and forward requests do.
func IsUpgrade(r *http.Request, protocol string) bool {
	if !strings.EqualFold(r.Header.Get("Upgrade"), protocol) {
		return false
	}
	for _, v := range r.Header.Values("Connection") {
		for _, tok := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(tok), "upgrade") {
				return true
			}
		}
	}
	return false
}

// Health is the body of GET /v1/healthz.
type Health struct {
	Status             string          `json:"status"` // always "ok"
	AgentVersion       string          `json:"agent_version"`
	AgentUptimeSeconds float64         `json:"agent_uptime_seconds"`
	UptimeSeconds      float64         `json:"uptime_seconds"` // system uptime, /proc/uptime
	Time               time.Time       `json:"time"`           // the guest clock
	Kernel             Kernel          `json:"kernel"`
	Hostname           string          `json:"hostname"`
	Interfaces         []Interface     `json:"interfaces"`
	PID1               string          `json:"pid1"`                  // /proc/1/comm
	BootStages         json.RawMessage `json:"boot_stages,omitempty"` // BootStagesPath, verbatim
	Warnings           []string        `json:"warnings,omitempty"`    // facts that could not be read
}

// Kernel is the guest's uname.
type Kernel struct {
	Release string `json:"release"`
	Version string `json:"version"`
	Machine string `json:"machine"`
}

// Interface is one guest network interface and its addresses in CIDR form.
type Interface struct {
	Name  string   `json:"name"`
	MAC   string   `json:"mac,omitempty"`
	Up    bool     `json:"up"`
	Addrs []string `json:"addrs"`
}

// BootStage is one entry of the boot-stages file, for callers that want to decode
// Health.BootStages.
type BootStage struct {
	Name       string  `json:"name"`
	DurationMS float64 `json:"duration_ms"`
}

// ExecRequest is the JSON body of POST /v1/exec.
type ExecRequest struct {
	Argv []string `json:"argv"`
	// Env entries ("KEY=value") are added to the agent's default environment
	// (PATH, HOME=/root, USER, LOGNAME, SHELL, and TERM when TTY), replacing defaults with
	// the same key.
	Env []string `json:"env,omitempty"`
	// Cwd is the working directory (absolute); empty means /root if it exists, else /.
	Cwd  string `json:"cwd,omitempty"`
	TTY  bool   `json:"tty,omitempty"`
	Rows uint16 `json:"rows,omitempty"` // initial terminal size when TTY (default 24x80)
	Cols uint16 `json:"cols,omitempty"`
}

// ExitStatus is how an exec'd process ended.
type ExitStatus struct {
	// Code is the exit code; for a process killed by a signal it is 128+signal, like a shell.
	// 127: command not found; 126: found but not executable.
	Code int `json:"code"`
	// Signal is the signal that killed the process, 0 if it exited normally.
	Signal int `json:"signal,omitempty"`
}

// Success reports a zero exit code.
func (s ExitStatus) Success() bool { return s.Code == 0 }

func (s ExitStatus) String() string {
	if s.Signal != 0 {
		return fmt.Sprintf("killed by signal %d (exit code %d)", s.Signal, s.Code)
	}
	return fmt.Sprintf("exit code %d", s.Code)
}

// FileInfo answers PUT /v1/files (JSON body) and GET /v1/files (headers).
type FileInfo struct {
	Path string `json:"path"`
	Size int64  `json:"size"`
	Mode uint32 `json:"mode"` // permission bits incl. setuid/setgid/sticky (07777)
	UID  int    `json:"uid"`
	GID  int    `json:"gid"`
}

// Headers carrying FileInfo on GET /v1/files (Content-Length carries the size).
const (
	HeaderFileMode = "X-Banger-File-Mode" // octal, e.g. 0644
	HeaderFileUID  = "X-Banger-File-Uid"
	HeaderFileGID  = "X-Banger-File-Gid"
)

// Power actions for POST /v1/power.
const (
	PowerOff    = "poweroff"
	PowerReboot = "reboot"
)

// PowerRequest is the body of POST /v1/power.
type PowerRequest struct {
	Action string `json:"action"`
}

// PowerResponse is the 202 body of POST /v1/power: the agent answers first, then acts.
type PowerResponse struct {
	Action string `json:"action"`
	// Method says how the agent will act: "signal pid1 (systemd)" or "reboot(2)".
	Method string `json:"method"`
}

// Error codes of typed errors.
const (
	CodeBadRequest       = "bad_request"
	CodeNotFound         = "not_found"
	CodeMethodNotAllowed = "method_not_allowed"
	CodeUpgradeRequired  = "upgrade_required"
	CodeIsDirectory      = "is_directory"
	CodeUnreachable      = "unreachable" // a forward's port refused or timed out
	CodeInternal         = "internal"
)

// ErrorBody is the JSON shape of every error answer: {"error":{"code","message"}}.
type ErrorBody struct {
	Error ErrorDetail `json:"error"`
}

// ErrorDetail is the inside of ErrorBody.
type ErrorDetail struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// Error is a typed error answered by the agent, as seen by the client.
type Error struct {
	Status  int    // HTTP status
	Code    string // one of the Code* constants
	Message string
}

func (e *Error) Error() string {
	return fmt.Sprintf("agent: %s (%s, HTTP %d)", e.Message, e.Code, e.Status)
}

// ErrorCode returns the typed error code in err's chain, or "" if there is none.
func ErrorCode(err error) string {
	var ae *Error
	if errors.As(err, &ae) {
		return ae.Code
	}
	return ""
}

// IsNotFound reports whether err is the agent's not_found error (e.g. a missing file).
func IsNotFound(err error) bool { return ErrorCode(err) == CodeNotFound }

// StatusForCode is the HTTP status the agent answers for a code.
func StatusForCode(code string) int {
	switch code {
	case CodeBadRequest:
		return http.StatusBadRequest
	case CodeNotFound:
		return http.StatusNotFound
	case CodeMethodNotAllowed:
		return http.StatusMethodNotAllowed
	case CodeUpgradeRequired:
		return http.StatusUpgradeRequired
	case CodeIsDirectory:
		return http.StatusConflict
	case CodeUnreachable:
		return http.StatusBadGateway
	default:
		return http.StatusInternalServerError
	}
}

// IdentityRequest is what a clone of a snapshot takes on right after it is restored, before
// it counts as ready: the template's hostname, machine-id, SSH host key, address, clock and
// random state are all still in its memory.
type IdentityRequest struct {
	Hostname string `json:"hostname"`
	// Network, when set, replaces eth0's address, MAC and default route and resolv.conf.
	Network *IdentityNetwork `json:"network,omitempty"`
	// SSHHostKey, when set, replaces the ed25519 host key sshd serves, and sshd reloads.
	SSHHostKey *SSHHostKey `json:"ssh_host_key,omitempty"`
	// Entropy is host randomness (MinIdentityEntropy-MaxIdentityEntropy bytes) mixed into
	// the guest's pool, which is then reseeded: clones must not share the template's.
	Entropy []byte `json:"entropy"`
	// UnixNano is the host's wall clock when it sent the request: the guest's clock stopped
	// with the snapshot.
	UnixNano int64 `json:"unix_nano"`
}

// ClockRequest is what a resumed VM takes on: the host's wall clock, and host randomness
// (optional; when set, MinIdentityEntropy-MaxIdentityEntropy bytes) mixed into its pool.
type ClockRequest struct {
	UnixNano int64  `json:"unix_nano"`
	Entropy  []byte `json:"entropy,omitempty"`
}

// SyncResponse says how long the guest took to flush its filesystems.
type SyncResponse struct {
	DurationMS float64 `json:"duration_ms"`
}

// ClockResponse says how far the guest's clock moved (positive: it was behind).
type ClockResponse struct {
	StepMS float64 `json:"step_ms"`
	Note   string  `json:"note,omitempty"`
}

// Bounds of IdentityRequest.Entropy.
const (
	MinIdentityEntropy = 32
	MaxIdentityEntropy = 4096
)

// IdentityNetwork is a clone's own network configuration.
type IdentityNetwork struct {
	Address string   `json:"address"` // IPv4 CIDR, e.g. 172.30.0.5/24
	Gateway string   `json:"gateway,omitempty"`
	DNS     []string `json:"dns,omitempty"`
	MAC     string   `json:"mac,omitempty"`
}

// SSHHostKey is an ed25519 host key pair in OpenSSH's formats.
type SSHHostKey struct {
	Private string `json:"private"` // "-----BEGIN OPENSSH PRIVATE KEY-----" ...
	Public  string `json:"public"`  // "ssh-ed25519 AAAA..."
}

// IdentityResponse says what the guest did, step by step.
type IdentityResponse struct {
	MachineID string         `json:"machine_id"`
	Steps     []IdentityStep `json:"steps"`
}

// IdentityStep is one step of taking on an identity; Note says why it was skipped.
type IdentityStep struct {
	Name       string  `json:"name"`
	DurationMS float64 `json:"duration_ms"`
	Note       string  `json:"note,omitempty"`
}
