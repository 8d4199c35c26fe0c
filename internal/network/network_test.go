package network

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/banger-vm/banger/internal/helper"
	"github.com/banger-vm/banger/internal/store"
)

// fakeHelper keeps devices in memory; it counts calls so tests can prove Acquire makes none.
type fakeHelper struct {
	mu      sync.Mutex
	devs    map[string]bool
	calls   int
	failing bool
}

func newFake(names ...string) *fakeHelper {
	f := &fakeHelper{devs: map[string]bool{}}
	for _, n := range names {
		f.devs[n] = true
	}
	return f
}

func (f *fakeHelper) CreateTAP(_ context.Context, name, _ string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	if f.failing {
		return fmt.Errorf("helper down")
	}
	if !helper.IsTAPName(name) {
		return fmt.Errorf("bad name %q", name)
	}
	f.devs[name] = true
	return nil
}

func (f *fakeHelper) DeleteTAP(_ context.Context, name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	delete(f.devs, name)
	return nil
}

func (f *fakeHelper) List(context.Context) ([]helper.Device, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	var out []helper.Device
	for n := range f.devs {
		out = append(out, helper.Device{Name: n, Kind: "tuntap"})
	}
	return out, nil
}

func (f *fakeHelper) names() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for n := range f.devs {
		out = append(out, n)
	}
	slices.Sort(out)
	return out
}

func runPool(t *testing.T, p *Pool) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { p.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
}

