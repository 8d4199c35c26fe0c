package daemon

// `banger bench create`: create -> agent-ready (and -> ssh-ready) through the daemon's real
// create path, stage by stage, beside the same kernel, initramfs and disks booted by the
// bare VMM command (the driver's own argv, started directly). Rounds alternate which goes
// first. Every bench VM and bare boot is removed afterwards, on failure and on Ctrl-C too
// (the client's disconnect cancels the request's context).

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/banger-vm/banger/internal/agent"
	"github.com/banger-vm/banger/internal/api"
	"github.com/banger-vm/banger/internal/lifecycle"
	"github.com/banger-vm/banger/internal/vmm"
)

// Bench limits and goals.
const (
	benchDefaultRuns = 3
	benchMaxRuns     = 50
	// benchHostSideGoalMS: everything but the guest's own boot, median.
	benchHostSideGoalMS = 100
	// benchRatioGoal: banger create->agent-ready over the bare VMM's boot->agent-ready.
	benchRatioGoal = 1.05
	// The warm-start goals: a clone ready in a tenth of a cold create, `vm run -- true`
	// within a second, an idle clone of a 1 GiB guest within 150 MB (it shares the
	// template's pages).
	benchWarmRatioGoal   = 0.10
	benchWarmRunGoalMS   = 1000
	benchClonePSSGoalMiB = 143 // 150 MB
	// benchLockName marks a bench scratch directory in use: the leak check leaves a
	// directory alone while its lock is held (by a running bench).
	benchLockName = ".bench.lock"
)

// guestStage reports whether a recorded stage waits for the guest's own boot.
func guestStage(name string) bool { return name == stageAgent || name == stageSSH }

func (d *Daemon) handleBenchCreate(w http.ResponseWriter, r *http.Request) error {
	var req api.BenchCreateRequest
	if err := decodeBody(r, &req); err != nil {
		return err
	}
	if req.Runs == 0 {
		req.Runs = benchDefaultRuns
	}
	if req.Runs < 1 || req.Runs > benchMaxRuns {
		return api.Errorf(api.CodeBadRequest, fmt.Sprintf("pass --runs between 1 and %d", benchMaxRuns), "invalid run count %d", req.Runs)
	}
	// Bad input is a plain 4xx, before streaming.
	if _, err := d.validateCreate(r.Context(), benchCreateRequest(req, "bench")); err != nil {
		return err
	}
	s := newStreamer(w)
	res, err := d.benchCreate(r.Context(), req, func(p api.Progress) { s.send(api.StreamEvent{Progress: &p}) })
	if err != nil {
		var ae *api.Error
		if !errors.As(err, &ae) {
			ae = api.Errorf(api.CodeInternal, "see the daemon log", "%v", err)
		}
		d.log.Warn("bench create failed", "err", err)
		s.send(api.StreamEvent{Error: ae})
		return nil
	}
	b, err := json.Marshal(res)
	if err != nil {
		return err
	}
	s.send(api.StreamEvent{Result: b})
	return nil
}

func benchCreateRequest(req api.BenchCreateRequest, name string) api.VMCreateRequest {
	// Cold: the banger side is compared with a bare boot of the same kernel; the warm side
	// (benchWarmRun) is timed beside it.
	return api.VMCreateRequest{Name: name, Image: req.Image, Kernel: req.Kernel, CPUs: req.CPUs, Memory: req.Memory, Start: true, Cold: true}
}

