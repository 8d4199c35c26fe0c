package daemon

// Port forwards: a VM's forwards are part of its record; while its VMM runs the daemon
// listens on each host address and relays connections (TCP) or each client's datagrams
// (UDP) through the guest agent to the guest's loopback port, so forwards work with or
// without a guest network. They are opened
// whenever the VM comes up (start, resume, a daemon restart that reattaches it) and closed
// when its VMM ends.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/banger-vm/banger/internal/api"
	"github.com/banger-vm/banger/internal/portfwd"
	"github.com/banger-vm/banger/internal/store"
)

// maxForwardsPerVM bounds a VM's forwards.
const maxForwardsPerVM = 64

// portForwards are the daemon's open forwards, and why the others are not open.
type portForwards struct {
	mu     sync.Mutex
	active map[string][]*portfwd.Forwarder // by VM id
	failed map[string]map[string]string    // VM id -> spec key -> why it is not listening
	auto   map[string]*publisher           // VM id -> its --publish-all forwards
	// publishEvery is how often a --publish-all VM's listeners are polled (0: 2 s).
	publishEvery time.Duration
}

func (p *portForwards) init() {
	p.active, p.failed, p.auto = map[string][]*portfwd.Forwarder{}, map[string]map[string]string{}, map[string]*publisher{}
}

// tcpDialer reaches a VM's guest TCP ports through its agent, whichever machine runs it.
func (d *Daemon) tcpDialer(vmID, vmName string) portfwd.Dialer {
	return func(ctx context.Context, port int) (io.ReadWriteCloser, error) {
		m := d.machine(vmID)
		if m == nil {
			return nil, fmt.Errorf("VM %s is not running", vmName)
		}
		return m.Agent().Forward(ctx, port)
	}
}

// parsePorts reads the forwards a request asks for, picks free host ports for those
// without one, and checks them against each other, the other VMs' forwards (except vm's
// own) and what listens on the host now.
func (d *Daemon) parsePorts(ctx context.Context, texts []string, vmID string, existing []portfwd.Spec) ([]portfwd.Spec, error) {
	if len(texts)+len(existing) > maxForwardsPerVM {
		return nil, api.Errorf(api.CodeBadRequest, "", "too many port forwards (at most %d per VM)", maxForwardsPerVM)
	}
	taken, err := d.forwardedKeys(ctx, vmID)
	if err != nil {
		return nil, err
	}
	for _, s := range existing {
		taken[s.Key()] = "this VM"
	}
	var out []portfwd.Spec
	for _, t := range texts {
		s, err := portfwd.Parse(t)
		if err != nil {
			return nil, api.Errorf(api.CodeBadRequest, "use -p [HOSTIP:]HOSTPORT:GUESTPORT[/tcp|/udp] or -p GUESTPORT[/udp]", "%v", err)
		}
		if s, err = portfwd.Resolve(s); err != nil {
			return nil, api.Errorf(api.CodeUnavailable, "", "%v", err)
		}
		if who, ok := taken[s.Key()]; ok {
			return nil, api.Errorf(api.CodeConflict, "pick another host port", "host port %s is already forwarded to %s", s.Key(), who)
		}
		// Free now? (A forward binds for real when its VM runs.)
		f, err := portfwd.Listen(s, portfwd.Options{
			TCP: func(context.Context, int) (io.ReadWriteCloser, error) { return nil, errors.New("checking") },
			UDP: func(context.Context, int) (portfwd.PacketConn, error) { return nil, errors.New("checking") },
			Log: d.log,
		})
		if err != nil {
			return nil, api.Errorf(api.CodeConflict, "", "%v", err)
		}
		f.Close()
		taken[s.Key()] = "this VM"
		out = append(out, s)
	}
	return out, nil
}

// forwardedKeys maps the host addresses other VMs forward to their names.
func (d *Daemon) forwardedKeys(ctx context.Context, exceptID string) (map[string]string, error) {
	vms, err := d.store.ListVMs(ctx)
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, vm := range vms {
		if vm.ID == exceptID {
			continue
		}
		rec, err := parseRecord(vm)
		if err != nil {
			continue
		}
		for _, s := range rec.Ports {
			out[s.Key()] = "VM " + vm.Name
		}
	}
	return out, nil
}

