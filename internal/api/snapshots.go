package api

import (
	"context"
	"net/http"
	"net/url"
	"time"
)

// SnapshotCreateRequest is POST /v1/snapshots/create (streamed): save running VM VM as
// snapshot Snapshot; the VM runs on.
type SnapshotCreateRequest struct {
	VM       string `json:"vm"`
	Snapshot string `json:"snapshot"`
}

// SnapshotRequest names a snapshot (inspect, rm).
type SnapshotRequest struct {
	Name string `json:"name"`
}

// Snapshot is a user snapshot as the API shows it.
type Snapshot struct {
	Name      string    `json:"name"`
	CreatedAt time.Time `json:"created_at"`
	// ParentVM is the VM it was taken of; Image the image that VM was created from.
	ParentVM  string `json:"parent_vm"`
	Image     string `json:"image"`
	Kernel    string `json:"kernel"`
	CPUs      int    `json:"cpus"`
	MemoryMiB int    `json:"memory_mib"`
	DiskBytes int64  `json:"disk_bytes"`
	Driver    string `json:"driver"`
	Network   bool   `json:"network"`
	// SizeBytes is what it takes on disk (allocated blocks: its disks are sparse copies).
	SizeBytes int64   `json:"size_bytes"`
	SaveMS    float64 `json:"save_ms"`
	Dir       string  `json:"dir"`
	// UsedBy lists the running VMs restored from it (and creates restoring it now): while
	// there are any, it cannot be removed.
	UsedBy []string `json:"used_by"`
	// Error says why a snapshot cannot be used (corrupt or incomplete); rm still works.
	Error string `json:"error,omitempty"`
}

// ForkResult is what vm fork made: the snapshot and the clones that started.
type ForkResult struct {
	Snapshot Snapshot `json:"snapshot"`
	VMs      []VM     `json:"vms"`
	Seconds  float64  `json:"seconds"`
}

// SnapshotsResponse answers GET /v1/snapshots.
type SnapshotsResponse struct {
	Snapshots []Snapshot `json:"snapshots"`
}

// CreateSnapshot saves a running VM as a named snapshot, reporting each stage.
func (c *Client) CreateSnapshot(ctx context.Context, req SnapshotCreateRequest, progress func(Progress)) (Snapshot, error) {
	return streamed[Snapshot](ctx, c, "/snapshots/create", req, progress)
}

// Snapshots lists the snapshots.
func (c *Client) Snapshots(ctx context.Context) ([]Snapshot, error) {
	out, err := get[SnapshotsResponse](ctx, c, "/snapshots", nil)
	return out.Snapshots, err
}

// InspectSnapshot returns one snapshot.
func (c *Client) InspectSnapshot(ctx context.Context, name string) (Snapshot, error) {
	return get[Snapshot](ctx, c, "/snapshots/inspect", url.Values{"name": {name}})
}

// RemoveSnapshot deletes a snapshot no running VM was restored from.
func (c *Client) RemoveSnapshot(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodPost, "/snapshots/rm", nil, SnapshotRequest{Name: name}, nil)
}
