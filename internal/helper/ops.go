package helper

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// NetConfig is what the helper manages.
type NetConfig struct {
	// OwnerUID owns the TAP devices and is the only uid served.
	OwnerUID int
	Bridge   string
	Subnet   netip.Prefix
	// IsolateVMs sets bridge port isolation on every TAP and drops forwarding from the
	// bridge back into it, so guests reach the gateway (and through it the outside) but not
	// each other, neither directly (L2) nor routed through the gateway (L3).
	IsolateVMs bool
	// MaxTAPs caps the TAPs the owner may have on this helper's bridge (0: DefaultMaxTAPs),
	// so a runaway or hostile daemon cannot fill the host with kernel devices.
	MaxTAPs int
}

// DefaultMaxTAPs is the TAP cap when none is configured: more VMs than this host class can
// run, plus the warm pool.
const DefaultMaxTAPs = 256

func (c NetConfig) maxTAPs() int {
	if c.MaxTAPs > 0 {
		return c.MaxTAPs
	}
	return DefaultMaxTAPs
}

// Validate checks the configuration before anything is touched.
func (c NetConfig) Validate() error {
	if c.OwnerUID < 0 {
		return errors.New("owner uid is not set: pass --owner-uid (the uid the banger daemon runs as)")
	}
	if err := ValidBridgeName(c.Bridge); err != nil {
		return err
	}
	return ValidSubnet(c.Subnet)
}

// Ops performs the helper's operations in one network namespace. Every operation runs on a
// single OS thread that has entered that namespace, because TAP creation (/dev/net/tun),
// sysctls (/proc/sys/net) and netlink sockets all act in the namespace of the calling thread.
// Serialising them also means two requests can never interleave half-done changes.
type Ops struct {
	cfg  NetConfig
	nsFd int // -1: the namespace the helper was started in
	work chan func()
	quit chan struct{}
}

// NewOps starts the worker thread. ns may be a handle of a network namespace to work in
// (tests); a closed or zero-value handle (-1) means the current one. NewOps does not take
// ownership of ns.
func NewOps(cfg NetConfig, ns netns.NsHandle) (*Ops, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	o := &Ops{cfg: cfg, nsFd: -1, work: make(chan func()), quit: make(chan struct{})}
	ready := make(chan error, 1)
	go func() {
		// The thread is never unlocked: when the goroutine returns, Go discards the thread,
		// so a thread switched into another namespace can never run unrelated goroutines.
		runtime.LockOSThread()
		if ns.IsOpen() {
			if err := netns.Set(ns); err != nil {
				ready <- fmt.Errorf("enter network namespace: %w", err)
				return
			}
			o.nsFd = int(ns)
		}
		ready <- nil
		for {
			select {
			case f := <-o.work:
				f()
			case <-o.quit:
				return
			}
		}
	}()
	if err := <-ready; err != nil {
		return nil, err
	}
	return o, nil
}

// Close stops the worker thread.
func (o *Ops) Close() { close(o.quit) }

// Config returns the configuration the operations enforce.
func (o *Ops) Config() NetConfig { return o.cfg }

func (o *Ops) run(f func() error) error {
	done := make(chan error, 1)
	select {
	case o.work <- func() { done <- f() }:
	case <-o.quit:
		return errors.New("helper is shutting down")
	}
	return <-done
}

// refusal is an error that means "not allowed", as opposed to "tried and failed".
type refusal struct{ msg, hint string }

func (r *refusal) Error() string { return r.msg }

func refuse(hint, format string, args ...any) error {
	return &refusal{msg: fmt.Sprintf(format, args...), hint: hint}
}

// Do validates and performs one request. Refused requests change nothing.
func (o *Ops) Do(req Request) Response {
	var resp Response
	err := o.validate(req)
	if err == nil {
		err = o.run(func() error { return o.perform(req, &resp) })
	}
	if err != nil {
		var r *refusal
		if errors.As(err, &r) {
			return Response{Code: CodeRefused, Error: r.msg, Hint: r.hint}
		}
		return Response{Code: CodeFailed, Error: err.Error(), Hint: "see the helper log (journalctl -u banger-helper)"}
	}
	resp.OK = true
	return resp
}

const namesHint = "banger only manages devices named tap-pool-N or bgr-<id> (lowercase letters and digits, at most 11)"

