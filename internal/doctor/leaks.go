package doctor

import (
	"context"
	"fmt"
	"strings"
	"sync"

	"github.com/banger-vm/banger/internal/api"
)

// LeakSource returns what the daemon found leaked (a scan, or a fix and a scan).
type LeakSource func(ctx context.Context) (api.LeaksResponse, error)

// leakCheck is one leak check: the kind it reports and what a finding of it is called.
type leakCheck struct {
	kind api.LeakKind
	name string
	what string
}

var leakChecks = []leakCheck{
	{api.LeakProcess, "leaks-processes", "stray VMM processes"},
	{api.LeakSocket, "leaks-sockets", "stray sockets"},
	{api.LeakDir, "leaks-vm-dirs", "unreferenced VM directories"},
	{api.LeakLease, "leaks-leases", "leases without a VM"},
	{api.LeakTAP, "leaks-taps", "TAPs beyond the pool"},
	{api.LeakStaging, "leaks-staging", "leftover staging files"},
}

// LeakCheckNames lists the names RegisterLeakChecks registers, in order.
func LeakCheckNames() []string {
	out := make([]string, len(leakChecks))
	for i, c := range leakChecks {
		out[i] = c.name
	}
	return out
}

// RegisterLeakChecks adds one check per leak kind. They share one call of src per Run of
// the registry's checks (the first check to run makes it). A leak is a FAIL whose hint
// says how to clean it; a kind that could not be checked is a WARN.
func RegisterLeakChecks(r *Registry, src LeakSource) {
	var mu sync.Mutex
	var done bool
	var resp api.LeaksResponse
	var srcErr error
	get := func(ctx context.Context) (api.LeaksResponse, error) {
		mu.Lock()
		defer mu.Unlock()
		if !done {
			resp, srcErr = src(ctx)
			done = true
		}
		return resp, srcErr
	}
	for _, c := range leakChecks {
		r.Register(c.name, func(ctx context.Context) api.CheckResult {
			resp, err := get(ctx)
			if err != nil {
				return Failf("see the daemon log; the leak check needs a running daemon (`banger daemon start`)", "could not check: %v", err)
			}
			return LeakResult(c.kind, c.what, resp)
		})
	}
}

// LeakResult is the verdict on one kind of leak.
func LeakResult(kind api.LeakKind, what string, resp api.LeaksResponse) api.CheckResult {
	if why, ok := resp.Skipped[kind]; ok {
		return Warnf("fix what stops the check, then run it again", "not checked: %s", why)
	}
	var found []api.Leak
	for _, l := range resp.Leaks {
		if l.Kind == kind {
			found = append(found, l)
		}
	}
	if len(found) == 0 {
		return Pass("no %s (%d checked)", what, resp.Checked[kind])
	}
	details := make([]string, len(found))
	fixes := make([]string, 0, len(found))
	fixable := false
	for i, l := range found {
		details[i] = l.What + ": " + l.Detail
		if l.Fix != "" && !contains(fixes, l.Fix) {
			fixes = append(fixes, l.Fix)
		}
		fixable = fixable || l.Fixable
	}
	hint := strings.Join(fixes, "; ")
	if fixable {
		hint += "; or run `banger doctor --leaks --fix`"
	}
	return Failf(hint, "%d %s: %s", len(found), what, strings.Join(details, "; "))
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// FixSummary is one line per leak a fix removed or could not remove.
func FixSummary(resp api.LeaksResponse) []string {
	var out []string
	for _, l := range resp.Fixed {
		out = append(out, fmt.Sprintf("removed %s %s (%s)", l.Kind, l.What, l.Detail))
	}
	for _, e := range resp.FixErrors {
		out = append(out, "could not remove "+e)
	}
	return out
}