// benchCreate runs the rounds and summarizes them.
func (d *Daemon) benchCreate(ctx context.Context, req api.BenchCreateRequest, progress progressFunc) (api.BenchCreateResult, error) {
	p, err := d.validateCreate(ctx, benchCreateRequest(req, "bench"))
	if err != nil {
		return api.BenchCreateResult{}, err
	}
	choice, err := d.chooseVMM()
	if err != nil {
		return api.BenchCreateResult{}, err
	}
	drv, err := d.driver(choice.Driver, choice.Accel)
	if err != nil {
		return api.BenchCreateResult{}, err
	}
	// Warm the initramfs cache once, so neither side of round 1 pays for building it.
	progress(api.Progress{Stage: "preparing the initramfs"})
	initrd, err := d.ensureInitramfs(ctx, p.kernel)
	if err != nil {
		return api.BenchCreateResult{}, fmt.Errorf("bench: %w", err)
	}
	res := api.BenchCreateResult{Runs: req.Runs, Driver: choice.Driver, Accel: choice.Accel, Image: p.img.Name, Kernel: p.kernel.ID,
		BareNote: "the bare boot has no NIC (a TAP needs the root helper) and no QMP handshake, store or SSH key work"}
	var bangerArgv, bareArgv []string // normalized: paths and names replaced, no NICs
	warm := !req.NoWarm && d.opts.Config.VM.WarmStart
	if warm {
		res.Warm = &api.BenchWarm{Parallel: req.Parallel}
		progress(api.Progress{Stage: "building the warm-start template"})
		tpl, err := d.buildTemplate(ctx, p.img, p.kernel, d.shapeOf(p), false, func(pr api.Progress) {
			pr.Stage = "template: " + pr.Stage
			progress(pr)
		})
		if err != nil {
			if ctx.Err() != nil {
				return api.BenchCreateResult{}, err
			}
			warm, res.Warm, res.WarmNote = false, nil, "no warm side: "+err.Error()
		} else {
			res.Warm.Template = tpl.meta.Key
		}
	} else {
		res.WarmNote = "no warm side: --no-warm, or [vm] warm_start = false"
	}
	for i := range req.Runs {
		run := api.BenchRun{Index: i + 1, BangerFirst: i%2 == 0}
		tag := fmt.Sprintf("run %d/%d", i+1, req.Runs)
		bangerSide := func() error {
			return d.benchBangerRun(ctx, req, &run, &res, &bangerArgv, func(pr api.Progress) {
				pr.Stage = tag + " banger: " + pr.Stage
				progress(pr)
			})
		}
		bareSide := func() error {
			progress(api.Progress{Stage: tag + " bare " + choice.Driver})
			argv, norm, ms, err := d.benchBareRun(ctx, drv, p, initrd)
			if err != nil {
				return fmt.Errorf("%s, bare %s: %w", tag, choice.Driver, err)
			}
			run.BareAgentReadyMS = round2(ms)
			res.BareCommand, bareArgv = argv, norm
			progress(api.Progress{Stage: tag + " bare " + choice.Driver, Message: fmt.Sprintf("%.1f ms to agent", ms)})
			return nil
		}
		sides := []func() error{bangerSide, bareSide}
		if !run.BangerFirst {
			slices.Reverse(sides)
		}
		if warm {
			sides = append(sides, func() error {
				return d.benchWarmRun(ctx, req, &run, func(pr api.Progress) {
					pr.Stage = tag + " warm: " + pr.Stage
					progress(pr)
				})
			})
		}
		for _, side := range sides {
			if err := side(); err != nil {
				return api.BenchCreateResult{}, err
			}
		}
		res.RunDetails = append(res.RunDetails, run)
	}
	summarizeBench(&res)
	if warm && req.Parallel > 0 {
		for _, cold := range []bool{false, true} {
			what := map[bool]string{false: "warm", true: "cold"}[cold]
			progress(api.Progress{Stage: fmt.Sprintf("%d parallel %s `vm run -- true`", req.Parallel, what)})
			ms, err := d.benchParallel(ctx, req, cold)
			if err != nil {
				return api.BenchCreateResult{}, fmt.Errorf("parallel %s runs: %w", what, err)
			}
			if cold {
				res.Warm.ParallelColdMS = round2(ms)
			} else {
				res.Warm.ParallelWarmMS = round2(ms)
			}
		}
	}
	if bangerArgv != nil && bareArgv != nil && !slices.Equal(bangerArgv, bareArgv) {
		res.BareNote += "; WARNING: the bare command line differs from the banger VM's beyond paths and network: " + firstArgvDiff(bangerArgv, bareArgv)
		d.log.Warn("bench: bare command line differs from the banger VM's", "banger", bangerArgv, "bare", bareArgv)
	}
	return res, nil
}

