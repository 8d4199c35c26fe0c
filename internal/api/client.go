package api

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
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/banger-vm/banger/internal/paths"
)

// ClientVersionHeader carries the CLI's version so the daemon can log mismatches.
const ClientVersionHeader = "Banger-Client-Version"

// Client talks to the owner daemon over its Unix socket.
type Client struct {
	socket  string
	version string
	http    *http.Client
}

// NewClient returns a client for the daemon listening on socket; clientVersion is sent along.
// It only talks to a daemon of the current user (see dialDaemon).
func NewClient(socket, clientVersion string) *Client {
	dialer := &net.Dialer{Timeout: 2 * time.Second}
	uid := os.Geteuid()
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return dialDaemon(ctx, dialer, socket, uid)
		},
		MaxIdleConns:    4,
		IdleConnTimeout: 30 * time.Second,
	}
	return &Client{socket: socket, version: clientVersion, http: &http.Client{Transport: tr}}
}

// DialFunc opens a connection to a daemon: a transport other than the local Unix socket
// (a socket forwarded over SSH, a test's in-memory pipe). Each call opens a new connection.
type DialFunc func(ctx context.Context) (net.Conn, error)

// NewClientWithDialer returns a client that reaches the daemon through dial instead of a
// local socket path; target names the daemon in error messages (like "ssh://host"). The
// private-directory and peer-credential checks of NewClient do not apply: dial is the one
// that must know it reached the right daemon.
// dial may return an *Error, which requests then return as it is; the connection must
// carry HTTP/1.1 both ways, upgrades included (vm exec, forwards).
func NewClientWithDialer(target string, dial DialFunc, clientVersion string) *Client {
	tr := &http.Transport{
		DialContext:     func(ctx context.Context, _, _ string) (net.Conn, error) { return dial(ctx) },
		MaxIdleConns:    4,
		IdleConnTimeout: 30 * time.Second,
	}
	return &Client{socket: target, version: clientVersion, http: &http.Client{Transport: tr}}
}

// Target is the socket path the client talks to, or the target given to
// NewClientWithDialer.
func (c *Client) Target() string { return c.socket }

// CloseIdleConnections closes the kept-alive connections no request uses (with a dialer,
// each may be a process).
func (c *Client) CloseIdleConnections() { c.http.CloseIdleConnections() }

// DialSocket connects to the current user's daemon on socket with the checks NewClient
// applies (a private directory, a listener of ours: see dialDaemon); `banger daemon proxy`
// bridges such a connection to its stdin and stdout.
func DialSocket(ctx context.Context, socket string) (net.Conn, error) {
	return dialDaemon(ctx, &net.Dialer{Timeout: 2 * time.Second}, socket, os.Geteuid())
}

// UnsafeSocketError is a socket the client refused before sending anything: its directory
// is not private to us, or another user listens on it.
type UnsafeSocketError struct {
	Socket string
	Reason string
	Hint   string
}

func (e *UnsafeSocketError) Error() string { return e.Reason }

// dialDaemon connects to socket only when it can be our daemon's: its directory is ours and
// private (without XDG_RUNTIME_DIR it lives in the shared /tmp, where another user could
// create it first), and the listener on it runs as uid or root (SO_PEERCRED, which also
// covers a directory swapped between the check and the connect). Anything else is refused
// before a byte is sent: a fake daemon would get vm exec's arguments, -e values and stdin.
func dialDaemon(ctx context.Context, d *net.Dialer, socket string, uid int) (net.Conn, error) {
	if err := paths.CheckPrivateDir(filepath.Dir(socket), uid); err != nil {
		var ud *paths.UnsafeDirError
		if errors.As(err, &ud) {
			return nil, &UnsafeSocketError{Socket: socket,
				Reason: fmt.Sprintf("refusing to use the banger daemon socket %s: its directory %s %s", socket, ud.Dir, ud.Reason),
				Hint:   ud.Fix}
		}
		return nil, err // missing: no daemon runs
	}
	conn, err := d.DialContext(ctx, "unix", socket)
	if err != nil {
		return nil, err
	}
	if err := checkPeer(conn, uid); err != nil {
		_ = conn.Close()
		return nil, &UnsafeSocketError{Socket: socket,
			Reason: fmt.Sprintf("refusing to use the banger daemon socket %s: %v", socket, err),
			Hint:   "another user may be impersonating your daemon: stop that process, remove the socket, or set XDG_RUNTIME_DIR"}
	}
	return conn, nil
}

// IsDaemonNotRunning reports whether err means nothing is listening on the socket.
func IsDaemonNotRunning(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.Code == CodeDaemonNotRunning
}

// Status returns the daemon's identity and startup stages.
func (c *Client) Status(ctx context.Context) (StatusResponse, error) {
	return get[StatusResponse](ctx, c, "/status", nil)
}

// Doctor runs the daemon-side doctor checks.
func (c *Client) Doctor(ctx context.Context) (DoctorResponse, error) {
	return get[DoctorResponse](ctx, c, "/doctor", nil)
}

// EventFilter selects lifecycle events.
type EventFilter struct {
	Operation string
	Subject   string
	AfterID   int64
	Limit     int
}

