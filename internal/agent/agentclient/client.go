// Package agentclient is the host side of banger-agent: one typed client over the three
// host<->guest channels (Firecracker hybrid vsock, AF_VSOCK, virtio-serial via yamux). It
// imports nothing guest-specific (no pty, no process starting).
package agentclient

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
	"strconv"
	"sync/atomic"
	"time"

	"github.com/banger-vm/banger/internal/agent"
)

// baseURL is a placeholder host: the transport's dialer decides where requests go.
const baseURL = "http://banger-agent"

// requestCtxKey carries a request's context to its dial.
type requestCtxKey struct{}

// defaultDialTimeout bounds a dial (handshakes included) when the call has no deadline.
const defaultDialTimeout = 30 * time.Second

// Client talks to one guest's agent. It is safe for concurrent use; Close it.
type Client struct {
	hc     *http.Client
	tr     *http.Transport
	closer io.Closer

	lastDialErr atomic.Pointer[error] // what the transport saw last, for WaitReady's error
}

// New returns a client whose connections come from dial. closer, if not nil, is closed by
// Close (e.g. a SerialMux).
func New(dial DialFunc, closer io.Closer) *Client {
	c := &Client{closer: closer}
	c.tr = &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			// net/http detaches dials from the request's cancellation (it may pool the
			// connection); dial under the request's context anyway, so a dial never
			// outlives the call that wanted it (a serial handshake would wait forever).
			if rc, ok := ctx.Value(requestCtxKey{}).(context.Context); ok {
				ctx = rc
			}
			if _, ok := ctx.Deadline(); !ok {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, defaultDialTimeout)
				defer cancel()
			}
			conn, err := dial(ctx)
			if err != nil {
				c.lastDialErr.Store(&err)
			}
			return conn, err
		},
		DisableCompression:  true,
		MaxIdleConns:        8,
		MaxIdleConnsPerHost: 8,
		IdleConnTimeout:     30 * time.Second,
		ForceAttemptHTTP2:   false,
	}
	c.hc = &http.Client{Transport: c.tr}
	return c
}

// NewHybridVsock returns a client for a Firecracker VM: udsPath is its vsock Unix socket
// (vsock.uds_path), port the agent's vsock port (agent.DefaultVsockPort).
func NewHybridVsock(udsPath string, port uint32) *Client {
	return New(HybridVsockDialer(udsPath, port), nil)
}

// NewVsock returns a client for a guest reachable over AF_VSOCK (vhost-vsock) at cid.
func NewVsock(cid, port uint32) *Client {
	return New(VsockDialer(cid, port), nil)
}

// NewSerial returns a client for a guest whose agent listens on a virtio-serial port that
// QEMU exposes as the chardev Unix socket at socketPath. The client owns the one
// connection to that socket until Close.
func NewSerial(socketPath string) *Client {
	m := NewSerialMux(socketPath)
	return New(m.Dial, m)
}

// Close closes idle connections and the transport's own resources (the serial session).
func (c *Client) Close() error {
	c.tr.CloseIdleConnections()
	if c.closer != nil {
		return c.closer.Close()
	}
	return nil
}

func (c *Client) do(ctx context.Context, method, path string, query url.Values, body io.Reader, hdr http.Header) (*http.Response, error) {
	u := baseURL + path
	if len(query) > 0 {
		u += "?" + query.Encode()
	}
	ctx = context.WithValue(ctx, requestCtxKey{}, ctx)
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		return nil, err
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("agent %s %s: %w", method, path, err)
	}
	return resp, nil
}

func jsonBody(v any) (io.Reader, http.Header, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, nil, err
	}
	return bytes.NewReader(b), http.Header{"Content-Type": {"application/json"}}, nil
}

// decodeError turns a non-success answer into an *agent.Error.
func decodeError(resp *http.Response) error {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	var eb agent.ErrorBody
	if err := json.Unmarshal(b, &eb); err != nil || eb.Error.Code == "" {
		return &agent.Error{Status: resp.StatusCode, Code: agent.CodeInternal,
			Message: fmt.Sprintf("unexpected answer %s: %q", resp.Status, bytes.TrimSpace(b))}
	}
	return &agent.Error{Status: resp.StatusCode, Code: eb.Error.Code, Message: eb.Error.Message}
}

// maxJSONAnswer bounds an agent's JSON answer (health, file info, power): the guest is
// hostile and could stream an endless document into the daemon's memory. Real answers are
// well under a few KiB.
const maxJSONAnswer = 1 << 20

