// Package portfwd forwards ports of the host to ports in a VM: a listener on the host
// whose every connection is relayed to a TCP port on the guest's loopback, or a UDP socket
// whose datagrams are relayed per client address to a UDP port there, through dialers the
// caller gives (banger's go through the guest agent, so they work with or without a guest
// network).
package portfwd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Spec is one forward: HostIP:HostPort on the host to GuestPort in the guest.
type Spec struct {
	HostIP    string `json:"host_ip"`
	HostPort  int    `json:"host_port"` // 0 until a free one is picked (Resolve)
	GuestPort int    `json:"guest_port"`
	Proto     string `json:"proto"` // "tcp" or "udp"
}

// DefaultHostIP is where a forward listens unless told otherwise: only this machine.
const DefaultHostIP = "127.0.0.1"

func (s Spec) String() string {
	return net.JoinHostPort(s.HostIP, strconv.Itoa(s.HostPort)) + "->" + strconv.Itoa(s.GuestPort) + "/" + s.Proto
}

// Key identifies a forward on the host: two forwards cannot share it.
func (s Spec) Key() string {
	return net.JoinHostPort(s.HostIP, strconv.Itoa(s.HostPort)) + "/" + s.Proto
}

// Parse reads the flag forms [HOSTIP:]HOSTPORT:GUESTPORT[/tcp|/udp] and
// GUESTPORT[/tcp|/udp] (a free host port is picked later, by Resolve).
func Parse(text string) (Spec, error) {
	s := Spec{HostIP: DefaultHostIP, Proto: "tcp"}
	body, proto, hasProto := strings.Cut(text, "/")
	if hasProto {
		switch proto {
		case "tcp", "udp":
			s.Proto = proto
		default:
			return Spec{}, fmt.Errorf("port %q: protocol %q: use tcp or udp", text, proto)
		}
	}
	port := func(p string) (int, error) {
		n, err := strconv.Atoi(p)
		if err != nil || n < 1 || n > 65535 || strconv.Itoa(n) != p {
			return 0, fmt.Errorf("port %q: %q is not a port 1-65535", text, p)
		}
		return n, nil
	}
	var err error
	// The host IP may be an IPv6 literal in brackets: [::1]:8080:80.
	if rest, ok := strings.CutPrefix(body, "["); ok {
		ip, ports, found := strings.Cut(rest, "]:")
		if !found || strings.Count(ports, ":") != 1 {
			return Spec{}, fmt.Errorf("port %q: want [HOSTIP]:HOSTPORT:GUESTPORT", text)
		}
		s.HostIP, body = ip, ports
	} else if strings.Count(body, ":") == 2 {
		ip, ports, _ := strings.Cut(body, ":")
		s.HostIP, body = ip, ports
	}
	parts := strings.Split(body, ":")
	switch len(parts) {
	case 1:
		if s.GuestPort, err = port(parts[0]); err != nil {
			return Spec{}, err
		}
	case 2:
		if s.HostPort, err = port(parts[0]); err != nil {
			return Spec{}, err
		}
		if s.GuestPort, err = port(parts[1]); err != nil {
			return Spec{}, err
		}
	default:
		return Spec{}, fmt.Errorf("port %q: want [HOSTIP:]HOSTPORT:GUESTPORT or GUESTPORT", text)
	}
	ip, err := netip.ParseAddr(s.HostIP)
	if err != nil || ip.Zone() != "" {
		return Spec{}, fmt.Errorf("port %q: host IP %q is not an IP address", text, s.HostIP)
	}
	s.HostIP = ip.String()
	return s, nil
}

// Check validates a stored spec (a record on disk is read back through it).
func (s Spec) Check() error {
	ip, err := netip.ParseAddr(s.HostIP)
	switch {
	case err != nil || ip.String() != s.HostIP:
		return fmt.Errorf("host IP %q", s.HostIP)
	case s.HostPort < 1 || s.HostPort > 65535 || s.GuestPort < 1 || s.GuestPort > 65535:
		return fmt.Errorf("ports %d->%d", s.HostPort, s.GuestPort)
	case s.Proto != "tcp" && s.Proto != "udp":
		return fmt.Errorf("protocol %q", s.Proto)
	}
	return nil
}

// Resolve picks a free host port for a spec without one, so that the VM keeps it.
func Resolve(s Spec) (Spec, error) {
	if s.HostPort != 0 {
		return s, nil
	}
	if s.Proto == "udp" {
		pc, err := net.ListenPacket("udp", net.JoinHostPort(s.HostIP, "0"))
		if err != nil {
			return s, fmt.Errorf("pick a free UDP port on %s: %w", s.HostIP, err)
		}
		defer pc.Close()
		s.HostPort = pc.LocalAddr().(*net.UDPAddr).Port
		return s, nil
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(s.HostIP, "0"))
	if err != nil {
		return s, fmt.Errorf("pick a free port on %s: %w", s.HostIP, err)
	}
	defer ln.Close()
	s.HostPort = ln.Addr().(*net.TCPAddr).Port
	return s, nil
}

// Dialer connects to a TCP port on the guest's loopback.
type Dialer func(ctx context.Context, guestPort int) (io.ReadWriteCloser, error)

