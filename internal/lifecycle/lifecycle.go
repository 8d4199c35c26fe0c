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
	AppendEvent(ctx context.Context, e store.Event) (int64, error)
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
}

// New returns a recorder; sink may be nil until the store is open (see Attach).
func New(operation, subject string, log *slog.Logger, sink Sink) *Recorder {
	return &Recorder{operation: operation, subject: subject, log: log, sink: sink}
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
	r.mu.Unlock()
	r.flush(ctx)
	return err
}

// Attach sets the sink and writes the stages recorded before it existed (such as opening
// the store itself).
func (r *Recorder) Attach(ctx context.Context, sink Sink) {
	r.mu.Lock()
	r.sink = sink
	r.mu.Unlock()
	r.flush(ctx)
}

// flush persists pending stages. A failure to store timing must not fail the operation it
// measures, so it is only logged.
func (r *Recorder) flush(ctx context.Context) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.sink == nil {
		return
	}
	for ; r.flushed < len(r.stages); r.flushed++ {
		if _, err := r.sink.AppendEvent(ctx, r.stages[r.flushed]); err != nil {
			r.log.WarnContext(ctx, "could not record lifecycle stage", "stage", r.stages[r.flushed].Stage, "err", err)
			return
		}
	}
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