func decodeJSON(resp *http.Response, want int, v any) error {
	defer resp.Body.Close()
	if resp.StatusCode != want {
		return decodeError(resp)
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxJSONAnswer+1))
	if err != nil {
		return fmt.Errorf("agent: read answer: %w", err)
	}
	if len(data) > maxJSONAnswer {
		return fmt.Errorf("agent: answer larger than %d bytes, refused (a misbehaving guest?)", maxJSONAnswer)
	}
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("agent: decode answer: %w", err)
	}
	return nil
}

// Health asks GET /v1/healthz.
func (c *Client) Health(ctx context.Context) (*agent.Health, error) {
	resp, err := c.do(ctx, http.MethodGet, agent.PathHealth, nil, nil, nil)
	if err != nil {
		return nil, err
	}
	var h agent.Health
	if err := decodeJSON(resp, http.StatusOK, &h); err != nil {
		return nil, err
	}
	return &h, nil
}

// Readiness polling: a restored clone's agent answers within milliseconds of the VMM
// resuming, a cold guest's after seconds; the wait between attempts starts short and
// doubles up to readyIntervalMax.
const (
	readyIntervalMin = 5 * time.Millisecond
	readyIntervalMax = 200 * time.Millisecond
	readyAttemptMax  = 5 * time.Second
)

// WaitReady polls Health until it succeeds or ctx is done; then the error says what the
// last attempt saw (e.g. "nothing listens on guest vsock port 1024 (yet)").
func (c *Client) WaitReady(ctx context.Context) (*agent.Health, error) {
	var last error
	c.lastDialErr.Store(nil)
	interval := readyIntervalMin
	for {
		actx, cancel := context.WithTimeout(ctx, readyAttemptMax)
		h, err := c.Health(actx)
		cancel()
		if err == nil {
			return h, nil
		}
		last = err
		// A dial cut short by the deadline is reported by net/http as the bare context
		// error; the transport's own error says more (e.g. "no answer from banger-agent").
		// That dial ends right after the deadline: give it a moment to report.
		if errors.Is(err, context.DeadlineExceeded) {
			for i := 0; i < 20 && c.lastDialErr.Load() == nil; i++ {
				time.Sleep(10 * time.Millisecond)
			}
			if dp := c.lastDialErr.Load(); dp != nil {
				last = *dp
			}
		}
		c.lastDialErr.Store(nil)
		t := time.NewTimer(interval)
		interval = min(2*interval, readyIntervalMax)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("agent not ready: %w (last attempt: %v)", context.Cause(ctx), last)
		case <-t.C:
		}
	}
}

// WriteFile writes r to path in the guest (parents created, replaced atomically), with the
// permission bits of mode (incl. setuid/setgid/sticky) and owner uid:gid; uid or gid -1
// leaves that owner to the agent (root).
func (c *Client) WriteFile(ctx context.Context, path string, r io.Reader, mode os.FileMode, uid, gid int) (*agent.FileInfo, error) {
	q := url.Values{"path": {path}, "mode": {fmt.Sprintf("%04o", unixMode(mode))}}
	if uid >= 0 {
		q.Set("uid", strconv.Itoa(uid))
	}
	if gid >= 0 {
		q.Set("gid", strconv.Itoa(gid))
	}
	if r == nil {
		r = http.NoBody
	}
	resp, err := c.do(ctx, http.MethodPut, agent.PathFiles, q, r, http.Header{"Content-Type": {"application/octet-stream"}})
	if err != nil {
		return nil, err
	}
	var fi agent.FileInfo
	if err := decodeJSON(resp, http.StatusOK, &fi); err != nil {
		return nil, err
	}
	return &fi, nil
}

func unixMode(m os.FileMode) uint32 {
	u := uint32(m.Perm())
	if m&os.ModeSetuid != 0 {
		u |= 0o4000
	}
	if m&os.ModeSetgid != 0 {
		u |= 0o2000
	}
	if m&os.ModeSticky != 0 {
		u |= 0o1000
	}
	return u
}

// Stat returns the metadata of the guest file at path (a HEAD request: nothing is read).
// A missing file is an *agent.Error with code not_found.
func (c *Client) Stat(ctx context.Context, path string) (*agent.FileInfo, error) {
	resp, err := c.do(ctx, http.MethodHead, agent.PathFiles, url.Values{"path": {path}}, nil, nil)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		if resp.StatusCode == http.StatusNotFound {
			return nil, &agent.Error{Status: resp.StatusCode, Code: agent.CodeNotFound, Message: path + ": no such file"}
		}
		return nil, &agent.Error{Status: resp.StatusCode, Code: agent.CodeInternal, Message: "stat " + path + ": " + resp.Status}
	}
	return fileInfoOf(path, resp), nil
}