func waitLevel(t *testing.T, p *Pool, want int) {
	t.Helper()
	// Well past the pool's 5 s retry interval: this is a hang guard, and recovery after a
	// helper outage waits for one retry.
	deadline := time.Now().Add(20 * time.Second)
	for {
		free, _, _, err := p.Level()
		if free == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("pool has %d free, want %d (last error %v)", free, want, err)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestConcurrentAcquiresNeverShareATAP(t *testing.T) {
	f := newFake()
	p := NewPool(f, 8, nil)
	runPool(t, p)
	if _, err := p.Reconcile(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	waitLevel(t, p, 8)

	const workers, each = 16, 20
	var mu sync.Mutex
	holders := map[string]string{}
	var wg sync.WaitGroup
	errs := make(chan error, workers*each)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				vm := fmt.Sprintf("vm%d-%d", w, i)
				name, err := p.AcquireOrCreate(context.Background(), vm, "")
				if err != nil {
					errs <- err
					return
				}
				mu.Lock()
				if other, dup := holders[name]; dup {
					errs <- fmt.Errorf("%s handed to %s while %s holds it", name, vm, other)
				}
				holders[name] = vm
				mu.Unlock()
				time.Sleep(50 * time.Microsecond)
				mu.Lock()
				delete(holders, name)
				mu.Unlock()
				if err := p.Release(context.Background(), name); err != nil {
					errs <- err
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestAcquireIsAPopWithoutHelperCalls(t *testing.T) {
	f := newFake("tap-pool-0", "tap-pool-1")
	p := NewPool(f, 2, nil)
	if _, err := p.Reconcile(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	before := f.calls
	f.mu.Unlock()
	a, err1 := p.Acquire("vm1")
	b, err2 := p.Acquire("vm2")
	if err1 != nil || err2 != nil || a == b {
		t.Fatalf("acquire: %q %v, %q %v", a, err1, b, err2)
	}
	if _, err := p.Acquire("vm3"); err != ErrPoolEmpty {
		t.Fatalf("third acquire = %v, want ErrPoolEmpty", err)
	}
	f.mu.Lock()
	after := f.calls
	f.mu.Unlock()
	if after != before {
		t.Errorf("Acquire called the helper %d times", after-before)
	}
}

func TestRefillAfterDepletion(t *testing.T) {
	f := newFake()
	p := NewPool(f, 3, nil)
	runPool(t, p)
	if _, err := p.Reconcile(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	waitLevel(t, p, 3)
	var got []string
	for i := range 3 {
		name, err := p.Acquire(fmt.Sprint("vm", i))
		if err != nil {
			// The refiller may be mid-way; an empty pool is allowed, a duplicate is not.
			continue
		}
		got = append(got, name)
	}
	waitLevel(t, p, 3)
	if _, used, _, _ := p.Level(); used != len(got) {
		t.Errorf("used = %d, want %d", used, len(got))
	}
	if n := len(f.names()); n != 3+len(got) {
		t.Errorf("devices = %v, want %d", f.names(), 3+len(got))
	}
	// A helper outage is reported, and the pool recovers when it comes back.
	f.mu.Lock()
	f.failing = true
	f.mu.Unlock()
	for i := range 3 {
		_, _ = p.Acquire(fmt.Sprint("more", i))
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, _, _, err := p.Level(); err != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("refill failure not reported by Level")
		}
		time.Sleep(time.Millisecond)
	}
	f.mu.Lock()
	f.failing = false
	f.mu.Unlock()
	waitLevel(t, p, 3) // the retry timer (5 s) brings it back
}

func TestRestartReconciliationRemovesOrphansAndKeepsLeasedTAPs(t *testing.T) {
	// As left by a previous daemon: pool TAPs (two in use by VMs), per-VM TAPs of a live and
	// of a deleted VM, more free pool TAPs than the pool size.
	f := newFake("tap-pool-0", "tap-pool-1", "tap-pool-2", "tap-pool-3", "tap-pool-4", "bgr-live", "bgr-gone")
	p := NewPool(f, 2, nil)
	rep, err := p.Reconcile(context.Background(), map[string]string{
		"tap-pool-1": "vm-a", "bgr-live": "vm-b", "tap-pool-9": "vm-c",
	})
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(rep.Kept)
	slices.Sort(rep.Deleted)
	if !slices.Equal(rep.Kept, []string{"bgr-live", "tap-pool-1"}) || !slices.Equal(rep.Free, []string{"tap-pool-0", "tap-pool-2"}) ||
		!slices.Equal(rep.Deleted, []string{"bgr-gone", "tap-pool-3", "tap-pool-4"}) || !slices.Equal(rep.Missing, []string{"tap-pool-9"}) {
		t.Fatalf("report = %+v", rep)
	}
	if got := f.names(); !slices.Equal(got, []string{"bgr-live", "tap-pool-0", "tap-pool-1", "tap-pool-2"}) {
		t.Fatalf("devices after reconcile = %v", got)
	}
	if u := p.Used(); u["tap-pool-1"] != "vm-a" || u["bgr-live"] != "vm-b" {
		t.Errorf("used = %v", u)
	}
	// Releasing: a pool TAP goes back (pool is full at 2 free: it is deleted, not kept as
	// excess), a per-VM TAP is always deleted.
	if err := p.Release(context.Background(), "bgr-live"); err != nil {
		t.Fatal(err)
	}
	if err := p.Release(context.Background(), "tap-pool-1"); err != nil {
		t.Fatal(err)
	}
	if got := f.names(); !slices.Equal(got, []string{"tap-pool-0", "tap-pool-2"}) {
		t.Errorf("devices after release = %v", got)
	}
}

func TestMACAndTAPNames(t *testing.T) {
	a, b := MACFor("vm-1"), MACFor("vm-2")
	if a.String() != MACFor("vm-1").String() || a.String() == b.String() {
		t.Fatalf("MACs %s %s", a, b)
	}
	if a[0] != 0x02 {
		t.Errorf("MAC %s is not locally administered unicast", a)
	}
	for _, id := range []string{"01HXYZABCDEF0123", "My_VM!", "---"} {
		if n := VMTAPName(id); !helper.IsVMTAP(n) {
			t.Errorf("VMTAPName(%q) = %q is not a banger TAP name", id, n)
		}
	}
}

func TestGuestDNS(t *testing.T) {
	dir := t.TempDir()
	stub := filepath.Join(dir, "stub")
	up := filepath.Join(dir, "up")
	_ = os.WriteFile(stub, []byte("# systemd-resolved stub\nnameserver 127.0.0.53\noptions edns0\n"), 0o644)
	_ = os.WriteFile(up, []byte("nameserver 192.0.2.53\nnameserver ::1\nnameserver 2001:db8::53\nsearch lan\n"), 0o644)
	got, err := guestDNS(nil, []string{stub, up})
	if err != nil || len(got) != 2 || got[0].String() != "192.0.2.53" || got[1].String() != "2001:db8::53" {
		t.Fatalf("guestDNS = %v, %v", got, err)
	}
	if _, err := guestDNS(nil, []string{stub}); err == nil || !strings.Contains(err.Error(), "[network] dns") {
		t.Fatalf("only a stub: %v", err)
	}
	if got, err := guestDNS([]string{"9.9.9.9"}, []string{up}); err != nil || got[0].String() != "9.9.9.9" {
		t.Fatalf("configured: %v %v", got, err)
	}
}

func openStore(t *testing.T) *store.Store {
	t.Helper()
	ctx := context.Background()
	st, err := store.Open(ctx, filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	if err := st.PutImage(ctx, store.Image{ID: "img", Name: "img"}); err != nil {
		t.Fatal(err)
	}
	return st
}

func addVM(t *testing.T, st *store.Store, id string) {
	t.Helper()
	if err := st.PutVM(context.Background(), store.VM{ID: id, Name: id, ImageID: "img", State: store.VMCreated, VMM: "qemu"}); err != nil {
		t.Fatal(err)
	}
}

func TestLeasesAllocateReleaseReconcile(t *testing.T) {
	ctx := context.Background()
	st := openStore(t)
	subnet := netip.MustParsePrefix("10.213.66.0/29") // hosts .2-.6 for guests
	al, err := NewAllocator(st, subnet, nil)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	ips := make([]netip.Addr, 5)
	errs := make([]error, 5)
	for i := range 5 {
		addVM(t, st, fmt.Sprint("vm", i))
		wg.Add(1)
		go func() {
			defer wg.Done()
			l, err := al.Allocate(ctx, fmt.Sprint("vm", i))
			ips[i], errs[i] = l.IP, err
		}()
	}
	wg.Wait()
	seen := map[netip.Addr]bool{}
	for i, ip := range ips {
		if errs[i] != nil {
			t.Fatalf("allocate vm%d: %v", i, errs[i])
		}
		if seen[ip] || helper.ValidGuestIP(subnet, ip) != nil {
			t.Fatalf("vm%d got %s (duplicate or invalid): %v", i, ip, ips)
		}
		seen[ip] = true
	}
	again, err := al.Allocate(ctx, "vm0")
	if err != nil || again.IP != ips[0] || again.Gateway.String() != "10.213.66.1" || again.MAC != MACFor("vm0").String() {
		t.Fatalf("allocate is not idempotent: %+v %v", again, err)
	}
	addVM(t, st, "vm5")
	if _, err := al.Allocate(ctx, "vm5"); err == nil || !strings.Contains(err.Error(), "no free guest address") {
		t.Fatalf("full subnet: %v", err)
	}
	if err := al.Release(ctx, "vm3"); err != nil {
		t.Fatal(err)
	}
	if l, err := al.Allocate(ctx, "vm5"); err != nil || l.IP != ips[3] {
		t.Fatalf("released address not reused: %+v %v", l, err)
	}
	// The subnet changes: every lease is outside it and is released at start.
	al2, _ := NewAllocator(st, netip.MustParsePrefix("10.213.67.0/24"), nil)
	moved, err := al2.Reconcile(ctx)
	if err != nil || len(moved) != 5 {
		t.Fatalf("reconcile moved %d (%v), want 5", len(moved), err)
	}
	if left, _ := st.ListLeases(ctx); len(left) != 0 {
		t.Errorf("leases left: %v", left)
	}
}
