package update

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/banger-vm/banger/internal/api"
	"github.com/banger-vm/banger/internal/system/proc"
)

// Options configure Check and Run.
type Options struct {
	Install Install
	// Current is the running (installed) version.
	Current string
	Channel string
	// Version is the wanted release; "" means the latest.
	Version string
	// From is an offline artifact (a release tarball); FromManifest its signed manifest
	// ("" means manifest.json next to it).
	From, FromManifest string
	AllowDowngrade     bool
	Trusted            []ed25519.PublicKey
	HTTP               *http.Client
	// Progress reports the download; nil for none.
	Progress Progress
	// Logf prints one line of human progress; nil for none.
	Logf func(format string, args ...any)
	// AtPoint is called at named points of the update (tests kill the process there).
	AtPoint func(point string)
	// VerifyTimeout bounds restart + doctor after the swap; exceeding it rolls back.
	VerifyTimeout time.Duration
	// DoctorArgs are passed to `banger doctor --json` (e.g. --config FILE).
	DoctorArgs []string
	// Restart restarts what runs the installed binaries (the daemon, the helper) and waits
	// until the daemon, if one runs, runs version want. It returns notes for the user
	// (e.g. "restart the helper yourself").
	Restart func(ctx context.Context, want string) (notes []string, err error)
}

// CheckResult answers `banger update --check`.
type CheckResult struct {
	Current         string   `json:"current"`
	Latest          string   `json:"latest"`
	UpdateAvailable bool     `json:"update_available"`
	Downgrade       bool     `json:"downgrade,omitempty"`
	Manifest        string   `json:"manifest"`
	Platform        string   `json:"platform"`
	Artifact        Artifact `json:"artifact"`
	Note            string   `json:"note,omitempty"`
}

// Result is the outcome of Run.
type Result struct {
	// Status: "updated", "up-to-date", or "rolled-back".
	Status string `json:"status"`
	From   string `json:"from"`
	To     string `json:"to"`
	// Failure says what failed when the update was rolled back.
	Failure      string            `json:"failure,omitempty"`
	FailedChecks []api.CheckResult `json:"failed_checks,omitempty"`
	Repaired     []string          `json:"repaired,omitempty"`
	Notes        []string          `json:"notes,omitempty"`
	Stages       []api.Stage       `json:"stages"`
	TotalMS      float64           `json:"total_ms"`
}

// ErrRolledBack is returned (wrapped) with a Result whose Status is "rolled-back".
var ErrRolledBack = errors.New("update rolled back")

// Check fetches and verifies the manifest and compares it with the running version.
func Check(ctx context.Context, o Options) (CheckResult, error) {
	m, loc, err := o.manifest(ctx)
	if err != nil {
		return CheckResult{}, err
	}
	art, err := m.Artifact(Platform())
	if err != nil {
		return CheckResult{}, err
	}
	res := CheckResult{Current: o.Current, Latest: m.Version, Manifest: loc, Platform: Platform(), Artifact: art}
	c, note := compare(o.Current, m.Version)
	res.Note = note
	res.UpdateAvailable = c < 0
	res.Downgrade = c > 0
	return res, nil
}

// compare orders the current and the target version. An unparseable current version (a
// "dev" build) counts as older than every release, so a developer build can always be
// replaced by a release.
func compare(current, target string) (int, string) {
	tv, err := ParseVersion(target)
	if err != nil {
		return 0, err.Error()
	}
	cv, err := ParseVersion(current)
	if err != nil {
		return -1, fmt.Sprintf("the running banger %q is not a release version; any release counts as newer", current)
	}
	return cv.Compare(tv), ""
}

func (o Options) src() Source { return Source{HTTP: o.HTTP} }

