// Package client is banger's Go SDK: a client of the owner daemon (`banger daemon`) for
// programs that embed banger, such as coding agents and CI harnesses. The banger CLI
// itself talks to the daemon through this package.
//
// A Client creates, starts, stops, lists and removes VMs, runs commands in them with
// streamed stdin, stdout and stderr and their exit code, reads, writes and copies files,
// manages port forwards, and snapshots and forks VMs:
//
//	c, err := client.Default() // the daemon of the current user, as the CLI finds it
//	if err != nil { ... }
//	vm, err := c.CreateVM(ctx, client.VMCreateRequest{Image: "debian-bookworm", Start: true}, nil)
//	if err != nil { ... }
//	defer c.RemoveVM(ctx, client.VMRemoveRequest{Name: vm.Name, Force: true})
//	st, err := c.Exec(ctx, vm.Name, client.Command{Argv: []string{"uname", "-a"}, Stdout: os.Stdout})
//
// The types of the daemon's API are shared with the daemon and the CLI (they are aliases
// of banger's internal API types), so their JSON is exactly the daemon's and the CLI's
// --json output.
//
// Errors from the daemon are *Error values with a stable Code (see IsNotFound and
// friends), a Message and a Hint saying what to do. Everything a guest sends back (command
// output, file contents) is the guest's: treat it as untrusted input.
package client

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"

	"github.com/banger-vm/banger/internal/api"
	"github.com/banger-vm/banger/internal/buildinfo"
	"github.com/banger-vm/banger/internal/paths"
	"github.com/banger-vm/banger/internal/sshtransport"
)

// Client is a connection to one banger owner daemon. It is safe for concurrent use; its
// methods take a context that bounds the call (cancelling a streamed call such as CreateVM
// cancels the operation in the daemon, and cancelling an exec kills the command).
type Client struct {
	api *api.Client
}

// Option configures New.
type Option func(*options)

type options struct {
	socket  string
	dial    func(ctx context.Context) (net.Conn, error)
	target  string
	version string
	host    string
	sshArgs []string
}

// WithSocket talks to the daemon listening on the Unix socket at path instead of the
// current user's default one ($XDG_RUNTIME_DIR/banger/banger.sock). The socket's
// directory must be private to the current user and the daemon must run as this user (or
// root): anything else is refused before a byte is sent (CodeUnsafeSocket).
func WithSocket(path string) Option { return func(o *options) { o.socket = path } }

// WithDialer reaches the daemon through dial instead of a local Unix socket: a socket
// forwarded over SSH, or any other transport that carries the daemon's HTTP API. dial is
// called for each new connection; it, not the client, must make sure it reached the right
// daemon: the socket checks of WithSocket do not apply. WithDialer overrides WithSocket;
// name the daemon for error messages with WithTarget.
func WithDialer(dial func(ctx context.Context) (net.Conn, error)) Option {
	return func(o *options) { o.dial = dial }
}

// WithHost reaches the daemon of another machine over SSH, the way DOCKER_HOST does:
// host is ssh://[user@]host[:port][?banger=/path/to/banger], and each connection runs the
// system ssh (BatchMode: keys and agents only, never a prompt) with `banger daemon proxy`
// on that host, which bridges to the remote user's own daemon socket. sshArgs are extra
// ssh options (like "-i", KEY or "-F", CONFIG). A malformed host (an option smuggled in
// its user or name, a password, a path) makes New fail.
func WithHost(host string, sshArgs ...string) Option {
	return func(o *options) { o.host, o.sshArgs = host, sshArgs }
}

// WithTarget names the daemon a WithDialer client reaches, for error messages and Target
// (like "ssh://build-host").
func WithTarget(name string) Option { return func(o *options) { o.target = name } }

// WithClientVersion sets the version the client announces to the daemon (the daemon logs a
// mismatch with its own); the default is this package's banger version.
func WithClientVersion(v string) Option { return func(o *options) { o.version = v } }