func (o *Ops) validate(req Request) error {
	onlyFields := func(name, ip, subnet bool) error {
		if (req.Name != "" && !name) || (req.IP != "" && !ip) || (req.Subnet != "" && !subnet) {
			return refuse("send only the fields this operation takes", "operation %q got fields it does not take", req.Op)
		}
		return nil
	}
	switch req.Op {
	case OpEnsureBridge, OpList, OpStatus:
		return onlyFields(false, false, false)
	case OpCreateTAP, OpDeleteTAP:
		if err := onlyFields(true, req.Op == OpCreateTAP, false); err != nil {
			return err
		}
		if !IsTAPName(req.Name) {
			return refuse(namesHint, "device name %q is not a banger TAP name", req.Name)
		}
		if req.IP != "" {
			ip, err := netip.ParseAddr(req.IP)
			if err != nil {
				return refuse("pass an IPv4 address inside "+o.cfg.Subnet.String(), "ip %q is not an address", req.IP)
			}
			if err := ValidGuestIP(o.cfg.Subnet, ip); err != nil {
				return refuse("guest addresses come from "+o.cfg.Subnet.String()+" ([network] subnet)", "%v", err)
			}
		}
		return nil
	case OpEnsureNAT, OpRemoveNAT:
		if err := onlyFields(false, false, true); err != nil {
			return err
		}
		if req.Subnet != "" {
			p, err := netip.ParsePrefix(req.Subnet)
			if err != nil || p != o.cfg.Subnet {
				return refuse("the daemon and the helper must use the same [network] subnet; fix the config and restart both",
					"subnet %q is not the helper's subnet %s", req.Subnet, o.cfg.Subnet)
			}
		}
		return nil
	case "":
		return refuse("send {\"op\": ...} with one of the documented operations", "request has no op")
	}
	return refuse("operations: ensure_bridge, create_tap, delete_tap, list, ensure_nat, remove_nat, status", "unknown operation %q", req.Op)
}

func (o *Ops) perform(req Request, resp *Response) error {
	switch req.Op {
	case OpEnsureBridge:
		_, err := o.ensureBridge()
		return err
	case OpCreateTAP:
		return o.createTAP(req.Name, req.IP)
	case OpDeleteTAP:
		return o.deleteTAP(req.Name)
	case OpList:
		devs, err := o.list()
		resp.Devices = devs
		return err
	case OpEnsureNAT:
		return o.ensureNAT()
	case OpRemoveNAT:
		return o.removeNAT()
	case OpStatus:
		st, err := o.status()
		resp.Status = st
		return err
	}
	return refuse("", "unknown operation %q", req.Op)
}

// checkOverlap refuses a subnet that overlaps a route not on our bridge: using it would
// shadow (or be shadowed by) an existing network, e.g. a VPN or a Docker bridge.
func (o *Ops) checkOverlap() error {
	routes, err := netlink.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return fmt.Errorf("list routes: %w", err)
	}
	var brIndex int
	if br, err := netlink.LinkByName(o.cfg.Bridge); err == nil {
		brIndex = br.Attrs().Index
	}
	for _, r := range routes {
		if r.Dst == nil || (brIndex != 0 && r.LinkIndex == brIndex) {
			continue // our own bridge's routes are expected
		}
		ones, _ := r.Dst.Mask.Size()
		if ones == 0 {
			continue // a default route does not make a subnet collide
		}
		addr, ok := netip.AddrFromSlice(r.Dst.IP.To4())
		if !ok {
			continue
		}
		if netip.PrefixFrom(addr, ones).Overlaps(o.cfg.Subnet) {
			dev := fmt.Sprintf("ifindex %d", r.LinkIndex)
			if l, err := netlink.LinkByIndex(r.LinkIndex); err == nil {
				dev = l.Attrs().Name
			}
			return refuse("choose another [network] subnet (and restart the helper and the daemon), or remove that route",
				"subnet %s overlaps the existing route %s on %s", o.cfg.Subnet, r.Dst, dev)
		}
	}
	return nil
}

