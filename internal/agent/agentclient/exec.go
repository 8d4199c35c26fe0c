package agentclient

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"syscall"

	"github.com/banger-vm/banger/internal/agent"
)

// Exec runs req in the guest and waits for it: stdin (nil: none) is copied to the process,
// its stdout and stderr (nil: discarded) are written exactly as produced. Cancelling ctx
// drops the stream, which makes the agent kill the process group. On error the status
// has Code -1. For a terminal (req.TTY), use StartExec to resize.
func (c *Client) Exec(ctx context.Context, req agent.ExecRequest, stdin io.Reader, stdout, stderr io.Writer) (agent.ExitStatus, error) {
	s, err := c.StartExec(ctx, req, stdin, stdout, stderr)
	if err != nil {
		return agent.ExitStatus{Code: -1}, err
	}
	defer s.Close()
	return s.Wait()
}

// ExecSession is a running exec stream (see the frame format in package agent).
type ExecSession struct {
	conn io.ReadWriteCloser
	fw   *agent.FrameWriter
	stop func() bool

	done   chan struct{}
	finish sync.Once
	status agent.ExitStatus
	err    error
}

// StartExec starts req in the guest and returns at once; Wait for the exit status. A
// request the agent rejects (bad argv, missing cwd) is an *agent.Error; a command that
// does not exist is not an error but exit code 127.
func (c *Client) StartExec(ctx context.Context, req agent.ExecRequest, stdin io.Reader, stdout, stderr io.Writer) (*ExecSession, error) {
	conn, err := c.ExecConn(ctx, req)
	if err != nil {
		return nil, err
	}
	return AttachExec(ctx, conn, stdin, stdout, stderr), nil
}

// ExecConn starts req in the guest and returns the raw exec stream (frames, see package
// agent) for a caller that relays it elsewhere, as the daemon does for the CLI.
func (c *Client) ExecConn(ctx context.Context, req agent.ExecRequest) (io.ReadWriteCloser, error) {
	body, hdr, err := jsonBody(req)
	if err != nil {
		return nil, err
	}
	return c.upgrade(ctx, agent.PathExec, nil, agent.ExecUpgradeProtocol, body, hdr)
}

// Mount mounts a host folder at the guest's absolute path dst: the returned connection is
// the hostfs stream the caller serves (hostfs.Serve); closing it unmounts.
func (c *Client) Mount(ctx context.Context, dst string, readOnly bool) (io.ReadWriteCloser, error) {
	q := url.Values{"path": {dst}}
	if readOnly {
		q.Set("ro", "1")
	}
	return c.upgrade(ctx, agent.PathMount, q, agent.MountUpgradeProtocol, nil, nil)
}

// Forward connects to a TCP port on the guest's loopback through the agent and returns the
// connection (e.g. to the guest's sshd, with or without a guest network).
func (c *Client) Forward(ctx context.Context, port int) (io.ReadWriteCloser, error) {
	return c.upgrade(ctx, agent.PathForward, url.Values{"port": {strconv.Itoa(port)}}, agent.ForwardUpgradeProtocol, nil, nil)
}

// Listeners lists the TCP ports the guest listens on where Forward reaches them.
func (c *Client) Listeners(ctx context.Context) ([]int, error) {
	resp, err := c.do(ctx, http.MethodGet, agent.PathListeners, nil, nil, nil)
	if err != nil {
		return nil, err
	}
	var l agent.ListenersResponse
	if err := decodeJSON(resp, http.StatusOK, &l); err != nil {
		return nil, err
	}
	if len(l.TCP) > agent.MaxListeners {
		return nil, fmt.Errorf("agent %s: %d ports, at most %d", agent.PathListeners, len(l.TCP), agent.MaxListeners)
	}
	for _, p := range l.TCP {
		if p < 1 || p > 65535 {
			return nil, fmt.Errorf("agent %s: port %d", agent.PathListeners, p)
		}
	}
	return l.TCP, nil
}

// ForwardUDP opens a UDP flow to a port on the guest's loopback through the agent: each
// datagram written is sent from one guest socket connected to that port, and its answers
// are read back, one datagram per ReadPacket.
func (c *Client) ForwardUDP(ctx context.Context, port int) (*agent.DatagramStream, error) {
	conn, err := c.upgrade(ctx, agent.PathForward, url.Values{"port": {strconv.Itoa(port)}, "proto": {"udp"}}, agent.ForwardUDPUpgradeProtocol, nil, nil)
	if err != nil {
		return nil, err
	}
	return agent.NewDatagramStream(conn), nil
}

