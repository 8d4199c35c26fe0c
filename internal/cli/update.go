package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/banger-vm/banger/client"
	"github.com/banger-vm/banger/internal/api"
	"github.com/banger-vm/banger/internal/buildinfo"
	"github.com/banger-vm/banger/internal/system/hosttools"
	"github.com/banger-vm/banger/internal/update"
)

// crashEnv names the test hook that kills `banger update` at a named point (see
// update.Options.AtPoint). Only binaries built with the "crash" test hook read it.
const crashEnv = "BANGER_UPDATE_CRASH_AT"

type updateFlags struct {
	check, allowDowngrade, asJSON bool
	version, from, manifest       string
}

func (a *app) updateCommand() *cobra.Command {
	var f updateFlags
	cmd := &cobra.Command{
		Use:   "update",
		Short: "Update banger to the latest (or a given) signed release, verified, with automatic rollback",
		Long: `Update banger, banger-init and banger-agent from the release channel
(update.channel_url), or from an offline release with --from.

The signed manifest is checked against the release keys compiled into this banger,
the download against the manifest's size and SHA-256, and the new banger must run
here and report the expected version. The binaries are then swapped in atomically
(the previous ones are kept as NAME.previous), the daemon is restarted (its systemd
user unit when active, else the background daemon) and so is the root helper when
systemd runs it and this is root. Finally the new banger's doctor runs: if a check
FAILs that did not FAIL before the update, or the restart or doctor does not finish
within update.verify_timeout, the previous binaries are put back and restarted.
Running VMs keep running across the restart.

An interrupted update (power loss, kill -9) leaves the old or the new banger
installed; the next 'banger update' or 'banger doctor' repairs what is left.`,
		Example: `  banger update --check
  banger update
  banger update --version v1.4.2 --allow-downgrade
  banger update --from ./banger-v1.5.0-linux-amd64.tar.gz   # manifest.json beside it`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return a.runUpdate(cmd.Context(), f) },
	}
	fl := cmd.Flags()
	fl.BoolVar(&f.check, "check", false, "only say whether an update is available")
	fl.StringVar(&f.version, "version", "", "install this release instead of the latest")
	fl.StringVar(&f.from, "from", "", "install an offline release artifact (a banger-VERSION-OS-ARCH.tar.gz)")
	fl.StringVar(&f.manifest, "manifest", "", "the signed manifest of --from (default: manifest.json next to it)")
	fl.BoolVar(&f.allowDowngrade, "allow-downgrade", false, "allow installing an older release")
	fl.BoolVar(&f.asJSON, "json", false, "print the result as JSON")
	return cmd
}

func (a *app) runUpdate(ctx context.Context, f updateFlags) error {
	if f.manifest != "" && f.from == "" {
		return errors.New("--manifest goes with --from")
	}
	cfg, _, err := a.load()
	if err != nil {
		return err
	}
	trusted, err := update.TrustedKeys()
	if err != nil {
		return err
	}
	if a.env.Executable == "" {
		return errors.New("cannot find the banger executable to update: run it by its path")
	}
	o := update.Options{
		Current: a.version, Channel: cfg.Update.ChannelURL, Version: f.version,
		From: f.from, FromManifest: f.manifest, AllowDowngrade: f.allowDowngrade,
		Trusted: trusted, VerifyTimeout: cfg.Update.VerifyTimeout,
	}
	if f.check {
		res, err := update.Check(ctx, o)
		if err != nil {
			return err
		}
		if f.asJSON {
			return printJSON(a.env.Stdout, res)
		}
		switch {
		case res.UpdateAvailable:
			fmt.Fprintf(a.env.Stdout, "banger %s is available (installed: %s): run `banger update`\n", res.Latest, res.Current)
		case res.Downgrade:
			fmt.Fprintf(a.env.Stdout, "banger %s is installed; the channel's latest is the older %s\n", res.Current, res.Latest)
		default:
			fmt.Fprintf(a.env.Stdout, "banger %s is up to date\n", res.Current)
		}
		if res.Note != "" {
			fmt.Fprintf(a.env.Stdout, "note: %s\n", res.Note)
		}
		return nil
	}

	if o.Install, err = update.Locate(a.env.Executable, a.env.Paths); err != nil {
		return err
	}
	if a.configFlag != "" {
		o.DoctorArgs = []string{"--config", a.configFlag}
	}
	prog := a.newProgress(f.asJSON)
	o.Progress = func(done, total int64) {
		prog.update(api.Progress{Stage: "download", Current: done, Total: total, Unit: "bytes"})
	}
	o.Logf = func(format string, args ...any) {
		prog.done()
		fmt.Fprintf(a.env.Stderr, format+"\n", args...)
	}
	if buildinfo.TestHook("crash") {
		if at := a.env.Getenv(crashEnv); at != "" {
			o.AtPoint = func(p string) {
				if p == at {
					_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
					select {} // the signal is asynchronous: never run past the point
				}
			}
		}
	}
	o.Restart = a.restartForUpdate
	res, err := update.Run(ctx, o)
	prog.done()
	if f.asJSON && (err == nil || res.Status == "rolled-back") {
		if perr := printJSON(a.env.Stdout, res); perr != nil {
			return perr
		}
	}
	if err != nil {
		if !f.asJSON && res.Status == "rolled-back" {
			for _, c := range res.FailedChecks {
				fmt.Fprintf(a.env.Stderr, "FAIL  %s  %s\n", c.Name, c.Detail)
			}
			a.printUpdateNotes(res)
		}
		return err
	}
	if !f.asJSON {
		switch res.Status {
		case "up-to-date":
			fmt.Fprintf(a.env.Stdout, "banger %s is up to date\n", res.From)
		default:
			parts := make([]string, 0, len(res.Stages))
			for _, s := range res.Stages {
				parts = append(parts, fmt.Sprintf("%s %s", s.Name, time.Duration(s.DurationMS*float64(time.Millisecond)).Round(time.Millisecond)))
			}
			fmt.Fprintf(a.env.Stdout, "updated banger %s -> %s in %s (%s)\n", res.From, res.To,
				time.Duration(res.TotalMS*float64(time.Millisecond)).Round(time.Millisecond), strings.Join(parts, ", "))
		}
		a.printUpdateNotes(res)
	}
	return nil
}

