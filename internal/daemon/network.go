package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/banger-vm/banger/internal/api"
	"github.com/banger-vm/banger/internal/doctor"
	"github.com/banger-vm/banger/internal/helper"
	"github.com/banger-vm/banger/internal/network"
)

// netState is the daemon's side of networking: leases, the warm TAP pool and the helper
// client. The helper may come up after the daemon (or restart), so nothing here blocks the
// daemon's start: the pool is reconciled and warmed in the background, retrying.
type netState struct {
	subnet netip.Prefix
	client *network.Client
	alloc  *network.Allocator
	pool   *network.Pool

	cancel context.CancelFunc
	done   chan struct{}

	mu        sync.Mutex
	ready     bool // the pool was reconciled against the helper's devices
	lastErr   error
	reconcile network.ReconcileReport
}

// vmNetSpec is the part of a VM's spec JSON that networking owns: which TAP the VM uses.
// It is what lets a restarted daemon tell a VM's TAP from an orphan.
type vmNetSpec struct {
	Network struct {
		TAP string `json:"tap"`
	} `json:"network"`
}

const netRetry = 5 * time.Second

func (d *Daemon) startNetwork(ctx context.Context) {
	cfg := d.opts.Config.Network
	subnet, err := netip.ParsePrefix(cfg.Subnet)
	if err != nil {
		d.log.Error("network disabled: bad [network] subnet", "subnet", cfg.Subnet, "err", err)
		return
	}
	dns, err := network.GuestDNS(cfg.DNS)
	if err != nil {
		d.log.Warn("guests will have no DNS", "err", err)
	}
	alloc, err := network.NewAllocator(d.store, subnet, dns)
	if err != nil {
		d.log.Error("network disabled", "err", err)
		return
	}
	n := &netState{subnet: subnet, client: network.NewClient(cfg.HelperSocket), alloc: alloc, done: make(chan struct{})}
	n.pool = network.NewPool(n.client, cfg.TAPPoolSize, d.log.With("component", "tap-pool"))
	if moved, err := alloc.Reconcile(ctx); err != nil {
		d.log.Warn("could not reconcile address leases", "err", err)
	} else {
		for _, l := range moved {
			d.log.Warn("released a lease outside the configured subnet; the VM gets a new address at its next start",
				"vm", l.VMID, "ip", l.IP, "subnet", subnet)
		}
	}
	d.net = n
	d.doctor.Register("network-helper", d.checkHelper)
	d.doctor.Register("bridge", d.checkBridge)
	d.doctor.Register("bridge-ipv6", doctor.BridgeIPv6Check(cfg.Bridge))
	d.doctor.Register("nat", d.checkNAT)
	d.doctor.Register("ip-forwarding", d.checkForwarding)
	d.doctor.Register("tap-pool", d.checkPool)
	d.doctor.Register("network-leaks", d.checkLeaks)

	bg, cancel := context.WithCancel(context.WithoutCancel(ctx))
	n.cancel = cancel
	go func() {
		defer close(n.done)
		d.reconcileNetwork(bg)
		if bg.Err() == nil {
			n.pool.Run(bg)
		}
	}()
}

// reconcileNetwork learns the pool from the helper's devices, deleting TAPs no VM references
// and keeping those VMs use. It retries until the helper answers.
func (d *Daemon) reconcileNetwork(ctx context.Context) {
	n := d.net
	warned := false
	for {
		err := d.reconcileOnce(ctx)
		n.mu.Lock()
		n.lastErr = err
		n.mu.Unlock()
		if err == nil {
			return
		}
		if !warned {
			d.log.Warn("networking is not ready yet; retrying in the background", "err", err, "every", netRetry)
			warned = true
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(netRetry):
		}
	}
}

func (d *Daemon) reconcileOnce(ctx context.Context) error {
	n := d.net
	if err := n.client.EnsureBridge(ctx); err != nil {
		return err
	}
	referenced, err := d.referencedTAPs(ctx)
	if err != nil {
		return err
	}
	rep, err := n.pool.Reconcile(ctx, referenced)
	if err != nil {
		return err
	}
	n.mu.Lock()
	n.ready, n.reconcile = true, rep
	n.mu.Unlock()
	d.log.Info("network reconciled", "free_pool_taps", len(rep.Free), "kept", rep.Kept, "deleted_orphans", rep.Deleted, "missing", rep.Missing)
	return nil
}

