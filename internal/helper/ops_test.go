package helper

import (
	"bufio"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

var testSubnet = netip.MustParsePrefix("10.213.66.0/24")

func newTestOps(t testing.TB, ns netns.NsHandle, owner int, isolate bool) *Ops {
	t.Helper()
	return newOpsCfg(t, ns, NetConfig{OwnerUID: owner, Bridge: "banger0", Subnet: testSubnet, IsolateVMs: isolate})
}

// newOpsCfg is an Ops on cfg in ns, torn down when the test ends.
func newOpsCfg(t testing.TB, ns netns.NsHandle, cfg NetConfig) *Ops {
	t.Helper()
	o, err := NewOps(cfg, ns)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = o.Teardown()
		o.Close()
	})
	return o
}

func do(t testing.TB, o *Ops, req Request) Response {
	t.Helper()
	r := o.Do(req)
	if !r.OK {
		t.Fatalf("%+v: %s: %s (%s)", req, r.Code, r.Error, r.Hint)
	}
	return r
}

func deviceMap(t testing.TB, o *Ops) map[string]Device {
	t.Helper()
	out := map[string]Device{}
	for _, d := range do(t, o, Request{Op: OpList}).Devices {
		out[d.Name] = d
	}
	return out
}

func hostForwarding(t testing.TB) string {
	b, err := os.ReadFile(ipForward)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestBridgeTAPAndNATAppearAndAreRemovedCompletely(t *testing.T) {
	needRoot(t)
	hostBefore := hostForwarding(t)
	ns := newNS(t)
	o := newTestOps(t, ns, 1000, true)

	do(t, o, Request{Op: OpEnsureBridge})
	do(t, o, Request{Op: OpEnsureBridge}) // idempotent
	do(t, o, Request{Op: OpCreateTAP, Name: "tap-pool-0"})
	do(t, o, Request{Op: OpCreateTAP, Name: "bgr-abc123", IP: "10.213.66.7"})
	do(t, o, Request{Op: OpCreateTAP, Name: "bgr-abc123", IP: "10.213.66.7"}) // retry is fine

	devs := deviceMap(t, o)
	br, ok := devs["banger0"]
	if !ok || br.Kind != "bridge" || !br.Up {
		t.Fatalf("bridge = %+v (all: %+v)", br, devs)
	}
	for _, name := range []string{"tap-pool-0", "bgr-abc123"} {
		d := devs[name]
		if d.Kind != "tuntap" || d.Master != "banger0" || d.Owner != 1000 || !d.Isolated {
			t.Errorf("%s = %+v, want a tuntap owned by 1000, on banger0, isolated", name, d)
		}
	}
	if devs["bgr-abc123"].IP != "10.213.66.7" {
		t.Errorf("bgr-abc123 does not carry its guest address: %+v", devs["bgr-abc123"])
	}
	mustInNS(t, ns, "check TAP mode and bridge address", func() error {
		l, err := netlink.LinkByName("tap-pool-0")
		if err != nil {
			return err
		}
		if tap, ok := l.(*netlink.Tuntap); !ok || tap.Mode != netlink.TUNTAP_MODE_TAP {
			t.Errorf("tap-pool-0 is %#v, want a TAP", l)
		}
		brl, _ := netlink.LinkByName("banger0")
		addrs, err := netlink.AddrList(brl, netlink.FAMILY_V4)
		if err != nil || len(addrs) != 1 || addrs[0].IPNet.String() != "10.213.66.1/24" {
			t.Errorf("bridge addresses = %v (%v), want exactly 10.213.66.1/24", addrs, err)
		}
		return nil
	})

	do(t, o, Request{Op: OpEnsureNAT, Subnet: "10.213.66.0/24"})
	do(t, o, Request{Op: OpEnsureNAT}) // rewritten, not duplicated
	rules, err := o.NATRules()
	if err != nil {
		t.Fatal(err)
	}
	// forward: forged, ipv6, 2 isolation rejects, accept out, established in, 2 rejects in;
	// input: forged, ipv6, established, echo-request, DNS udp and tcp, 2 rejects.
	if len(rules["postrouting"]) != 1 || len(rules["forward"]) != 8 || len(rules["input"]) != 8 {
		t.Fatalf("rules = postrouting %d, forward %d, input %d; want 1, 8 and 8", len(rules["postrouting"]), len(rules["forward"]), len(rules["input"]))
	}
	var masq bool
	for _, e := range rules["postrouting"][0].Exprs {
		if _, ok := e.(*expr.Masq); ok {
			masq = true
		}
	}
	if !masq {
		t.Errorf("postrouting rule has no masquerade: %+v", rules["postrouting"][0].Exprs)
	}
	st := do(t, o, Request{Op: OpStatus}).Status
	if !st.Forwarding || !st.NATTable || st.NATRules != st.WantRules || !st.BridgeUp || len(st.BridgeAddrs) != 1 {
		t.Errorf("status = %+v", st)
	}
	if got := hostForwarding(t); got != hostBefore {
		t.Errorf("the host's own ip_forward changed from %q to %q: the test leaked out of its namespace", hostBefore, got)
	}

	// Removal: TAPs, table, then everything.
	do(t, o, Request{Op: OpDeleteTAP, Name: "bgr-abc123"})
	do(t, o, Request{Op: OpDeleteTAP, Name: "bgr-abc123"}) // already gone is fine
	do(t, o, Request{Op: OpRemoveNAT})
	if st := do(t, o, Request{Op: OpStatus}).Status; st.NATTable || st.NATRules != 0 {
		t.Errorf("after remove_nat: %+v", st)
	}
	if err := o.Teardown(); err != nil {
		t.Fatal(err)
	}
	if devs := deviceMap(t, o); len(devs) != 0 {
		t.Errorf("after teardown these banger devices remain: %+v", devs)
	}
}

func TestSubnetOverlappingARouteIsRefused(t *testing.T) {
	needRoot(t)
	ns := newNS(t)
	other := newNS(t)
	// Another network already uses 10.213.0.0/16 here (say a VPN).
	vethInto(t, other, "vpn0", ns, "vpn0", "10.213.0.9/16", "")
	o := newTestOps(t, ns, 1000, true)
	r := o.Do(Request{Op: OpEnsureBridge})
	if r.OK || r.Code != CodeRefused || !strings.Contains(r.Error, "overlaps the existing route 10.213.0.0/16 on vpn0") ||
		!strings.Contains(r.Hint, "subnet") {
		t.Fatalf("ensure_bridge over an overlapping route = %+v", r)
	}
	if devs := deviceMap(t, o); len(devs) != 0 {
		t.Errorf("a refused ensure_bridge created %+v", devs)
	}
}

// topology: the helper's namespace (bridge + NAT + an uplink to "outside"), an outside
// namespace that has no route to the guest subnet, and two guests on the bridge.
type topology struct {
	host, outside, g1, g2 netns.NsHandle
	ops                   *Ops
}

func newTopology(t *testing.T, isolate bool) *topology {
	tp := &topology{host: newNS(t), outside: newNS(t), g1: newNS(t), g2: newNS(t)}
	tp.ops = newTestOps(t, tp.host, 0, isolate)
	do(t, tp.ops, Request{Op: OpEnsureBridge})
	do(t, tp.ops, Request{Op: OpEnsureNAT})
	// 198.18.0.0/15 is reserved for benchmarking: it exists only inside these namespaces.
	vethInto(t, tp.host, "up0", tp.outside, "out0", "198.18.0.2/30", "")
	addAddr(t, tp.host, "up0", "198.18.0.1/30")
	vethInto(t, tp.host, "vg1", tp.g1, "eth0", "10.213.66.2/24", "10.213.66.1")
	vethInto(t, tp.host, "vg2", tp.g2, "eth0", "10.213.66.3/24", "10.213.66.1")
	for _, p := range []string{"vg1", "vg2"} {
		if err := tp.ops.AttachPort(p); err != nil {
			t.Fatal(err)
		}
	}
	return tp
}

// dialFrom connects from ns to addr and returns what the listener saw as our address.
func dialFrom(ns netns.NsHandle, ln net.Listener, addr string) (string, error) {
	seen := make(chan string, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			seen <- ""
			return
		}
		defer c.Close()
		_, _ = c.Write([]byte(c.RemoteAddr().String() + "\n"))
		seen <- c.RemoteAddr().String()
	}()
	var peer string
	err := inNS(ns, func() error {
		c, err := net.DialTimeout("tcp4", addr, 1500*time.Millisecond)
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(3 * time.Second))
		line, err := bufio.NewReader(c).ReadString('\n')
		peer = strings.TrimSpace(line)
		return err
	})
	if err != nil {
		return "", err
	}
	<-seen
	return peer, nil
}