// normalizeArgv makes a QEMU command line comparable across VMs: the VM's name, disk dir
// and run dir become placeholders, vsock CIDs are dropped, and so are the NICs and the
// network keys of the kernel command line (a bare boot has no TAP).
func normalizeArgv(argv []string, name, dir, runDir string) []string {
	var out []string
	for i := 0; i < len(argv); i++ {
		a := argv[i]
		if i+1 < len(argv) && (a == "-netdev" || a == "-device" && strings.HasPrefix(argv[i+1], "virtio-net-device")) {
			i++
			continue
		}
		if i > 0 && argv[i-1] == "-append" {
			var keep []string
			for _, f := range strings.Fields(a) {
				if k, _, _ := strings.Cut(f, "="); k != "banger.ip" && k != "banger.gw" && k != "banger.dns" {
					keep = append(keep, f)
				}
			}
			a = strings.Join(keep, " ")
		}
		for _, r := range [][2]string{{runDir, "<run>"}, {dir, "<dir>"}, {name, "<name>"}} {
			if r[0] != "" {
				a = strings.ReplaceAll(a, r[0], r[1])
			}
		}
		if j := strings.Index(a, "guest-cid="); j >= 0 {
			a = a[:j] + "guest-cid=<cid>"
		}
		out = append(out, a)
	}
	return out
}

// firstArgvDiff describes where two normalized command lines part.
func firstArgvDiff(a, b []string) string {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return fmt.Sprintf("argument %d is %q for banger, %q for bare", i, a[i], b[i])
		}
	}
	return fmt.Sprintf("banger has %d arguments, bare %d", len(a), len(b))
}

// benchBangerRun creates and starts one VM through createVM, the path `vm create --start`
// takes, timing the ends of its stages, then removes it.
func (d *Daemon) benchBangerRun(ctx context.Context, req api.BenchCreateRequest, run *api.BenchRun, res *api.BenchCreateResult, bangerArgv *[]string, progress progressFunc) error {
	name := "bench-" + randomHex(4)
	ended := map[string]time.Time{}
	t0 := time.Now()
	vm, err := d.createVM(ctx, benchCreateRequest(req, name), func(pr api.Progress) {
		if pr.Message != "" {
			ended[pr.Stage] = time.Now() // runStage reports a stage's end with its duration
		}
		progress(pr)
	})
	total := time.Since(t0)
	if err != nil {
		// createVM removed whatever it had made.
		return fmt.Errorf("run %d, banger: %w", run.Index, err)
	}
	defer d.benchRemoveVM(ctx, vm.ID)
	run.VM, run.Stages = vm.Name, vm.Stages
	if pss, err := vmm.ReadPSS(vm.PID); err == nil {
		run.ColdPSSMiB = round2(float64(pss) / (1 << 20))
	}
	// Compared with the bare argv only where the bare boot runs the same command line.
	if raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", vm.PID)); err == nil && vm.PID > 0 {
		*bangerArgv = normalizeArgv(strings.Split(strings.TrimRight(string(raw), "\x00"), "\x00"), vm.Name, vm.Dir, vm.RunDir)
	}
	agentAt, ok := ended[stageAgent]
	if !ok {
		return fmt.Errorf("run %d, banger: VM %s recorded no %q stage", run.Index, vm.Name, stageAgent)
	}
	run.AgentReadyMS = lifecycle.Millis(agentAt.Sub(t0))
	if at, ok := ended[stageSSH]; ok && vm.SSH.Ready {
		run.SSHReadyMS = lifecycle.Millis(at.Sub(t0))
	} else if res.SSHNote == "" {
		res.SSHNote = vm.SSH.Note
		if res.SSHNote == "" {
			res.SSHNote = "sshd was not waited for"
		}
	}
	var staged, agentWait float64
	for _, s := range vm.Stages {
		staged += s.DurationMS
		if s.Name == stageAgent {
			agentWait = s.DurationMS
			break
		}
	}
	run.HostSideMS = round2(run.AgentReadyMS - agentWait)
	run.UnstagedMS = round2(max(run.AgentReadyMS-staged, 0))
	run.AgentReadyMS, run.SSHReadyMS = round2(run.AgentReadyMS), round2(run.SSHReadyMS)
	d.log.Debug("bench banger run", "vm", vm.Name, "total", total, "agent_ready_ms", run.AgentReadyMS)
	return nil
}

