package daemon

// Host folders: a VM's mounts are part of its record. Whenever its VMM comes up (start,
// resume, a clone, a daemon restart that reattaches it) the daemon asks the guest agent to
// mount each one, a FUSE filesystem in the guest whose operations come back to the daemon
// over that agent stream (package hostfs), answered from the host folder as the daemon's
// user. So it works on QEMU and Firecracker alike, needs no 9p or virtiofs in the guest
// kernel, no root on the host, and a template or snapshot never carries a clone's mounts.

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/banger-vm/banger/internal/agent"
	"github.com/banger-vm/banger/internal/agent/agentclient"
	"github.com/banger-vm/banger/internal/api"
	"github.com/banger-vm/banger/internal/hostfs"
	"github.com/banger-vm/banger/internal/store"
)

// maxMountsPerVM bounds a VM's host folders.
const maxMountsPerVM = 16

// mountTimeout bounds one mount's setup in the guest (loading fuse, the mount itself).
const mountTimeout = 30 * time.Second

// hostMountSpec is a host folder shared with a VM.
type hostMountSpec struct {
	Source   string `json:"source"` // absolute host directory
	Target   string `json:"target"` // absolute guest path
	ReadOnly bool   `json:"read_only,omitempty"`
}

func (s hostMountSpec) String() string {
	out := s.Source + ":" + s.Target
	if s.ReadOnly {
		out += ":ro"
	}
	return out
}

// hostMounts are the daemon's served shares, and why the others are not mounted.
type hostMounts struct {
	mu     sync.Mutex
	active map[string][]*activeMount    // by VM id
	failed map[string]map[string]string // VM id -> guest path -> why
	gen    map[string]uint64            // VM id -> generation, so a late mount of an old VMM is dropped
}

type activeMount struct {
	spec  hostMountSpec
	share *hostfs.Share
	root  *os.Root
}

func (a *activeMount) close() {
	a.share.Close()
	_ = a.root.Close()
}

// parseMounts reads SRC:DST[:ro|:rw] texts: SRC an existing host directory (absolute: the
// CLI resolves relative ones), DST a guest path agent.CheckMountPoint accepts.
func parseMounts(texts []string) ([]hostMountSpec, error) {
	if len(texts) > maxMountsPerVM {
		return nil, fmt.Errorf("%d host folders: at most %d per VM", len(texts), maxMountsPerVM)
	}
	var out []hostMountSpec
	seen := map[string]bool{}
	for _, t := range texts {
		s, err := parseMount(t)
		if err != nil {
			return nil, err
		}
		if seen[s.Target] {
			return nil, fmt.Errorf("--mount %q: %s is already the target of another --mount", t, s.Target)
		}
		seen[s.Target] = true
		out = append(out, s)
	}
	return out, nil
}

func parseMount(text string) (hostMountSpec, error) {
	bad := func(why string) (hostMountSpec, error) {
		return hostMountSpec{}, fmt.Errorf("--mount %q: %s (want SRC:DST[:ro], like ./src:/root/src or /data:/mnt/data:ro)", text, why)
	}
	parts := strings.Split(text, ":")
	var s hostMountSpec
	if n := len(parts); n >= 3 && (parts[n-1] == "ro" || parts[n-1] == "rw") {
		s.ReadOnly = parts[n-1] == "ro"
		parts = parts[:n-1]
	}
	if len(parts) < 2 {
		return bad("no guest path")
	}
	s.Target = parts[len(parts)-1]
	s.Source = strings.Join(parts[:len(parts)-1], ":")
	if s.Source == "" || !filepath.IsAbs(s.Source) || strings.ContainsRune(s.Source, 0) {
		return bad("the host folder must be an absolute path")
	}
	s.Source = filepath.Clean(s.Source)
	if err := agent.CheckMountPoint(s.Target); err != nil {
		return bad(err.Error())
	}
	fi, err := os.Stat(s.Source)
	if err != nil {
		return bad(fmt.Sprintf("the host folder: %v", err))
	}
	if !fi.IsDir() {
		return bad(s.Source + " is not a directory")
	}
	return s, nil
}

