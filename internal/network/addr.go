package network

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"

	"github.com/banger-vm/banger/internal/helper"
	"github.com/banger-vm/banger/internal/store"
)

// MACFor derives a VM's MAC from its id, so it is the same at every boot (guests keep
// their interface naming and DHCP-less config) without storing anything. 02: locally
// administered unicast; ba: marks banger's; four bytes of SHA-256 of the id.
func MACFor(vmID string) net.HardwareAddr {
	h := sha256.Sum256([]byte(vmID))
	return net.HardwareAddr{0x02, 0xba, h[0], h[1], h[2], h[3]}
}

// VMTAPName is the on-demand TAP name of a VM: bgr- and 11 hex digits of a hash of its id.
// A hash, not an id prefix: ids that share a prefix (time-ordered ids created in the same
// millisecond) must not share a device.
func VMTAPName(vmID string) string {
	h := sha256.Sum256([]byte("tap:" + vmID))
	return fmt.Sprintf("bgr-%x", h[:6])[:15]
}

// Lease is what a guest needs to configure its interface.
type Lease struct {
	VMID    string       `json:"vm_id"`
	IP      netip.Addr   `json:"ip"`
	Prefix  int          `json:"prefix"`
	Gateway netip.Addr   `json:"gateway"`
	MAC     string       `json:"mac"`
	DNS     []netip.Addr `json:"dns,omitempty"`
}

// Allocator hands out guest addresses from the subnet, recorded as leases in the store.
type Allocator struct {
	st     *store.Store
	subnet netip.Prefix
	dns    []netip.Addr
}

// NewAllocator returns an allocator over subnet.
func NewAllocator(st *store.Store, subnet netip.Prefix, dns []netip.Addr) (*Allocator, error) {
	if err := helper.ValidSubnet(subnet); err != nil {
		return nil, err
	}
	return &Allocator{st: st, subnet: subnet, dns: dns}, nil
}

func (a *Allocator) lease(l store.Lease) Lease {
	return Lease{VMID: l.VMID, IP: l.IP, Prefix: a.subnet.Bits(), Gateway: helper.Gateway(a.subnet), MAC: l.MAC.String(), DNS: a.dns}
}

// Allocate returns the VM's lease, creating one with the lowest free address. It is
// idempotent, and safe against concurrent allocators: the store's uniqueness decides races
// (ErrConflict), and the loser moves to the next address.
func (a *Allocator) Allocate(ctx context.Context, vmID string) (Lease, error) {
	if l, err := a.st.GetLeaseByVM(ctx, vmID); err == nil {
		return a.lease(l), nil
	} else if !errors.Is(err, store.ErrNotFound) {
		return Lease{}, err
	}
	mac := MACFor(vmID)
	leases, err := a.st.ListLeases(ctx)
	if err != nil {
		return Lease{}, err
	}
	used := map[netip.Addr]bool{}
	for _, l := range leases {
		used[l.IP] = true
		if bytes.Equal(l.MAC, mac) && l.VMID != vmID {
			return Lease{}, fmt.Errorf("the MAC %s derived for vm %s is already leased to vm %s: recreate one of the VMs", mac, vmID, l.VMID)
		}
	}
	last := helper.LastAddr(a.subnet)
	for ip := helper.Gateway(a.subnet).Next(); ip.IsValid() && ip.Less(last); ip = ip.Next() {
		if used[ip] {
			continue
		}
		err := a.st.PutLease(ctx, store.Lease{IP: ip, VMID: vmID, MAC: mac})
		if err == nil {
			return a.lease(store.Lease{IP: ip, VMID: vmID, MAC: mac}), nil
		}
		if !errors.Is(err, store.ErrConflict) {
			return Lease{}, err
		}
		// Lost a race: either this IP was taken, or the VM got a lease concurrently.
		if l, err := a.st.GetLeaseByVM(ctx, vmID); err == nil {
			return a.lease(l), nil
		}
	}
	return Lease{}, fmt.Errorf("no free guest address left in %s: delete unused VMs or configure a larger [network] subnet", a.subnet)
}

// Release frees the VM's lease; releasing a VM without one is not an error.
func (a *Allocator) Release(ctx context.Context, vmID string) error {
	l, err := a.st.GetLeaseByVM(ctx, vmID)
	if errors.Is(err, store.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if err := a.st.DeleteLease(ctx, l.IP); err != nil && !errors.Is(err, store.ErrNotFound) {
		return err
	}
	return nil
}

// Reconcile checks the leases at start. Leases of deleted VMs cannot exist (the store
// cascades), so what remains to find is leases outside the current subnet (the subnet was
// changed): they are released, so those VMs get a fresh address on their next start, and
// returned so the caller can say so.
func (a *Allocator) Reconcile(ctx context.Context) ([]store.Lease, error) {
	leases, err := a.st.ListLeases(ctx)
	if err != nil {
		return nil, err
	}
	var moved []store.Lease
	for _, l := range leases {
		if helper.ValidGuestIP(a.subnet, l.IP) == nil {
			continue
		}
		if err := a.st.DeleteLease(ctx, l.IP); err != nil && !errors.Is(err, store.ErrNotFound) {
			return moved, err
		}
		moved = append(moved, l)
	}
	return moved, nil
}

// Resolver files: the host's own, then systemd-resolved's list of real upstreams, which is
// what to use when the host's points at the 127.0.0.53 stub (unreachable from a guest).
var resolvConfFiles = []string{"/etc/resolv.conf", "/run/systemd/resolve/resolv.conf"}

// GuestDNS returns the resolvers for guests: the configured list when there is one,
// otherwise the host's upstream resolvers without loopback stubs.
func GuestDNS(configured []string) ([]netip.Addr, error) {
	return guestDNS(configured, resolvConfFiles)
}

func guestDNS(configured []string, files []string) ([]netip.Addr, error) {
	if len(configured) > 0 {
		var out []netip.Addr
		for _, s := range configured {
			a, err := netip.ParseAddr(s)
			if err != nil {
				return nil, fmt.Errorf("[network] dns: %q is not an IP address", s)
			}
			out = append(out, a)
		}
		return out, nil
	}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		if got := parseResolvConf(data); len(got) > 0 {
			return got, nil
		}
	}
	return nil, errors.New("no usable DNS server found in /etc/resolv.conf or /run/systemd/resolve/resolv.conf (loopback stubs do not work from a guest): set [network] dns = [\"<resolver ip>\"]")
}

func parseResolvConf(data []byte) []netip.Addr {
	var out []netip.Addr
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 || f[0] != "nameserver" {
			continue
		}
		a, err := netip.ParseAddr(f[1])
		if err != nil || a.IsLoopback() || a.IsUnspecified() || a.Zone() != "" {
			continue
		}
		out = append(out, a.Unmap())
	}
	return out
}
