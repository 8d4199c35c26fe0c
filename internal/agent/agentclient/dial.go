package agentclient

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/yamux"
	"github.com/mdlayher/vsock"

	"github.com/banger-vm/banger/internal/agent"
)

// DialFunc opens one stream to the agent; each carries one HTTP connection.
type DialFunc func(ctx context.Context) (net.Conn, error)

// dialTimeout bounds a dial whose context has no deadline.
const dialTimeout = 10 * time.Second

// HybridVsockDialer dials the agent through Firecracker's hybrid vsock: connect to the
// vsock Unix socket, send "CONNECT <port>\n", read "OK <hostport>\n"; the connection is
// then the raw stream to the guest's AF_VSOCK listener.
func HybridVsockDialer(udsPath string, port uint32) DialFunc {
	return func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		c, err := d.DialContext(ctx, "unix", udsPath)
		if err != nil {
			return nil, fmt.Errorf("hybrid vsock: %w", err)
		}
		deadline, ok := ctx.Deadline()
		if !ok {
			deadline = time.Now().Add(dialTimeout)
		}
		_ = c.SetDeadline(deadline)
		stop := context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Unix(1, 0)) })
		defer stop()
		if _, err := fmt.Fprintf(c, "CONNECT %d\n", port); err != nil {
			_ = c.Close()
			return nil, fmt.Errorf("hybrid vsock %s: send CONNECT: %w", udsPath, err)
		}
		// Read the answer a byte at a time: what follows belongs to the stream.
		var line []byte
		var b [1]byte
		for len(line) < 128 {
			if _, err := io.ReadFull(c, b[:]); err != nil {
				_ = c.Close()
				if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
					return nil, fmt.Errorf("hybrid vsock %s: connection closed before OK: nothing listens on guest vsock port %d (yet)", udsPath, port)
				}
				if ctx.Err() != nil {
					err = context.Cause(ctx)
				}
				return nil, fmt.Errorf("hybrid vsock %s: read CONNECT answer: %w", udsPath, err)
			}
			if b[0] == '\n' {
				break
			}
			line = append(line, b[0])
		}
		if len(line) < 3 || string(line[:3]) != "OK " {
			_ = c.Close()
			return nil, fmt.Errorf("hybrid vsock %s: unexpected answer to CONNECT %d: %q", udsPath, port, line)
		}
		if !stop() {
			_ = c.Close()
			return nil, context.Cause(ctx)
		}
		_ = c.SetDeadline(time.Time{})
		return c, nil
	}
}

// VsockDialer dials the agent over AF_VSOCK (vhost-vsock): guest cid, port.
func VsockDialer(cid, port uint32) DialFunc {
	return func(ctx context.Context) (net.Conn, error) {
		type result struct {
			c   net.Conn
			err error
		}
		ch := make(chan result, 1)
		go func() {
			c, err := vsock.Dial(cid, port, nil)
			ch <- result{c, err}
		}()
		select {
		case r := <-ch:
			if r.err != nil {
				return nil, fmt.Errorf("vsock dial cid %d port %d: %w", cid, port, r.err)
			}
			return r.c, nil
		case <-ctx.Done():
			go func() {
				if r := <-ch; r.c != nil {
					_ = r.c.Close()
				}
			}()
			return nil, fmt.Errorf("vsock dial cid %d port %d: %w", cid, port, context.Cause(ctx))
		}
	}
}

// SerialMux multiplexes agent streams over the one connection to a virtio-serial port's
// chardev socket (QEMU `-chardev socket,server=on`): a yamux client session, after the
// handshake of package agent. It reconnects (new connection, new session) when the session
// dies. Only one host connection to the chardev can exist, so the mux owns it: Close it.
type SerialMux struct {
	connect func(ctx context.Context) (net.Conn, error)

	sem        chan struct{} // held while (re)establishing the session
	mu         sync.Mutex
	sess       *yamux.Session
	connecting net.Conn // during the handshake, so Close can interrupt it
	closed     bool
}