// benchWarmRun is `vm run -- true` from the template: a warm create without the sshd wait
// (timed to the clone being ready: agent up, identity taken), the command through the
// agent, and the removal; their sum is the run's time. Between the command and the removal,
// untimed, the clone's PSS is read alone and then with a second clone of the template up:
// PSS splits the pages clones share, so a lone clone is charged all of them.
func (d *Daemon) benchWarmRun(ctx context.Context, req api.BenchCreateRequest, run *api.BenchRun, progress progressFunc) error {
	// create makes one clone: the VM, its create -> ready time and its whole create time.
	create := func() (api.VM, time.Duration, time.Duration, error) {
		creq := benchCreateRequest(req, "bench-"+randomHex(4))
		creq.Cold, creq.SkipSSHWait = false, true
		var readyAt time.Time
		t0 := time.Now()
		vm, err := d.createVM(ctx, creq, func(pr api.Progress) {
			if pr.Message != "" && (pr.Stage == stageAgent || pr.Stage == stageIdentity) {
				readyAt = time.Now()
			}
			progress(pr)
		})
		if err != nil {
			return api.VM{}, 0, 0, err
		}
		took := time.Since(t0)
		if vm.Boot == nil || vm.Boot.Mode != api.BootWarm {
			d.benchRemoveVM(ctx, vm.ID)
			return api.VM{}, 0, 0, fmt.Errorf("the VM booted cold: %s", bootReason(vm.Boot))
		}
		return vm, readyAt.Sub(t0), took, nil
	}
	vm, ready, createTook, err := create()
	if err != nil {
		return fmt.Errorf("run %d, warm: %w", run.Index, err)
	}
	removed := false
	defer func() {
		if !removed {
			d.benchRemoveVM(ctx, vm.ID)
		}
	}()
	run.WarmAgentReadyMS = round2(lifecycle.Millis(ready))
	run.WarmStages = vm.Stages
	t1 := time.Now()
	if err := d.benchExecTrue(ctx, vm.ID); err != nil {
		return fmt.Errorf("run %d, warm: %w", run.Index, err)
	}
	execTook := time.Since(t1)
	if pss, err := vmm.ReadPSS(vm.PID); err == nil {
		run.ClonePSSLoneMiB = round2(float64(pss) / (1 << 20))
	}
	sibling, _, _, err := create()
	if err != nil {
		return fmt.Errorf("run %d, warm (a second clone for the PSS): %w", run.Index, err)
	}
	if pss, err := vmm.ReadPSS(vm.PID); err == nil {
		run.ClonePSSMiB = round2(float64(pss) / (1 << 20))
	}
	d.benchRemoveVM(ctx, sibling.ID)
	t2 := time.Now()
	d.benchRemoveVM(ctx, vm.ID)
	removed = true
	run.WarmRunTrueMS = round2(lifecycle.Millis(createTook + execTook + time.Since(t2)))
	return nil
}

func bootReason(b *api.VMBoot) string {
	if b == nil {
		return "no boot recorded"
	}
	return b.Reason
}

// benchExecTrue runs `true` in a VM through its agent.
func (d *Daemon) benchExecTrue(ctx context.Context, id string) error {
	m := d.machine(id)
	if m == nil {
		return errors.New("the VM stopped")
	}
	st, err := m.Agent().Exec(ctx, agent.ExecRequest{Argv: []string{"true"}}, nil, io.Discard, io.Discard)
	if err != nil {
		return err
	}
	if st.Code != 0 {
		return fmt.Errorf("true exited %d", st.Code)
	}
	return nil
}

// benchParallel starts req.Parallel `vm run -- true` at once (warm, or cold) and returns
// the wall time until all of them are done and removed.
func (d *Daemon) benchParallel(ctx context.Context, req api.BenchCreateRequest, cold bool) (float64, error) {
	errs := make(chan error, req.Parallel)
	t0 := time.Now()
	for range req.Parallel {
		go func() {
			creq := benchCreateRequest(req, "bench-"+randomHex(4))
			creq.Cold, creq.SkipSSHWait = cold, true
			vm, err := d.createVM(ctx, creq, func(api.Progress) {})
			if err == nil {
				err = d.benchExecTrue(ctx, vm.ID)
				d.benchRemoveVM(ctx, vm.ID)
			}
			errs <- err
		}()
	}
	var all []error
	for range req.Parallel {
		all = append(all, <-errs)
	}
	return lifecycle.Millis(time.Since(t0)), errors.Join(all...)
}

