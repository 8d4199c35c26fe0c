// Package lifecycle records the named, timed stages of a multi-step operation, so every
// operation can report "preparing work disk 12 ms, starting vmm 40 ms, ..." the same way:
// each stage is logged, stored, and handed back to the API caller.
package lifecycle

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/banger-vm/banger/internal/api"
	"github.com/banger-vm/banger/internal/store"
)

// Sink persists stages; *store.Store is one.
type Sink interface {
	AppendEvents(ctx context.Context, evs []store.Event) ([]int64, error)
}

// Recorder times the stages of one operation on one subject.
type Recorder struct {
	operation string
	subject   string
	log       *slog.Logger

	mu      sync.Mutex
	sink    Sink
	stages  []store.Event
	flushed int
	// deferred: stages are stored by Flush, in one write, not each as it ends.
	deferred bool
}

// New returns a recorder; sink may be nil until the store is open (see Attach).
func New(operation, subject string, log *slog.Logger, sink Sink) *Recorder {
	return &Recorder{operation: operation, subject: subject, log: log, sink: sink}
}

// Deferred makes r keep its stages until Flush stores them in one write: for operations on
// the hot path (a VM start), where a store transaction per stage is a cost of its own. The
// stages are logged as they end either way.
func (r *Recorder) Deferred() *Recorder {
	r.deferred = true
	return r
}

// Run times fn as the named stage and records it, whether it fails or not.
func (r *Recorder) Run(ctx context.Context, stage string, fn func(context.Context) error) error {
	start := time.Now()
	err := fn(ctx)
	e := store.Event{At: start, Operation: r.operation, Subject: r.subject, Stage: stage, Duration: time.Since(start)}
	if err != nil {
		e.Error = err.Error()
	}
	attrs := []any{"operation", r.operation, "subject", r.subject, "stage", stage, "duration", e.Duration.Round(time.Microsecond)}
	if err != nil {
		r.log.WarnContext(ctx, "stage failed", append(attrs, "err", err)...)
	} else {
		r.log.InfoContext(ctx, "stage done", attrs...)
	}
	r.mu.Lock()
	r.stages = append(r.stages, e)
	deferred := r.deferred
	r.mu.Unlock()
	if !deferred {
		r.Flush(ctx)
	}
	return err
}

// Attach sets the sink and writes the stages recorded before it existed (such as opening
// the store itself).
func (r *Recorder) Attach(ctx context.Context, sink Sink) {
	r.mu.Lock()
	r.sink = sink
	r.mu.Unlock()
	r.Flush(ctx)
}

// Flush persists the pending stages in one write. A failure to store timing must not fail
// the operation it measures, so it is only logged.
func (r *Recorder) Flush(ctx context.Context) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.sink == nil || r.flushed == len(r.stages) {
		return
	}
	if _, err := r.sink.AppendEvents(ctx, r.stages[r.flushed:]); err != nil {
		r.log.WarnContext(ctx, "could not record lifecycle stages", "operation", r.operation, "err", err)
		return
	}
	r.flushed = len(r.stages)
}

// Stages returns the stages so far, in API form.
func (r *Recorder) Stages() []api.Stage {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]api.Stage, len(r.stages))
	for i, e := range r.stages {
		out[i] = api.Stage{Name: e.Stage, DurationMS: Millis(e.Duration), Error: e.Error}
	}
	return out
}

// Millis converts a duration to fractional milliseconds for display and JSON.
func Millis(d time.Duration) float64 {
	return float64(d.Microseconds()) / 1000
}

// EventToAPI converts a stored event to its wire form.
func EventToAPI(e store.Event) api.Event {
	return api.Event{ID: e.ID, At: e.At, Operation: e.Operation, Subject: e.Subject, Stage: e.Stage, DurationMS: Millis(e.Duration), Error: e.Error}
}
