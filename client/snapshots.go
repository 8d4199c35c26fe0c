package client

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// CreateSnapshot saves running VM req.VM (memory, processes, disks) as snapshot
// req.Snapshot; the VM pauses briefly and runs on. New VMs clone it with
// VMCreateRequest.From.
func (c *Client) CreateSnapshot(ctx context.Context, req SnapshotCreateRequest, progress func(Progress)) (Snapshot, error) {
	return c.api.CreateSnapshot(ctx, req, progress)
}

// Snapshots lists the snapshots.
func (c *Client) Snapshots(ctx context.Context) ([]Snapshot, error) { return c.api.Snapshots(ctx) }

// InspectSnapshot returns one snapshot.
func (c *Client) InspectSnapshot(ctx context.Context, name string) (Snapshot, error) {
	return c.api.InspectSnapshot(ctx, name)
}

// RemoveSnapshot deletes a snapshot; it is refused (CodeConflict) while a VM restored
// from it runs.
func (c *Client) RemoveSnapshot(ctx context.Context, name string) error {
	return c.api.RemoveSnapshot(ctx, name)
}

// ForkError lists the clones of a Fork that did not start.
type ForkError struct {
	// Failed maps each clone name that did not start to why.
	Failed map[string]error
	// Names are the failed clones in the order they were asked for.
	Names []string
	// Total is how many clones were asked for.
	Total int
}

func (e *ForkError) Error() string {
	s := fmt.Sprintf("%d of %d clones failed:", len(e.Names), e.Total)
	for _, n := range e.Names {
		s += fmt.Sprintf("\n  %s: %s", n, errorMessage(e.Failed[n]))
	}
	return s
}

// errorMessage is err's message without its hint (an *Error's Message).
func errorMessage(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Message
	}
	return err.Error()
}

// Fork snapshots running VM parent as snapshot snapName and starts one clone of it per
// name in clones, all at once; each clone has the parent's processes and files and its own
// identity (hostname, machine-id, address, SSH host key). The snapshot is kept for more
// clones (remove it with RemoveSnapshot once they are gone). When the snapshot fails,
// Fork returns that error and no result; when some clones fail, it returns the result
// with the clones that started and a *ForkError naming the others.
func (c *Client) Fork(ctx context.Context, parent, snapName string, clones []string, progress func(Progress)) (ForkResult, error) {
	began := time.Now()
	snap, err := c.api.CreateSnapshot(ctx, SnapshotCreateRequest{VM: parent, Snapshot: snapName}, progress)
	if err != nil {
		return ForkResult{}, err
	}
	vms := make([]VM, len(clones))
	errs := make([]error, len(clones))
	var wg sync.WaitGroup
	for i, n := range clones {
		wg.Add(1)
		go func() {
			defer wg.Done()
			vms[i], errs[i] = c.api.CreateVM(ctx, VMCreateRequest{Name: n, From: snap.Name, Start: true}, nil)
		}()
	}
	wg.Wait()
	res := ForkResult{Snapshot: snap, VMs: []VM{}, Seconds: time.Since(began).Seconds()}
	fe := &ForkError{Failed: map[string]error{}, Total: len(clones)}
	for i, n := range clones {
		if errs[i] != nil {
			fe.Failed[n] = errs[i]
			fe.Names = append(fe.Names, n)
			continue
		}
		res.VMs = append(res.VMs, vms[i])
	}
	if len(fe.Names) > 0 {
		return res, fe
	}
	return res, nil
}
