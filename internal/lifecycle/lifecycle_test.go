package lifecycle

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/banger-vm/banger/internal/store"
)

type failingSink struct{ calls int }

func (f *failingSink) AppendEvents(context.Context, []store.Event) ([]int64, error) {
	f.calls++
	return nil, errors.New("disk full")
}

func TestStagesAreTimedLoggedStoredAndReturned(t *testing.T) {
	ctx := context.Background()
	st, err := store.Open(ctx, filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	var logs bytes.Buffer
	r := New("vm.create", "vm-1", slog.New(slog.NewTextHandler(&logs, nil)), nil)

	// Before a sink is attached, stages are kept and written on Attach.
	if err := r.Run(ctx, "open store", func(context.Context) error { time.Sleep(2 * time.Millisecond); return nil }); err != nil {
		t.Fatal(err)
	}
	r.Attach(ctx, st)
	boom := errors.New("no space left on device")
	if err := r.Run(ctx, "preparing work disk", func(context.Context) error { return boom }); !errors.Is(err, boom) {
		t.Fatalf("Run returned %v, want the stage's own error", err)
	}

	stages := r.Stages()
	if len(stages) != 2 || stages[0].Name != "open store" || stages[0].DurationMS < 2 || stages[1].Error != boom.Error() {
		t.Fatalf("stages = %+v", stages)
	}
	events, err := st.ListEvents(ctx, store.EventFilter{Subject: "vm-1"})
	if err != nil {
		t.Fatal(err)
	}
	if len(events) != 2 || events[0].Stage != "open store" || events[0].Operation != "vm.create" ||
		events[0].Duration < 2*time.Millisecond || events[1].Error != boom.Error() {
		t.Fatalf("stored events = %+v", events)
	}
	if api := EventToAPI(events[0]); api.DurationMS < 2 || api.Stage != "open store" {
		t.Fatalf("EventToAPI = %+v", api)
	}
	for _, want := range []string{"stage=\"open store\"", "stage failed", "no space left on device"} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("log lacks %q:\n%s", want, logs.String())
		}
	}
}

func TestSinkFailureDoesNotFailTheOperation(t *testing.T) {
	var logs bytes.Buffer
	sink := &failingSink{}
	r := New("image.pull", "debian", slog.New(slog.NewTextHandler(&logs, nil)), sink)
	if err := r.Run(context.Background(), "download", func(context.Context) error { return nil }); err != nil {
		t.Fatalf("a sink failure leaked into the operation: %v", err)
	}
	if sink.calls != 1 || !strings.Contains(logs.String(), "could not record lifecycle stages") {
		t.Fatalf("calls=%d log=%s", sink.calls, logs.String())
	}
	if len(r.Stages()) != 1 {
		t.Fatal("stage lost from the in-memory record")
	}
}

// A deferred recorder stores nothing until Flush, then every stage in one write.
func TestDeferredRecorderStoresOnFlush(t *testing.T) {
	ctx := context.Background()
	st, err := store.Open(ctx, filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	r := New("vm.start", "vm-2", slog.New(slog.DiscardHandler), st).Deferred()
	for _, name := range []string{"network", "vmm", "agent"} {
		if err := r.Run(ctx, name, func(context.Context) error { return nil }); err != nil {
			t.Fatal(err)
		}
	}
	events := func() []store.Event {
		evs, err := st.ListEvents(ctx, store.EventFilter{Subject: "vm-2"})
		if err != nil {
			t.Fatal(err)
		}
		return evs
	}
	if n := len(events()); n != 0 {
		t.Fatalf("%d events stored before Flush", n)
	}
	r.Flush(ctx)
	r.Flush(ctx) // nothing new: nothing written twice
	evs := events()
	if len(evs) != 3 || evs[0].Stage != "network" || evs[2].Stage != "agent" {
		t.Fatalf("after Flush: %+v", evs)
	}
}