func (o *Ops) ensureBridge() (netlink.Link, error) {
	if err := o.checkOverlap(); err != nil {
		return nil, err
	}
	link, err := netlink.LinkByName(o.cfg.Bridge)
	var notFound netlink.LinkNotFoundError
	switch {
	case errors.As(err, &notFound):
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: o.cfg.Bridge}}
		if err := netlink.LinkAdd(br); err != nil {
			return nil, fmt.Errorf("create bridge %s: %w", o.cfg.Bridge, err)
		}
		if link, err = netlink.LinkByName(o.cfg.Bridge); err != nil {
			return nil, err
		}
	case err != nil:
		return nil, fmt.Errorf("look up bridge %s: %w", o.cfg.Bridge, err)
	case link.Type() != "bridge":
		return nil, refuse("rename that device or set another [network] bridge", "%s exists and is a %s, not a bridge", o.cfg.Bridge, link.Type())
	}
	// Before the bridge is up, and again for an existing one (someone may have turned it
	// back on): a guest's router advertisement must never configure the host.
	if err := noIPv6(o.cfg.Bridge); err != nil {
		return nil, err
	}
	gw := &netlink.Addr{IPNet: &net.IPNet{IP: net.IP(Gateway(o.cfg.Subnet).AsSlice()), Mask: net.CIDRMask(o.cfg.Subnet.Bits(), 32)}}
	if err := netlink.AddrReplace(link, gw); err != nil {
		return nil, fmt.Errorf("set %s on bridge %s: %w", gw.IPNet, o.cfg.Bridge, err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return nil, fmt.Errorf("bring bridge %s up: %w", o.cfg.Bridge, err)
	}
	return link, nil
}

// EnsureBridge creates the bridge if needed and gives it the gateway address.
func (o *Ops) EnsureBridge() error {
	return o.run(func() error { _, err := o.ensureBridge(); return err })
}

func tapAlias(ip string) string { return "banger ip=" + ip }

func (o *Ops) createTAP(name, ip string) (err error) {
	br, err := netlink.LinkByName(o.cfg.Bridge)
	if err != nil {
		if br, err = o.ensureBridge(); err != nil {
			return err
		}
	}
	if existing, lerr := netlink.LinkByName(name); lerr == nil {
		if existing.Type() != "tuntap" {
			return refuse("remove that device by hand; banger will not touch it", "%s exists and is a %s, not a TAP", name, existing.Type())
		}
		// An existing TAP is re-attached and re-configured: creating is idempotent, so a
		// client that lost a response can simply retry. Another owner's, or one on another
		// helper's bridge, is not ours to take.
		if err := o.checkOurs(existing, br.Attrs().Index); err != nil {
			return err
		}
		return o.configureTAP(existing, br, ip)
	}
	if err := o.checkTAPCap(); err != nil {
		return err
	}
	if err := createPersistentTAP(name, uint32(o.cfg.OwnerUID)); err != nil {
		return fmt.Errorf("create TAP %s: %w", name, err)
	}
	tap, err := netlink.LinkByName(name)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			_ = netlink.LinkDel(tap)
		}
	}()
	return o.configureTAP(tap, br, ip)
}

// createPersistentTAP creates a TAP with the ioctls directly rather than through netlink's
// Tuntap, which always sets a group: with none set (the kernel's default) only the owner
// uid may open the device, which is what we want.
func createPersistentTAP(name string, owner uint32) error {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return err
	}
	// NO_PI and VNET_HDR are what Firecracker and QEMU open TAPs with; TUN_EXCL makes a
	// racing create fail instead of silently sharing a device.
	ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR | unix.IFF_TUN_EXCL)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		return fmt.Errorf("TUNSETIFF: %w", err)
	}
	if err := unix.IoctlSetInt(fd, unix.TUNSETOWNER, int(owner)); err != nil {
		return fmt.Errorf("TUNSETOWNER: %w", err)
	}
	if err := unix.IoctlSetInt(fd, unix.TUNSETPERSIST, 1); err != nil {
		return fmt.Errorf("TUNSETPERSIST: %w", err)
	}
	return nil
}

func (o *Ops) configureTAP(tap, br netlink.Link, ip string) error {
	name := tap.Attrs().Name
	// The host side of a guest's link takes no IPv6 part: no link-local address for guests
	// to reach host services on, no router advertisements accepted from them.
	if err := noIPv6(name); err != nil {
		return err
	}
	if err := netlink.LinkSetMaster(tap, br); err != nil {
		return fmt.Errorf("attach %s to %s: %w", name, o.cfg.Bridge, err)
	}
	if err := netlink.LinkSetIsolated(tap, o.cfg.IsolateVMs); err != nil {
		return fmt.Errorf("set port isolation on %s: %w", name, err)
	}
	if ip != "" {
		if err := netlink.LinkSetAlias(tap, tapAlias(ip)); err != nil {
			return fmt.Errorf("label %s: %w", name, err)
		}
	}
	if err := netlink.LinkSetUp(tap); err != nil {
		return fmt.Errorf("bring %s up: %w", name, err)
	}
	return nil
}