func (o Options) manifest(ctx context.Context) (Manifest, string, error) {
	var loc string
	if o.From != "" {
		loc = o.FromManifest
		if loc == "" {
			loc = filepath.Join(filepath.Dir(o.From), "manifest.json")
		}
	} else {
		var err error
		if loc, err = ManifestURL(o.Channel, o.Version); err != nil {
			return Manifest{}, "", err
		}
	}
	m, _, err := o.src().FetchManifest(ctx, loc, o.Trusted)
	if err != nil {
		return Manifest{}, "", err
	}
	if o.Version != "" && m.Version != o.Version {
		return Manifest{}, "", fmt.Errorf("manifest %s is for %s, not the requested %s", loc, m.Version, o.Version)
	}
	return m, loc, nil
}

func (o Options) logf(format string, args ...any) {
	if o.Logf != nil {
		o.Logf(format, args...)
	}
}

func (o Options) at(point string) {
	if o.AtPoint != nil {
		o.AtPoint(point)
	}
}

// stageTimer records the duration of each named stage.
type stageTimer struct {
	stages []api.Stage
	start  time.Time
}

func (t *stageTimer) run(name string, f func() error) error {
	s := time.Now()
	err := f()
	st := api.Stage{Name: name, DurationMS: float64(time.Since(s).Microseconds()) / 1000}
	if err != nil {
		st.Error = err.Error()
	}
	t.stages = append(t.stages, st)
	return err
}

var unsafeName = regexp.MustCompile(`[^0-9A-Za-z._-]`)

