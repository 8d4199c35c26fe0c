// Package network is the owner daemon's side of networking: guest address leases in the
// store, stable MACs, guest DNS, the warm TAP pool, and the client of the root helper that
// does the privileged work.
package network

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"time"

	"github.com/banger-vm/banger/internal/helper"
)

// Client talks to the root helper. It dials per call: a Unix connect costs tens of
// microseconds, and a stateless client has nothing to reconnect after a helper restart.
type Client struct {
	Socket  string
	Timeout time.Duration
}

// NewClient returns a client of the helper at socket.
func NewClient(socket string) *Client {
	return &Client{Socket: socket, Timeout: 30 * time.Second}
}

// UnreachableError means no helper answered.
type UnreachableError struct {
	Socket string
	Err    error
}

func (e *UnreachableError) Error() string {
	if os.Getuid() == 0 {
		// The helper never serves root: suggesting --owner-uid=0 would send the user in a circle.
		return fmt.Sprintf("cannot reach the banger helper at %s (%v): it serves unprivileged daemons only; run the daemon as your user", e.Socket, e.Err)
	}
	return fmt.Sprintf("cannot reach the banger helper at %s (%v): start it as root, e.g. `sudo systemctl start banger-helper` or `sudo banger helper --owner-uid=%d`",
		e.Socket, e.Err, os.Getuid())
}

func (e *UnreachableError) Unwrap() error { return e.Err }

// Do sends one request and returns the response; a refusal or failure is a *helper.Error.
func (c *Client) Do(ctx context.Context, req helper.Request) (helper.Response, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", c.Socket)
	if err != nil {
		return helper.Response{}, &UnreachableError{Socket: c.Socket, Err: err}
	}
	defer conn.Close()
	deadline := time.Now().Add(c.Timeout)
	if dl, ok := ctx.Deadline(); ok && dl.Before(deadline) {
		deadline = dl
	}
	_ = conn.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Now()) })
	defer stop()
	b, _ := json.Marshal(req)
	if _, err := conn.Write(append(b, '\n')); err != nil {
		return helper.Response{}, fmt.Errorf("send %s to the banger helper: %w", req.Op, err)
	}
	line, err := bufio.NewReader(conn).ReadBytes('\n')
	if err != nil {
		if ctx.Err() != nil {
			return helper.Response{}, ctx.Err()
		}
		return helper.Response{}, fmt.Errorf("read the banger helper's answer to %s: %w", req.Op, err)
	}
	var resp helper.Response
	if err := json.Unmarshal(line, &resp); err != nil {
		return helper.Response{}, fmt.Errorf("the banger helper's answer to %s is not valid JSON: %w", req.Op, err)
	}
	if !resp.OK {
		return resp, &helper.Error{Op: req.Op, Code: resp.Code, Msg: resp.Error, Hint: resp.Hint}
	}
	return resp, nil
}

// EnsureBridge asks the helper to create/up the bridge.
func (c *Client) EnsureBridge(ctx context.Context) error {
	_, err := c.Do(ctx, helper.Request{Op: helper.OpEnsureBridge})
	return err
}

// CreateTAP creates (or re-attaches) a TAP owned by the caller; ip may be empty.
func (c *Client) CreateTAP(ctx context.Context, name, ip string) error {
	_, err := c.Do(ctx, helper.Request{Op: helper.OpCreateTAP, Name: name, IP: ip})
	return err
}

// DeleteTAP deletes a TAP; deleting a missing one is not an error.
func (c *Client) DeleteTAP(ctx context.Context, name string) error {
	_, err := c.Do(ctx, helper.Request{Op: helper.OpDeleteTAP, Name: name})
	return err
}

// List returns banger-owned devices (the bridge and TAPs).
func (c *Client) List(ctx context.Context) ([]helper.Device, error) {
	r, err := c.Do(ctx, helper.Request{Op: helper.OpList})
	return r.Devices, err
}

// EnsureNAT installs masquerade + forwarding for subnet (which must be the helper's).
func (c *Client) EnsureNAT(ctx context.Context, subnet string) error {
	_, err := c.Do(ctx, helper.Request{Op: helper.OpEnsureNAT, Subnet: subnet})
	return err
}

// Status returns the helper's view for doctor.
func (c *Client) Status(ctx context.Context) (*helper.Status, error) {
	r, err := c.Do(ctx, helper.Request{Op: helper.OpStatus})
	if err == nil && r.Status == nil {
		err = errors.New("the banger helper answered status without a status")
	}
	return r.Status, err
}
