package agentclient_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/banger-vm/banger/internal/agent"
	"github.com/banger-vm/banger/internal/agent/agentclient"
	"github.com/banger-vm/banger/internal/agent/agentserver"
)

func quietLogger() *slog.Logger {
	if os.Getenv("AGENT_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// shortDir returns a temporary directory with a short path (Unix socket paths are limited).
func shortDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("", "bagent")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

func newAgent(t *testing.T, cfg agentserver.Config) *agentserver.Server {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = quietLogger()
	}
	s := agentserver.New(cfg)
	t.Cleanup(func() { s.Close() })
	return s
}

// transport is one way for a test client to reach an in-process agent.
type transport struct {
	name  string
	setup func(t *testing.T, s *agentserver.Server) *agentclient.Client
}

var transports = []transport{
	{"unix", setupUnix},
	{"hybrid-vsock", setupHybrid},
	{"serial", setupSerial},
}

// setupUnix: a plain stream listener (what AF_VSOCK gives the agent).
func setupUnix(t *testing.T, s *agentserver.Server) *agentclient.Client {
	sock := filepath.Join(shortDir(t), "agent.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve(ln)
	c := agentclient.New(func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}, nil)
	t.Cleanup(func() { c.Close() })
	return c
}

// chanListener is a net.Listener fed by a channel.
type chanListener struct {
	ch     chan net.Conn
	closed chan struct{}
	once   sync.Once
}

func newChanListener() *chanListener {
	return &chanListener{ch: make(chan net.Conn), closed: make(chan struct{})}
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}
func (l *chanListener) Close() error   { l.once.Do(func() { close(l.closed) }); return nil }
func (l *chanListener) Addr() net.Addr { return &net.UnixAddr{Name: "chan", Net: "unix"} }

// fakeFirecracker serves Firecracker's hybrid vsock Unix socket: it reads "CONNECT <port>\n",
// closes the connection when nothing listens on that port (like Firecracker), otherwise
// answers "OK <hostport>\n" and hands the connection to the guest's listener.
func fakeFirecracker(t *testing.T, port uint32, guest *chanListener) string {
	sock := filepath.Join(shortDir(t), "v.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		hostPort := 1073741824
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			hostPort++
			go func(c net.Conn, hp int) {
				var line []byte
				b := make([]byte, 1)
				for {
					if _, err := c.Read(b); err != nil {
						c.Close()
						return
					}
					if b[0] == '\n' {
						break
					}
					line = append(line, b[0])
				}
				var p uint32
				if _, err := fmt.Sscanf(string(line), "CONNECT %d", &p); err != nil || p != port || guest == nil {
					c.Close()
					return
				}
				fmt.Fprintf(c, "OK %d\n", hp)
				select {
				case guest.ch <- c:
				case <-guest.closed:
					c.Close()
				}
			}(c, hostPort)
		}
	}()
	return sock
}

func setupHybrid(t *testing.T, s *agentserver.Server) *agentclient.Client {
	guest := newChanListener()
	go s.Serve(guest)
	sock := fakeFirecracker(t, agent.DefaultVsockPort, guest)
	c := agentclient.NewHybridVsock(sock, agent.DefaultVsockPort)
	t.Cleanup(func() { c.Close() })
	return c
}

