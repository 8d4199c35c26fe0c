package cli

// `banger bench pause`: pause/resume rounds and forks of one VM, timed by the client the way
// a user waits for `vm pause`, `vm resume` and `vm fork`. Everything it creates is removed
// afterwards, on failure and on Ctrl-C too.

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/banger-vm/banger/client"
	"github.com/banger-vm/banger/internal/api"
	"github.com/banger-vm/banger/internal/units"
)

// benchPauseMaxRuns and benchPauseMaxClones bound what one bench may create.
const (
	benchPauseMaxRuns   = 50
	benchPauseMaxClones = 16
)

type benchPauseOptions struct {
	create       api.VMCreateRequest
	runs, clones int
}

func (a *app) benchPauseCommand() *cobra.Command {
	var o benchPauseOptions
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "pause",
		Short: "Time vm pause, vm resume and vm fork of one VM",
		Long: `Creates and starts one VM, then times, as the client sees them:
  - --runs rounds of 'vm pause' then 'vm resume' (to the agent answering and the clock
    set), with the paused state's size on disk and the resume's recorded stages;
  - --runs forks of the VM into --clones clones ('vm fork': the snapshot, then every
    clone running), with the snapshot's save time and size; each fork's clones and
    snapshot are removed before the next.

Reported: medians (min, max). The VM, clones and snapshots are removed afterwards, also
on failure or Ctrl-C.

  banger bench pause --memory 1G --runs 5 --clones 3`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := errors.Join(checkBenchFlag("runs", o.runs, benchPauseMaxRuns), checkBenchFlag("clones", o.clones, benchPauseMaxClones)); err != nil {
				return err
			}
			return runClientBench(a, cmd, asJSON, func(ctx context.Context, c *client.Client, progress func(string, ...any)) (api.BenchPauseResult, error) {
				return runPauseBench(ctx, c, o, progress)
			}, printPauseBench)
		},
	}
	addBootFlags(cmd, &o.create.Image, &o.create.Kernel, &o.create.CPUs, &o.create.Memory)
	cmd.Flags().IntVar(&o.runs, "runs", 5, "pause/resume rounds, and forks")
	cmd.Flags().IntVar(&o.clones, "clones", 3, "clones per fork")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the result as JSON (no progress)")
	return cmd
}

// checkBenchFlag refuses a bench's count or size flag outside 1..most.
func checkBenchFlag(name string, v, most int) error {
	if v < 1 || v > most {
		return fmt.Errorf("--%s %d: pass a value between 1 and %d", name, v, most)
	}
	return nil
}

// runClientBench runs a bench the client times: it reaches (or starts) the daemon, runs
// bench with a progress printer (silent for --json), and prints the result.
func runClientBench[R any](a *app, cmd *cobra.Command, asJSON bool, bench func(context.Context, *client.Client, func(string, ...any)) (R, error), print func(*app, R)) error {
	ctx, stop := interruptible(cmd.Context())
	defer stop()
	c, err := a.ensureDaemon(ctx, false)
	if err != nil {
		return err
	}
	progress := func(format string, args ...any) {
		if !asJSON {
			fmt.Fprintf(a.env.Stderr, "  "+format+"\n", args...)
		}
	}
	res, err := bench(ctx, c, progress)
	if err != nil {
		return err
	}
	if asJSON {
		return printJSON(a.env.Stdout, res)
	}
	print(a, res)
	return nil
}

