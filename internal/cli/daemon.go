package cli

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/banger-vm/banger/client"
	"github.com/banger-vm/banger/internal/api"
	"github.com/banger-vm/banger/internal/daemon"
	"github.com/banger-vm/banger/internal/sshtransport"
	"github.com/banger-vm/banger/internal/system/proc"
	"github.com/banger-vm/banger/internal/vmm/drivers"
)

// daemonStartTimeout bounds how long `daemon start` waits for a new daemon's socket.
const daemonStartTimeout = 15 * time.Second

func (a *app) daemonCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "daemon",
		Short: "Run the owner daemon in the foreground, or manage it",
		Long: `The owner daemon runs as you (never as root) and owns banger's state: the SQLite
store, images, VMs and their VMM processes. Its API is a Unix socket under
$XDG_RUNTIME_DIR/banger/ that only you can open.

'banger daemon' with no subcommand runs it in the foreground, logging to stderr;
SIGTERM or Ctrl-C shut it down gracefully. Use it under a supervisor, e.g. the
systemd user unit shipped in contrib/systemd/banger.service.

When no daemon runs, 'banger daemon start' starts one detached from the terminal,
logging to $XDG_STATE_HOME/banger/daemon.log. Commands that need a daemon start
one the same way unless daemon.autostart = false in the config, in which case
they print the command to run instead.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return a.runDaemonForeground(cmd.Context()) },
	}
	var asJSON bool
	status := &cobra.Command{
		Use:   "status",
		Short: "Show whether the daemon runs, its version, and how long its startup stages took",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			st, err := c.Status(cmd.Context())
			if err != nil {
				return err
			}
			return a.printStatus(st, asJSON)
		},
	}
	status.Flags().BoolVar(&asJSON, "json", false, "print as JSON")
	start := &cobra.Command{
		Use:   "start",
		Short: "Start the daemon in the background if it is not running",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, err := a.ensureDaemon(cmd.Context(), true)
			return err
		},
	}
	stop := &cobra.Command{
		Use:   "stop",
		Short: "Stop the daemon gracefully",
		Args:  cobra.NoArgs,
		RunE:  func(cmd *cobra.Command, _ []string) error { return a.stopDaemon(cmd.Context()) },
	}
	restart := &cobra.Command{
		Use:   "restart",
		Short: "Stop the daemon if it runs, then start it (e.g. after upgrading banger)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := a.stopDaemon(cmd.Context()); err != nil {
				return err
			}
			_, err := a.ensureDaemon(cmd.Context(), true)
			return err
		},
	}
	proxy := &cobra.Command{
		Use:   "proxy",
		Short: "Bridge stdin and stdout to this user's daemon (for BANGER_HOST=ssh://..., run over ssh)",
		Long: `Connect stdin and stdout to this user's daemon socket, for a banger on another machine:
