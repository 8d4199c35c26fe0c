package network

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/banger-vm/banger/internal/helper"
)

// realHelper starts a helper server working inside a fresh network namespace (so the host
// is untouched) and returns a client of it. Root only.
func realHelper(b testing.TB) *Client {
	b.Helper()
	if os.Geteuid() != 0 {
		b.Skip("skipped: needs root to run the helper in a test network namespace (CI runs this as root)")
	}
	nsCh := make(chan netns.NsHandle, 1)
	errCh := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: this thread is discarded, not reused
		ns, err := netns.New()
		nsCh <- ns
		errCh <- err
	}()
	ns, err := <-nsCh, <-errCh
	if err != nil {
		b.Fatalf("create network namespace: %v", err)
	}
	b.Cleanup(func() { _ = ns.Close() })
	ops, err := helper.NewOps(helper.NetConfig{OwnerUID: os.Getuid(), Bridge: "banger0",
		Subnet: netip.MustParsePrefix("10.213.66.0/24"), IsolateVMs: true}, ns)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = ops.Teardown(); ops.Close() })
	dir, err := os.MkdirTemp("", "banger-net-bench-")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = os.RemoveAll(dir) })
	socket := filepath.Join(dir, "helper.sock")
	srv, err := helper.Listen(socket, ops, nil)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = srv.Serve(ctx); close(done) }()
	b.Cleanup(func() { cancel(); <-done })
	c := NewClient(socket)
	if err := c.EnsureBridge(context.Background()); err != nil {
		b.Fatal(err)
	}
	return c
}

func reportMedian(b *testing.B, samples []time.Duration) {
	slices.Sort(samples)
	b.ReportMetric(float64(samples[len(samples)/2].Nanoseconds())/1e3, "median-µs")
}

// BenchmarkTAPAcquire compares taking a warm TAP from the pool with creating one on demand
// through the helper (socket round trip + TUNSETIFF + netlink attach/isolate/up).
func BenchmarkTAPAcquire(b *testing.B) {
	c := realHelper(b)
	ctx := context.Background()
	b.Run("pool", func(b *testing.B) {
		p := NewPool(c, 4, nil)
		if _, err := p.Reconcile(ctx, nil); err != nil {
			b.Fatal(err)
		}
		if err := p.fill(ctx); err != nil {
			b.Fatal(err)
		}
		samples := make([]time.Duration, 0, b.N)
		b.ResetTimer()
		for range b.N {
			t0 := time.Now()
			name, err := p.Acquire("vm")
			samples = append(samples, time.Since(t0))
			if err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			if err := p.Release(ctx, name); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
		}
		b.StopTimer()
		reportMedian(b, samples)
	})
	b.Run("on-demand", func(b *testing.B) {
		samples := make([]time.Duration, 0, b.N)
		b.ResetTimer()
		for range b.N {
			t0 := time.Now()
			err := c.CreateTAP(ctx, "bgr-bench", "")
			samples = append(samples, time.Since(t0))
			if err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			if err := c.DeleteTAP(ctx, "bgr-bench"); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
		}
		b.StopTimer()
		reportMedian(b, samples)
	})
}

// TestPoolWithRealHelper: warm-up, acquire, release and a restart (a new Pool over the same
// devices) against the real helper in a namespace.
func TestPoolWithRealHelper(t *testing.T) {
	c := realHelper(t)
	ctx := context.Background()
	p := NewPool(c, 3, nil)
	if _, err := p.Reconcile(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if err := p.fill(ctx); err != nil {
		t.Fatal(err)
	}
	held, err := p.Acquire("vm-a")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.CreateTAP(ctx, "bgr-orphan", ""); err != nil {
		t.Fatal(err)
	}
	// "Restart": a fresh pool learns the state from the devices alone.
	p2 := NewPool(c, 3, nil)
	rep, err := p2.Reconcile(ctx, map[string]string{held: "vm-a"})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Free) != 2 || !slices.Equal(rep.Kept, []string{held}) || !slices.Equal(rep.Deleted, []string{"bgr-orphan"}) {
		t.Fatalf("restart reconcile = %+v", rep)
	}
	devs, err := c.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range devs {
		if d.Name == "bgr-orphan" {
			t.Fatal("orphan survived reconciliation")
		}
	}
}