func (d *Daemon) referencedTAPs(ctx context.Context) (map[string]string, error) {
	vms, err := d.store.ListVMs(ctx)
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, vm := range vms {
		var spec vmNetSpec
		if len(vm.Spec) > 0 && json.Unmarshal(vm.Spec, &spec) == nil && helper.IsTAPName(spec.Network.TAP) {
			out[spec.Network.TAP] = vm.ID
		}
	}
	return out, nil
}

func (d *Daemon) stopNetwork() {
	if d.net == nil || d.net.cancel == nil {
		return
	}
	d.net.cancel()
	<-d.net.done
}

// attachNetwork is called when a VM is created or started: it leases the VM an address
// (idempotent) and takes a TAP, warm from the pool when one is free. The caller records the
// TAP in the VM's spec ("network": {"tap": ...}) so reconciliation keeps it.
func (d *Daemon) attachNetwork(ctx context.Context, vmID string) (network.Lease, string, error) {
	if d.net == nil {
		return network.Lease{}, "", errors.New("networking is disabled: see the daemon log for why")
	}
	lease, err := d.net.alloc.Allocate(ctx, vmID)
	if err != nil {
		return network.Lease{}, "", err
	}
	tap, err := d.net.pool.AcquireOrCreate(ctx, vmID, lease.IP.String())
	if err != nil {
		return network.Lease{}, "", err
	}
	return lease, tap, nil
}

// detachNetwork gives the TAP back (a pool TAP returns to the pool); release also frees the
// address, for a VM being deleted.
func (d *Daemon) detachNetwork(ctx context.Context, vmID, tap string, release bool) error {
	if d.net == nil {
		return nil
	}
	var errs []error
	if tap != "" {
		errs = append(errs, d.net.pool.Release(ctx, tap))
	}
	if release {
		errs = append(errs, d.net.alloc.Release(ctx, vmID))
	}
	return errors.Join(errs...)
}

// helperStatus is shared by the network checks; an unreachable helper is one FAIL (in
// network-helper) and a "not checked" WARN in the others, not six FAILs.
func (d *Daemon) helperStatus(ctx context.Context) (*helper.Status, api.CheckResult, bool) {
	st, err := d.net.client.Status(ctx)
	if err != nil {
		return nil, doctor.Warnf("fix the network-helper check first", "not checked: the helper did not answer"), false
	}
	return st, api.CheckResult{}, true
}

func (d *Daemon) checkHelper(ctx context.Context) api.CheckResult {
	st, err := d.net.client.Status(ctx)
	if err != nil {
		var ue *network.UnreachableError
		if errors.As(err, &ue) {
			// Not a FAIL: VMs still boot, only without a network, and a daemon run as root
			// has no helper at all (the helper serves unprivileged owners only).
			hint := fmt.Sprintf("start it as root: `sudo systemctl start banger-helper` or `sudo banger helper --owner-uid=%d`", os.Getuid())
			if os.Getuid() == 0 {
				hint = "run the daemon as an unprivileged user: the helper does not serve root"
			}
			return doctor.Warnf(hint, "no banger helper answers at %s: VMs will boot without a network", d.net.client.Socket)
		}
		return doctor.Failf("see the helper's log (journalctl -u banger-helper)", "%v", err)
	}
	cfg := d.opts.Config.Network
	if st.Bridge != cfg.Bridge || st.Subnet != d.net.subnet.String() {
		return doctor.Failf("give the daemon and the helper the same [network] bridge and subnet, then restart both",
			"the helper manages %s on %s but this daemon is configured for %s on %s", st.Subnet, st.Bridge, d.net.subnet, cfg.Bridge)
	}
	if st.IsolateVMs != cfg.IsolateVMs {
		return doctor.Warnf("set the same [network] isolate_vms for both, or pass --isolate-vms to the helper",
			"the helper's isolate_vms is %v, the daemon's %v", st.IsolateVMs, cfg.IsolateVMs)
	}
	return doctor.Pass("helper at %s serves uid %d: bridge %s, subnet %s, VM isolation %v", d.net.client.Socket, st.OwnerUID, st.Bridge, st.Subnet, st.IsolateVMs)
}

