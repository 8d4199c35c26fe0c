package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/banger-vm/banger/internal/api"
	"github.com/banger-vm/banger/internal/store"
	"github.com/banger-vm/banger/internal/vmm/proc"
)

func (d *Daemon) addVMRoutes(table map[string]map[string]handlerFunc) {
	table["/vms"] = map[string]handlerFunc{http.MethodGet: d.handleVMList}
	table["/vms/inspect"] = map[string]handlerFunc{http.MethodGet: d.handleVMInspect}
	table["/vms/create"] = map[string]handlerFunc{http.MethodPost: d.handleVMCreate}
	table["/vms/start"] = map[string]handlerFunc{http.MethodPost: d.handleVMStart}
	table["/vms/stop"] = map[string]handlerFunc{http.MethodPost: d.handleVMStop}
	table["/vms/pause"] = map[string]handlerFunc{http.MethodPost: d.handleVMPause}
	table["/vms/resume"] = map[string]handlerFunc{http.MethodPost: d.handleVMResume}
	table["/vms/restart"] = map[string]handlerFunc{http.MethodPost: d.handleVMRestart}
	table["/vms/rm"] = map[string]handlerFunc{http.MethodPost: d.handleVMRemove}
	table["/vms/health"] = map[string]handlerFunc{http.MethodGet: d.handleVMHealth}
	table["/vms/exec"] = map[string]handlerFunc{http.MethodPost: d.handleVMExec}
	table["/vms/forward"] = map[string]handlerFunc{http.MethodPost: d.handleVMForward}
	table["/vms/ports"] = map[string]handlerFunc{http.MethodPost: d.handleVMPorts}
	table["/vms/resize"] = map[string]handlerFunc{http.MethodPost: d.handleVMResize}
	table["/vms/logs"] = map[string]handlerFunc{http.MethodGet: d.handleVMLogs}
	table["/snapshots"] = map[string]handlerFunc{http.MethodGet: d.handleSnapshotList}
	table["/snapshots/inspect"] = map[string]handlerFunc{http.MethodGet: d.handleSnapshotInspect}
	table["/snapshots/create"] = map[string]handlerFunc{http.MethodPost: d.handleSnapshotCreate}
	table["/snapshots/rm"] = map[string]handlerFunc{http.MethodPost: d.handleSnapshotRemove}
}

