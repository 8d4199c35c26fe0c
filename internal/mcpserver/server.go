// Package mcpserver is banger's Model Context Protocol server: tools that let a coding
// agent run commands in throwaway VMs, and create, use, fork and remove VMs, through the
// owner daemon's API. It serves one MCP session (stdio for `banger mcp`); every input is
// checked before it reaches the daemon and every output is bounded.
package mcpserver

import (
	"context"
	"io"
	"log/slog"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/banger-vm/banger/internal/api"
)

// Daemon is the part of the owner daemon's API the tools use; *api.Client is one.
type Daemon interface {
	VMs(ctx context.Context) ([]api.VM, error)
	CreateVM(ctx context.Context, req api.VMCreateRequest, progress func(api.Progress)) (api.VM, error)
	StopVM(ctx context.Context, req api.VMStopRequest) (api.VM, error)
	RemoveVM(ctx context.Context, req api.VMRemoveRequest) error
	ExecStream(ctx context.Context, req api.VMExecRequest) (io.ReadWriteCloser, error)
	CreateSnapshot(ctx context.Context, req api.SnapshotCreateRequest, progress func(api.Progress)) (api.Snapshot, error)
}

// Options configure a server.
type Options struct {
	// Connect reaches the daemon. It is called for every tool call, so a daemon started
	// (or restarted) after the server answers from then on; its error is the tool's.
	Connect func(ctx context.Context) (Daemon, error)
	// Version is reported to clients.
	Version string
	// Logger gets the SDK's log lines (nil: none). Never stdout: that is the protocol.
	Logger *slog.Logger
}

// instructions tell the client's model what the server is for.
const instructions = `banger runs real Linux microVMs on this machine. vm_run is the quick path: a fresh
VM for one command (created, started, the command run, the VM removed), with its stdout,
stderr and exit code. For several steps on one machine: vm_create, then vm_exec,
vm_write_file and vm_read_file on it, and vm_rm when done (VMs you create keep running and
using memory until removed). vm_fork clones a running VM. Commands take argv arrays, not
shell strings (vm_run and vm_exec also take "shell" for a sh -c script). Outputs are
truncated at 64 KiB per stream; commands are killed at their timeout_seconds.`

// New builds the server with all its tools.
func New(o Options) *mcp.Server {
	s, _ := newServer(o)
	return s
}

func newServer(o Options) (*mcp.Server, *tools) {
	s := mcp.NewServer(&mcp.Implementation{Name: "banger", Title: "banger microVMs", Version: o.Version},
		&mcp.ServerOptions{Instructions: instructions, Logger: o.Logger})
	t := &tools{connect: o.Connect}
	t.register(s)
	return s, t
}

// CleanupGrace bounds how long Serve waits, after the session ends, for calls still
// cleaning up (vm_run removing its VM).
const CleanupGrace = 90 * time.Second

// Serve runs the server over transport until the client hangs up or ctx ends, then waits
// (at most CleanupGrace) for calls in flight to undo what they made.
func Serve(ctx context.Context, o Options, transport mcp.Transport) error {
	s, t := newServer(o)
	err := s.Run(ctx, transport)
	done := make(chan struct{})
	go func() {
		t.inflight.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(CleanupGrace):
	}
	return err
}
