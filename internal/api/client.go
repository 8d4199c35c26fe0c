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
	"strconv"
	"syscall"
	"time"
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
func NewClient(socket, clientVersion string) *Client {
	dialer := &net.Dialer{Timeout: 2 * time.Second}
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return dialer.DialContext(ctx, "unix", socket)
		},
		MaxIdleConns:    4,
		IdleConnTimeout: 30 * time.Second,
	}
	return &Client{socket: socket, version: clientVersion, http: &http.Client{Transport: tr}}
}

// IsDaemonNotRunning reports whether err means nothing is listening on the socket.
func IsDaemonNotRunning(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.Code == CodeDaemonNotRunning
}

// Status returns the daemon's identity and startup stages.
func (c *Client) Status(ctx context.Context) (StatusResponse, error) {
	var out StatusResponse
	err := c.do(ctx, http.MethodGet, "/status", nil, nil, &out)
	return out, err
}

// Doctor runs the daemon-side doctor checks.
func (c *Client) Doctor(ctx context.Context) (DoctorResponse, error) {
	var out DoctorResponse
	err := c.do(ctx, http.MethodGet, "/doctor", nil, nil, &out)
	return out, err
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
	var out EventsResponse
	err := c.do(ctx, http.MethodGet, "/events", q, nil, &out)
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
	resp, err := c.http.Do(req)
	if err != nil {
		return 0, nil, c.connError(err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	return resp.StatusCode, data, err
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
	u := "http://banger/" + Version + path
	if len(query) > 0 {
		u += "?" + query.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set(ClientVersionHeader, c.version)
	resp, err := c.http.Do(req)
	if err != nil {
		return c.connError(err)
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

func (c *Client) connError(err error) error {
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

func bytesReader(b []byte) io.Reader { return bytes.NewReader(b) }