func setupSerial(t *testing.T, s *agentserver.Server) *agentclient.Client {
	fp := newFakePort(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.ServeSerial(ctx, fp.open); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	c := agentclient.NewSerial(fp.sock)
	t.Cleanup(func() { c.Close() })
	return c
}

// fakePort stands in for QEMU's virtio-serial port: on the host side a chardev Unix socket
// (one client at a time, like `-chardev socket,server=on`), on the guest side the port's
// character device. Like the real device, the guest side outlives host connections, keeps
// unread bytes across them, reads EOF while no host is connected, and drops what the guest
// writes meanwhile.
type fakePort struct {
	sock string
	ln   net.Listener

	mu      sync.Mutex
	cond    *sync.Cond
	toGuest []byte
	host    net.Conn
	hostGen int
	// silentDisconnect: the guest does not see EOF when the host goes (the race where the
	// host reconnects before the guest's read wakes up).
	silentDisconnect bool
	opens            int
}

func newFakePort(t *testing.T) *fakePort {
	sock := filepath.Join(shortDir(t), "serial.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	fp := &fakePort{sock: sock, ln: ln}
	fp.cond = sync.NewCond(&fp.mu)
	t.Cleanup(func() {
		ln.Close()
		fp.mu.Lock()
		if fp.host != nil {
			fp.host.Close()
		}
		fp.mu.Unlock()
	})
	go fp.acceptLoop()
	return fp
}

func (fp *fakePort) acceptLoop() {
	for {
		c, err := fp.ln.Accept()
		if err != nil {
			return
		}
		fp.mu.Lock()
		fp.host = c
		fp.hostGen++
		fp.cond.Broadcast()
		fp.mu.Unlock()
		buf := make([]byte, 32<<10)
		for {
			n, err := c.Read(buf)
			if n > 0 {
				fp.mu.Lock()
				fp.toGuest = append(fp.toGuest, buf[:n]...)
				fp.cond.Broadcast()
				fp.mu.Unlock()
			}
			if err != nil {
				break
			}
		}
		c.Close()
		fp.mu.Lock()
		fp.host = nil
		fp.cond.Broadcast()
		fp.mu.Unlock()
	}
}

// inject queues bytes for the guest as if a host had sent them.
func (fp *fakePort) inject(b []byte) {
	fp.mu.Lock()
	fp.toGuest = append(fp.toGuest, b...)
	fp.cond.Broadcast()
	fp.mu.Unlock()
}

// dropHost closes the current host connection from the chardev side.
func (fp *fakePort) dropHost() {
	fp.mu.Lock()
	if fp.host != nil {
		fp.host.Close()
	}
	fp.mu.Unlock()
}

func (fp *fakePort) open() (io.ReadWriteCloser, error) {
	fp.mu.Lock()
	fp.opens++
	fp.mu.Unlock()
	return &guestEnd{fp: fp}, nil
}

type guestEnd struct {
	fp     *fakePort
	closed bool // under fp.mu
}

func (g *guestEnd) Read(p []byte) (int, error) {
	fp := g.fp
	fp.mu.Lock()
	defer fp.mu.Unlock()
	for {
		if g.closed {
			return 0, os.ErrClosed
		}
		if len(fp.toGuest) > 0 {
			n := copy(p, fp.toGuest)
			fp.toGuest = fp.toGuest[n:]
			return n, nil
		}
		if fp.host == nil && !fp.silentDisconnect {
			return 0, io.EOF
		}
		fp.cond.Wait()
	}
}

func (g *guestEnd) Write(p []byte) (int, error) {
	fp := g.fp
	fp.mu.Lock()
	closed, host := g.closed, fp.host
	fp.mu.Unlock()
	if closed {
		return 0, os.ErrClosed
	}
	if host == nil {
		return len(p), nil // no host: QEMU drops it
	}
	if _, err := host.Write(p); err != nil {
		return len(p), nil // host just went away: dropped too
	}
	return len(p), nil
}

func (g *guestEnd) Close() error {
	g.fp.mu.Lock()
	g.closed = true
	g.fp.cond.Broadcast()
	g.fp.mu.Unlock()
	return nil
}

// waitFor polls cond until true or the timeout.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func processGone(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if errors.Is(err, os.ErrNotExist) {
		return true
	}
	// A zombie (not reaped yet) counts as gone: it is dead.
	return err == nil && len(b) > 0 && containsState(string(b), 'Z')
}

func containsState(stat string, state byte) bool {
	// /proc/pid/stat: "pid (comm) S ..."; comm may contain spaces and parens.
	for i := len(stat) - 1; i >= 0; i-- {
		if stat[i] == ')' {
			return i+2 < len(stat) && stat[i+2] == state
		}
	}
	return false
}