// AttachPort enslaves an existing link to the bridge with the configured isolation, exactly
// as TAPs are. Tests use it to plug veth "guests" in.
func (o *Ops) AttachPort(name string) error {
	return o.run(func() error {
		l, err := netlink.LinkByName(name)
		if err != nil {
			return err
		}
		br, err := netlink.LinkByName(o.cfg.Bridge)
		if err != nil {
			return err
		}
		return o.configureTAP(l, br, "")
	})
}

func (o *Ops) deleteTAP(name string) error {
	link, err := netlink.LinkByName(name)
	var notFound netlink.LinkNotFoundError
	if errors.As(err, &notFound) {
		return nil // already gone: deleting is idempotent
	}
	if err != nil {
		return fmt.Errorf("look up %s: %w", name, err)
	}
	if link.Type() != "tuntap" {
		return refuse("remove that device by hand; banger will not touch it", "%s is a %s, not a TAP", name, link.Type())
	}
	brIndex := 0
	if br, err := netlink.LinkByName(o.cfg.Bridge); err == nil {
		brIndex = br.Attrs().Index
	}
	if err := o.checkOurs(link, brIndex); err != nil {
		return err
	}
	if err := netlink.LinkDel(link); err != nil {
		return fmt.Errorf("delete %s: %w", name, err)
	}
	return nil
}

func (o *Ops) list() ([]Device, error) {
	links, err := netlink.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	names := map[int]string{}
	for _, l := range links {
		names[l.Attrs().Index] = l.Attrs().Name
	}
	brIndex := 0
	for _, l := range links {
		if l.Attrs().Name == o.cfg.Bridge {
			brIndex = l.Attrs().Index
		}
	}
	out := []Device{}
	for _, l := range links {
		a := l.Attrs()
		if a.Name != o.cfg.Bridge && !IsTAPName(a.Name) {
			continue
		}
		// Only this helper's TAPs: the daemon deletes listed TAPs no VM references, so
		// listing another owner's (or another bridge's) would be deleting them.
		if a.Name != o.cfg.Bridge && o.checkOurs(l, brIndex) != nil {
			continue
		}
		d := Device{Name: a.Name, Kind: l.Type(), Up: a.Flags&net.FlagUp != 0, Master: names[a.MasterIndex], Owner: -1}
		if t, ok := l.(*netlink.Tuntap); ok {
			d.Owner = int64(t.Owner)
		}
		if ip, ok := strings.CutPrefix(a.Alias, "banger ip="); ok {
			d.IP = ip
		}
		if a.MasterIndex != 0 {
			if pi, err := netlink.LinkGetProtinfo(l); err == nil {
				d.Isolated = pi.Isolated
			}
		}
		out = append(out, d)
	}
	return out, nil
}

// checkOurs refuses a TAP this helper did not make for its owner: one owned by another uid,
// or attached to a bridge other than ours (another banger helper's, even of the same uid).
// brIndex is our bridge's ifindex, 0 when it does not exist.
func (o *Ops) checkOurs(l netlink.Link, brIndex int) error {
	name := l.Attrs().Name
	t, ok := l.(*netlink.Tuntap)
	if !ok {
		return refuse("remove that device by hand; banger will not touch it", "%s is a %s, not a TAP", name, l.Type())
	}
	if t.Owner != uint32(o.cfg.OwnerUID) {
		return refuse("it belongs to another user's banger; that user's daemon manages it",
			"%s belongs to uid %d, not %d", name, int32(t.Owner), o.cfg.OwnerUID)
	}
	if m := l.Attrs().MasterIndex; m != 0 && m != brIndex {
		master := fmt.Sprintf("ifindex %d", m)
		if ml, err := netlink.LinkByIndex(m); err == nil {
			master = ml.Attrs().Name
		}
		return refuse("it belongs to the banger helper of that bridge", "%s is attached to %s, not to this helper's bridge %s", name, master, o.cfg.Bridge)
	}
	return nil
}

