package cli

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/banger-vm/banger/client"
	"github.com/banger-vm/banger/internal/api"
	"github.com/banger-vm/banger/internal/doctor"
)

func (a *app) doctorCommand() *cobra.Command {
	var asJSON, leaks, fix bool
	cmd := &cobra.Command{
		Use:   "doctor",
		Short: "Check that this host can run banger VMs, and say how to fix what it can't",
		Long: `Run health checks and print PASS, WARN or FAIL for each, with one line of detail
and a hint for anything that is not a PASS. The exit status is 1 if any check
FAILs, so scripts can gate on it.

Checks: the daemon (reachable, same version as this CLI), KVM (a real probe that
runs guest instructions, not just opening /dev/kvm), firecracker (>= 1.8) and
qemu-system-x86_64, which VMM 'vmm.driver = auto' will pick and why, e2fsprogs,
free space in the data dir, and the daemon's state database.

When the daemon runs, the checks run inside it (as the user VMs run as); when it
does not, they run here and the daemon check FAILs with how to start it. With a
remote daemon (BANGER_HOST or --host) every check is that host's, from its daemon;
none runs on this machine.

With --leaks it checks instead that nothing banger made is left that no VM
references: VMM processes under the runtime dir, sockets, VM and run
directories, address leases, TAPs beyond the warm pool, and staging files of
interrupted builds. Each finding says what it is and how to clean it; --fix
has the daemon remove the ones it can remove safely. This needs the daemon.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if fix && !leaks {
				return fmt.Errorf("--fix goes with --leaks")
			}
			run := a.runDoctor
			if leaks {
				run = func(ctx context.Context) ([]api.CheckResult, error) { return a.runLeakDoctor(ctx, fix) }
			}
			results, err := run(cmd.Context())
			if err != nil {
				return err
			}
			if asJSON {
				if err := printJSON(a.env.Stdout, struct {
					OK     bool              `json:"ok"`
					Checks []api.CheckResult `json:"checks"`
				}{!doctor.Failed(results), results}); err != nil {
					return err
				}
			} else {
				a.printChecks(results)
			}
			if doctor.Failed(results) {
				return &ExitError{Code: 1}
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print as JSON")
	cmd.Flags().BoolVar(&leaks, "leaks", false, "check for leaked processes, sockets, directories, leases, TAPs and staging files")
	cmd.Flags().BoolVar(&fix, "fix", false, "with --leaks: remove what can be removed safely, then check again")
	return cmd
}

// runLeakDoctor runs the leak checks in the daemon, which knows what its VMs reference.
func (a *app) runLeakDoctor(ctx context.Context, fix bool) ([]api.CheckResult, error) {
	c, err := a.client()
	if err != nil {
		return nil, err
	}
	daemonCheck, _, ok := daemonCheck(ctx, c, "start it with `banger daemon start`: the leak check asks the daemon what its VMs reference")
	if !ok {
		return []api.CheckResult{daemonCheck}, nil
	}
	reg := doctor.NewRegistry(time.Minute)
	doctor.RegisterLeakChecks(reg, func(ctx context.Context) (api.LeaksResponse, error) {
		if !fix {
			return c.Leaks(ctx)
		}
		resp, err := c.FixLeaks(ctx)
		for _, line := range doctor.FixSummary(resp) {
			fmt.Fprintln(a.env.Stderr, line)
		}
		return resp, err
	})
	return append([]api.CheckResult{daemonCheck}, reg.Run(ctx)...), nil
}

func (a *app) runDoctor(ctx context.Context) ([]api.CheckResult, error) {
	cfg, layout, err := a.load()
	if err != nil {
		return nil, err
	}
	c := a.newClient(layout)
	remote, err := a.remote()
	if err != nil {
		return nil, err
	}
	hint := "start it with `banger daemon start` (or `systemctl --user start banger`)"
	if remote != nil {
		// The checks are about the daemon's host; this one's would mislead.
		c = a.remoteClient(*remote)
		hint = "see the error above; unset BANGER_HOST (or drop --host) to check this machine instead"
	}
	daemonCheck, st, ok := daemonCheck(ctx, c, hint)
	if !ok && remote != nil {
		return []api.CheckResult{daemonCheck}, nil
	}
	if !ok {
		reg := doctor.NewRegistry(30 * time.Second)
		doctor.RegisterHostChecks(reg, doctor.HostOptions{Config: cfg, DataDir: layout.DataDir})
		return append([]api.CheckResult{daemonCheck}, reg.Run(ctx)...), nil
	}
	if st.Version != a.version {
		daemonCheck = doctor.Warnf("restart it with `banger daemon restart`", "daemon runs banger %s but this CLI is %s", st.Version, a.version)
		daemonCheck.Name = "daemon"
	}
	resp, err := c.Doctor(ctx)
	if err != nil {
		return nil, fmt.Errorf("daemon doctor: %w", err)
	}
	return append([]api.CheckResult{daemonCheck}, resp.Checks...), nil
}

// daemonCheck is the doctor's first check: whether the daemon answers its status within
// 3 s. It PASSes with the daemon's status, or FAILs with hint; ok says which.
func daemonCheck(ctx context.Context, c *client.Client, hint string) (check api.CheckResult, st api.StatusResponse, ok bool) {
	sctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	st, err := c.Status(sctx)
	if err != nil {
		var ae *api.Error
		if errors.As(err, &ae) && ae.Hint != "" && ae.Code != api.CodeDaemonNotRunning {
			hint = ae.Hint // the transport's own (an ssh failure to a remote host)
		}
		check = doctor.Failf(hint, "%s", errorMessage(err))
	} else {
		check = doctor.Pass("pid %d, version %s, socket %s", st.PID, st.Version, st.Socket)
	}
	check.Name = "daemon"
	return check, st, err == nil
}

func (a *app) printChecks(results []api.CheckResult) {
	width := 0
	for _, r := range results {
		width = max(width, len(r.Name))
	}
	var fails, warns int
	for _, r := range results {
		fmt.Fprintf(a.env.Stdout, "%-4s  %-*s  %s\n", r.Status, width, r.Name, r.Detail)
		if r.Hint != "" && r.Status != api.Pass {
			fmt.Fprintf(a.env.Stdout, "      %-*s  hint: %s\n", width, "", r.Hint)
		}
		switch r.Status {
		case api.Fail:
			fails++
		case api.Warn:
			warns++
		}
	}
	fmt.Fprintf(a.env.Stdout, "\n%d checks: %d passed, %d warnings, %d failed\n", len(results), len(results)-fails-warns, warns, fails)
}
