// Package doctor is a registry of host and daemon health checks. Each check answers PASS,
// WARN or FAIL with one line of detail and, when it is not a PASS, a hint that says how to
// fix it. Later subsystems register their own checks.
package doctor

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/banger-vm/banger/internal/api"
)

// CheckFunc runs one check. It should honour ctx and return quickly.
type CheckFunc func(ctx context.Context) api.CheckResult

type check struct {
	name string
	run  CheckFunc
}

// Registry holds checks in registration order.
type Registry struct {
	checks  []check
	timeout time.Duration
}

// NewRegistry returns an empty registry whose checks each get timeout to finish.
func NewRegistry(timeout time.Duration) *Registry {
	if timeout <= 0 {
		timeout = 30 * time.Second
	}
	return &Registry{timeout: timeout}
}

// Register adds a check; names must be unique.
func (r *Registry) Register(name string, fn CheckFunc) {
	for _, c := range r.checks {
		if c.name == name {
			panic(fmt.Sprintf("doctor: check %q registered twice", name))
		}
	}
	r.checks = append(r.checks, check{name: name, run: fn})
}

// Names lists the registered checks.
func (r *Registry) Names() []string {
	out := make([]string, len(r.checks))
	for i, c := range r.checks {
		out[i] = c.name
	}
	return out
}

// Run runs the checks concurrently (some probe slow tools) and returns results in
// registration order. A check that panics or overruns its deadline is a FAIL, not a crash
// or a hang.
func (r *Registry) Run(ctx context.Context) []api.CheckResult {
	results := make([]api.CheckResult, len(r.checks))
	var wg sync.WaitGroup
	for i, c := range r.checks {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = r.runOne(ctx, c)
		}()
	}
	wg.Wait()
	return results
}

func (r *Registry) runOne(ctx context.Context, c check) api.CheckResult {
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	done := make(chan api.CheckResult, 1)
	go func() {
		defer func() {
			if p := recover(); p != nil {
				done <- api.CheckResult{Status: api.Fail, Detail: fmt.Sprintf("check crashed: %v", p), Hint: "this is a bug in banger; please report it"}
			}
		}()
		done <- c.run(ctx)
	}()
	var res api.CheckResult
	select {
	case res = <-done:
	case <-ctx.Done():
		res = api.CheckResult{Status: api.Fail, Detail: fmt.Sprintf("check did not finish within %s", r.timeout), Hint: "something on the host is hanging; rerun with log_level = \"debug\""}
	}
	res.Name = c.name
	if res.Status == "" {
		res.Status = api.Fail
		res.Detail = "check returned no verdict"
	}
	return res
}

// Failed reports whether any result is a FAIL.
func Failed(results []api.CheckResult) bool {
	for _, r := range results {
		if r.Status == api.Fail {
			return true
		}
	}
	return false
}

// Pass, Warnf and Failf build results tersely.
func Pass(format string, args ...any) api.CheckResult {
	return api.CheckResult{Status: api.Pass, Detail: fmt.Sprintf(format, args...)}
}

func Warnf(hint, format string, args ...any) api.CheckResult {
	return api.CheckResult{Status: api.Warn, Detail: fmt.Sprintf(format, args...), Hint: hint}
}

func Failf(hint, format string, args ...any) api.CheckResult {
	return api.CheckResult{Status: api.Fail, Detail: fmt.Sprintf(format, args...), Hint: hint}
}