// New returns a client of the daemon the options select; without options, the current
// user's daemon, found the way the banger CLI finds it (see Default). New does not connect:
// the first call does, and fails with CodeDaemonNotRunning when no daemon answers.
func New(opts ...Option) (*Client, error) {
	o := options{version: buildinfo.Version()}
	for _, opt := range opts {
		opt(&o)
	}
	if o.host != "" && o.dial == nil {
		h, err := sshtransport.ParseHost(o.host)
		if err != nil {
			return nil, err
		}
		t := sshtransport.Transport{Host: h, Args: o.sshArgs}
		o.dial, o.target = t.Dial, h.String()
	}
	if o.dial != nil {
		if o.target == "" {
			o.target = "custom dialer"
		}
		return &Client{api: api.NewClientWithDialer(o.target, o.dial, o.version)}, nil
	}
	if o.socket == "" {
		s, err := DefaultSocket()
		if err != nil {
			return nil, err
		}
		o.socket = s
	}
	return &Client{api: api.NewClient(o.socket, o.version)}, nil
}

// Default returns a client of the daemon the banger CLI would use: the one BANGER_HOST
// names (ssh://..., see WithHost, with BANGER_HOST_SSH_ARGS split on blanks as extra ssh
// options) when it is set, else the current user's own, whose socket is
// $XDG_RUNTIME_DIR/banger/banger.sock, or /tmp/banger-UID/banger.sock without
// XDG_RUNTIME_DIR. It does not start a daemon: run `banger daemon start` (or the systemd
// user unit) first.
func Default() (*Client, error) {
	if h := os.Getenv("BANGER_HOST"); h != "" {
		return New(WithHost(h, strings.Fields(os.Getenv("BANGER_HOST_SSH_ARGS"))...))
	}
	return New()
}

// CloseIdleConnections ends the kept-alive connections no call is using; with WithHost
// each is an ssh process, so a program that is done with the client should call it.
func (c *Client) CloseIdleConnections() { c.api.CloseIdleConnections() }

// DefaultSocket is the path of the current user's daemon socket (see Default).
func DefaultSocket() (string, error) {
	l, err := paths.Resolve(paths.EnvFromOS())
	if err != nil {
		return "", fmt.Errorf("find the banger daemon socket: %w", err)
	}
	return l.Socket, nil
}

// Target is the socket path this client talks to, or the name given with WithTarget.
func (c *Client) Target() string { return c.api.Target() }

// Status returns the daemon's identity (version, pid, uid, paths) and startup stages.
func (c *Client) Status(ctx context.Context) (StatusResponse, error) { return c.api.Status(ctx) }

// Doctor runs the daemon-side host checks (KVM, VMMs, disk tools, space).
func (c *Client) Doctor(ctx context.Context) (DoctorResponse, error) { return c.api.Doctor(ctx) }

// Events lists recorded lifecycle events (timed stages of creates, starts, ...).
func (c *Client) Events(ctx context.Context, f EventFilter) ([]Event, error) {
	return c.api.Events(ctx, f)
}

// Shutdown asks the daemon to stop gracefully; it answers before it goes. Running VMs
// keep running and are adopted by the next daemon.
func (c *Client) Shutdown(ctx context.Context, reason string) error {
	return c.api.Shutdown(ctx, reason)
}

// Leaks asks the daemon what it owns on the host that nothing references any more
// (processes, TAP devices, sockets, disks, directories).
func (c *Client) Leaks(ctx context.Context) (LeaksResponse, error) { return c.api.Leaks(ctx) }

// FixLeaks has the daemon remove the leaks it can remove safely, and scan again.
func (c *Client) FixLeaks(ctx context.Context) (LeaksResponse, error) { return c.api.FixLeaks(ctx) }

// BenchCreate measures VM creation against bare VMM starts (`banger bench create`).
func (c *Client) BenchCreate(ctx context.Context, req BenchCreateRequest, progress func(Progress)) (BenchCreateResult, error) {
	return c.api.BenchCreate(ctx, req, progress)
}

// errNoArgv is a Command without a program.
var errNoArgv = errors.New("no command given: Command.Argv needs at least the program")