// Events lists recorded lifecycle events.
func (c *Client) Events(ctx context.Context, f EventFilter) ([]Event, error) {
	q := url.Values{}
	if f.Operation != "" {
		q.Set("operation", f.Operation)
	}
	if f.Subject != "" {
		q.Set("subject", f.Subject)
	}
	if f.AfterID > 0 {
		q.Set("after", strconv.FormatInt(f.AfterID, 10))
	}
	if f.Limit > 0 {
		q.Set("limit", strconv.Itoa(f.Limit))
	}
	out, err := get[EventsResponse](ctx, c, "/events", q)
	return out.Events, err
}

// Shutdown asks the daemon to stop gracefully.
func (c *Client) Shutdown(ctx context.Context, reason string) error {
	return c.do(ctx, http.MethodPost, "/shutdown", nil, ShutdownRequest{Reason: reason}, nil)
}

// Raw sends an arbitrary request and returns the status and body; tests use it to send
// malformed requests.
func (c *Client) Raw(ctx context.Context, method, path string, body []byte) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, method, "http://banger"+path, bytes.NewReader(body))
	if err != nil {
		return 0, nil, err
	}
	resp, err := c.send(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	return resp.StatusCode, data, err
}

// get GETs path (with query) and decodes the answer as T.
func get[T any](ctx context.Context, c *Client, path string, query url.Values) (T, error) {
	var out T
	err := c.do(ctx, http.MethodGet, path, query, nil, &out)
	return out, err
}

// post POSTs in to path and decodes the answer as T.
func post[T any](ctx context.Context, c *Client, path string, in any) (T, error) {
	var out T
	err := c.do(ctx, http.MethodPost, path, nil, in, &out)
	return out, err
}

// streamed POSTs in to path as a streamed operation (see stream), reporting progress, and
// decodes its result as T.
func streamed[T any](ctx context.Context, c *Client, path string, in any, progress func(Progress)) (T, error) {
	var out T
	err := c.stream(ctx, path, in, progress, &out)
	return out, err
}

// newRequest is a request to the daemon's versioned API at path (with query), carrying the
// client's version and, with a body, the JSON content type.
func (c *Client) newRequest(ctx context.Context, method, path string, query url.Values, body io.Reader) (*http.Request, error) {
	u := "http://banger/" + Version + path
	if len(query) > 0 {
		u += "?" + query.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set(ClientVersionHeader, c.version)
	return req, nil
}

// send sends req; a failure to reach the daemon comes back as its typed Error (see connError).
func (c *Client) send(req *http.Request) (*http.Response, error) {
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, c.connError(err)
	}
	return resp, nil
}

func (c *Client) do(ctx context.Context, method, path string, query url.Values, in, out any) error {
	var body io.Reader
	if in != nil {
		data, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(data)
	}
	req, err := c.newRequest(ctx, method, path, query, body)
	if err != nil {
		return err
	}
	resp, err := c.send(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("read daemon answer to %s %s: %w", method, path, err)
	}
	if resp.StatusCode >= 300 {
		var eb ErrorBody
		if json.Unmarshal(data, &eb) == nil && eb.Error != nil && eb.Error.Code != "" {
			return eb.Error
		}
		return &Error{Code: CodeInternal, Message: fmt.Sprintf("daemon answered %s to %s %s: %s", resp.Status, method, path, bytes.TrimSpace(data))}
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("decode daemon answer to %s %s: %w", method, path, err)
	}
	return nil
}

// checkPeer accepts a listener run by uid or by root.
func checkPeer(conn net.Conn, uid int) error {
	peer, err := peerUID(conn)
	if err != nil {
		return err
	}
	if peer != uid && peer != 0 {
		return fmt.Errorf("it is served by uid %d, not you (uid %d)", peer, uid)
	}
	return nil
}

func (c *Client) connError(err error) error {
	var ae *Error
	if errors.As(err, &ae) {
		return ae // a dialer's own account of what failed (see NewClientWithDialer)
	}
	if c.socket == "" {
		return fmt.Errorf("talk to banger daemon: %w", err)
	}
	var us *UnsafeSocketError
	if errors.As(err, &us) {
		return &Error{Code: CodeUnsafeSocket, Message: us.Reason, Hint: us.Hint}
	}
	if errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED) {
		return &Error{
			Code:    CodeDaemonNotRunning,
			Message: fmt.Sprintf("no banger daemon is running on %s", c.socket),
			Hint:    "start it with `banger daemon start` (or `systemctl --user start banger`)",
		}
	}
	if errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) {
		// Accepted by a daemon that was dying (killed, or stopping) and never answered.
		return &Error{
			Code:    CodeDaemonNotRunning,
			Message: fmt.Sprintf("the banger daemon on %s closed the connection without answering: it was stopping or was killed", c.socket),
			Hint:    "start it again with `banger daemon start` (see its log for why it stopped)",
		}
	}
	if errors.Is(err, syscall.EACCES) {
		return &Error{
			Code:    CodeDaemonNotRunning,
			Message: fmt.Sprintf("permission denied connecting to %s", c.socket),
			Hint:    "the daemon socket belongs to another user; run banger as the user that owns the daemon",
		}
	}
	return fmt.Errorf("talk to banger daemon on %s: %w", c.socket, err)
}