func (d *Daemon) handleVMList(w http.ResponseWriter, r *http.Request) error {
	vms, err := d.store.ListVMs(r.Context())
	if err != nil {
		return err
	}
	out := api.VMsResponse{VMs: make([]api.VM, 0, len(vms))}
	for _, vm := range vms {
		out.VMs = append(out.VMs, d.vmToAPI(r.Context(), vm))
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (d *Daemon) handleVMInspect(w http.ResponseWriter, r *http.Request) error {
	vm, err := d.vmLookup(r.Context(), r.URL.Query().Get("name"))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, d.vmToAPI(r.Context(), vm))
	return nil
}

// vmStreamed runs a create/start, streaming stage progress, then the VM or the error.
func (d *Daemon) vmStreamed(w http.ResponseWriter, r *http.Request, op func(context.Context, progressFunc) (api.VM, error)) {
	streamResult(w, r, op)
}

// streamResult runs op, streaming stage progress, then its result or the error.
func streamResult[T any](w http.ResponseWriter, r *http.Request, op func(context.Context, progressFunc) (T, error)) {
	s := newStreamer(w)
	progress := func(p api.Progress) { s.send(api.StreamEvent{Progress: &p}) }
	vm, err := op(r.Context(), progress)
	if err != nil {
		var ae *api.Error
		if !errors.As(err, &ae) {
			ae = api.Errorf(api.CodeInternal, "see the daemon log", "%v", err)
		}
		s.send(api.StreamEvent{Error: ae})
		return
	}
	b, _ := json.Marshal(vm)
	s.send(api.StreamEvent{Result: b})
}

func (d *Daemon) handleVMCreate(w http.ResponseWriter, r *http.Request) error {
	var req api.VMCreateRequest
	if err := decodeBody(r, &req); err != nil {
		return err
	}
	// Validate before streaming, so bad input is a plain 4xx.
	if _, err := d.validateCreate(r.Context(), req); err != nil {
		return err
	}
	d.vmStreamed(w, r, func(ctx context.Context, p progressFunc) (api.VM, error) { return d.createVM(ctx, req, p) })
	return nil
}

func (d *Daemon) handleVMStart(w http.ResponseWriter, r *http.Request) error {
	var req api.VMRequest
	if err := decodeBody(r, &req); err != nil {
		return err
	}
	if _, err := d.vmLookup(r.Context(), req.Name); err != nil {
		return err
	}
	d.vmStreamed(w, r, func(ctx context.Context, p progressFunc) (api.VM, error) { return d.startVM(ctx, req.Name, p) })
	return nil
}

func (d *Daemon) handleVMPause(w http.ResponseWriter, r *http.Request) error {
	var req api.VMRequest
	if err := decodeBody(r, &req); err != nil {
		return err
	}
	if _, err := d.vmLookup(r.Context(), req.Name); err != nil {
		return err
	}
	d.vmStreamed(w, r, func(ctx context.Context, p progressFunc) (api.VM, error) { return d.pauseVM(ctx, req.Name, p) })
	return nil
}

// handleVMResume is a start that insists the VM is paused, so a script's resume never
// boots a stopped VM by mistake.
func (d *Daemon) handleVMResume(w http.ResponseWriter, r *http.Request) error {
	var req api.VMRequest
	if err := decodeBody(r, &req); err != nil {
		return err
	}
	vm, err := d.vmLookup(r.Context(), req.Name)
	if err != nil {
		return err
	}
	if vm.State != store.VMPaused {
		return api.Errorf(api.CodeConflict, "`banger vm start` boots a stopped VM", "VM %q is not paused (%s)", vm.Name, vm.State)
	}
	d.vmStreamed(w, r, func(ctx context.Context, p progressFunc) (api.VM, error) { return d.startVM(ctx, req.Name, p) })
	return nil
}

func (d *Daemon) handleVMStop(w http.ResponseWriter, r *http.Request) error {
	var req api.VMStopRequest
	if err := decodeBody(r, &req); err != nil {
		return err
	}
	if req.TimeoutSeconds < 0 {
		return api.Errorf(api.CodeBadRequest, "pass a positive --timeout", "invalid timeout %v", req.TimeoutSeconds)
	}
	vm, err := d.stopVM(r.Context(), req)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, vm)
	return nil
}

func (d *Daemon) handleVMRestart(w http.ResponseWriter, r *http.Request) error {
	var req api.VMStopRequest
	if err := decodeBody(r, &req); err != nil {
		return err
	}
	if req.TimeoutSeconds < 0 {
		return api.Errorf(api.CodeBadRequest, "pass a positive --timeout", "invalid timeout %v", req.TimeoutSeconds)
	}
	if _, err := d.vmLookup(r.Context(), req.Name); err != nil {
		return err
	}
	d.vmStreamed(w, r, func(ctx context.Context, p progressFunc) (api.VM, error) { return d.restartVM(ctx, req, p) })
	return nil
}

func (d *Daemon) handleVMRemove(w http.ResponseWriter, r *http.Request) error {
	var req api.VMRemoveRequest
	if err := decodeBody(r, &req); err != nil {
		return err
	}
	if err := d.removeVM(r.Context(), req); err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, map[string]string{"removed": req.Name})
	return nil
}

