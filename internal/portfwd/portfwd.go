// Package portfwd forwards ports of the host to ports in a VM: a listener on the host
// whose every connection is relayed to a TCP port on the guest's loopback, through a dialer
// the caller gives (banger's goes through the guest agent, so it works with or without a
// guest network).
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
	Proto     string `json:"proto"` // "tcp"
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

// Parse reads the flag forms [HOSTIP:]HOSTPORT:GUESTPORT[/tcp] and GUESTPORT[/tcp] (a free
// host port is picked later, by Resolve). UDP is refused: only TCP is forwarded.
func Parse(text string) (Spec, error) {
	s := Spec{HostIP: DefaultHostIP, Proto: "tcp"}
	body, proto, hasProto := strings.Cut(text, "/")
	if hasProto {
		switch proto {
		case "tcp":
		case "udp":
			return Spec{}, fmt.Errorf("port %q: UDP is not forwarded (TCP only)", text)
		default:
			return Spec{}, fmt.Errorf("port %q: protocol %q: use tcp", text, proto)
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
	case s.Proto != "tcp":
		return fmt.Errorf("protocol %q", s.Proto)
	}
	return nil
}

// Resolve picks a free host port for a spec without one, so that the VM keeps it.
func Resolve(s Spec) (Spec, error) {
	if s.HostPort != 0 {
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

// Forwarder is one listening forward.
type Forwarder struct {
	spec   Spec
	ln     net.Listener
	dial   Dialer
	log    *slog.Logger
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// Listen binds spec's host address and relays each connection through dial. A taken
// address is an error that names the process holding it, when it can be found.
func Listen(spec Spec, dial Dialer, log *slog.Logger) (*Forwarder, error) {
	if err := spec.Check(); err != nil {
		return nil, fmt.Errorf("forward %s: %w", spec, err)
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(spec.HostIP, strconv.Itoa(spec.HostPort)))
	if err != nil {
		if errors.Is(err, syscall.EADDRINUSE) {
			return nil, fmt.Errorf("host port %s is taken by %s: pick another host port (-p OTHER:%d)",
				net.JoinHostPort(spec.HostIP, strconv.Itoa(spec.HostPort)), HolderOf(spec.HostIP, spec.HostPort), spec.GuestPort)
		}
		return nil, fmt.Errorf("forward %s: %w", spec, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	f := &Forwarder{spec: spec, ln: ln, dial: dial, log: log, ctx: ctx, cancel: cancel}
	f.wg.Add(1)
	go f.serve()
	return f, nil
}

// Spec is what f forwards.
func (f *Forwarder) Spec() Spec { return f.spec }

// Close stops listening and ends the forward's open connections.
func (f *Forwarder) Close() {
	f.cancel()
	_ = f.ln.Close()
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
	guest, err := f.dial(ctx, f.spec.GuestPort)
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
