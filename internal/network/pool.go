package network

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/banger-vm/banger/internal/helper"
)

// TAPHelper is the part of the helper the pool needs (a fake in tests).
type TAPHelper interface {
	CreateTAP(ctx context.Context, name, ip string) error
	DeleteTAP(ctx context.Context, name string) error
	List(ctx context.Context) ([]helper.Device, error)
}

// ErrPoolEmpty means no warm TAP was free; the caller may create one on demand.
var ErrPoolEmpty = errors.New("the TAP pool is empty")

// Pool keeps warm TAP devices (tap-pool-N) so starting a VM needs no netlink call: acquiring
// is popping a name under a mutex. The pool's state lives in the kernel, not in a file: the
// free TAPs are the tap-pool-* devices the helper lists that no VM references, so the pool
// survives daemon restarts by construction.
type Pool struct {
	h    TAPHelper
	size int
	log  *slog.Logger

	mu       sync.Mutex
	free     []string
	used     map[string]string // name -> vm id
	creating int
	lastErr  error

	kick chan struct{}
}

// NewPool returns an empty pool that keeps size warm TAPs once Run is going.
func NewPool(h TAPHelper, size int, log *slog.Logger) *Pool {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Pool{h: h, size: max(size, 0), log: log, used: map[string]string{}, kick: make(chan struct{}, 1)}
}

// ReconcileReport says what Reconcile found.
type ReconcileReport struct {
	Free    []string // pool TAPs kept as free capacity
	Kept    []string // TAPs a VM references
	Deleted []string // orphans removed
	Missing []string // referenced TAPs that do not exist (the VM needs a new one)
}

// Reconcile rebuilds the pool from the devices the helper lists. referenced maps TAP name to
// the VM that uses it. Pool TAPs nobody references are free capacity (extra beyond the size
// are deleted); per-VM TAPs nobody references are orphans and are deleted.
func (p *Pool) Reconcile(ctx context.Context, referenced map[string]string) (ReconcileReport, error) {
	var rep ReconcileReport
	devs, err := p.h.List(ctx)
	if err != nil {
		return rep, err
	}
	exists := map[string]bool{}
	var free, orphans []string
	used := map[string]string{}
	for _, d := range devs {
		if !helper.IsTAPName(d.Name) {
			continue
		}
		exists[d.Name] = true
		switch vm, ok := referenced[d.Name]; {
		case ok:
			used[d.Name] = vm
			rep.Kept = append(rep.Kept, d.Name)
		case helper.IsPoolTAP(d.Name):
			free = append(free, d.Name)
		default:
			orphans = append(orphans, d.Name)
		}
	}
	slices.SortFunc(free, func(a, b string) int {
		x, _ := helper.PoolTAPIndex(a)
		y, _ := helper.PoolTAPIndex(b)
		return x - y
	})
	if len(free) > p.size {
		orphans = append(orphans, free[p.size:]...)
		free = free[:p.size]
	}
	var errs []error
	for _, name := range orphans {
		if err := p.h.DeleteTAP(ctx, name); err != nil {
			errs = append(errs, err)
			continue
		}
		rep.Deleted = append(rep.Deleted, name)
	}
	for name := range referenced {
		if !exists[name] {
			rep.Missing = append(rep.Missing, name)
		}
	}
	slices.Sort(rep.Missing)
	rep.Free = slices.Clone(free)
	p.mu.Lock()
	p.free, p.used = free, used
	p.mu.Unlock()
	p.refill()
	return rep, errors.Join(errs...)
}

// Acquire pops a warm TAP for vmID. It never calls the helper; when the pool is empty it
// returns ErrPoolEmpty and wakes the refiller.
func (p *Pool) Acquire(vmID string) (string, error) {
	p.mu.Lock()
	if len(p.free) == 0 {
		p.mu.Unlock()
		p.refill()
		return "", ErrPoolEmpty
	}
	name := p.free[0]
	p.free = p.free[1:]
	p.used[name] = vmID
	p.mu.Unlock()
	p.refill()
	return name, nil
}

// AcquireOrCreate pops a warm TAP, or when none is free creates bgr-<id> through the helper
// (the slow path: a few milliseconds of netlink).
func (p *Pool) AcquireOrCreate(ctx context.Context, vmID, ip string) (string, error) {
	name, err := p.Acquire(vmID)
	if err == nil {
		return name, nil
	}
	name = VMTAPName(vmID)
	if err := p.h.CreateTAP(ctx, name, ip); err != nil {
		return "", err
	}
	p.mu.Lock()
	p.used[name] = vmID
	p.mu.Unlock()
	return name, nil
}

// Release gives a TAP back: a pool TAP goes back to the free list while the pool is below
// its size (it is warm capacity, not a leak); anything else is deleted.
func (p *Pool) Release(ctx context.Context, name string) error {
	p.mu.Lock()
	delete(p.used, name)
	if helper.IsPoolTAP(name) && len(p.free)+p.creating < p.size && !slices.Contains(p.free, name) {
		p.free = append(p.free, name)
		p.mu.Unlock()
		return nil
	}
	p.mu.Unlock()
	return p.h.DeleteTAP(ctx, name)
}

// Level reports free and used TAPs and the target size.
func (p *Pool) Level() (free, used, size int, lastErr error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.free), len(p.used), p.size, p.lastErr
}

// Used returns a copy of the TAPs in use by VM.
func (p *Pool) Used() map[string]string {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make(map[string]string, len(p.used))
	for k, v := range p.used {
		out[k] = v
	}
	return out
}

func (p *Pool) refill() {
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

// Run refills the pool in the background until ctx ends: on every Acquire, and every
// retry interval while the last attempt failed (e.g. the helper was not up yet).
func (p *Pool) Run(ctx context.Context) {
	const retry = 5 * time.Second
	var timer <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-p.kick:
		case <-timer:
		}
		timer = nil
		if err := p.fill(ctx); err != nil && ctx.Err() == nil {
			p.log.Warn("TAP pool refill failed; retrying", "err", err, "in", retry)
			timer = time.After(retry)
		}
	}
}

// fill creates pool TAPs until the pool is at its size.
func (p *Pool) fill(ctx context.Context) error {
	for {
		p.mu.Lock()
		if len(p.free)+p.creating >= p.size {
			p.lastErr = nil
			p.mu.Unlock()
			return nil
		}
		name := p.nextNameLocked()
		p.creating++
		p.mu.Unlock()

		err := p.h.CreateTAP(ctx, name, "")
		p.mu.Lock()
		p.creating--
		if err == nil {
			p.free = append(p.free, name)
		} else {
			p.lastErr = fmt.Errorf("create %s: %w", name, err)
		}
		p.mu.Unlock()
		if err != nil {
			return err
		}
	}
}

// nextNameLocked picks the lowest tap-pool-N not free or in use. Only the single Run loop
// creates, so a name cannot be picked twice.
func (p *Pool) nextNameLocked() string {
	taken := map[string]bool{}
	for _, n := range p.free {
		taken[n] = true
	}
	for n := range p.used {
		taken[n] = true
	}
	for i := 0; ; i++ {
		if name := helper.PoolTAPName(i); !taken[name] {
			return name
		}
	}
}
