package store

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"
)

// Many goroutines writing at once (events, images, VMs) while others read:
// writes queue on the single writer connection, so none may fail with
// SQLITE_BUSY or "database is locked", and every row must be there after.
func TestConcurrentWriters(t *testing.T) {
	ctx := context.Background()
	s := openTest(t)
	putImage(t, s, "base", "base")

	const workers, perWorker = 16, 25
	var wg sync.WaitGroup
	errs := make(chan error, workers*perWorker*3)
	ids := make(chan int64, workers*perWorker)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perWorker {
				id, err := s.AppendEvent(ctx, Event{Operation: "load", Subject: fmt.Sprint("w", w), Stage: fmt.Sprint(i)})
				if err != nil {
					errs <- fmt.Errorf("AppendEvent: %w", err)
					continue
				}
				ids <- id
				key := fmt.Sprintf("w%d-%d", w, i)
				if err := s.PutImage(ctx, Image{ID: "img-" + key, Name: "img-" + key}); err != nil {
					errs <- fmt.Errorf("PutImage: %w", err)
				}
				if err := s.PutVM(ctx, VM{ID: "vm-" + key, Name: "vm-" + key, ImageID: "base", State: VMRunning}); err != nil {
					errs <- fmt.Errorf("PutVM: %w", err)
				}
			}
		}()
	}
	// Readers running alongside must not fail either (WAL: readers and the
	// writer do not block each other). They pause between reads: on a
	// 2-core machine readers spinning on CPU-bound queries would only
	// measure the scheduler.
	stop := make(chan struct{})
	var rwg sync.WaitGroup
	for range 2 {
		rwg.Add(1)
		go func() {
			defer rwg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if _, err := s.ListEvents(ctx, EventFilter{Limit: 20}); err != nil {
					errs <- fmt.Errorf("ListEvents: %w", err)
				}
				if _, err := s.GetImage(ctx, "base"); err != nil {
					errs <- fmt.Errorf("GetImage: %w", err)
				}
				time.Sleep(time.Millisecond)
			}
		}()
	}
	wg.Wait()
	close(stop)
	rwg.Wait()
	close(errs)
	close(ids)
	for err := range errs {
		t.Error(err)
	}

	seen := map[int64]bool{}
	for id := range ids {
		if seen[id] {
			t.Fatalf("id %d handed out twice", id)
		}
		seen[id] = true
	}
	evs, err := s.ListEvents(ctx, EventFilter{Operation: "load", Limit: workers * perWorker * 2})
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != workers*perWorker || len(seen) != workers*perWorker {
		t.Fatalf("%d events stored, %d ids returned, want %d", len(evs), len(seen), workers*perWorker)
	}
	for _, e := range evs {
		if !seen[e.ID] {
			t.Fatalf("stored event %d was not returned to any writer", e.ID)
		}
	}
	imgs, _ := s.ListImages(ctx)
	vms, _ := s.ListVMs(ctx)
	if len(imgs) != workers*perWorker+1 || len(vms) != workers*perWorker {
		t.Fatalf("%d images, %d vms; want %d, %d", len(imgs), len(vms), workers*perWorker+1, workers*perWorker)
	}
}

// Two Stores on one file stand in for two processes (say, the daemon and a
// doctor run): then writes are serialized by SQLite's lock, and busy_timeout
// plus BEGIN IMMEDIATE must still keep SQLITE_BUSY away.
func TestTwoStoresOneFile(t *testing.T) {
	ctx := context.Background()
	a := openTest(t)
	b, err := Open(ctx, a.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()

	const n = 100
	var wg sync.WaitGroup
	for _, s := range []*Store{a, b, a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range n {
				if _, err := s.AppendEvent(ctx, Event{Operation: "two", Stage: "x"}); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	evs, err := b.ListEvents(ctx, EventFilter{Operation: "two", Limit: 10 * n})
	if err != nil || len(evs) != 4*n {
		t.Fatalf("%d events, %v; want %d", len(evs), err, 4*n)
	}
}

func BenchmarkAppendEvent(b *testing.B) {
	ctx := context.Background()
	s := openTest(b)
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		if _, err := s.AppendEvent(ctx, Event{Operation: "bench", Subject: "vm1", Stage: "stage"}); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkAppendEventParallel(b *testing.B) {
	ctx := context.Background()
	s := openTest(b)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := s.AppendEvent(ctx, Event{Operation: "bench", Subject: "vm1", Stage: "stage"}); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

func BenchmarkListEvents(b *testing.B) {
	ctx := context.Background()
	s := openTest(b)
	for i := range 5000 {
		if _, err := s.AppendEvent(ctx, Event{Operation: "bench", Subject: fmt.Sprint("vm", i%50), Stage: "stage"}); err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	for b.Loop() {
		evs, err := s.ListEvents(ctx, EventFilter{Subject: "vm7", Limit: 100})
		if err != nil || len(evs) != 100 {
			b.Fatal(len(evs), err)
		}
	}
}
