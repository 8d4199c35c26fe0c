package cli

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/banger-vm/banger/internal/api"
)

func (a *app) benchCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Measure banger: create against the bare VMM; pause, resume and fork; host folders",
		Args:  cobra.NoArgs,
	}
	cmd.AddCommand(a.benchCreateCommand(), a.benchPauseCommand(), a.benchMountCommand())
	return cmd
}

func (a *app) benchCreateCommand() *cobra.Command {
	var req api.BenchCreateRequest
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "create",
		Short: "Time vm create -> agent-ready and -> ssh-ready, stage by stage, against the bare VMM",
		Long: `Each run creates and starts a VM through the daemon (the path 'vm create --start'
takes) and boots the same kernel, initramfs, image rootfs and freshly built disks
with the bare VMM command (the driver's own command line, started directly, timed
to the guest agent answering /v1/healthz). Runs alternate which goes first.

Reported: medians (min, max) of create -> agent-ready and -> ssh-ready, of each
recorded stage, of the host-side part (everything but the wait for the guest's
own boot; goal <= 100 ms), and the banger/bare ratio to agent-ready (goal <= 1.05).
Bench VMs are removed afterwards, also on failure or Ctrl-C.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			ctx, stop := interruptible(cmd.Context())
			defer stop()
			res, err := c.BenchCreate(ctx, req, a.stageProgress(asJSON))
			if err != nil {
				return err
			}
			return a.printBench(res, asJSON)
		},
	}
	cmd.Flags().IntVar(&req.Runs, "runs", 3, "rounds (each one banger create and one bare boot)")
	addBootFlags(cmd, &req.Image, &req.Kernel, &req.CPUs, &req.Memory)
	cmd.Flags().BoolVar(&req.NoWarm, "no-warm", false, "skip the warm-start side (clones of the image's template)")
	cmd.Flags().IntVar(&req.Parallel, "parallel", 0, "also time N `vm run -- true` started at once, warm then cold")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the result as JSON (no progress)")
	return cmd
}

func benchMS(v float64) string { return fmt.Sprintf("%.1f", v) }

func statRow(name string, s api.BenchStat) []string {
	if s.N == 0 {
		return []string{name, "-", "-", "-"}
	}
	return []string{name, benchMS(s.MedianMS), benchMS(s.MinMS), benchMS(s.MaxMS)}
}

func (a *app) printBench(r api.BenchCreateResult, asJSON bool) error {
	w := a.env.Stdout
	if asJSON {
		return printJSON(w, r)
	}
	accel := ""
	if r.Accel != "" {
		accel = "/" + r.Accel
	}
	fmt.Fprintf(w, "banger bench create: %d runs, %s%s, image %s, kernel %s\n\n", r.Runs, r.Driver, accel, r.Image, r.Kernel)
	rows := [][]string{{"STAGE (ms)", "MEDIAN", "MIN", "MAX"}}
	for _, s := range r.Stages {
		name := "  " + s.Name
		if s.Guest {
			name += " (guest)"
		}
		rows = append(rows, statRow(name, s.BenchStat))
	}
	rows = append(rows,
		statRow("  unstaged (API, store)", r.Unstaged),
		statRow("host-side (all but guest boot)", r.HostSide),
		statRow("create -> agent-ready", r.AgentReady))
	if r.SSHReady != nil {
		rows = append(rows, statRow("create -> ssh-ready", *r.SSHReady))
	} else {
		rows = append(rows, []string{"create -> ssh-ready", "n/a", "", ""})
	}
	rows = append(rows, statRow("bare "+r.Driver+" -> agent-ready", r.BareAgentReady))
	table(w, rows)
	if r.SSHReady == nil && r.SSHNote != "" {
		fmt.Fprintf(w, "\nssh-ready: %s\n", r.SSHNote)
	}
	fmt.Fprintf(w, "\nratio banger/bare to agent-ready (medians): %.3f\n\n", r.Ratio)
	if wm := r.Warm; wm != nil {
		fmt.Fprintf(w, "warm start (clones of template %s):\n", wm.Template)
		rows := [][]string{{"STAGE (ms)", "MEDIAN", "MIN", "MAX"}}
		for _, s := range wm.Stages {
			rows = append(rows, statRow("  "+s.Name, s.BenchStat))
		}
		rows = append(rows, statRow("warm create -> ready", wm.AgentReady), statRow("cold create -> agent-ready", r.AgentReady),
			statRow("warm `vm run -- true`", wm.RunTrue))
		table(w, rows)
		fmt.Fprintf(w, "\nratio warm/cold to ready (medians): %.3f\nPSS (medians): idle clone %.1f MiB with a second clone up (%.1f MiB alone), cold VM at ready %.1f MiB\n", wm.Ratio, wm.ClonePSSMiB, wm.ClonePSSLoneMiB, wm.ColdPSSMiB)
		if wm.Parallel > 0 {
			fmt.Fprintf(w, "%d parallel `vm run -- true`: warm %.1f s, cold %.1f s\n", wm.Parallel, wm.ParallelWarmMS/1000, wm.ParallelColdMS/1000)
		}
		fmt.Fprintln(w)
	} else if r.WarmNote != "" {
		fmt.Fprintf(w, "%s\n\n", r.WarmNote)
	}
	for _, g := range r.Goals {
		verdict := "PASS"
		if !g.Pass {
			verdict = "FAIL"
		}
		unit := " " + g.Unit
		if g.Unit == "x" {
			unit = ""
		}
		fmt.Fprintf(w, "%s  %s: %.3g%s (goal <= %g%s)\n", verdict, g.Name, g.Value, unit, g.Limit, unit)
	}
	if r.BareNote != "" {
		fmt.Fprintf(w, "\nbare baseline: %s\n", r.BareNote)
	}
	if len(r.BareCommand) > 0 {
		fmt.Fprintf(w, "bare command: %s\n", strings.Join(r.BareCommand, " "))
	}
	return nil
}
