package guestinit

import (
	"fmt"
	"net"
	"time"

	"github.com/vishvananda/netlink"
)

// configureNetwork brings up lo and, when banger.ip is set, eth0 with its address and
// default route. It waits for eth0: virtio_net probes asynchronously after it loads.
func (b *boot) configureNetwork() error {
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("find lo: %w", err)
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		return fmt.Errorf("bring lo up: %w", err)
	}
	if !b.cfg.Address.IsValid() {
		return nil
	}
	deadline := time.Now().Add(time.Duration(b.cfg.DeviceWait) * time.Second)
	var link netlink.Link
	for {
		link, err = netlink.LinkByName("eth0")
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no eth0 after %ds: does the VM have a network device? (%v)", b.cfg.DeviceWait, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: b.cfg.Address.Addr().AsSlice(), Mask: net.CIDRMask(b.cfg.Address.Bits(), 32)}}
	if err := netlink.AddrAdd(link, addr); err != nil {
		return fmt.Errorf("add %s to eth0: %w", b.cfg.Address, err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("bring eth0 up: %w", err)
	}
	if b.cfg.Gateway.IsValid() {
		route := &netlink.Route{LinkIndex: link.Attrs().Index, Gw: b.cfg.Gateway.AsSlice()}
		if err := netlink.RouteAdd(route); err != nil {
			return fmt.Errorf("add default route via %s: %w", b.cfg.Gateway, err)
		}
	}
	return nil
}