BANGER_HOST=ssh://USER@HOST (or --host) runs 'ssh HOST -- banger daemon proxy' for each
connection. It starts the daemon first under the usual rule (daemon.autostart), checks
the socket as every command does (a private directory, a listener of this user), writes
the line "` + strings.TrimSuffix(sshtransport.Greeting, "\n") + `", then copies bytes both ways until
either side ends. It always acts on this machine: BANGER_HOST is ignored here.`,
		Hidden: true, // for machines; README "A daemon on another host" documents it
		Args:   cobra.NoArgs,
		RunE:   func(cmd *cobra.Command, _ []string) error { return a.proxyDaemon(cmd.Context()) },
	}
	cmd.AddCommand(status, start, stop, restart, proxy)
	return cmd
}

// proxyDaemon is `banger daemon proxy`: the remote end of an ssh transport.
func (a *app) proxyDaemon(ctx context.Context) error {
	a.forceLocal = true
	if _, err := a.ensureDaemon(ctx, false); err != nil {
		return err
	}
	conn, err := api.DialSocket(ctx, a.layout.Socket)
	if err != nil {
		var us *api.UnsafeSocketError
		if errors.As(err, &us) {
			return &api.Error{Code: api.CodeUnsafeSocket, Message: us.Reason, Hint: us.Hint}
		}
		return fmt.Errorf("connect to the banger daemon on %s: %w", a.layout.Socket, err)
	}
	defer conn.Close()
	// The protocol stream is bytes, not text: the raw stdout.
	if _, err := io.WriteString(a.rawOut, sshtransport.Greeting); err != nil {
		return err
	}
	done := make(chan struct{}, 2)
	go func() {
		if a.env.Stdin != nil {
			_, _ = io.Copy(conn, a.env.Stdin)
		}
		done <- struct{}{}
	}()
	go func() {
		_, _ = io.Copy(a.rawOut, conn)
		done <- struct{}{}
	}()
	// Either side ending ends the bridge: the client hung up, or the daemon closed.
	select {
	case <-done:
	case <-ctx.Done():
	}
	return nil
}

func (a *app) runDaemonForeground(ctx context.Context) error {
	cfg, layout, err := a.load()
	if err != nil {
		return err
	}
	level := slog.LevelInfo
	_ = level.UnmarshalText([]byte(cfg.LogLevel))
	logger := slog.New(slog.NewTextHandler(a.env.Stderr, &slog.HandlerOptions{Level: level}))
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	return daemon.Run(ctx, daemon.Options{
		Layout:       layout,
		Config:       cfg,
		Logger:       logger,
		Version:      a.version,
		NotifySocket: a.env.Getenv("NOTIFY_SOCKET"),
		NewDriver: drivers.Factory(drivers.Config{QEMUPath: cfg.Runtime.QEMUPath, FirecrackerPath: cfg.Runtime.FirecrackerPath,
			KernelCacheDir: filepath.Join(layout.CacheDir, "vmlinux")}),
	})
}

func (a *app) printStatus(st api.StatusResponse, asJSON bool) error {
	if asJSON {
		return printJSON(a.env.Stdout, st)
	}
	fmt.Fprintf(a.env.Stdout, "banger daemon %s running (pid %d, up %s)\n", st.Version, st.PID, time.Since(st.StartedAt).Round(time.Second))
	fmt.Fprintf(a.env.Stdout, "  socket:   %s\n  data dir: %s\n  log:      %s\n", st.Socket, st.DataDir, st.LogFile)
	if len(st.Startup) > 0 {
		parts := make([]string, 0, len(st.Startup))
		var total float64
		for _, s := range st.Startup {
			parts = append(parts, fmt.Sprintf("%s %.1f ms", s.Name, s.DurationMS))
			total += s.DurationMS
		}
		fmt.Fprintf(a.env.Stdout, "  startup:  %.1f ms (%s)\n", total, strings.Join(parts, ", "))
	}
	if st.Version != a.version {
		fmt.Fprintf(a.env.Stderr, "warning: the daemon runs banger %s but this CLI is %s; restart it with `banger daemon restart`\n", st.Version, a.version)
	}
	return nil
}

// ensureDaemon returns a client to a running daemon, starting a detached one when none runs
// and autostart is allowed (explicit is true for `daemon start`, which always may).
func (a *app) ensureDaemon(ctx context.Context, explicit bool) (*client.Client, error) {
	cfg, layout, err := a.load()
	if err != nil {
		return nil, err
	}
	if !explicit { // explicit starts are this machine's (daemon start, update's restart)
		if t, err := a.remote(); err != nil || t != nil {
			if err != nil {
				return nil, err
			}
			// The remote proxy starts its daemon under that host's own autostart rule.
			return a.remoteClient(*t), nil
		}
	}
	c := a.newClient(layout)
	st, err := c.Status(ctx)
	if err == nil {
		if explicit {
			fmt.Fprintf(a.env.Stdout, "banger daemon already running (pid %d, version %s)\n", st.PID, st.Version)
		}
		return c, nil
	}
	if !api.IsDaemonNotRunning(err) {
		return nil, err
	}
	if !explicit && !cfg.Daemon.Autostart {
		return nil, &api.Error{Code: api.CodeDaemonNotRunning, Message: "no banger daemon is running",
			Hint: "start it with `banger daemon start` (daemon.autostart is off in " + layout.ConfigFile + ")"}
	}
	if a.env.Executable == "" {
		return nil, errors.New("cannot find the banger executable to start the daemon: run `banger daemon` yourself")
	}
	if err := layout.EnsureDaemonDirs(); err != nil {
		return nil, err
	}
	args := []string{"daemon"}
	if a.configFlag != "" {
		args = append(args, "--config", a.configFlag)
	}
	logOffset := fileSize(layout.DaemonLog)
	proc, err := proc.StartDetached(a.env.Executable, args, layout.DaemonLog, nil)
	if err != nil {
		return nil, err
	}
	deadline := time.Now().Add(daemonStartTimeout)
	for {
		st, err = c.Status(ctx)
		if err == nil {
			fmt.Fprintf(a.env.Stderr, "started banger daemon (pid %d), logging to %s\n", st.PID, layout.DaemonLog)
			return c, nil
		}
		// A daemon that exited (lost a race to another one, bad config, ...) says why in its log.
		exited := false
		select {
		case <-proc.Exited:
			exited = true
		default:
		}
		if exited || time.Now().After(deadline) {
			if _, err := c.Status(ctx); err == nil {
				return c, nil // another daemon won the race: it serves us just as well
			}
			return nil, fmt.Errorf("the daemon did not come up within %s; its log %s says:\n%s",
				daemonStartTimeout, layout.DaemonLog, tail(layout.DaemonLog, logOffset, 15))
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (a *app) stopDaemon(ctx context.Context) error {
	cfg, layout, err := a.load()
	if err != nil {
		return err
	}
	c := a.newClient(layout)
	st, err := c.Status(ctx)
	if api.IsDaemonNotRunning(err) {
		fmt.Fprintln(a.env.Stdout, "no banger daemon is running")
		return nil
	}
	if err != nil {
		return err
	}
	if err := c.Shutdown(ctx, "banger daemon stop"); err != nil {
		return err
	}
	// Wait for the process itself to have exited, not just the socket, so `restart` never
	// races the old daemon's lock. An exited daemon nobody has reaped yet counts as gone.
	deadline := time.Now().Add(cfg.Daemon.ShutdownTimeout + 5*time.Second)
	for !processExited(st.PID) {
		if time.Now().After(deadline) {
			return fmt.Errorf("daemon pid %d did not exit within %s: kill it with `kill %d`", st.PID, cfg.Daemon.ShutdownTimeout+5*time.Second, st.PID)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	fmt.Fprintf(a.env.Stdout, "stopped banger daemon (pid %d)\n", st.PID)
	return nil
}

// processExited reports whether pid has exited: there is no such process, or it is a
// zombie (/proc/PID/stat state Z) that nobody has reaped yet. A detached daemon's parent is
// whatever reaps orphans (PID 1 or a subreaper), which may take seconds to; the exited
// daemon already released its lock and socket, so waiting for the reap only delays
// `daemon stop` and `restart`.
func processExited(pid int) bool {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		// No /proc entry: gone, or /proc is not mounted and only kill(0) can tell.
		return errors.Is(syscall.Kill(pid, 0), syscall.ESRCH)
	}
	return processState(string(stat)) == "Z"
}

func fileSize(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// tail returns the last n lines written to path after offset.
func tail(path string, offset int64, n int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return "(cannot read log: " + err.Error() + ")"
	}
	if offset <= int64(len(data)) {
		data = data[offset:]
	}
	lines := bytes.Split(bytes.TrimRight(data, "\n"), []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return "  " + string(bytes.Join(lines, []byte("\n  ")))
}
