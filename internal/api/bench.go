package api

import (
	"context"
	"math"
	"slices"
)

// BenchCreateRequest is POST /v1/bench/create (streamed): Runs rounds, each one `vm create
// --start` through the daemon's real path and one boot of the same kernel, initramfs and
// disks by the bare VMM command, alternating which goes first.
type BenchCreateRequest struct {
	Runs   int    `json:"runs,omitempty"`  // 0 = 3
	Image  string `json:"image,omitempty"` // "" = images.default
	Kernel string `json:"kernel,omitempty"`
	CPUs   int    `json:"cpus,omitempty"`
	Memory string `json:"memory,omitempty"`
	// NoWarm skips the warm-start side (no template is built).
	NoWarm bool `json:"no_warm,omitempty"`
	// Parallel, when > 0, also times that many `vm run -- true` at once, warm then cold.
	Parallel int `json:"parallel,omitempty"`
}

// BenchWarm is the warm-start side of a create benchmark: clones of the image's template
// beside the cold creates of the same rounds.
type BenchWarm struct {
	Template string `json:"template"`
	// AgentReady is a warm create -> agent-ready; Ratio is its median over the cold
	// creates' (BenchCreateResult.AgentReady).
	AgentReady BenchStat `json:"agent_ready"`
	Ratio      float64   `json:"ratio"`
	// RunTrue is `vm run -- true` end to end in the daemon: a warm create without the sshd
	// wait, the command through the agent, the VM removed.
	RunTrue BenchStat `json:"run_true"`
	// ClonePSSMiB is the median PSS of an idle clone (after its command) while a second
	// clone of the template runs, ClonePSSLoneMiB the same clone's alone (charged all the
	// template pages it maps), ColdPSSMiB a cold-booted VM's at ready.
	ClonePSSMiB     float64 `json:"clone_pss_mib"`
	ClonePSSLoneMiB float64 `json:"clone_pss_lone_mib"`
	ColdPSSMiB      float64 `json:"cold_pss_mib"`
	// Stages are the warm creates' stages.
	Stages []BenchStageStat `json:"stages"`
	// ParallelWarmMS and ParallelColdMS are the wall times of Parallel `vm run -- true`
	// started at once.
	Parallel       int     `json:"parallel,omitempty"`
	ParallelWarmMS float64 `json:"parallel_warm_ms,omitempty"`
	ParallelColdMS float64 `json:"parallel_cold_ms,omitempty"`
}

// BenchStat summarizes one measure over the runs, in milliseconds.
type BenchStat struct {
	N        int     `json:"n"`
	MedianMS float64 `json:"median_ms"`
	MinMS    float64 `json:"min_ms"`
	MaxMS    float64 `json:"max_ms"`
}

// BenchStageStat is a BenchStat of one recorded stage. Guest is true for the stages that
// wait for the guest's own boot (the agent, sshd); the others are host-side.
type BenchStageStat struct {
	Name  string `json:"name"`
	Guest bool   `json:"guest"`
	BenchStat
}

// BenchRun is one round.
type BenchRun struct {
	Index       int     `json:"index"`
	BangerFirst bool    `json:"banger_first"`
	VM          string  `json:"vm"`
	Stages      []Stage `json:"stages"`
	// WarmAgentReadyMS is a warm create's request -> the agent answered (0: no warm side);
	// WarmRunTrueMS its `vm run -- true`; the PSS figures are as in BenchWarm.
	WarmAgentReadyMS float64 `json:"warm_agent_ready_ms,omitempty"`
	WarmRunTrueMS    float64 `json:"warm_run_true_ms,omitempty"`
	WarmStages       []Stage `json:"warm_stages,omitempty"`
	ClonePSSMiB      float64 `json:"clone_pss_mib,omitempty"`
	ClonePSSLoneMiB  float64 `json:"clone_pss_lone_mib,omitempty"`
	ColdPSSMiB       float64 `json:"cold_pss_mib,omitempty"`
	// AgentReadyMS is create request -> the agent answered; SSHReadyMS -> sshd answered
	// (0 when the VM has no SSH); HostSideMS is AgentReadyMS minus the wait for the agent.
	AgentReadyMS float64 `json:"agent_ready_ms"`
	SSHReadyMS   float64 `json:"ssh_ready_ms,omitempty"`
	HostSideMS   float64 `json:"host_side_ms"`
	// UnstagedMS is the part of AgentReadyMS no stage recorded (API, store writes).
	UnstagedMS float64 `json:"unstaged_ms"`
	// BareAgentReadyMS is the bare VMM: process start -> the agent answered /v1/healthz.
	BareAgentReadyMS float64 `json:"bare_agent_ready_ms"`
}

// BenchGoal is one target and whether the medians meet it.
type BenchGoal struct {
	Name  string  `json:"name"`
	Value float64 `json:"value"`
	Limit float64 `json:"limit"`
	Unit  string  `json:"unit"`
	Pass  bool    `json:"pass"`
}

