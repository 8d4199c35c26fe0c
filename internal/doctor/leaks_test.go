package doctor

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/banger-vm/banger/internal/api"
)

func TestLeakChecks(t *testing.T) {
	resp := api.LeaksResponse{
		Leaks: []api.Leak{
			{Kind: api.LeakDir, What: "/d/vms/x", Detail: "VM directory that no VM references", Fix: "rm -rf /d/vms/x", Fixable: true},
			{Kind: api.LeakDir, What: "/d/vms/y", Detail: "VM directory that no VM references", Fix: "rm -rf /d/vms/y", Fixable: true},
			{Kind: api.LeakTAP, What: "tap-pool-9", Detail: "pool TAP beyond network.tap_pool_size = 4", Fix: "restart the daemon"},
		},
		Checked: map[api.LeakKind]int{api.LeakProcess: 3, api.LeakDir: 5},
		Skipped: map[api.LeakKind]string{api.LeakLease: "store is locked"},
	}
	var calls atomic.Int32
	r := NewRegistry(time.Minute)
	RegisterLeakChecks(r, func(context.Context) (api.LeaksResponse, error) {
		calls.Add(1)
		return resp, nil
	})
	if got := strings.Join(r.Names(), ","); got != strings.Join(LeakCheckNames(), ",") || len(r.Names()) != len(api.LeakKinds()) {
		t.Fatalf("registered %s", got)
	}
	res := map[string]api.CheckResult{}
	for _, c := range r.Run(context.Background()) {
		res[c.Name] = c
	}
	if n := calls.Load(); n != 1 {
		t.Errorf("the daemon was asked %d times, want once per run", n)
	}
	if c := res["leaks-processes"]; c.Status != api.Pass || !strings.Contains(c.Detail, "3 checked") {
		t.Errorf("processes: %+v", c)
	}
	dirs := res["leaks-vm-dirs"]
	if dirs.Status != api.Fail || !strings.Contains(dirs.Detail, "2 unreferenced") || !strings.Contains(dirs.Detail, "/d/vms/y") ||
		!strings.Contains(dirs.Hint, "rm -rf /d/vms/x") || !strings.Contains(dirs.Hint, "--fix") {
		t.Errorf("dirs: %+v", dirs)
	}
	if taps := res["leaks-taps"]; taps.Status != api.Fail || strings.Contains(taps.Hint, "--fix") || !strings.Contains(taps.Hint, "restart the daemon") {
		t.Errorf("taps (not fixable): %+v", taps)
	}
	if l := res["leaks-leases"]; l.Status != api.Warn || !strings.Contains(l.Detail, "store is locked") {
		t.Errorf("leases (skipped): %+v", l)
	}
	if !Failed(r.Run(context.Background())) {
		t.Error("leaks do not fail the doctor run")
	}
}

func TestLeakChecksWithoutDaemonFail(t *testing.T) {
	r := NewRegistry(time.Minute)
	RegisterLeakChecks(r, func(context.Context) (api.LeaksResponse, error) {
		return api.LeaksResponse{}, errors.New("no banger daemon is running")
	})
	for _, c := range r.Run(context.Background()) {
		if c.Status != api.Fail || !strings.Contains(c.Detail, "no banger daemon") {
			t.Errorf("%s: %+v", c.Name, c)
		}
	}
}

func TestFixSummary(t *testing.T) {
	got := FixSummary(api.LeaksResponse{Fixed: []api.Leak{{Kind: api.LeakSocket, What: "/r/v/a/qmp.sock", Detail: "socket"}}, FixErrors: []string{"tap bgr-1: helper said no"}})
	if len(got) != 2 || !strings.HasPrefix(got[0], "removed socket /r/v/a/qmp.sock") || !strings.HasPrefix(got[1], "could not remove tap bgr-1") {
		t.Fatalf("summary = %q", got)
	}
}