func (a *app) printUpdateNotes(res update.Result) {
	for _, n := range res.Notes {
		fmt.Fprintf(a.env.Stderr, "note: %s\n", n)
	}
}

// restartForUpdate restarts what runs the installed binaries so they run version want: the
// owner daemon (systemd user unit, else the background daemon, only if one runs) and the
// root helper (only as root and under systemd; otherwise a note says what to do).
func (a *app) restartForUpdate(ctx context.Context, want string) ([]string, error) {
	cfg, layout, err := a.load()
	if err != nil {
		return nil, err
	}
	var notes []string
	// stop/start print for humans; under --json stdout must stay the result alone.
	quiet := *a
	quiet.env.Stdout = a.env.Stderr
	c := a.newClient(layout)
	daemonRuns := true
	switch {
	case hosttools.ServiceActive(ctx, hosttools.UserService, "banger.service"):
		if err := hosttools.RestartService(ctx, hosttools.UserService, "banger.service"); err != nil {
			return notes, err
		}
	default:
		_, err := c.Status(ctx)
		switch {
		case api.IsDaemonNotRunning(err):
			daemonRuns = false
			notes = append(notes, "no daemon was running; the next command that needs one starts it from "+want)
		case err != nil:
			return notes, err
		default:
			if err := stopDaemonForUpdate(ctx, c, cfg.Daemon.ShutdownTimeout+5*time.Second); err != nil {
				return notes, err
			}
			if _, err := quiet.ensureDaemon(ctx, true); err != nil {
				return notes, err
			}
		}
	}
	if daemonRuns {
		if err := waitDaemonVersion(ctx, c, want); err != nil {
			return notes, err
		}
	}

	const helperUnit = "banger-helper.service"
	switch {
	case hosttools.ServiceActive(ctx, hosttools.SystemService, helperUnit):
		if os.Geteuid() != 0 {
			notes = append(notes, "the root helper ("+helperUnit+") still runs the previous binary: run `sudo systemctl restart banger-helper`")
			break
		}
		if err := hosttools.RestartService(ctx, hosttools.SystemService, helperUnit); err != nil {
			notes = append(notes, fmt.Sprintf("restarting %s failed (%v): run `systemctl restart banger-helper`", helperUnit, err))
			break
		}
		notes = append(notes, "restarted "+helperUnit)
	default:
		if _, err := os.Stat(cfg.Network.HelperSocket); err == nil {
			notes = append(notes, "a root helper not run by systemd serves "+cfg.Network.HelperSocket+": restart it (as root) so it runs "+want)
		}
	}
	return notes, nil
}

// stopDaemonForUpdate asks the daemon to shut down and waits until its process is gone.
// Unlike `daemon stop` it counts a zombie as gone: a detached daemon's parent is whatever
// init reaps orphans, which may be slow to, and the exited daemon holds no lock any more.
func stopDaemonForUpdate(ctx context.Context, c *client.Client, timeout time.Duration) error {
	st, err := c.Status(ctx)
	if err != nil {
		return err
	}
	if err := c.Shutdown(ctx, "banger update"); err != nil {
		return err
	}
	deadline := time.Now().Add(timeout)
	for {
		if processExited(st.PID) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("daemon pid %d did not exit within %s: kill it with `kill %d` and run `banger update` again", st.PID, timeout, st.PID)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// processState is the state letter of a /proc/PID/stat line ("R", "S", "Z", ...); the
// command name before it is parenthesised and may hold spaces.
func processState(stat string) string {
	i := strings.LastIndexByte(stat, ')')
	if i < 0 || i+3 > len(stat) {
		return ""
	}
	return stat[i+2 : i+3]
}

// waitDaemonVersion waits until the daemon answers and runs want.
func waitDaemonVersion(ctx context.Context, c *client.Client, want string) error {
	var last string
	for {
		st, err := c.Status(ctx)
		if err == nil && st.Version == want {
			return nil
		}
		if err == nil {
			last = "it runs " + st.Version
		} else {
			last = errorMessage(err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the daemon does not run %s (%s)", want, last)
		case <-time.After(100 * time.Millisecond):
		}
	}
}