func fileInfoOf(path string, resp *http.Response) *agent.FileInfo {
	fi := &agent.FileInfo{Path: path, Size: resp.ContentLength}
	if m, err := strconv.ParseUint(resp.Header.Get(agent.HeaderFileMode), 8, 32); err == nil {
		fi.Mode = uint32(m)
	}
	fi.UID, _ = strconv.Atoi(resp.Header.Get(agent.HeaderFileUID))
	fi.GID, _ = strconv.Atoi(resp.Header.Get(agent.HeaderFileGID))
	return fi
}

// ReadFile streams the guest file at path into w. A missing file is an *agent.Error with
// code not_found (agent.IsNotFound).
func (c *Client) ReadFile(ctx context.Context, path string, w io.Writer) (*agent.FileInfo, error) {
	resp, err := c.do(ctx, http.MethodGet, agent.PathFiles, url.Values{"path": {path}}, nil, nil)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, decodeError(resp)
	}
	fi := fileInfoOf(path, resp)
	n, err := io.Copy(w, resp.Body)
	fi.Size = n
	if err != nil {
		return fi, fmt.Errorf("agent: read %s: interrupted after %d bytes: %w", path, n, err)
	}
	return fi, nil
}

// Identity has a clone of a snapshot take on its own identity (agent.IdentityRequest).
func (c *Client) Identity(ctx context.Context, req agent.IdentityRequest) (*agent.IdentityResponse, error) {
	body, hdr, err := jsonBody(req)
	if err != nil {
		return nil, err
	}
	resp, err := c.do(ctx, http.MethodPost, agent.PathIdentity, nil, body, hdr)
	if err != nil {
		return nil, err
	}
	var ir agent.IdentityResponse
	if err := decodeJSON(resp, http.StatusOK, &ir); err != nil {
		return nil, err
	}
	return &ir, nil
}

// Sync has the guest flush every filesystem to its disks (sync(2)).
func (c *Client) Sync(ctx context.Context) (*agent.SyncResponse, error) {
	return post[agent.SyncResponse](ctx, c, agent.PathSync, nil)
}

// SetClock sets the guest's wall clock (and reseeds its random pool with req.Entropy).
func (c *Client) SetClock(ctx context.Context, req agent.ClockRequest) (*agent.ClockResponse, error) {
	return post[agent.ClockResponse](ctx, c, agent.PathClock, req)
}

// Freeze syncs and freezes the guest's writable disk filesystems; the agent thaws them by
// itself after thawAfter of guest time unless Thaw comes first.
func (c *Client) Freeze(ctx context.Context, thawAfter time.Duration) (*agent.FreezeResponse, error) {
	return post[agent.FreezeResponse](ctx, c, agent.PathFreeze, agent.FreezeRequest{ThawAfterMS: thawAfter.Milliseconds()})
}

// Thaw thaws what Freeze froze (nothing, harmlessly, when nothing is frozen).
func (c *Client) Thaw(ctx context.Context) (*agent.ThawResponse, error) {
	return post[agent.ThawResponse](ctx, c, agent.PathThaw, nil)
}

// ResizeFS grows the filesystem mounted at path in the guest to fill its disk, once the
// guest sees the disk at sizeBytes.
func (c *Client) ResizeFS(ctx context.Context, path string, sizeBytes int64) (*agent.ResizeFSResponse, error) {
	return post[agent.ResizeFSResponse](ctx, c, agent.PathResizeFS, agent.ResizeFSRequest{Path: path, SizeBytes: sizeBytes})
}

// post sends req (no body when nil) to path and decodes a 200 answer as T.
func post[T any](ctx context.Context, c *Client, path string, req any) (*T, error) {
	var body io.Reader
	var hdr http.Header
	if req != nil {
		var err error
		if body, hdr, err = jsonBody(req); err != nil {
			return nil, err
		}
	}
	resp, err := c.do(ctx, http.MethodPost, path, nil, body, hdr)
	if err != nil {
		return nil, err
	}
	var out T
	if err := decodeJSON(resp, http.StatusOK, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// Power asks the guest to power off or reboot (agent.PowerOff, agent.PowerReboot). The
// agent answers before it acts; the VM going away is the caller's to watch.
func (c *Client) Power(ctx context.Context, action string) (*agent.PowerResponse, error) {
	body, hdr, err := jsonBody(agent.PowerRequest{Action: action})
	if err != nil {
		return nil, err
	}
	resp, err := c.do(ctx, http.MethodPost, agent.PathPower, nil, body, hdr)
	if err != nil {
		return nil, err
	}
	var pr agent.PowerResponse
	if err := decodeJSON(resp, http.StatusAccepted, &pr); err != nil {
		return nil, err
	}
	return &pr, nil
}