// openForwards makes a VM's listening forwards those of specs: forwards no longer wanted
// close, listening ones still wanted stay as they are (their connections and UDP flows
// go on), the others listen. One that cannot listen (its host port taken since) is
// recorded as failed and returned as a warning.
func (d *Daemon) openForwards(vmID, vmName string, specs []portfwd.Spec) []string {
	p := &d.ports
	wanted := map[portfwd.Spec]bool{}
	for _, s := range specs {
		wanted[s] = true
	}
	p.mu.Lock()
	if p.active == nil {
		p.init()
	}
	var kept, stale []*portfwd.Forwarder
	for _, f := range p.active[vmID] {
		if wanted[f.Spec()] {
			kept = append(kept, f)
		} else {
			stale = append(stale, f)
		}
	}
	p.active[vmID] = kept
	delete(p.failed, vmID)
	p.mu.Unlock()
	for _, f := range stale {
		f.Close()
	}
	listening := map[portfwd.Spec]bool{}
	for _, f := range kept {
		listening[f.Spec()] = true
	}
	dial := d.tcpDialer(vmID, vmName)
	dialUDP := func(ctx context.Context, port int) (portfwd.PacketConn, error) {
		m := d.machine(vmID)
		if m == nil {
			return nil, fmt.Errorf("VM %s is not running", vmName)
		}
		s, err := m.Agent().ForwardUDP(ctx, port)
		if err != nil {
			return nil, err
		}
		return s, nil
	}
	var warnings []string
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, s := range specs {
		if listening[s] {
			continue
		}
		if err := s.Check(); err != nil {
			warnings = append(warnings, fmt.Sprintf("a stored forward is invalid (%v): remove it with `banger vm port %s rm`", err, vmName))
			continue
		}
		f, err := portfwd.Listen(s, portfwd.Options{TCP: dial, UDP: dialUDP, Log: d.log})
		if err != nil {
			if p.failed[vmID] == nil {
				p.failed[vmID] = map[string]string{}
			}
			p.failed[vmID][s.Key()] = err.Error()
			warnings = append(warnings, err.Error())
			d.log.Warn("a VM's port forward is not listening", "vm", vmName, "forward", s.String(), "err", err)
			continue
		}
		p.active[vmID] = append(p.active[vmID], f)
	}
	return warnings
}

// closeForwards stops a VM's forwards (its VMM ended, or it is removed).
func (d *Daemon) closeForwards(vmID string) {
	p := &d.ports
	p.mu.Lock()
	fs := p.active[vmID]
	pub := p.auto[vmID]
	delete(p.active, vmID)
	delete(p.failed, vmID)
	delete(p.auto, vmID)
	p.mu.Unlock()
	for _, f := range fs {
		f.Close()
	}
	if pub != nil {
		pub.stop()
	}
}

// closeAllForwards stops every forward (daemon shutdown).
func (d *Daemon) closeAllForwards() {
	p := &d.ports
	p.mu.Lock()
	ids := make([]string, 0, len(p.active))
	for id := range p.active {
		ids = append(ids, id)
	}
	for id := range p.auto {
		if _, ok := p.active[id]; !ok {
			ids = append(ids, id)
		}
	}
	p.mu.Unlock()
	for _, id := range ids {
		d.closeForwards(id)
	}
}

// portsToAPI describes a VM's forwards and whether each listens.
func (d *Daemon) portsToAPI(vmID string, specs []portfwd.Spec) []api.VMPort {
	p := &d.ports
	p.mu.Lock()
	defer p.mu.Unlock()
	listening := map[string]bool{}
	for _, f := range p.active[vmID] {
		listening[f.Spec().Key()] = true
	}
	out := make([]api.VMPort, 0, len(specs))
	for _, s := range specs {
		out = append(out, api.VMPort{HostIP: s.HostIP, HostPort: s.HostPort, GuestPort: s.GuestPort, Proto: s.Proto,
			Listening: listening[s.Key()], Error: p.failed[vmID][s.Key()]})
	}
	if pub := p.auto[vmID]; pub != nil {
		out = append(out, pub.ports()...)
	}
	return out
}