// openMounts mounts a VM's host folders in the guest, which just came up; a failed one is
// recorded and returned as a warning (the VM runs without it).
func (d *Daemon) openMounts(ctx context.Context, vmID, vmName string, specs []hostMountSpec) []string {
	gen := d.closeMounts(vmID)
	m := d.machine(vmID)
	if m == nil || len(specs) == 0 {
		return nil
	}
	var warnings []string
	var opened []*activeMount
	fails := map[string]string{}
	for _, s := range specs {
		a, err := d.mountOne(ctx, m.Agent(), s)
		if err != nil {
			msg := fmt.Sprintf("host folder %s not mounted at %s: %v", s.Source, s.Target, err)
			fails[s.Target] = err.Error()
			warnings = append(warnings, msg)
			d.log.Warn("a VM's host folder is not mounted", "vm", vmName, "mount", s.String(), "err", err)
			continue
		}
		opened = append(opened, a)
	}
	p := &d.mounts
	p.mu.Lock()
	if p.gen[vmID] != gen {
		// The VM stopped (or came up again) while these were being mounted.
		p.mu.Unlock()
		for _, a := range opened {
			a.close()
		}
		return warnings
	}
	p.active[vmID], p.failed[vmID] = opened, fails
	p.mu.Unlock()
	return warnings
}

func (d *Daemon) mountOne(ctx context.Context, ag *agentclient.Client, s hostMountSpec) (*activeMount, error) {
	root, err := os.OpenRoot(s.Source)
	if err != nil {
		return nil, err
	}
	mctx, cancel := context.WithTimeout(ctx, mountTimeout)
	defer cancel()
	conn, err := ag.Mount(mctx, s.Target, s.ReadOnly)
	if err != nil {
		_ = root.Close()
		return nil, err
	}
	// The share outlives this request: it ends with the VMM, or the daemon.
	share, err := hostfs.Start(mctx, context.Background(), conn, root, hostfs.ServerOptions{ReadOnly: s.ReadOnly})
	if err != nil {
		_ = root.Close()
		return nil, err
	}
	return &activeMount{spec: s, share: share, root: root}, nil
}

// closeMounts ends a VM's shares (its VMM ended, or it is removed, or it mounts again) and
// returns the VM's new generation.
func (d *Daemon) closeMounts(vmID string) uint64 {
	p := &d.mounts
	p.mu.Lock()
	if p.active == nil {
		p.active, p.failed, p.gen = map[string][]*activeMount{}, map[string]map[string]string{}, map[string]uint64{}
	}
	ms := p.active[vmID]
	delete(p.active, vmID)
	delete(p.failed, vmID)
	p.gen[vmID]++
	gen := p.gen[vmID]
	p.mu.Unlock()
	for _, a := range ms {
		a.close()
	}
	return gen
}

// closeAllMounts ends every share (daemon shutdown).
func (d *Daemon) closeAllMounts() {
	p := &d.mounts
	p.mu.Lock()
	// gen has every VM being mounted too: bumping it drops mounts still in flight.
	ids := make([]string, 0, len(p.gen))
	for id := range p.gen {
		ids = append(ids, id)
	}
	p.mu.Unlock()
	for _, id := range ids {
		d.closeMounts(id)
	}
}

// mountsToAPI describes a VM's host folders and whether each is mounted now.
func (d *Daemon) mountsToAPI(vmID string, specs []hostMountSpec) []api.VMMount {
	p := &d.mounts
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]api.VMMount, 0, len(specs))
	for _, s := range specs {
		m := api.VMMount{Source: s.Source, Target: s.Target, ReadOnly: s.ReadOnly}
		for _, a := range p.active[vmID] {
			if a.spec == s {
				select {
				case <-a.share.Done():
					m.Error = "the guest unmounted it"
				default:
					m.Mounted = true
				}
			}
		}
		if why := p.failed[vmID][s.Target]; why != "" {
			m.Error = why
		}
		out = append(out, m)
	}
	return out
}

// openMountsOf mounts the host folders of a VM that came up, reporting those that fail.
func (d *Daemon) openMountsOf(ctx context.Context, vm store.VM, rec vmRecord, progress progressFunc) {
	if len(rec.Mounts) == 0 {
		return
	}
	if progress != nil {
		progress(api.Progress{Stage: "mounting host folders"})
	}
	start := time.Now()
	warnings := d.openMounts(ctx, vm.ID, vm.Name, rec.Mounts)
	if progress == nil {
		return
	}
	for _, w := range warnings {
		progress(api.Progress{Stage: "mounting host folders", Message: "failed: " + w})
	}
	if len(warnings) < len(rec.Mounts) {
		progress(api.Progress{Stage: "mounting host folders", Message: fmt.Sprintf("%.1f ms", float64(time.Since(start).Microseconds())/1000)})
	}
}