// PacketConn is a flow of datagrams to and from one UDP port on the guest's loopback.
type PacketConn interface {
	// ReadPacket reads the guest port's next datagram into buf (MaxDatagram bytes).
	ReadPacket(buf []byte) (int, error)
	WritePacket(p []byte) error
	Close() error
}

// PacketDialer opens a UDP flow to a port on the guest's loopback.
type PacketDialer func(ctx context.Context, guestPort int) (PacketConn, error)

// Options are how a forward reaches the guest, and its UDP limits.
type Options struct {
	TCP Dialer
	UDP PacketDialer
	Log *slog.Logger
	// UDPIdle ends a UDP client's flow after this long without a datagram either way
	// (0: DefaultUDPIdle).
	UDPIdle time.Duration
	// MaxUDPSessions bounds a UDP forward's client flows; the least recently active is
	// ended for a new one (0: DefaultMaxUDPSessions).
	MaxUDPSessions int
}

// Forwarder is one listening forward.
type Forwarder struct {
	spec   Spec
	ln     net.Listener // tcp
	pc     *net.UDPConn // udp
	o      Options
	log    *slog.Logger
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	udp    udpState
}

// Listen binds spec's host address and relays each connection (TCP) or each client's
// datagrams (UDP) through the matching dialer of o. A taken address is an error that
// names the process holding it, when it can be found.
func Listen(spec Spec, o Options) (*Forwarder, error) {
	if err := spec.Check(); err != nil {
		return nil, fmt.Errorf("forward %s: %w", spec, err)
	}
	if (spec.Proto == "tcp" && o.TCP == nil) || (spec.Proto == "udp" && o.UDP == nil) {
		return nil, fmt.Errorf("forward %s: no way to reach the guest's %s ports", spec, spec.Proto)
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.UDPIdle <= 0 {
		o.UDPIdle = DefaultUDPIdle
	}
	if o.MaxUDPSessions <= 0 {
		o.MaxUDPSessions = DefaultMaxUDPSessions
	}
	addr := net.JoinHostPort(spec.HostIP, strconv.Itoa(spec.HostPort))
	ctx, cancel := context.WithCancel(context.Background())
	f := &Forwarder{spec: spec, o: o, log: o.Log, ctx: ctx, cancel: cancel}
	var err error
	if spec.Proto == "udp" {
		var ua *net.UDPAddr
		if ua, err = net.ResolveUDPAddr("udp", addr); err == nil {
			f.pc, err = net.ListenUDP("udp", ua)
		}
	} else {
		f.ln, err = net.Listen("tcp", addr)
	}
	if err != nil {
		cancel()
		if errors.Is(err, syscall.EADDRINUSE) {
			suffix := ""
			if spec.Proto == "udp" {
				addr, suffix = addr+"/udp", "/udp"
			}
			return nil, fmt.Errorf("host port %s is taken by %s: pick another host port (-p OTHER:%d%s)",
				addr, HolderOf(spec.Proto, spec.HostIP, spec.HostPort), spec.GuestPort, suffix)
		}
		return nil, fmt.Errorf("forward %s: %w", spec, err)
	}
	f.wg.Add(1)
	if f.pc != nil {
		f.startUDP()
	} else {
		go f.serve()
	}
	return f, nil
}

// Spec is what f forwards.
func (f *Forwarder) Spec() Spec { return f.spec }

// Close stops listening and ends the forward's open connections and UDP flows.
func (f *Forwarder) Close() {
	f.cancel()
	if f.ln != nil {
		_ = f.ln.Close()
	}
	if f.pc != nil {
		_ = f.pc.Close()
	}
	f.wg.Wait()
}

func (f *Forwarder) serve() {
	defer f.wg.Done()
	for {
		c, err := f.ln.Accept()
		if err != nil {
			if f.ctx.Err() != nil {
				return
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			// EMFILE and the like: wait a little rather than spin.
			f.log.Warn("port forward accept", "forward", f.spec.String(), "err", err)
			select {
			case <-f.ctx.Done():
				return
			case <-time.After(100 * time.Millisecond):
			}
			continue
		}
		f.wg.Add(1)
		go f.relay(c)
	}
}

// dialTimeout bounds how long a connection waits for the guest end.
const dialTimeout = 15 * time.Second

func (f *Forwarder) relay(c net.Conn) {
	defer f.wg.Done()
	defer c.Close()
	ctx, cancel := context.WithTimeout(f.ctx, dialTimeout)
	guest, err := f.o.TCP(ctx, f.spec.GuestPort)
	cancel()
	if err != nil {
		f.log.Info("port forward: guest end not reachable", "forward", f.spec.String(), "err", err)
		return
	}
	defer guest.Close()
	// Each direction ends with a half-close where the other side has one, so a client that
	// finishes sending still gets its answer; the forward ends when the guest's side is done.
	fromGuest := make(chan struct{})
	go func() {
		_, _ = io.Copy(guest, c)
		if cw, ok := guest.(interface{ CloseWrite() error }); ok {
			_ = cw.CloseWrite()
		}
	}()
	go func() {
		_, _ = io.Copy(c, guest)
		close(fromGuest)
	}()
	select {
	case <-fromGuest:
	case <-f.ctx.Done():
	}
	_ = c.Close()
	_ = guest.Close()
}