// matchHostSide says whether text names s by its host side: HOSTPORT, HOSTIP:HOSTPORT or
// [HOSTIP]:HOSTPORT, each optionally with /tcp or /udp (without, both protocols match).
func matchHostSide(text string, s portfwd.Spec) bool {
	if t, proto, ok := strings.Cut(text, "/"); ok {
		if proto != s.Proto {
			return false
		}
		text = t
	}
	if n, err := strconv.Atoi(text); err == nil {
		return n == s.HostPort
	}
	host, port, err := net.SplitHostPort(text)
	if err != nil {
		return false
	}
	n, err := strconv.Atoi(port)
	return err == nil && n == s.HostPort && (host == s.HostIP || net.ParseIP(host).Equal(net.ParseIP(s.HostIP)))
}

// changePorts adds and removes a VM's forwards; a running VM's listeners follow at once.
func (d *Daemon) changePorts(ctx context.Context, req api.VMPortsRequest) (api.VM, error) {
	vm, unlock, err := d.lockedVM(ctx, req.Name)
	if err != nil {
		return api.VM{}, err
	}
	defer unlock()
	rec, err := parseRecord(vm)
	if err != nil {
		return api.VM{}, err
	}
	if rec.Builder {
		return api.VM{}, api.Errorf(api.CodeConflict, "", "VM %q is an image build's temporary VM", vm.Name)
	}
	kept := rec.Ports[:0:0]
	for _, s := range rec.Ports {
		drop := false
		for _, t := range req.Remove {
			drop = drop || matchHostSide(t, s)
		}
		if !drop {
			kept = append(kept, s)
		}
	}
	for _, t := range req.Remove {
		found := false
		for _, s := range rec.Ports {
			found = found || matchHostSide(t, s)
		}
		if !found {
			return api.VM{}, api.Errorf(api.CodeNotFound, "list them with `banger vm port "+vm.Name+" ls`", "VM %q forwards no host port %q", vm.Name, t)
		}
	}
	added, err := d.parsePorts(ctx, req.Add, vm.ID, kept)
	if err != nil {
		return api.VM{}, err
	}
	rec.Ports = append(kept, added...)
	if vm, err = d.putRecord(ctx, vm, rec); err != nil {
		return api.VM{}, err
	}
	if d.machine(vm.ID) != nil {
		if warnings := d.openForwards(vm.ID, vm.Name, rec.Ports); len(warnings) > 0 {
			return d.vmToAPI(ctx, vm), api.Errorf(api.CodeConflict, "the forward is saved and listens when the VM next starts, or remove it", "%s", warnings[0])
		}
	}
	return d.vmToAPI(ctx, vm), nil
}

func (d *Daemon) handleVMPorts(w http.ResponseWriter, r *http.Request) error {
	var req api.VMPortsRequest
	if err := decodeBody(r, &req); err != nil {
		return err
	}
	vm, err := d.changePorts(r.Context(), req)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, vm)
	return nil
}

// openForwardsOf opens the forwards of a VM that came up, reporting those that fail, and
// starts publishing its listeners with --publish-all.
func (d *Daemon) openForwardsOf(vm store.VM, rec vmRecord, progress progressFunc) {
	// The VM's own forwards bind first: a published guest port must not take their host
	// ports from them.
	if rec.PublishAll {
		defer d.startPublisher(vm.ID, vm.Name)
	}
	if len(rec.Ports) == 0 {
		return
	}
	for _, w := range d.openForwards(vm.ID, vm.Name, rec.Ports) {
		if progress != nil {
			progress(api.Progress{Stage: "forwarding ports", Message: "failed: " + w})
		}
	}
}