// benchRemoveVM kills a bench VM (its guest state does not matter) and removes it.
func (d *Daemon) benchRemoveVM(ctx context.Context, id string) {
	ctx = context.WithoutCancel(ctx)
	unlock := d.lockVM(id)
	_, err := d.stopLocked(ctx, id, 0, true)
	unlock()
	if err == nil {
		err = d.removeVM(ctx, api.VMRemoveRequest{Name: id, Force: true})
	}
	if err != nil {
		d.log.Warn("could not remove a bench VM; `banger doctor --leaks` lists what is left", "vm", id, "err", err)
	}
}

// benchBareRun builds fresh work and layer disks the way create does (not timed), then boots
// them with the image's rootfs, the kernel and initrd by the bare VMM command. It returns
// the argv and process start -> agent answered in ms. Its scratch directories are gone
// when it returns.
func (d *Daemon) benchBareRun(ctx context.Context, drv vmm.Driver, p createParams, initrd string) (argv, normalized []string, agentMS float64, err error) {
	id := randomHex(5)
	name := "bench-bare-" + id
	spec := vmSpec{Dir: filepath.Join(d.opts.Layout.VMsDir, ".bench-"+id), RunDir: filepath.Join(d.opts.Layout.RuntimeDir, "v", "b"+id)}
	for _, dir := range []string{spec.Dir, spec.RunDir} {
		release, err := holdBenchDir(dir)
		if err != nil {
			return nil, nil, 0, err
		}
		defer func() { release(); _ = os.RemoveAll(dir) }()
	}
	bp := p
	bp.name = name
	if _, err := d.buildDisks(ctx, spec, bp); err != nil {
		return nil, nil, 0, fmt.Errorf("build disks: %w", err)
	}
	mods, err := d.modulesDrives(ctx, p.kernel)
	if err != nil {
		return nil, nil, 0, fmt.Errorf("modules disk: %w", err)
	}
	ms := vmm.MachineSpec{
		Name: name, Kernel: p.kernel.BzImage, Initramfs: initrd,
		Cmdline: "banger.hostname=" + name,
		Drives:  vmDrives(p.img.RootfsPath, spec, mods),
		VCPUs:   p.cpus, MemoryMiB: p.memoryMiB, RunDir: spec.RunDir,
	}
	bb, ok := drv.(vmm.BareBooter)
	if !ok {
		return nil, nil, 0, fmt.Errorf("the %s driver has no bare boot to compare with", drv.Name())
	}
	bctx, cancel := context.WithTimeout(ctx, agentDeadline)
	defer cancel()
	b, err := bb.BootBare(bctx, ms)
	if b.SameArgv {
		normalized = normalizeArgv(b.Argv, name, spec.Dir, spec.RunDir)
	}
	return b.Argv, normalized, lifecycle.Millis(b.AgentReady), err
}

// holdBenchDir creates dir (0700) and holds an flock on its lock file until release, so the
// leak check can tell a bench in progress from one a killed daemon left behind.
func holdBenchDir(dir string) (func(), error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(filepath.Join(dir, benchLockName), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		_ = os.RemoveAll(dir)
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		_ = os.RemoveAll(dir)
		return nil, fmt.Errorf("lock %s: %w", dir, err)
	}
	return func() { f.Close() }, nil
}

// benchDirBusy reports whether a running bench holds dir's lock.
func benchDirBusy(dir string) bool {
	f, err := os.Open(filepath.Join(dir, benchLockName))
	if err != nil {
		return false
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		return errors.Is(err, unix.EWOULDBLOCK)
	}
	_ = unix.Flock(int(f.Fd()), unix.LOCK_UN)
	return false
}

// stat summarizes values (ms).
func stat(values []float64) api.BenchStat { return api.SummarizeMS(values) }

func round2(f float64) float64 { return float64(int64(f*100+0.5)) / 100 }