// Run updates the install: see the package doc and README's "Updating" for the steps. On a
// failure after the swap the previous binaries are put back and restarted, and the error
// wraps ErrRolledBack.
func Run(ctx context.Context, o Options) (res Result, err error) {
	t := &stageTimer{start: time.Now()}
	res = Result{From: o.Current}
	defer func() {
		res.Stages = t.stages
		res.TotalMS = float64(time.Since(t.start).Microseconds()) / 1000
	}()
	in := o.Install
	lock, err := in.TryLock()
	if err != nil {
		return res, err
	}
	defer lock.Unlock()

	rep, err := repairLocked(in)
	res.Repaired = rep.Actions
	if err != nil {
		return res, fmt.Errorf("repair an interrupted update first: %w", err)
	}
	for _, a := range rep.Actions {
		o.logf("repaired: %s", a)
	}
	if rep.Interrupted != nil {
		// The repair put the previous version back: that, not this process's version, is
		// what is installed now.
		o.Current = rep.Interrupted.From
		res.From = o.Current
	}

	var m Manifest
	var manifestLoc string
	if err := t.run("manifest", func() (err error) { m, manifestLoc, err = o.manifest(ctx); return err }); err != nil {
		return res, err
	}
	res.To = m.Version
	c, note := compare(o.Current, m.Version)
	if note != "" {
		o.logf("%s", note)
	}
	switch {
	case c == 0:
		res.Status = "up-to-date"
		return res, nil
	case c > 0 && !o.AllowDowngrade:
		return res, fmt.Errorf("refusing to downgrade banger %s to %s: pass --allow-downgrade if you mean it", o.Current, m.Version)
	}
	art, err := m.Artifact(Platform())
	if err != nil {
		return res, err
	}
	work := filepath.Join(in.Staging, unsafeName.ReplaceAllString(m.Version, "_"))
	staged := filepath.Join(work, "bin")
	if err := os.MkdirAll(staged, 0o700); err != nil {
		return res, fmt.Errorf("staging dir: %w", err)
	}
	// Whatever happens next, the download and staged binaries are not needed afterwards.
	defer os.RemoveAll(work)

	tarball := filepath.Join(work, "artifact.tar.gz")
	if err := t.run("download", func() error {
		loc := o.From
		if loc == "" {
			var err error
			if loc, err = ResolveArtifact(manifestLoc, art.URL); err != nil {
				return err
			}
		}
		o.logf("downloading banger %s (%d bytes) from %s", m.Version, art.Size, loc)
		return o.src().Download(ctx, loc, art, tarball, o.Progress)
	}); err != nil {
		return res, err
	}
	if err := t.run("verify", func() error {
		if err := Extract(tarball, staged); err != nil {
			return err
		}
		return checkStagedVersion(ctx, filepath.Join(staged, "banger"), m.Version)
	}); err != nil {
		return res, err
	}
	o.at("staged")

	// The pre-update doctor: checks that already FAIL are the host's problems, not the new
	// version's, and must not make it roll back.
	var baseline map[string]bool
	if err := t.run("doctor-before", func() error {
		checks, err := RunDoctor(ctx, in.Path("banger"), o.DoctorArgs)
		if err != nil {
			return fmt.Errorf("doctor of the installed banger before the update: %w", err)
		}
		baseline = failing(checks)
		return nil
	}); err != nil {
		return res, err
	}

	j := Journal{From: o.Current, To: m.Version, Dir: in.Dir, Phase: PhaseSwapping, PID: os.Getpid(), Started: time.Now().UTC()}
	for _, name := range Binaries() {
		oldSum, err := FileSHA256(in.Path(name))
		if err != nil {
			return res, err
		}
		newSum, err := FileSHA256(filepath.Join(staged, name))
		if err != nil {
			return res, err
		}
		j.Files = append(j.Files, JournalFile{Name: name, Old: oldSum, New: newSum})
	}
	if err := in.WriteJournal(j); err != nil {
		return res, fmt.Errorf("write the update journal: %w", err)
	}
	o.at("journal-written")
	o.logf("installing banger %s into %s", m.Version, in.Dir)
	if err := t.run("swap", func() error { return in.Swap(staged, o.at) }); err != nil {
		// Swap stops at the first failing file; put back those already swapped.
		return res, o.rollback(ctx, t, in, j, &res, fmt.Sprintf("installing the new binaries failed: %v", err))
	}
	j.Phase = PhaseVerifying
	if err := in.WriteJournal(j); err != nil {
		return res, o.rollback(ctx, t, in, j, &res, fmt.Sprintf("write the update journal: %v", err))
	}
	o.at("swapped")

	timeout := o.VerifyTimeout
	if timeout <= 0 {
		timeout = 2 * time.Minute
	}
	vctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if err := t.run("restart", func() error {
		if o.Restart == nil {
			return nil
		}
		notes, err := o.Restart(vctx, m.Version)
		res.Notes = append(res.Notes, notes...)
		return err
	}); err != nil {
		return res, o.rollback(ctx, t, in, j, &res, withTimeout(vctx, timeout, "restart with the new version", err))
	}
	o.at("restarted")
	var regressions []api.CheckResult
	if err := t.run("doctor", func() error {
		checks, err := RunDoctor(vctx, in.Path("banger"), o.DoctorArgs)
		if err != nil {
			return err
		}
		for _, c := range checks {
			if c.Status == api.Fail && !baseline[c.Name] {
				regressions = append(regressions, c)
			}
		}
		return nil
	}); err != nil {
		return res, o.rollback(ctx, t, in, j, &res, withTimeout(vctx, timeout, "doctor of the new version", err))
	}
	if len(regressions) > 0 {
		res.FailedChecks = regressions
		names := make([]string, len(regressions))
		for i, c := range regressions {
			names[i] = c.Name + ": " + c.Detail
		}
		return res, o.rollback(ctx, t, in, j, &res, "doctor of the new version FAILs: "+strings.Join(names, "; "))
	}
	if err := in.RemoveJournal(); err != nil {
		return res, fmt.Errorf("banger %s is installed and healthy, but removing the update journal failed: %w", m.Version, err)
	}
	in.Cleanup()
	res.Status = "updated"
	return res, nil
}

func withTimeout(ctx context.Context, d time.Duration, what string, err error) string {
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return fmt.Sprintf("%s did not finish within %s (%v)", what, d, err)
	}
	return fmt.Sprintf("%s failed: %v", what, err)
}

