package agentserver

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/hashicorp/yamux"
	"github.com/mdlayher/vsock"

	"github.com/banger-vm/banger/internal/agent"
)

// PortOpener opens the guest end of the host<->guest byte pipe (the virtio-serial port).
// It is called again after every host session ends.
type PortOpener func() (io.ReadWriteCloser, error)

// ErrPortNotFound says the virtio-serial port does not exist (yet).
var ErrPortNotFound = errors.New("virtio-serial port not found")

// FindSerialPort returns the character device of the virtio-serial port called name:
// /dev/virtio-ports/<name> when udev made it, otherwise the /dev/vportNpM whose
// /sys/class/virtio-ports/vportNpM/name is name (guests without udev).
func FindSerialPort(name string) (string, error) {
	return findSerialPort("/dev", "/sys/class/virtio-ports", name)
}

func findSerialPort(devDir, sysDir, name string) (string, error) {
	link := filepath.Join(devDir, "virtio-ports", name)
	if _, err := os.Stat(link); err == nil {
		return link, nil
	}
	names, _ := filepath.Glob(filepath.Join(sysDir, "vport*", "name"))
	for _, n := range names {
		b, err := os.ReadFile(n)
		if err != nil || strings.TrimSpace(string(b)) != name {
			continue
		}
		dev := filepath.Join(devDir, filepath.Base(filepath.Dir(n)))
		if _, err := os.Stat(dev); err != nil {
			return "", fmt.Errorf("%w: %s names %q but %s is missing (is devtmpfs mounted on /dev?)", ErrPortNotFound, n, name, dev)
		}
		return dev, nil
	}
	return "", fmt.Errorf("%w: no %s and no %s/vport*/name says %q (is the virtio_console module loaded, and the VM started with virtserialport,name=%s?)",
		ErrPortNotFound, link, sysDir, name, name)
}

// SerialPortOpener opens the named virtio-serial port.
func SerialPortOpener(name string) PortOpener {
	return func() (io.ReadWriteCloser, error) {
		p, err := FindSerialPort(name)
		if err != nil {
			return nil, err
		}
		f, err := os.OpenFile(p, os.O_RDWR, 0)
		if err != nil {
			return nil, fmt.Errorf("open virtio-serial port %s: %w", p, err)
		}
		return f, nil
	}
}

// Reconnect pacing on the serial port: a port without a host reads EOF at once, so failed
// sessions back off between minBackoff and maxBackoff (this bounds how fast the agent notices
// a host that reconnects).
const (
	serialMinBackoff = 20 * time.Millisecond
	serialMaxBackoff = 500 * time.Millisecond
	portRetry        = 200 * time.Millisecond
	portLogEvery     = 10 * time.Second
)

// ServeSerial serves the API over a virtio-serial port until ctx is done or the server is
// closed: it opens the port (waiting for it to appear), runs the handshake (package agent,
// serialsync.go), then a yamux server session whose streams are HTTP connections. When the
// session ends (host gone, garbage, keepalive timeout) it reopens the port and starts over.
func (s *Server) ServeSerial(ctx context.Context, open PortOpener) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-s.closing:
			cancel()
		case <-ctx.Done():
		}
	}()
	backoff := serialMinBackoff
	var waitingSince, lastLog time.Time
	waitingHost := false
	for ctx.Err() == nil {
		port, err := open()
		if err != nil {
			now := time.Now()
			if waitingSince.IsZero() {
				waitingSince, lastLog = now, now
				s.log.Warn("waiting for the virtio-serial port", "err", err)
			} else if now.Sub(lastLog) >= portLogEvery {
				lastLog = now
				s.log.Warn("still waiting for the virtio-serial port", "waited", now.Sub(waitingSince).Round(time.Second), "err", err)
			}
			sleepCtx(ctx, portRetry)
			continue
		}
		if !waitingSince.IsZero() {
			s.log.Info("virtio-serial port appeared", "waited", time.Since(waitingSince).Round(time.Millisecond))
			waitingSince = time.Time{}
		}
		if !waitingHost {
			s.log.Info("serving on virtio-serial; waiting for the host")
			waitingHost = true
		}
		established, err := s.serveSerialSession(ctx, port)
		if errors.Is(err, http.ErrServerClosed) {
			return nil
		}
		if established {
			backoff = serialMinBackoff
			waitingHost = false
		} else {
			backoff = min(2*backoff, serialMaxBackoff)
		}
		sleepCtx(ctx, backoff)
	}
	return nil
}