// summarizeBench fills the statistics, the ratio and the goals from the runs. Stage names
// come from what the VMs recorded, in their order.
func summarizeBench(res *api.BenchCreateResult) {
	var agent, ssh, host, unstaged, bare []float64
	var order []string
	byStage := map[string][]float64{}
	for _, r := range res.RunDetails {
		agent = append(agent, r.AgentReadyMS)
		host = append(host, r.HostSideMS)
		unstaged = append(unstaged, r.UnstagedMS)
		bare = append(bare, r.BareAgentReadyMS)
		if r.SSHReadyMS > 0 {
			ssh = append(ssh, r.SSHReadyMS)
		}
		for _, s := range r.Stages {
			if _, ok := byStage[s.Name]; !ok {
				order = append(order, s.Name)
			}
			byStage[s.Name] = append(byStage[s.Name], s.DurationMS)
		}
	}
	res.AgentReady, res.HostSide, res.Unstaged, res.BareAgentReady = stat(agent), stat(host), stat(unstaged), stat(bare)
	if len(ssh) > 0 {
		st := stat(ssh)
		res.SSHReady = &st
		if len(ssh) == len(res.RunDetails) {
			res.SSHNote = ""
		}
	}
	res.Stages = nil
	for _, n := range order {
		res.Stages = append(res.Stages, api.BenchStageStat{Name: n, Guest: guestStage(n), BenchStat: stat(byStage[n])})
	}
	if res.BareAgentReady.MedianMS > 0 {
		res.Ratio = float64(int64(res.AgentReady.MedianMS/res.BareAgentReady.MedianMS*1000+0.5)) / 1000
	}
	if w := res.Warm; w != nil {
		var ready, runTrue, clonePSS, lonePSS, coldPSS []float64
		byStage := map[string][]float64{}
		var worder []string
		for _, r := range res.RunDetails {
			ready, runTrue = append(ready, r.WarmAgentReadyMS), append(runTrue, r.WarmRunTrueMS)
			clonePSS, coldPSS = append(clonePSS, r.ClonePSSMiB), append(coldPSS, r.ColdPSSMiB)
			lonePSS = append(lonePSS, r.ClonePSSLoneMiB)
			for _, s := range r.WarmStages {
				if _, ok := byStage[s.Name]; !ok {
					worder = append(worder, s.Name)
				}
				byStage[s.Name] = append(byStage[s.Name], s.DurationMS)
			}
		}
		w.AgentReady, w.RunTrue = stat(ready), stat(runTrue)
		w.ClonePSSMiB, w.ClonePSSLoneMiB, w.ColdPSSMiB = stat(clonePSS).MedianMS, stat(lonePSS).MedianMS, stat(coldPSS).MedianMS
		w.Stages = nil
		for _, n := range worder {
			w.Stages = append(w.Stages, api.BenchStageStat{Name: n, Guest: guestStage(n), BenchStat: stat(byStage[n])})
		}
		if res.AgentReady.MedianMS > 0 {
			w.Ratio = float64(int64(w.AgentReady.MedianMS/res.AgentReady.MedianMS*1000+0.5)) / 1000
		}
	}
	res.Goals = []api.BenchGoal{
		{Name: "host-side stages (median)", Value: res.HostSide.MedianMS, Limit: benchHostSideGoalMS, Unit: "ms", Pass: res.HostSide.MedianMS <= benchHostSideGoalMS},
		{Name: "banger/bare to agent-ready (medians)", Value: res.Ratio, Limit: benchRatioGoal, Unit: "x", Pass: res.Ratio > 0 && res.Ratio <= benchRatioGoal},
	}
	if w := res.Warm; w != nil {
		res.Goals = append(res.Goals,
			api.BenchGoal{Name: "warm/cold create to agent-ready (medians)", Value: w.Ratio, Limit: benchWarmRatioGoal, Unit: "x", Pass: w.Ratio > 0 && w.Ratio <= benchWarmRatioGoal},
			api.BenchGoal{Name: "warm `vm run -- true` (median)", Value: w.RunTrue.MedianMS, Limit: benchWarmRunGoalMS, Unit: "ms", Pass: w.RunTrue.MedianMS > 0 && w.RunTrue.MedianMS <= benchWarmRunGoalMS},
			api.BenchGoal{Name: "idle clone PSS, 2 clones up (median)", Value: w.ClonePSSMiB, Limit: benchClonePSSGoalMiB, Unit: "MiB", Pass: w.ClonePSSMiB > 0 && w.ClonePSSMiB <= benchClonePSSGoalMiB})
	}
	res.Pass = true
	for _, g := range res.Goals {
		res.Pass = res.Pass && g.Pass
	}
}
