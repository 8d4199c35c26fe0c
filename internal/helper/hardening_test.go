package helper

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// The tests in this file are the hostile-guest and hostile-neighbour regressions of issue 14
// (items 3, 4 and the helper part of 6). Each drives the real helper (real netlink, real
// nftables in the kernel) inside namespaces the test makes, and builds the hostile traffic
// itself.

// sysctlIn writes /proc/sys/<key> from a thread inside ns (/proc/sys/net is per namespace
// of the opening thread).
func sysctlIn(t testing.TB, ns netns.NsHandle, key, val string) {
	t.Helper()
	mustInNS(t, ns, "sysctl "+key, func() error {
		return os.WriteFile(filepath.Join("/proc/sys", key), []byte(val+"\n"), 0o644)
	})
}

func readSysctlIn(t testing.TB, ns netns.NsHandle, key string) string {
	t.Helper()
	var out string
	mustInNS(t, ns, "read sysctl "+key, func() error {
		b, err := os.ReadFile(filepath.Join("/proc/sys", key))
		out = strings.TrimSpace(string(b))
		return err
	})
	return out
}

// routeIn adds a route to dst via gw inside ns.
func routeIn(t testing.TB, ns netns.NsHandle, dst, gw string) {
	t.Helper()
	mustInNS(t, ns, "route "+dst+" via "+gw, func() error {
		_, d, err := net.ParseCIDR(dst)
		if err != nil {
			return err
		}
		return netlink.RouteAdd(&netlink.Route{Dst: d, Gw: net.ParseIP(gw)})
	})
}

// noRPFilter turns reverse-path filtering off in ns, as on many hosts: the helper's rules
// must stop forged sources by themselves, not rely on the host's rp_filter.
func noRPFilter(t testing.TB, ns netns.NsHandle, links ...string) {
	t.Helper()
	for _, l := range append([]string{"all", "default"}, links...) {
		sysctlIn(t, ns, "net/ipv4/conf/"+l+"/rp_filter", "0")
	}
}

// noRedirects makes a guest ignore the gateway's ICMP redirects, as a hostile guest would:
// otherwise the redirect, not the helper's rules, would decide where its packets go.
func noRedirects(t testing.TB, ns netns.NsHandle) {
	t.Helper()
	for _, l := range []string{"all", "default", "eth0"} {
		sysctlIn(t, ns, "net/ipv4/conf/"+l+"/accept_redirects", "0")
	}
}

// routerAdvertisement builds an ICMPv6 router advertisement (RFC 4861 4.2) announcing a
// default router with a 30-minute lifetime and an autonomous, on-link prefix. The checksum
// is left zero: the kernel fills it in on ICMPv6 raw sockets.
func routerAdvertisement(prefix netip.Addr) []byte {
	b := []byte{
		134, 0, 0, 0, // type RA, code 0, checksum
		64, 0, 0x07, 0x08, // current hop limit, flags, router lifetime 1800 s
		0, 0, 0, 0, // reachable time
		0, 0, 0, 0, // retransmit timer
		3, 4, 64, 0xc0, // option: prefix information, 32 bytes, /64, on-link + autonomous
		0x00, 0x01, 0x51, 0x80, // valid lifetime 86400 s
		0x00, 0x00, 0x38, 0x40, // preferred lifetime 14400 s
		0, 0, 0, 0, // reserved
	}
	p := prefix.As16()
	return append(b, p[:]...)
}

// sendRA sends a router advertisement to all nodes (ff02::1) out of ifname, from the
// link-local src, with hop limit 255 as receivers require. Run it inside the guest namespace.
func sendRA(ifname string, src, prefix netip.Addr) error {
	l, err := netlink.LinkByName(ifname)
	if err != nil {
		return err
	}
	idx := l.Attrs().Index
	// NODAD: usable at once, no duplicate-address-detection wait before we can send from it.
	if err := netlink.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: src.AsSlice(), Mask: net.CIDRMask(64, 128)}, Flags: unix.IFA_F_NODAD}); err != nil {
		return fmt.Errorf("add %s: %w", src, err)
	}
	fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_ICMPV6)
	if err != nil {
		return fmt.Errorf("raw ICMPv6 socket: %w", err)
	}
	defer unix.Close(fd)
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_MULTICAST_HOPS, 255); err != nil {
		return err
	}
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_MULTICAST_IF, idx); err != nil {
		return err
	}
	if err := unix.Bind(fd, &unix.SockaddrInet6{Addr: src.As16(), ZoneId: uint32(idx)}); err != nil {
		return fmt.Errorf("bind %s: %w", src, err)
	}
	all := netip.MustParseAddr("ff02::1").As16()
	return unix.Sendto(fd, routerAdvertisement(prefix), 0, &unix.SockaddrInet6{Addr: all, ZoneId: uint32(idx)})
}