// checkTAPCap refuses a new TAP when the owner already has the maximum.
func (o *Ops) checkTAPCap() error {
	links, err := netlink.LinkList()
	if err != nil {
		return fmt.Errorf("list links: %w", err)
	}
	n := 0
	for _, l := range links {
		if t, ok := l.(*netlink.Tuntap); ok && IsTAPName(l.Attrs().Name) && t.Owner == uint32(o.cfg.OwnerUID) {
			n++
		}
	}
	if max := o.cfg.maxTAPs(); n >= max {
		return refuse("delete VMs you no longer need (banger vm rm), or lower [network] tap_pool_size",
			"uid %d already has %d TAPs, the most this helper creates", o.cfg.OwnerUID, n)
	}
	return nil
}

// ipv6Conf is where the per-interface IPv6 settings live (in the calling thread's namespace).
const ipv6Conf = "/proc/sys/net/ipv6/conf"

// noIPv6 turns IPv6 off on a host-side interface of the guest network. disable_ipv6 alone
// would do; accept_ra=0 and autoconf=0 are written first so that a tool that later turns
// IPv6 back on still does not let guests' router advertisements configure the host. Guests
// get no IPv6 from banger (the subnet and NAT are IPv4), so nothing is lost.
func noIPv6(ifname string) error {
	if _, err := os.Stat(ipv6Conf); errors.Is(err, os.ErrNotExist) {
		return nil // IPv6 is not in this kernel (ipv6.disable=1): nothing to configure
	}
	for _, kv := range [][2]string{{"accept_ra", "0"}, {"autoconf", "0"}, {"disable_ipv6", "1"}} {
		p := ipv6Conf + "/" + ifname + "/" + kv[0]
		if err := os.WriteFile(p, []byte(kv[1]+"\n"), 0o644); err != nil {
			return fmt.Errorf("turn IPv6 off on %s (%s): %w", ifname, p, err)
		}
	}
	return nil
}

const ipForward = "/proc/sys/net/ipv4/ip_forward"

func readForwarding() (bool, error) {
	b, err := os.ReadFile(ipForward)
	if err != nil {
		return false, err
	}
	return strings.TrimSpace(string(b)) == "1", nil
}

func enableForwarding() error {
	if on, err := readForwarding(); err == nil && on {
		return nil
	}
	if err := os.WriteFile(ipForward, []byte("1\n"), 0o644); err != nil {
		return fmt.Errorf("enable IPv4 forwarding (%s): %w", ipForward, err)
	}
	return nil
}

func (o *Ops) status() (*Status, error) {
	st := &Status{OwnerUID: o.cfg.OwnerUID, Bridge: o.cfg.Bridge, Subnet: o.cfg.Subnet.String(),
		Gateway: Gateway(o.cfg.Subnet).String(), IsolateVMs: o.cfg.IsolateVMs, BridgeAddrs: []string{}, WantRules: o.natRuleCount()}
	if br, err := netlink.LinkByName(o.cfg.Bridge); err == nil {
		st.BridgeUp = br.Attrs().Flags&net.FlagUp != 0
		addrs, _ := netlink.AddrList(br, netlink.FAMILY_V4)
		for _, a := range addrs {
			st.BridgeAddrs = append(st.BridgeAddrs, a.IPNet.String())
		}
	}
	var err error
	if st.Forwarding, err = readForwarding(); err != nil {
		return nil, err
	}
	if st.NATTable, st.NATRules, err = o.natState(); err != nil {
		return nil, err
	}
	return st, nil
}

// Teardown removes everything banger's helper made: TAPs, the bridge and the NAT table. It
// is not offered over the socket (the owner could cut running VMs off); `banger helper
// teardown` runs it as root.
func (o *Ops) Teardown() error {
	return o.run(func() error {
		var errs []error
		devs, err := o.list()
		if err != nil {
			return err
		}
		for _, d := range devs {
			if d.Name == o.cfg.Bridge {
				continue
			}
			if err := o.deleteTAP(d.Name); err != nil {
				errs = append(errs, err)
			}
		}
		if br, err := netlink.LinkByName(o.cfg.Bridge); err == nil && br.Type() == "bridge" {
			if err := netlink.LinkDel(br); err != nil {
				errs = append(errs, fmt.Errorf("delete bridge %s: %w", o.cfg.Bridge, err))
			}
		}
		errs = append(errs, o.removeNAT())
		return errors.Join(errs...)
	})
}