// NewSerialMux returns a mux for the chardev Unix socket at path. It connects lazily.
func NewSerialMux(path string) *SerialMux {
	return NewSerialMuxFunc(func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", path)
	})
}

// NewSerialMuxFunc is NewSerialMux with a custom way to reach the port.
func NewSerialMuxFunc(connect func(ctx context.Context) (net.Conn, error)) *SerialMux {
	return &SerialMux{connect: connect, sem: make(chan struct{}, 1)}
}

// ErrClosed is returned by calls on a closed client.
var ErrClosed = errors.New("agent client closed")

// Dial opens a new stream, establishing the session first if needed.
func (m *SerialMux) Dial(ctx context.Context) (net.Conn, error) {
	for attempt := 0; ; attempt++ {
		sess, err := m.session(ctx)
		if err != nil {
			return nil, err
		}
		st, err := sess.OpenStream()
		if err == nil {
			return st, nil
		}
		// The session died under us: drop it and try once more on a fresh one.
		m.drop(sess)
		if attempt > 0 {
			return nil, fmt.Errorf("virtio-serial: open stream: %w", err)
		}
	}
}

func (m *SerialMux) session(ctx context.Context) (*yamux.Session, error) {
	select {
	case m.sem <- struct{}{}:
	case <-ctx.Done():
		return nil, fmt.Errorf("virtio-serial: waiting for the session: %w", context.Cause(ctx))
	}
	defer func() { <-m.sem }()

	m.mu.Lock()
	closed, sess := m.closed, m.sess
	m.mu.Unlock()
	if closed {
		return nil, ErrClosed
	}
	if sess != nil && !sess.IsClosed() {
		return sess, nil
	}
	if sess != nil {
		_ = sess.Close()
	}

	conn, err := m.connect(ctx)
	if err != nil {
		return nil, fmt.Errorf("virtio-serial: connect to the chardev socket: %w", err)
	}
	m.mu.Lock()
	m.connecting = conn
	m.mu.Unlock()
	r, err := agent.HostHandshake(ctx, conn)
	m.mu.Lock()
	m.connecting = nil
	closed = m.closed
	m.mu.Unlock()
	if closed {
		_ = conn.Close()
		return nil, ErrClosed
	}
	if err != nil {
		_ = conn.Close()
		return nil, err
	}
	sess, err = yamux.Client(&bufferedConn{Reader: r, Conn: conn}, clientYamuxConfig())
	if err != nil {
		_ = conn.Close()
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		_ = sess.Close()
		return nil, ErrClosed
	}
	m.sess = sess
	return sess, nil
}

func (m *SerialMux) drop(sess *yamux.Session) {
	_ = sess.Close()
	m.mu.Lock()
	if m.sess == sess {
		m.sess = nil
	}
	m.mu.Unlock()
}

// Close ends the session and the chardev connection.
func (m *SerialMux) Close() error {
	m.mu.Lock()
	m.closed = true
	sess := m.sess
	m.sess = nil
	if m.connecting != nil {
		_ = m.connecting.Close()
	}
	m.mu.Unlock()
	if sess != nil {
		return sess.Close()
	}
	return nil
}

type bufferedConn struct {
	io.Reader
	net.Conn
}

func (b *bufferedConn) Read(p []byte) (int, error) { return b.Reader.Read(p) }

func clientYamuxConfig() *yamux.Config {
	cfg := yamux.DefaultConfig()
	cfg.EnableKeepAlive = true
	cfg.KeepAliveInterval = 10 * time.Second
	cfg.ConnectionWriteTimeout = 10 * time.Second
	cfg.StreamOpenTimeout = 15 * time.Second
	cfg.StreamCloseTimeout = 30 * time.Second
	cfg.MaxStreamWindowSize = 1 << 20
	cfg.LogOutput = io.Discard
	return cfg
}