func (d *Daemon) handleVMHealth(w http.ResponseWriter, r *http.Request) error {
	vm, err := d.vmLookup(r.Context(), r.URL.Query().Get("name"))
	if err != nil {
		return err
	}
	a := d.vmToAPI(r.Context(), vm)
	out := api.VMHealth{Name: vm.Name, State: a.State, Network: a.Network.IP}
	if out.Network == "" {
		out.Network = a.Network.Note
	}
	m := d.machine(vm.ID)
	if m == nil {
		out.Detail = "not running"
		if a.LastExit != "" {
			out.Detail += ": " + a.LastExit
		}
		writeJSON(w, http.StatusOK, out)
		return nil
	}
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	start := time.Now()
	h, err := m.Agent().Health(ctx)
	if err != nil {
		out.Detail = "agent does not answer: " + err.Error()
	} else {
		out.Agent, out.RTTMS = true, float64(time.Since(start).Microseconds())/1000
		b, _ := json.Marshal(h)
		out.Detail = "agent healthy: " + string(b)
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (d *Daemon) handleVMLogs(w http.ResponseWriter, r *http.Request) error {
	vm, err := d.vmLookup(r.Context(), r.URL.Query().Get("name"))
	if err != nil {
		return err
	}
	follow := r.URL.Query().Get("follow") == "true"
	rec, err := parseRecord(vm)
	if err != nil {
		return err
	}
	if rec.ConsoleLog == "" {
		return api.Errorf(api.CodeNotFound, "start the VM first", "VM %q has no console log yet", vm.Name)
	}
	f, err := os.Open(rec.ConsoleLog)
	if err != nil {
		return api.Errorf(api.CodeNotFound, "", "console log of %q: %v", vm.Name, err)
	}
	defer func() { f.Close() }()
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(http.StatusOK)
	fl, _ := w.(http.Flusher)
	buf := make([]byte, 32<<10)
	// The log is capped by rotation: the older half is console.log.1, shown first.
	if old, err := os.Open(rec.ConsoleLog + proc.RotatedSuffix); err == nil {
		_, werr := io.Copy(w, old)
		old.Close()
		if werr != nil {
			return nil
		}
	}
	for {
		n, err := f.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return nil
			}
			continue
		}
		if err != nil && !errors.Is(err, io.EOF) {
			return nil
		}
		if fl != nil {
			fl.Flush()
		}
		if !follow || d.machine(vm.ID) == nil {
			return nil
		}
		select {
		case <-r.Context().Done():
			return nil
		case <-time.After(200 * time.Millisecond):
		}
		// A rotation renamed the file being read: send what it got before the rename, then
		// follow the new console.log from its start.
		if rotated(f, rec.ConsoleLog) {
			if nf, err := os.Open(rec.ConsoleLog); err == nil {
				if _, werr := io.Copy(w, f); werr != nil {
					nf.Close()
					return nil
				}
				f.Close()
				f = nf
			}
		}
	}
}

// rotated reports whether path now names another file than the open f.
func rotated(f *os.File, path string) bool {
	a, err1 := f.Stat()
	b, err2 := os.Stat(path)
	return err1 == nil && err2 == nil && !os.SameFile(a, b)
}

func parseMAC(s string) (net.HardwareAddr, error) { return net.ParseMAC(s) }

type unixStat struct{ size, used int64 }

func statFile(p string, out *unixStat) error {
	var st unix.Stat_t
	if err := unix.Stat(p, &st); err != nil {
		return err
	}
	out.size, out.used = st.Size, st.Blocks*512
	return nil
}

func (d *Daemon) handleSnapshotList(w http.ResponseWriter, r *http.Request) error {
	snaps, err := d.listSnapshots(r.Context())
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, api.SnapshotsResponse{Snapshots: snaps})
	return nil
}

func (d *Daemon) handleSnapshotInspect(w http.ResponseWriter, r *http.Request) error {
	s, err := d.inspectSnapshot(r.Context(), r.URL.Query().Get("name"))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, s)
	return nil
}

func (d *Daemon) handleSnapshotCreate(w http.ResponseWriter, r *http.Request) error {
	var req api.SnapshotCreateRequest
	if err := decodeBody(r, &req); err != nil {
		return err
	}
	// Bad input is a plain 4xx, before streaming.
	if err := validSnapshotName(req.Snapshot); err != nil {
		return err
	}
	if _, err := d.vmLookup(r.Context(), req.VM); err != nil {
		return err
	}
	streamResult(w, r, func(ctx context.Context, p progressFunc) (api.Snapshot, error) { return d.snapshotVM(ctx, req, p) })
	return nil
}

func (d *Daemon) handleSnapshotRemove(w http.ResponseWriter, r *http.Request) error {
	var req api.SnapshotRequest
	if err := decodeBody(r, &req); err != nil {
		return err
	}
	if err := d.removeSnapshot(r.Context(), req.Name); err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, map[string]string{"removed": req.Name})
	return nil
}