// bufferedPort reads through the handshake's buffer and writes and closes the port.
type bufferedPort struct {
	io.Reader
	port io.ReadWriteCloser
}

func (b *bufferedPort) Write(p []byte) (int, error) { return b.port.Write(p) }
func (b *bufferedPort) Close() error                { return b.port.Close() }

// serveSerialSession runs one host session on an open port and closes the port.
func (s *Server) serveSerialSession(ctx context.Context, port io.ReadWriteCloser) (bool, error) {
	stop := context.AfterFunc(ctx, func() { _ = port.Close() })
	defer stop()
	defer port.Close()
	// Tell a host still in a session with a previous agent to start over. The write goes in
	// a goroutine: a port whose host does not read must not wedge the loop.
	wrote := make(chan error, 1)
	go func() {
		_, err := io.WriteString(port, agent.GuestResetLine)
		wrote <- err
	}()
	select {
	case <-wrote:
	case <-time.After(time.Second):
		return false, nil // the deferred Close unblocks the write
	}
	br := bufio.NewReaderSize(port, 64<<10)
	if err := agent.GuestHandshake(br, port); err != nil {
		s.log.Debug("virtio-serial: no host session", "err", err)
		return false, nil
	}
	sess, err := yamux.Server(&bufferedPort{Reader: br, port: port}, s.yamuxConfig())
	if err != nil {
		return false, err
	}
	s.log.Info("host session started on virtio-serial")
	err = s.http.Serve(sess)
	_ = sess.Close()
	if errors.Is(err, http.ErrServerClosed) {
		return true, err
	}
	s.log.Info("host session ended; waiting for the host to reconnect", "err", err)
	return true, nil
}

func (s *Server) yamuxConfig() *yamux.Config {
	cfg := yamux.DefaultConfig()
	cfg.EnableKeepAlive = true
	cfg.KeepAliveInterval = 10 * time.Second
	cfg.ConnectionWriteTimeout = 10 * time.Second
	cfg.MaxStreamWindowSize = 1 << 20
	cfg.StreamCloseTimeout = 30 * time.Second
	cfg.LogOutput = nil
	cfg.Logger = slog.NewLogLogger(s.log.Handler(), slog.LevelDebug)
	return cfg
}

// ListenVsock listens on AF_VSOCK port, retrying until ctx is done while the vsock
// transport is not available yet (module still loading).
func ListenVsock(ctx context.Context, port uint32, log *slog.Logger) (net.Listener, error) {
	var start, lastLog time.Time
	for {
		ln, err := vsock.Listen(port, nil)
		if err == nil {
			if !start.IsZero() {
				log.Info("vsock available", "waited", time.Since(start).Round(time.Millisecond))
			}
			return ln, nil
		}
		now := time.Now()
		if start.IsZero() {
			start, lastLog = now, now
			log.Warn("cannot listen on vsock yet; retrying (is the vsock transport module loaded?)", "port", port, "err", err)
		} else if now.Sub(lastLog) >= portLogEvery {
			lastLog = now
			log.Warn("still cannot listen on vsock", "port", port, "waited", now.Sub(start).Round(time.Second), "err", err)
		}
		sleepCtx(ctx, portRetry)
		if ctx.Err() != nil {
			return nil, fmt.Errorf("listen on vsock port %d: %w", port, err)
		}
	}
}