// runPauseBench runs the bench. Whatever it created is removed before it returns.
func runPauseBench(ctx context.Context, c *client.Client, o benchPauseOptions, progress func(string, ...any)) (res api.BenchPauseResult, err error) {
	tag := "bp-" + strconv.FormatInt(time.Now().UnixNano()&0xffffff, 16)
	cleanup := context.WithoutCancel(ctx)
	o.create.Name, o.create.Start = tag, true
	progress("creating VM %s", tag)
	vm, err := c.CreateVM(ctx, o.create, nil)
	defer func() {
		if rerr := c.RemoveVM(cleanup, api.VMRemoveRequest{Name: tag, Force: true}); rerr != nil && !isNotFound(rerr) {
			err = errors.Join(err, fmt.Errorf("remove the bench VM %s: %w", tag, rerr))
		}
	}()
	if err != nil {
		return res, err
	}
	res = api.BenchPauseResult{Runs: o.runs, Clones: o.clones, Driver: vm.Driver, Accel: vm.Accel, Image: vm.Image, CPUs: vm.CPUs, MemoryMiB: vm.MemoryMiB}

	var pause, resume, fork, save []float64
	var pausedBytes, snapBytes []int64
	stages := map[string][]float64{}
	var order []string
	for i := range o.runs {
		began := time.Now()
		p, err := c.PauseVM(ctx, tag, nil)
		if err != nil {
			return res, fmt.Errorf("run %d: pause: %w", i+1, err)
		}
		pause = append(pause, msSince(began))
		if p.Paused != nil {
			pausedBytes = append(pausedBytes, p.Paused.SizeBytes)
		}
		began = time.Now()
		r, err := c.ResumeVM(ctx, tag, nil)
		if err != nil {
			return res, fmt.Errorf("run %d: resume: %w", i+1, err)
		}
		resume = append(resume, msSince(began))
		for _, st := range r.Stages {
			if _, seen := stages[st.Name]; !seen {
				order = append(order, st.Name)
			}
			stages[st.Name] = append(stages[st.Name], st.DurationMS)
		}
		progress("run %d/%d: pause %.0f ms (%s), resume %.0f ms", i+1, o.runs, pause[i], units.FormatSize(lastOr(pausedBytes, 0)), resume[i])
	}
	for i := range o.runs {
		snap := fmt.Sprintf("%s-s%d", tag, i+1)
		var news []string
		for j := range o.clones {
			news = append(news, fmt.Sprintf("%s-f%d-%d", tag, i+1, j+1))
		}
		began := time.Now()
		f, failed, err := forkClones(ctx, c, tag, snap, news, nil)
		ms := msSince(began)
		if rerr := removeFork(cleanup, c, snap, news); rerr != nil {
			err = errors.Join(err, rerr)
		}
		if err == nil && len(failed) > 0 {
			err = fmt.Errorf("%d of %d clones failed:\n  %s", len(failed), len(news), strings.Join(failed, "\n  "))
		}
		if err != nil {
			return res, fmt.Errorf("fork %d: %w", i+1, err)
		}
		fork, save = append(fork, ms), append(save, f.Snapshot.SaveMS)
		snapBytes = append(snapBytes, f.Snapshot.SizeBytes)
		progress("fork %d/%d: %d clones in %.0f ms (snapshot %s, saved in %.0f ms)", i+1, o.runs, o.clones, ms, units.FormatSize(f.Snapshot.SizeBytes), f.Snapshot.SaveMS)
	}
	res.Pause, res.Resume, res.Fork, res.SnapshotSave = api.SummarizeMS(pause), api.SummarizeMS(resume), api.SummarizeMS(fork), api.SummarizeMS(save)
	res.PausedBytes, res.SnapshotBytes = medianBytes(pausedBytes), medianBytes(snapBytes)
	for _, n := range order {
		res.ResumeStages = append(res.ResumeStages, api.BenchStageStat{Name: n, BenchStat: api.SummarizeMS(stages[n])})
	}
	return res, nil
}

// removeFork removes a fork's clones, then its snapshot.
func removeFork(ctx context.Context, c *client.Client, snap string, clones []string) error {
	var errs []error
	for _, n := range clones {
		if err := c.RemoveVM(ctx, api.VMRemoveRequest{Name: n, Force: true}); err != nil && !isNotFound(err) {
			errs = append(errs, fmt.Errorf("remove clone %s: %w", n, err))
		}
	}
	if err := c.RemoveSnapshot(ctx, snap); err != nil && !isNotFound(err) {
		errs = append(errs, fmt.Errorf("remove snapshot %s: %w", snap, err))
	}
	return errors.Join(errs...)
}

func isNotFound(err error) bool {
	var ae *api.Error
	return errors.As(err, &ae) && ae.Code == api.CodeNotFound
}

func msSince(t time.Time) float64 { return float64(time.Since(t).Microseconds()) / 1000 }

func lastOr(v []int64, def int64) int64 {
	if len(v) == 0 {
		return def
	}
	return v[len(v)-1]
}

// medianBytes is the median of sizes (the lower middle one for an even count).
func medianBytes(v []int64) int64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	return s[(len(s)-1)/2]
}

func printPauseBench(a *app, r api.BenchPauseResult) {
	w := a.env.Stdout
	accel := ""
	if r.Accel != "" {
		accel = "/" + r.Accel
	}
	fmt.Fprintf(w, "banger bench pause: %d runs, %s%s, image %s, %d vCPUs, %d MiB, forks of %d clones\n\n",
		r.Runs, r.Driver, accel, r.Image, r.CPUs, r.MemoryMiB, r.Clones)
	rows := [][]string{{"MEASURE (ms)", "MEDIAN", "MIN", "MAX"}, statRow("vm pause", r.Pause), statRow("vm resume (agent ready, clock set)", r.Resume)}
	for _, s := range r.ResumeStages {
		rows = append(rows, statRow("  "+s.Name, s.BenchStat))
	}
	rows = append(rows, statRow(fmt.Sprintf("vm fork into %d clones", r.Clones), r.Fork), statRow("  its snapshot's save", r.SnapshotSave))
	table(w, rows)
	fmt.Fprintf(w, "\npaused state on disk (median): %s\nsnapshot on disk (median): %s\n", units.FormatSize(r.PausedBytes), units.FormatSize(r.SnapshotBytes))
}
