// Package daemon is the owner daemon: it runs as the user, owns banger's state, and serves
// the API on a Unix socket only its owner can open.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/banger-vm/banger/internal/config"
	"github.com/banger-vm/banger/internal/doctor"
	"github.com/banger-vm/banger/internal/image"
	"github.com/banger-vm/banger/internal/lifecycle"
	"github.com/banger-vm/banger/internal/paths"
	"github.com/banger-vm/banger/internal/revert"
	"github.com/banger-vm/banger/internal/store"
	"github.com/banger-vm/banger/internal/vmm"
)

// Options configure a daemon.
type Options struct {
	Layout  paths.Layout
	Config  config.Config
	Logger  *slog.Logger
	Version string
	// NotifySocket is systemd's $NOTIFY_SOCKET; when set the daemon reports READY=1 there
	// once it accepts connections, so `Type=notify` units order correctly.
	NotifySocket string
	// NewDriver makes the VMM drivers (internal/vmm/drivers in banger; a fake in tests).
	// Without it the daemon serves everything but starting VMs.
	NewDriver DriverFactory
	// Host, if set, replaces the probe of this host's VMM facts (KVM, firecracker, qemu).
	Host func() vmm.Host

	// fault, in tests, fails the operation at a named point ("stage <name>", "store vmm",
	// "store running") when it returns an error.
	fault func(point string) error
}

// AlreadyRunningError is returned when another daemon holds the lock for the socket.
type AlreadyRunningError struct {
	PID    int
	Socket string
}

func (e *AlreadyRunningError) Error() string {
	who := "another banger daemon"
	if e.PID > 0 {
		who = fmt.Sprintf("another banger daemon (pid %d)", e.PID)
	}
	return fmt.Sprintf("%s is already serving %s: use it, or stop it first with `banger daemon stop`", who, e.Socket)
}

// Daemon is a running owner daemon.
type Daemon struct {
	opts      Options
	log       *slog.Logger
	startedAt time.Time
	startup   *lifecycle.Recorder

	lock   *os.File
	store  *store.Store
	ln     net.Listener
	srv    *http.Server
	doctor *doctor.Registry
	net    *netState
	images *image.Manager
	vms    *vmManager
	ports  portForwards
	mounts hostMounts
	warm   warmUp

	shutdownOnce sync.Once
	shutdownReq  chan string
	serveErr     chan error
}

// Start acquires the daemon lock, opens the store and starts serving. Whatever it set up is
// undone when a later step fails, so a failed start leaves no socket, lock or open store.
func Start(ctx context.Context, opts Options) (_ *Daemon, err error) {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	d := &Daemon{
		opts:        opts,
		log:         opts.Logger,
		startedAt:   time.Now(),
		shutdownReq: make(chan string, 1),
		serveErr:    make(chan error, 1),
	}
	d.startup = lifecycle.New("daemon.start", "daemon", d.log, nil)
	undo := revert.New()
	defer undo.Fail()

	if err := d.startup.Run(ctx, "prepare directories", func(context.Context) error {
		return opts.Layout.EnsureDaemonDirs()
	}); err != nil {
		return nil, err
	}
	if err := d.startup.Run(ctx, "acquire lock", func(context.Context) error {
		lock, err := acquireLock(opts.Layout.LockFile, opts.Layout.Socket)
		if err != nil {
			return err
		}
		d.lock = lock
		undo.Add(func() { _ = d.lock.Close() })
		return nil
	}); err != nil {
		return nil, err
	}
	if err := d.startup.Run(ctx, "open store", func(ctx context.Context) error {
		st, err := store.Open(ctx, opts.Layout.StateDB)
		if err != nil {
			return fmt.Errorf("open state database: %w", err)
		}
		d.store = st
		undo.Add(func() { _ = d.store.Close() })
		return nil
	}); err != nil {
		return nil, err
	}
	d.startup.Attach(ctx, d.store)

	d.doctor = doctor.NewRegistry(30 * time.Second)
	doctor.RegisterHostChecks(d.doctor, doctor.HostOptions{Config: opts.Config, DataDir: opts.Layout.DataDir})
	d.doctor.Register("store", d.storeCheck)
	if err := d.initImages(ctx); err != nil {
		return nil, err
	}

	if err := d.startup.Run(ctx, "listen", func(context.Context) error {
		ln, err := listen(opts.Layout.Socket, d.log)
		if err != nil {
			return err
		}
		d.ln = ln
		undo.Add(func() { _ = d.ln.Close(); _ = os.Remove(opts.Layout.Socket) })
		return nil
	}); err != nil {
		return nil, err
	}

	// VMs first: the network reconcile must see which TAPs still belong to running VMs.
	if err := d.startup.Run(ctx, "reconcile vms", func(ctx context.Context) error {
		d.initVMs(ctx)
		return nil
	}); err != nil {
		return nil, err
	}
	if err := d.startup.Run(ctx, "clean leftovers", func(ctx context.Context) error {
		d.cleanLeftovers(ctx)
		return nil
	}); err != nil {
		return nil, err
	}
	d.startNetwork(ctx)
	d.startWarmUp()
	undo.Add(d.stopWarmUp)
	d.srv = &http.Server{
		Handler:           d.routes(),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(d.log.Handler(), slog.LevelWarn),
	}
	go func() { d.serveErr <- d.srv.Serve(d.ln) }()
	if opts.NotifySocket != "" {
		if err := sdNotify(opts.NotifySocket, "READY=1\nMAINPID="+strconv.Itoa(os.Getpid())); err != nil {
			d.log.Warn("could not notify systemd", "err", err)
		}
	}
	undo.Success()
	d.log.Info("banger daemon ready", "version", opts.Version, "pid", os.Getpid(), "socket", opts.Layout.Socket,
		"data_dir", opts.Layout.DataDir, "startup", time.Since(d.startedAt).Round(time.Microsecond))
	return d, nil
}