// upgrade POSTs to path asking to switch to protocol, and returns the switched connection;
// any other answer is the agent's typed error.
func (c *Client) upgrade(ctx context.Context, path string, query url.Values, protocol string, body io.Reader, hdr http.Header) (io.ReadWriteCloser, error) {
	if hdr == nil {
		hdr = http.Header{}
	}
	hdr.Set("Connection", "Upgrade")
	hdr.Set("Upgrade", protocol)
	resp, err := c.do(ctx, http.MethodPost, path, query, body, hdr)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		defer resp.Body.Close()
		return nil, decodeError(resp)
	}
	conn, ok := resp.Body.(io.ReadWriteCloser)
	if !ok {
		resp.Body.Close()
		return nil, fmt.Errorf("agent %s: upgraded connection is not writable", path)
	}
	return conn, nil
}

// AttachExec drives an exec stream conn (from ExecConn, possibly relayed): stdin (nil:
// none) is copied in, output written out as produced. Cancelling ctx hangs up, which makes
// the agent kill the process group.
func AttachExec(ctx context.Context, conn io.ReadWriteCloser, stdin io.Reader, stdout, stderr io.Writer) *ExecSession {
	s := &ExecSession{conn: conn, fw: agent.NewFrameWriter(conn), done: make(chan struct{})}
	s.stop = context.AfterFunc(ctx, func() {
		s.end(agent.ExitStatus{Code: -1}, fmt.Errorf("agent exec: %w", context.Cause(ctx)))
	})
	go s.readLoop(stdout, stderr)
	go s.copyStdin(stdin)
	return s
}

// end records the outcome once and hangs up.
func (s *ExecSession) end(st agent.ExitStatus, err error) {
	s.finish.Do(func() {
		s.status, s.err = st, err
		close(s.done)
		_ = s.conn.Close()
	})
}

func (s *ExecSession) readLoop(stdout, stderr io.Writer) {
	var writeErr error
	write := func(w io.Writer, name string, p []byte) {
		if w == nil || writeErr != nil {
			return
		}
		if _, err := w.Write(p); err != nil {
			writeErr = fmt.Errorf("agent exec: write %s: %w", name, err)
		}
	}
	for {
		t, p, err := agent.ReadFrame(s.conn)
		if err != nil {
			s.end(agent.ExitStatus{Code: -1}, fmt.Errorf("agent exec: stream ended without an exit status: %w", err))
			return
		}
		switch t {
		case agent.FrameStdout:
			write(stdout, "stdout", p)
		case agent.FrameStderr:
			write(stderr, "stderr", p)
		case agent.FrameExit:
			var st agent.ExitStatus
			if err := json.Unmarshal(p, &st); err != nil {
				s.end(agent.ExitStatus{Code: -1}, fmt.Errorf("agent exec: bad exit frame %q: %w", p, err))
				return
			}
			s.end(st, writeErr)
			return
		case agent.FrameError:
			s.end(agent.ExitStatus{Code: -1}, fmt.Errorf("agent exec: %s", p))
			return
		}
	}
}

func (s *ExecSession) copyStdin(stdin io.Reader) {
	if stdin != nil {
		buf := make([]byte, 32<<10)
		for {
			n, err := stdin.Read(buf)
			if n > 0 {
				if s.fw.WriteFrame(agent.FrameStdin, buf[:n]) != nil {
					return
				}
			}
			if err != nil {
				break
			}
			select {
			case <-s.done:
				return
			default:
			}
		}
	}
	_ = s.fw.WriteFrame(agent.FrameStdinEOF, nil)
}

// Resize sets the terminal size of a TTY exec (ignored by the agent otherwise).
func (s *ExecSession) Resize(rows, cols uint16) error {
	return s.fw.WriteFrame(agent.FrameResize, agent.ResizePayload(rows, cols))
}

// Signal sends sig to the process group in the guest.
func (s *ExecSession) Signal(sig syscall.Signal) error {
	return s.fw.WriteFrame(agent.FrameSignal, agent.SignalPayload(int(sig)))
}

// Wait returns the exit status; err is set when the stream failed (status Code -1) or when
// writing to stdout/stderr failed (status still valid).
func (s *ExecSession) Wait() (agent.ExitStatus, error) {
	<-s.done
	s.stop()
	return s.status, s.err
}

// Done is closed when the session has ended.
func (s *ExecSession) Done() <-chan struct{} { return s.done }

// Close hangs up; a process still running is killed by the agent.
func (s *ExecSession) Close() error {
	s.end(agent.ExitStatus{Code: -1}, errors.New("agent exec: session closed before the process exited"))
	s.stop()
	return nil
}