// hostIPv6 lists the IPv6 configuration a router advertisement could add in ns: addresses
// and routes that are not link-local, multicast or loopback (those the kernel makes by
// itself, some of them asynchronously as links come up), with the device they are on.
func hostIPv6(t testing.TB, ns netns.NsHandle) []string {
	t.Helper()
	var out []string
	mustInNS(t, ns, "list IPv6 addresses and routes", func() error {
		links, err := netlink.LinkList()
		if err != nil {
			return err
		}
		name := map[int]string{}
		for _, l := range links {
			name[l.Attrs().Index] = l.Attrs().Name
		}
		kernelMade := func(ip net.IP) bool {
			return ip.IsLinkLocalUnicast() || ip.IsMulticast() || ip.IsLoopback()
		}
		addrs, err := netlink.AddrList(nil, netlink.FAMILY_V6)
		if err != nil {
			return err
		}
		for _, a := range addrs {
			if !kernelMade(a.IP) {
				out = append(out, fmt.Sprintf("address %s on %s", a.IPNet, name[a.LinkIndex]))
			}
		}
		routes, err := netlink.RouteListFiltered(netlink.FAMILY_V6, &netlink.Route{Table: unix.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
		if err != nil {
			return err
		}
		for _, r := range routes {
			if r.Gw == nil && r.Dst != nil && kernelMade(r.Dst.IP) {
				continue
			}
			out = append(out, fmt.Sprintf("route %v via %v dev %s table %d", r.Dst, r.Gw, name[r.LinkIndex], r.Table))
		}
		return nil
	})
	slices.Sort(out)
	return out
}

func TestRouterAdvertisementFromGuestChangesNothingOnHost(t *testing.T) {
	needRoot(t)
	tp := newTopology(t, true)
	dns := listenIn(t, tp.host, "10.213.66.1:53")
	before := hostIPv6(t, tp.host)

	mustInNS(t, tp.g1, "send a router advertisement from guest 1", func() error {
		return sendRA("eth0", netip.MustParseAddr("fe80::66:2"), netip.MustParseAddr("2001:db8:66::"))
	})
	// A barrier: the guest's next packets take the same path into the host, so once a TCP
	// handshake with the gateway completed, the advertisement was received too.
	if _, err := dialFrom(tp.g1, dns, "10.213.66.1:53"); err != nil {
		t.Fatalf("guest -> gateway DNS port after the advertisement: %v", err)
	}
	if after := hostIPv6(t, tp.host); !slices.Equal(before, after) {
		t.Fatalf("a guest's router advertisement configured the host's IPv6:\nbefore: %q\nafter:  %q", before, after)
	}

	// The settings themselves, on the bridge and on a real TAP (the guest above is a veth
	// plugged in the way TAPs are).
	do(t, tp.ops, Request{Op: OpCreateTAP, Name: "tap-pool-0"})
	for _, dev := range []string{"banger0", "vg1", "tap-pool-0"} {
		if v := readSysctlIn(t, tp.host, "net/ipv6/conf/"+dev+"/disable_ipv6"); v != "1" {
			t.Errorf("net.ipv6.conf.%s.disable_ipv6 = %s, want 1", dev, v)
		}
		for _, key := range []string{"accept_ra", "autoconf"} {
			if v := readSysctlIn(t, tp.host, "net/ipv6/conf/"+dev+"/"+key); v != "0" {
				t.Errorf("net.ipv6.conf.%s.%s = %s, want 0", dev, key, v)
			}
		}
	}
	// Re-applied when the bridge already exists (someone turned IPv6 back on).
	sysctlIn(t, tp.host, "net/ipv6/conf/banger0/disable_ipv6", "0")
	do(t, tp.ops, Request{Op: OpEnsureBridge})
	if v := readSysctlIn(t, tp.host, "net/ipv6/conf/banger0/disable_ipv6"); v != "1" {
		t.Errorf("ensure_bridge on an existing bridge left disable_ipv6 = %s, want 1", v)
	}
}

func TestOutsideCannotOpenConnectionsToGuests(t *testing.T) {
	needRoot(t)
	tp := newTopology(t, true)
	// A host on the uplink that routes the guest subnet via this one.
	routeIn(t, tp.outside, "10.213.66.0/24", "198.18.0.1")
	guest := listenIn(t, tp.g1, "10.213.66.2:8083")
	_, err := dialFrom(tp.outside, guest, "10.213.66.2:8083")
	if err == nil {
		t.Fatal("a host outside opened a new connection to a guest through the host")
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("outside -> guest: %v, want connection refused", err)
	}
	// Connections the guest opened still get their answers.
	out := listenIn(t, tp.outside, "198.18.0.2:8084")
	if _, err := dialFrom(tp.g1, out, "198.18.0.2:8084"); err != nil {
		t.Fatalf("guest -> outside: %v", err)
	}
}

// routeGuestsViaGateway makes each guest route the other via the gateway, so frames go
// guest -> bridge -> host IP forwarding -> bridge -> guest: port isolation (L2) never sees
// guest-to-guest frames. It returns a listener on guest 2 at 10.213.66.3:8085.
func routeGuestsViaGateway(t testing.TB, tp *topology) net.Listener {
	t.Helper()
	noRedirects(t, tp.g1)
	noRedirects(t, tp.g2)
	routeIn(t, tp.g1, "10.213.66.3/32", "10.213.66.1")
	routeIn(t, tp.g2, "10.213.66.2/32", "10.213.66.1")
	return listenIn(t, tp.g2, "10.213.66.3:8085")
}

func TestGuestCannotReachOtherGuestThroughGatewayWhenIsolated(t *testing.T) {
	needRoot(t)
	tp := newTopology(t, true)
	g2 := routeGuestsViaGateway(t, tp)
	_, err := dialFrom(tp.g1, g2, "10.213.66.3:8085")
	if err == nil {
		t.Fatal("guest 1 reached guest 2 by routing through the gateway although isolate_vms is on")
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("guest 1 -> gateway -> guest 2: %v, want connection refused", err)
	}
}

func TestGuestToGuestThroughGatewayWorksWhenIsolationIsOff(t *testing.T) {
	needRoot(t)
	tp := newTopology(t, false)
	g2 := routeGuestsViaGateway(t, tp)
	if _, err := dialFrom(tp.g1, g2, "10.213.66.3:8085"); err != nil {
		t.Fatalf("with isolate_vms = false guests may reach each other via the gateway too: %v", err)
	}
}

// listenUDPIn opens a UDP socket inside ns.
func listenUDPIn(t testing.TB, ns netns.NsHandle, addr string) *net.UDPConn {
	t.Helper()
	var c *net.UDPConn
	mustInNS(t, ns, "listen on udp "+addr, func() error {
		a, err := net.ResolveUDPAddr("udp4", addr)
		if err != nil {
			return err
		}
		c, err = net.ListenUDP("udp4", a)
		return err
	})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func sendUDP(from, to string, payload string) error {
	src, err := net.ResolveUDPAddr("udp4", from)
	if err != nil {
		return err
	}
	dst, err := net.ResolveUDPAddr("udp4", to)
	if err != nil {
		return err
	}
	c, err := net.DialUDP("udp4", src, dst)
	if err != nil {
		return fmt.Errorf("from %s: %w", from, err)
	}
	defer c.Close()
	_, err = c.Write([]byte(payload))
	return err
}

func TestSpoofedSourceDoesNotLeaveTheUplink(t *testing.T) {
	needRoot(t)
	tp := newTopology(t, true)
	noRPFilter(t, tp.host, "banger0", "up0", "vg1")
	noRPFilter(t, tp.outside, "out0")
	// Guest 1 claims an address that is not its lease and not in the subnet.
	addAddr(t, tp.g1, "eth0", "203.0.113.7/32")
	sink := listenUDPIn(t, tp.outside, "198.18.0.2:9000")

	mustInNS(t, tp.g1, "send a forged and then a real datagram", func() error {
		if err := sendUDP("203.0.113.7:0", "198.18.0.2:9000", "forged"); err != nil {
			return err
		}
		// The real one follows the same path: once it arrived, the forged one would have.
		return sendUDP("10.213.66.2:0", "198.18.0.2:9000", "real")
	})
	// The deadline only bounds a broken test; the verdict comes from the packets' order.
	_ = sink.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 64)
	for {
		n, from, err := sink.ReadFromUDP(buf)
		if err != nil {
			t.Fatalf("outside never got the guest's real datagram: %v", err)
		}
		switch string(buf[:n]) {
		case "forged":
			t.Fatalf("a datagram with the forged source %s left the host's uplink", from)
		case "real":
			if from.IP.String() != "198.18.0.1" {
				t.Fatalf("the real datagram arrived from %s, want the NAT address 198.18.0.1", from)
			}
			return
		}
	}
}

func TestGuestReachesOnlyDNSOnTheHost(t *testing.T) {
	needRoot(t)
	tp := newTopology(t, true)
	// A service bound to every address of the host, e.g. a developer's database.
	svc := listenIn(t, tp.host, "0.0.0.0:2222")
	for _, addr := range []string{"10.213.66.1:2222", "198.18.0.1:2222"} {
		_, err := dialFrom(tp.g1, svc, addr)
		if err == nil {
			t.Errorf("guest reached the host's 0.0.0.0 service at %s", addr)
		} else if !errors.Is(err, syscall.ECONNREFUSED) {
			t.Errorf("guest -> host %s: %v, want connection refused", addr, err)
		}
	}
	// DNS on the host stays reachable (the host may be the resolver guests are given)...
	dns := listenIn(t, tp.host, "10.213.66.1:53")
	if _, err := dialFrom(tp.g1, dns, "10.213.66.1:53"); err != nil {
		t.Errorf("guest -> host DNS: %v", err)
	}
	// ...and the host still opens connections to guests (ssh, image builds).
	ssh := listenIn(t, tp.g1, "10.213.66.2:22")
	if _, err := dialFrom(tp.host, ssh, "10.213.66.2:22"); err != nil {
		t.Errorf("host -> guest ssh: %v", err)
	}
}

func TestTAPsPerOwnerAreCapped(t *testing.T) {
	needRoot(t)
	ns := newNS(t)
	o := newOpsCfg(t, ns, NetConfig{OwnerUID: 1000, Bridge: "banger0", Subnet: testSubnet, MaxTAPs: 2})
	// Another owner's TAPs do not count against this one's cap.
	other := newOpsCfg(t, ns, NetConfig{OwnerUID: 1001, Bridge: "banger1", Subnet: netip.MustParsePrefix("10.213.67.0/24")})
	do(t, other, Request{Op: OpCreateTAP, Name: "bgr-other1"})
	do(t, o, Request{Op: OpCreateTAP, Name: "tap-pool-0"})
	do(t, o, Request{Op: OpCreateTAP, Name: "bgr-abc"})
	r := o.Do(Request{Op: OpCreateTAP, Name: "tap-pool-1"})
	if r.OK || r.Code != CodeRefused || !strings.Contains(r.Error, "already has 2 TAPs") || r.Hint == "" {
		t.Fatalf("third TAP with a cap of 2 = %+v, want a refusal saying the limit", r)
	}
	if _, ok := deviceMap(t, o)["tap-pool-1"]; ok {
		t.Fatal("the refused TAP was created")
	}
	do(t, o, Request{Op: OpCreateTAP, Name: "bgr-abc"}) // re-configuring one it has is fine
	do(t, o, Request{Op: OpDeleteTAP, Name: "tap-pool-0"})
	do(t, o, Request{Op: OpCreateTAP, Name: "tap-pool-1"})
}

func TestOwnersNeverListOrDeleteEachOthersTAPs(t *testing.T) {
	needRoot(t)
	ns := newNS(t)
	a := newOpsCfg(t, ns, NetConfig{OwnerUID: 1000, Bridge: "banger0", Subnet: testSubnet})
	b := newOpsCfg(t, ns, NetConfig{OwnerUID: 1001, Bridge: "banger1", Subnet: netip.MustParsePrefix("10.213.67.0/24")})
	// The same uid with a second helper on another bridge is another owner too.
	a2 := newOpsCfg(t, ns, NetConfig{OwnerUID: 1000, Bridge: "banger2", Subnet: netip.MustParsePrefix("10.213.68.0/24")})
	do(t, a, Request{Op: OpCreateTAP, Name: "bgr-aaa"})
	do(t, b, Request{Op: OpCreateTAP, Name: "bgr-bbb"})
	do(t, a2, Request{Op: OpCreateTAP, Name: "bgr-ccc"})

	devs := deviceMap(t, a)
	for _, foreign := range []string{"bgr-bbb", "bgr-ccc", "banger1", "banger2"} {
		if d, ok := devs[foreign]; ok {
			// The daemon deletes listed TAPs no VM references: listing is deleting.
			t.Errorf("owner 1000 on banger0 lists %+v, which is another helper's", d)
		}
	}
	if _, ok := devs["bgr-aaa"]; !ok {
		t.Errorf("owner 1000 does not list its own bgr-aaa: %+v", devs)
	}
	for _, foreign := range []string{"bgr-bbb", "bgr-ccc"} {
		if r := a.Do(Request{Op: OpDeleteTAP, Name: foreign}); r.OK || r.Code != CodeRefused {
			t.Errorf("owner 1000 on banger0 deleting %s = %+v, want refused", foreign, r)
		}
	}
	if _, ok := deviceMap(t, b)["bgr-bbb"]; !ok {
		t.Error("owner 1001's bgr-bbb is gone")
	}
	if _, ok := deviceMap(t, a2)["bgr-ccc"]; !ok {
		t.Error("banger2's bgr-ccc is gone")
	}
}

func TestHelperConnectionsAreLimited(t *testing.T) {
	needRoot(t)
	ns := newNS(t)
	o := newTestOps(t, ns, os.Getuid(), true)
	socket := serve(t, o, nil)
	var held []net.Conn
	defer func() {
		for _, c := range held {
			_ = c.Close()
		}
	}()
	for i := 0; i < maxConns; i++ {
		c, err := net.Dial("unix", socket)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
		// Served (not just queued): each holds a live slot.
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Write([]byte(`{"op":"list"}` + "\n")); err != nil {
			t.Fatal(err)
		}
		line := make([]byte, 4096)
		if n, err := c.Read(line); err != nil || !strings.Contains(string(line[:n]), `"ok":true`) {
			t.Fatalf("connection %d: %q %v", i, line[:n], err)
		}
	}
	r := rawCall(t, socket, `{"op":"list"}`)
	if r.OK || r.Code != CodeRefused || !strings.Contains(r.Error, "too many connections") {
		t.Fatalf("connection %d with %d open = %+v, want refused: too many connections", maxConns+1, maxConns, r)
	}
	for _, c := range held {
		_ = c.Close()
	}
	held = nil
	// Closed connections give their slots back (the server notices the close on its own
	// schedule, so this waits for it rather than assuming it happened).
	deadline := time.Now().Add(10 * time.Second)
	for {
		r := rawCall(t, socket, `{"op":"list"}`)
		if r.OK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("slots were not given back after the connections closed: %+v", r)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Two owners' helpers on one host (each its bridge and subnet) keep separate tables: one's
// ensure_nat or teardown leaves the other's rules alone, and the table all helpers shared
// before is replaced.
func TestHelpersOnTwoBridgesKeepTheirOwnRules(t *testing.T) {
	needRoot(t)
	ns := newNS(t)
	var legacy *nftables.Table
	mustInNS(t, ns, "add the legacy table", func() error {
		c, err := nftables.New(nftables.AsLasting())
		if err != nil {
			return err
		}
		defer c.CloseLasting()
		legacy = c.AddTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: legacyNATTable})
		return c.Flush()
	})
	a := newOpsCfg(t, ns, NetConfig{OwnerUID: 1000, Bridge: "banger0", Subnet: testSubnet})
	b := newOpsCfg(t, ns, NetConfig{OwnerUID: 1001, Bridge: "banger1", Subnet: netip.MustParsePrefix("10.213.67.0/24")})
	for _, o := range []*Ops{a, b} {
		do(t, o, Request{Op: OpEnsureBridge})
		do(t, o, Request{Op: OpEnsureNAT})
	}
	tables := func() map[string]bool {
		out := map[string]bool{}
		mustInNS(t, ns, "list tables", func() error {
			c, err := nftables.New(nftables.AsLasting())
			if err != nil {
				return err
			}
			defer c.CloseLasting()
			ts, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
			for _, tb := range ts {
				out[tb.Name] = true
			}
			return err
		})
		return out
	}
	if got := tables(); !got["banger-banger0"] || !got["banger-banger1"] || got[legacy.Name] {
		t.Fatalf("tables after two helpers' ensure_nat: %v; want one per bridge and no legacy table", got)
	}
	for _, o := range []*Ops{a, b} {
		if st := do(t, o, Request{Op: OpStatus}).Status; !st.NATTable || st.NATRules != st.WantRules {
			t.Errorf("%s: table %v, %d rules, want %d", o.cfg.Bridge, st.NATTable, st.NATRules, st.WantRules)
		}
	}
	do(t, a, Request{Op: OpRemoveNAT})
	if got := tables(); got["banger-banger0"] || !got["banger-banger1"] {
		t.Fatalf("tables after one helper removed its NAT: %v; want the other's kept", got)
	}
}
