package doctor

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/banger-vm/banger/internal/api"
	"github.com/banger-vm/banger/internal/buildinfo"
	"github.com/banger-vm/banger/internal/paths"
	"github.com/banger-vm/banger/internal/update"
)

// registerUpdateChecks adds the check that finds and repairs an interrupted `banger
// update`, and, only in test builds made with the doctor-fail hook, a check that always
// FAILs (the update tests use it to force a rollback).
func registerUpdateChecks(r *Registry) {
	r.Register("update", func(context.Context) api.CheckResult {
		exe, err := os.Executable()
		if err != nil {
			return Warnf("", "cannot find the banger executable to look for an interrupted update: %v", err)
		}
		return updateCheck(exe, paths.EnvFromOS(), buildinfo.Version())
	})
	if buildinfo.TestHook("doctor-fail") {
		r.Register("update-test-fail", func(context.Context) api.CheckResult {
			return Failf("this binary is a test build: never install it", "built with the doctor-fail test hook")
		})
	}
}

// updateCheck repairs what an interrupted update left in the install of exe; running is the
// version of the process running the check (the daemon's), to tell when it must restart.
func updateCheck(exe string, env paths.Env, running string) api.CheckResult {
	installs, err := update.Existing(exe, env)
	if err != nil {
		return Warnf("", "cannot look for an interrupted update: %v", err)
	}
	var done []string
	for _, in := range installs {
		if unix.Access(in.Staging, unix.W_OK) != nil {
			// A system install seen by its user: look, but the repair is root's job.
			j, ok, err := in.ReadJournal()
			if err != nil || ok {
				what := "an interrupted update"
				if ok {
					what = fmt.Sprintf("an interrupted update %s -> %s", j.From, j.To)
				}
				return Warnf("run `sudo banger update` (or `sudo banger doctor`) to repair it", "%s of %s is pending repair (%s is not writable by you)", what, in.Dir, in.Staging)
			}
			continue
		}
		rep, err := update.Repair(in)
		if err != nil {
			return Failf("run `banger update` to retry the repair; if it fails again, reinstall banger (scripts/quickstart.sh)",
				"an interrupted update in %s could not be repaired: %v", in.Dir, err)
		}
		if rep.InProgress {
			return Pass("an update of %s is in progress", in.Dir)
		}
		if rep.Interrupted != nil {
			hint := ""
			if running != rep.Interrupted.From {
				hint = "the daemon still runs " + running + ": restart it with `banger daemon restart`"
			}
			return Warnf(hint, "repaired an interrupted update %s -> %s: %s", rep.Interrupted.From, rep.Interrupted.To, strings.Join(rep.Actions, "; "))
		}
		done = append(done, rep.Actions...)
	}
	if len(done) > 0 {
		return Pass("removed %d leftover file(s) of an earlier update", len(done))
	}
	return Pass("no interrupted update (%s)", filepath.Dir(exe))
}
