package helper

import (
	"fmt"
	"net"
	"os"
	"runtime"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// Tests here change real kernel state, but only inside network namespaces they create:
// anonymous namespaces (no bind mount) that vanish with their devices, addresses and
// nftables tables when the last handle closes and no thread is left inside.

func needRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipped: needs root to create network namespaces, bridges, TAPs and nftables rules (CI runs this package as root)")
	}
}

// newNS creates an anonymous network namespace with lo up. The creating thread is thrown
// away (the goroutine exits locked), so no test thread is left switched into it.
func newNS(t testing.TB) netns.NsHandle {
	t.Helper()
	type res struct {
		ns  netns.NsHandle
		err error
	}
	ch := make(chan res, 1)
	go func() {
		runtime.LockOSThread()
		ns, err := netns.New()
		if err == nil {
			if lo, lerr := netlink.LinkByName("lo"); lerr == nil {
				err = netlink.LinkSetUp(lo)
			}
		}
		ch <- res{ns, err}
	}()
	r := <-ch
	if r.err != nil {
		if r.ns.IsOpen() {
			_ = r.ns.Close()
		}
		t.Fatalf("create network namespace: %v", r.err)
	}
	t.Cleanup(func() { _ = r.ns.Close() })
	return r.ns
}

// inNS runs f on a fresh thread inside ns; the thread is discarded afterwards.
func inNS(ns netns.NsHandle, f func() error) error {
	ch := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := netns.Set(ns); err != nil {
			ch <- err
			return
		}
		ch <- f()
	}()
	return <-ch
}

func mustInNS(t testing.TB, ns netns.NsHandle, what string, f func() error) {
	t.Helper()
	if err := inNS(ns, f); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// vethInto creates a veth pair in ns "here" whose peer (named peer) moves to ns "there"
// with address addr (CIDR), up, and an optional default route via gw.
func vethInto(t testing.TB, here netns.NsHandle, name string, there netns.NsHandle, peer, addr, gw string) {
	t.Helper()
	mustInNS(t, here, "create veth "+name, func() error {
		v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: peer, PeerNamespace: netlink.NsFd(int(there))}
		if err := netlink.LinkAdd(v); err != nil {
			return err
		}
		l, err := netlink.LinkByName(name)
		if err != nil {
			return err
		}
		return netlink.LinkSetUp(l)
	})
	mustInNS(t, there, "configure "+peer, func() error {
		l, err := netlink.LinkByName(peer)
		if err != nil {
			return err
		}
		a, err := netlink.ParseAddr(addr)
		if err != nil {
			return err
		}
		if err := netlink.AddrAdd(l, a); err != nil {
			return err
		}
		if err := netlink.LinkSetUp(l); err != nil {
			return err
		}
		if gw == "" {
			return nil
		}
		return netlink.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Gw: net.ParseIP(gw)})
	})
}

// addAddr gives a link in ns an address (the helper's namespace's uplink).
func addAddr(t testing.TB, ns netns.NsHandle, name, addr string) {
	t.Helper()
	mustInNS(t, ns, fmt.Sprintf("address %s on %s", addr, name), func() error {
		l, err := netlink.LinkByName(name)
		if err != nil {
			return err
		}
		a, err := netlink.ParseAddr(addr)
		if err != nil {
			return err
		}
		return netlink.AddrAdd(l, a)
	})
}

// listenIn opens a TCP listener inside ns; the socket stays in ns whatever thread uses it.
func listenIn(t testing.TB, ns netns.NsHandle, addr string) net.Listener {
	t.Helper()
	var ln net.Listener
	mustInNS(t, ns, "listen on "+addr, func() (err error) {
		ln, err = net.Listen("tcp4", addr)
		return err
	})
	t.Cleanup(func() { _ = ln.Close() })
	return ln
}