func TestGuestReachesOutsideThroughNATAndGuestsAreIsolated(t *testing.T) {
	needRoot(t)
	tp := newTopology(t, true)

	out := listenIn(t, tp.outside, "198.18.0.2:8080")
	peer, err := dialFrom(tp.g1, out, "198.18.0.2:8080")
	if err != nil {
		t.Fatalf("guest -> outside through NAT: %v", err)
	}
	if host, _, _ := net.SplitHostPort(peer); host != "198.18.0.1" {
		t.Fatalf("outside saw the guest as %s, want the NAT address 198.18.0.1", peer)
	}

	// The gateway's DNS port stays reachable under isolation (TestGuestReachesOnlyDNSOnTheHost
	// has the rest of what a guest may reach on the host)...
	gw := listenIn(t, tp.host, "10.213.66.1:53")
	if _, err := dialFrom(tp.g1, gw, "10.213.66.1:53"); err != nil {
		t.Fatalf("guest -> gateway: %v", err)
	}
	// ...the other guest does not.
	g2 := listenIn(t, tp.g2, "10.213.66.3:8082")
	if _, err := dialFrom(tp.g1, g2, "10.213.66.3:8082"); err == nil {
		t.Fatal("guest 1 reached guest 2 although the bridge ports are isolated")
	}
	_ = g2.Close()
}

func TestGuestToGuestWorksWhenIsolationIsOff(t *testing.T) {
	needRoot(t)
	tp := newTopology(t, false)
	g2 := listenIn(t, tp.g2, "10.213.66.3:8082")
	peer, err := dialFrom(tp.g1, g2, "10.213.66.3:8082")
	if err != nil {
		t.Fatalf("with isolate_vms = false guests should reach each other: %v", err)
	}
	if host, _, _ := net.SplitHostPort(peer); host != "10.213.66.2" {
		t.Errorf("guest 2 saw %s, want guest 1's own address (no NAT on the bridge)", peer)
	}
}