// rollback puts the previous binaries back, restarts them, and returns the error to report.
func (o Options) rollback(ctx context.Context, t *stageTimer, in Install, j Journal, res *Result, failure string) error {
	res.Failure = failure
	o.logf("update to %s failed: %s; rolling back to %s", j.To, failure, j.From)
	// A fresh context: the verification's may have expired, and the rollback must finish.
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
	defer cancel()
	var rbErr error
	_ = t.run("rollback", func() error {
		j.Phase = PhaseRollingBack
		if err := in.WriteJournal(j); err != nil {
			rbErr = err
			return err
		}
		_, rbErr = in.Restore(j)
		return rbErr
	})
	if rbErr != nil {
		return fmt.Errorf("update to %s failed (%s) AND restoring %s failed: %v; the journal %s is kept: fix the cause and run `banger doctor` or `banger update` to finish the repair",
			j.To, failure, j.From, rbErr, in.journalPath())
	}
	if o.Restart != nil {
		_ = t.run("restart-previous", func() error {
			notes, err := o.Restart(rctx, j.From)
			res.Notes = append(res.Notes, notes...)
			if err != nil {
				res.Notes = append(res.Notes, fmt.Sprintf("restarting %s after the rollback failed: %v; run `banger daemon restart`", j.From, err))
			}
			return err
		})
	}
	if err := in.RemoveJournal(); err != nil {
		res.Notes = append(res.Notes, "could not remove the update journal: "+err.Error())
	}
	in.Cleanup()
	res.Status = "rolled-back"
	return fmt.Errorf("%w: %s; banger %s is installed again", ErrRolledBack, failure, j.From)
}

// checkStagedVersion runs the staged banger: it must execute here and report want.
func checkStagedVersion(ctx context.Context, bin, want string) error {
	got, err := BinaryVersion(ctx, bin)
	if err != nil {
		return fmt.Errorf("the new banger %v: not installed", err)
	}
	if got != want {
		return fmt.Errorf("the new banger reports version %s, the signed manifest says %s: not installed", got, want)
	}
	return nil
}

// BinaryVersion runs `bin version --json` and returns the version it reports. It never
// talks to a running daemon: the binary is given a runtime dir without a socket, so only
// the binary itself is looked at (the staged update, a release being made).
func BinaryVersion(ctx context.Context, bin string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	out, stderr, err := proc.RunBinary(ctx, bin, []string{"version", "--json"}, []string{"XDG_RUNTIME_DIR=/nonexistent-banger-update"})
	if err != nil {
		return "", fmt.Errorf("does not run here (%v: %s)", err, strings.TrimSpace(string(stderr)))
	}
	var v struct {
		Version string `json:"version"`
	}
	if err := json.Unmarshal(out, &v); err != nil || v.Version == "" {
		return "", fmt.Errorf("printed %q for `version --json`, not a version", out)
	}
	return v.Version, nil
}

// RunDoctor runs `bin doctor --json` and returns its checks. Doctor exits 1 when a check
// FAILs; that is a result, not an error.
func RunDoctor(ctx context.Context, bin string, args []string) ([]api.CheckResult, error) {
	out, stderr, err := proc.RunBinary(ctx, bin, append([]string{"doctor", "--json"}, args...), nil)
	if err != nil && proc.ExitCode(err) != 1 {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, fmt.Errorf("%s doctor: %v: %s", bin, err, strings.TrimSpace(string(stderr)))
	}
	var d struct {
		OK     bool              `json:"ok"`
		Checks []api.CheckResult `json:"checks"`
	}
	if err := json.Unmarshal(out, &d); err != nil {
		return nil, fmt.Errorf("%s doctor --json printed no report (%v): %s", bin, err, strings.TrimSpace(string(stderr)))
	}
	return d.Checks, nil
}

func failing(checks []api.CheckResult) map[string]bool {
	out := map[string]bool{}
	for _, c := range checks {
		if c.Status == api.Fail {
			out[c.Name] = true
		}
	}
	return out
}