func (d *Daemon) checkBridge(ctx context.Context) api.CheckResult {
	st, res, ok := d.helperStatus(ctx)
	if !ok {
		return res
	}
	want := fmt.Sprintf("%s/%d", st.Gateway, d.net.subnet.Bits())
	switch {
	case !st.BridgeUp:
		return doctor.Failf("restart the helper (it creates and brings up the bridge)", "bridge %s is missing or down", st.Bridge)
	case !slices.Contains(st.BridgeAddrs, want):
		return doctor.Failf("restart the helper (it sets the gateway address)", "bridge %s has %v, not the gateway %s", st.Bridge, st.BridgeAddrs, want)
	}
	return doctor.Pass("%s is up with %s", st.Bridge, want)
}

func (d *Daemon) checkNAT(ctx context.Context) api.CheckResult {
	st, res, ok := d.helperStatus(ctx)
	if !ok {
		return res
	}
	switch {
	case !st.NATTable:
		return doctor.Failf("restart the helper (it installs the NAT rules); guests cannot reach the outside without them", "nftables table inet %s is missing", helper.NATTableFor(d.opts.Config.Network.Bridge))
	case st.NATRules != st.WantRules:
		return doctor.Warnf("restart the helper: it rewrites the table with exactly its rules", "table inet %s has %d rules, want %d (changed by hand?)", helper.NATTableFor(d.opts.Config.Network.Bridge), st.NATRules, st.WantRules)
	}
	return doctor.Pass("table inet %s masquerades %s (%d rules)", helper.NATTableFor(d.opts.Config.Network.Bridge), st.Subnet, st.NATRules)
}

func (d *Daemon) checkForwarding(ctx context.Context) api.CheckResult {
	st, res, ok := d.helperStatus(ctx)
	if !ok {
		return res
	}
	if !st.Forwarding {
		return doctor.Failf("restart the helper (it enables forwarding), or `sudo sysctl -w net.ipv4.ip_forward=1`", "IPv4 forwarding is off: guests cannot reach the outside")
	}
	return doctor.Pass("net.ipv4.ip_forward = 1")
}

func (d *Daemon) checkPool(context.Context) api.CheckResult {
	free, used, size, err := d.net.pool.Level()
	d.net.mu.Lock()
	ready, lastErr := d.net.ready, d.net.lastErr
	d.net.mu.Unlock()
	switch {
	case !ready:
		return doctor.Warnf("fix the network-helper check; the pool fills once the helper answers", "not filled yet: %v", lastErr)
	case err != nil && free < size:
		return doctor.Warnf("see the daemon log; VMs still start, with a TAP created on demand", "%d of %d warm TAPs free (%d in use); refill failing: %v", free, size, used, err)
	}
	return doctor.Pass("%d of %d warm TAPs free, %d in use", free, size, used)
}

func (d *Daemon) checkLeaks(ctx context.Context) api.CheckResult {
	if _, res, ok := d.helperStatus(ctx); !ok {
		return res
	}
	devs, err := d.net.client.List(ctx)
	if err != nil {
		return doctor.Warnf("see the helper's log", "cannot list devices: %v", err)
	}
	referenced, err := d.referencedTAPs(ctx)
	if err != nil {
		return doctor.Warnf("see the store check", "cannot list VMs: %v", err)
	}
	used := d.net.pool.Used()
	var leaked []string
	for _, dev := range devs {
		if !helper.IsTAPName(dev.Name) {
			continue
		}
		_, byVM := referenced[dev.Name]
		_, inUse := used[dev.Name]
		if helper.IsVMTAP(dev.Name) && !byVM && !inUse {
			leaked = append(leaked, dev.Name)
		}
	}
	if len(leaked) > 0 {
		return doctor.Warnf("restart the daemon: it deletes TAPs no VM references at start", "TAPs no VM references: %s", strings.Join(leaked, ", "))
	}
	return doctor.Pass("no leaked banger devices or rules (%d devices)", len(devs))
}

func (d *Daemon) networkReady() bool {
	if d.net == nil {
		return false
	}
	d.net.mu.Lock()
	defer d.net.mu.Unlock()
	return d.net.ready
}