// BenchCreateResult is the answer of POST /v1/bench/create.
type BenchCreateResult struct {
	Runs   int    `json:"runs"`
	Driver string `json:"driver"`
	Accel  string `json:"accel,omitempty"`
	Image  string `json:"image"`
	Kernel string `json:"kernel"`

	AgentReady BenchStat  `json:"agent_ready"`
	SSHReady   *BenchStat `json:"ssh_ready,omitempty"`
	// SSHNote says why there is no ssh-ready figure (the image has no sshd, ...).
	SSHNote  string           `json:"ssh_note,omitempty"`
	HostSide BenchStat        `json:"host_side"`
	Unstaged BenchStat        `json:"unstaged"`
	Stages   []BenchStageStat `json:"stages"`

	BareAgentReady BenchStat `json:"bare_agent_ready"`
	// BareCommand is the argv of the last bare boot, for reproducing it by hand.
	BareCommand []string `json:"bare_command"`
	BareNote    string   `json:"bare_note,omitempty"`

	// Ratio is the median banger create->agent-ready over the median bare boot->agent-ready.
	Ratio float64     `json:"ratio"`
	Goals []BenchGoal `json:"goals"`
	Pass  bool        `json:"pass"`

	RunDetails []BenchRun `json:"run_details"`

	// Warm is the warm-start side, unless skipped (WarmNote says why).
	Warm     *BenchWarm `json:"warm,omitempty"`
	WarmNote string     `json:"warm_note,omitempty"`
}

// BenchCreate runs the create benchmark in the daemon, reporting progress. Cancelling ctx
// (Ctrl-C) stops it; the daemon removes the bench VMs and bare boots either way.
func (c *Client) BenchCreate(ctx context.Context, req BenchCreateRequest, progress func(Progress)) (BenchCreateResult, error) {
	return streamed[BenchCreateResult](ctx, c, "/bench/create", req, progress)
}

// SummarizeMS is the BenchStat of values (milliseconds).
func SummarizeMS(values []float64) BenchStat {
	if len(values) == 0 {
		return BenchStat{}
	}
	v := slices.Clone(values)
	slices.Sort(v)
	n := len(v)
	med := v[n/2]
	if n%2 == 0 {
		med = (v[n/2-1] + v[n/2]) / 2
	}
	return BenchStat{N: n, MedianMS: round2(med), MinMS: round2(v[0]), MaxMS: round2(v[n-1])}
}

func round2(f float64) float64 { return math.Round(f*100) / 100 }

// BenchPauseResult is what `banger bench pause` measured, by the client, the way a user
// waits for each command: Runs pause/resume rounds of one VM, then Runs forks of it into
// Clones clones each.
type BenchPauseResult struct {
	Runs      int    `json:"runs"`
	Clones    int    `json:"clones"`
	Driver    string `json:"driver"`
	Accel     string `json:"accel,omitempty"`
	Image     string `json:"image"`
	CPUs      int    `json:"cpus"`
	MemoryMiB int    `json:"memory_mib"`
	// Pause is `vm pause` to its return: the guest synced, saved and its VMM ended.
	Pause BenchStat `json:"pause"`
	// PausedBytes is the median size on disk of the saved state.
	PausedBytes int64 `json:"paused_bytes"`
	// Resume is `vm resume` to its return: the VMM restored, the agent answering, the
	// clock set. ResumeStages are its recorded stages.
	Resume       BenchStat        `json:"resume"`
	ResumeStages []BenchStageStat `json:"resume_stages"`
	// Fork is `vm fork` into Clones clones: the snapshot, then every clone running.
	Fork BenchStat `json:"fork"`
	// SnapshotSave is the fork snapshot's save (guest stopped) as the daemon recorded it;
	// SnapshotBytes the median snapshot size on disk.
	SnapshotSave  BenchStat `json:"snapshot_save"`
	SnapshotBytes int64     `json:"snapshot_bytes"`
}

// BenchMountResult is what `banger bench mount` measured, by the client: a host folder
// (--mount) against the VM's own work disk, each measure Runs times.
type BenchMountResult struct {
	Runs      int    `json:"runs"`
	SizeMB    int    `json:"size_mb"`
	Files     int    `json:"files"`
	Driver    string `json:"driver"`
	Accel     string `json:"accel,omitempty"`
	Image     string `json:"image"`
	CPUs      int    `json:"cpus"`
	MemoryMiB int    `json:"memory_mib"`
	// Mount is the host folder, WorkDisk the VM's /root.
	Mount    BenchMountSide `json:"mount"`
	WorkDisk BenchMountSide `json:"work_disk"`
	// ExecTrue is the round trip of `vm exec -- true`, included in every other figure.
	ExecTrue BenchStat `json:"exec_true"`
	Note     string    `json:"note,omitempty"`
}

// BenchMountSide is one filesystem's figures: sequential write (fsync'd) and read of
// SizeMB MiB, with the medians as MB/s, and walks of the Files-file tree.
type BenchMountSide struct {
	Write     BenchStat `json:"write"`
	WriteMBps float64   `json:"write_mbps"`
	Read      BenchStat `json:"read"`
	ReadMBps  float64   `json:"read_mbps"`
	Find      BenchStat `json:"find"`
	LsR       BenchStat `json:"ls_lr"`
	// GitStatus is `git status` over the tree (only when the image has git).
	GitStatus *BenchStat `json:"git_status,omitempty"`
}