// Shutdown stops accepting connections, lets in-flight requests finish until ctx ends, then
// closes the store and removes the socket and the lock. It is safe to call more than once.
func (d *Daemon) Shutdown(ctx context.Context) error {
	var err error
	d.shutdownOnce.Do(func() {
		if e := d.srv.Shutdown(ctx); e != nil {
			d.log.Warn("in-flight requests did not finish in time; closing them", "err", e)
			_ = d.srv.Close()
		}
		d.stopWarmUp()
		d.closeAllForwards()
		d.closeAllMounts()
		d.closeVMs()
		d.stopNetwork()
		// The socket goes before the lock: once the lock is free another daemon may start
		// and create its own socket, which we must not delete.
		if e := os.Remove(d.opts.Layout.Socket); e != nil && !errors.Is(e, os.ErrNotExist) {
			err = errors.Join(err, e)
		}
		if e := d.store.Close(); e != nil {
			err = errors.Join(err, fmt.Errorf("close store: %w", e))
		}
		_ = d.lock.Close()
		d.log.Info("banger daemon stopped")
	})
	return err
}

// Run starts a daemon and serves until ctx is cancelled (SIGTERM/SIGINT) or a client asks it
// to stop, then shuts down gracefully within the configured timeout.
func Run(ctx context.Context, opts Options) error {
	d, err := Start(ctx, opts)
	if err != nil {
		return err
	}
	var serveErr error
	select {
	case <-ctx.Done():
		d.log.Info("shutting down", "reason", "signal")
	case reason := <-d.shutdownReq:
		d.log.Info("shutting down", "reason", reason)
	case serveErr = <-d.serveErr:
		d.log.Error("API server stopped unexpectedly", "err", serveErr)
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), opts.Config.Daemon.ShutdownTimeout)
	defer cancel()
	return errors.Join(serveErr, d.Shutdown(sctx))
}

// acquireLock takes an exclusive, non-blocking flock. The kernel drops it when the holder
// dies, so a held lock always means a live daemon, and a free one means any socket file
// left behind is stale.
func acquireLock(lockPath, socket string) (*os.File, error) {
	f, err := os.OpenFile(lockPath, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open daemon lock %s: %w", lockPath, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		data, _ := os.ReadFile(lockPath)
		_ = f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			pid, _ := strconv.Atoi(strings.TrimSpace(string(data)))
			return nil, &AlreadyRunningError{PID: pid, Socket: socket}
		}
		return nil, fmt.Errorf("lock %s: %w", lockPath, err)
	}
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return f, nil
}

// listen binds the socket with mode 0600. It is only called with the lock held, so an
// existing socket file is a leftover of a daemon that died without cleaning up.
func listen(socket string, log *slog.Logger) (net.Listener, error) {
	if fi, err := os.Lstat(socket); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("%s exists and is not a socket: move it away and retry", socket)
		}
		log.Warn("removing stale socket left by a daemon that did not shut down cleanly", "socket", socket)
		if err := os.Remove(socket); err != nil {
			return nil, fmt.Errorf("remove stale socket %s: %w", socket, err)
		}
	}
	ln, err := net.Listen("unix", socket)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", socket, err)
	}
	// The directory is already 0700; this makes the socket itself owner-only too.
	if err := os.Chmod(socket, 0o600); err != nil {
		_ = ln.Close()
		return nil, fmt.Errorf("restrict socket %s to 0600: %w", socket, err)
	}
	return ln, nil
}

func sdNotify(socket, state string) error {
	if strings.HasPrefix(socket, "@") {
		socket = "\x00" + socket[1:]
	}
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: socket, Net: "unixgram"})
	if err != nil {
		return err
	}
	defer conn.Close()
	_, err = conn.Write([]byte(state))
	return err
}
