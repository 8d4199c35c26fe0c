// Package revert rolls back multi-step operations: each step registers its undo the moment
// its resource exists, and a deferred Fail runs them newest first unless the operation
// reached Success. It follows incus's shared/revert.
package revert

import "sync"

// Reverter collects undo functions. The zero value is ready to use; it is safe for
// concurrent Add calls (steps that run in parallel goroutines).
type Reverter struct {
	mu   sync.Mutex
	fns  []func()
	done bool
}

// New returns an empty Reverter.
func New() *Reverter { return &Reverter{} }

// Add registers f to run on Fail. Undo functions must not fail loudly: they are best
// effort, and log or ignore their own errors.
func (r *Reverter) Add(f func()) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.fns = append(r.fns, f)
}

// Fail runs the registered undo functions, newest first, unless Success was called. It is
// meant to be deferred right after New; running it twice runs nothing the second time.
func (r *Reverter) Fail() {
	r.mu.Lock()
	if r.done {
		r.mu.Unlock()
		return
	}
	r.done = true
	fns := r.fns
	r.fns = nil
	r.mu.Unlock()
	for i := len(fns) - 1; i >= 0; i-- {
		fns[i]()
	}
}

// Success marks the operation complete: a later Fail does nothing.
func (r *Reverter) Success() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.done = true
	r.fns = nil
}
