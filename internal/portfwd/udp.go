package portfwd

// UDP forwards. UDP has no connections, so a forward keeps one flow per client address
// (source IP and port): the first datagram from an address opens a flow to the guest port
// (through the dialer, one guest socket per flow), later ones reuse it, and whatever the
// guest port sends back on that flow goes to that address only. That is what request/response
// protocols (DNS, NTP, a game's or a service's ping) need. A flow ends after UDPIdle without
// a datagram either way, when MaxUDPSessions flows exist and a new client comes (the least
// recently active one goes), or when the forward closes. Datagrams are dropped, as UDP drops
// them, when a flow's queue or the forward's byte budget is full or the guest end cannot be
// reached.

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

const (
	// DefaultUDPIdle is how long a UDP client's flow stays open without traffic.
	DefaultUDPIdle = 60 * time.Second
	// DefaultMaxUDPSessions bounds a UDP forward's client flows.
	DefaultMaxUDPSessions = 256
	// MaxDatagram is the largest datagram forwarded: the most an IPv4 datagram holds.
	MaxDatagram = 65507
	// udpFlowQueue is how many datagrams wait for one flow's guest end.
	udpFlowQueue = 64
	// udpQueueBytes bounds the bytes waiting for the guest, over all of a forward's flows.
	udpQueueBytes = 4 << 20
)

type udpState struct {
	mu       sync.Mutex
	sessions map[netip.AddrPort]*udpSession
	queued   atomic.Int64 // bytes waiting in the sessions' queues
	epoch    time.Time    // activity times are offsets from it (monotonic)
}

// udpSession is one client address's flow.
type udpSession struct {
	client netip.AddrPort
	in     chan []byte
	ctx    context.Context
	cancel context.CancelFunc
	last   atomic.Int64 // time of the last datagram either way, since epoch
}

func (f *Forwarder) touch(s *udpSession) { s.last.Store(int64(time.Since(f.udp.epoch))) }

func (f *Forwarder) startUDP() {
	f.udp.sessions = map[netip.AddrPort]*udpSession{}
	f.udp.epoch = time.Now()
	f.wg.Add(1)
	go f.expireUDP()
	go f.serveUDP()
}

// UDPSessions is how many client flows a UDP forward has open.
func (f *Forwarder) UDPSessions() int {
	f.udp.mu.Lock()
	defer f.udp.mu.Unlock()
	return len(f.udp.sessions)
}

func (f *Forwarder) serveUDP() {
	defer f.wg.Done()
	buf := make([]byte, MaxDatagram+1) // one more: a longer datagram shows as truncated
	for {
		n, from, err := f.pc.ReadFromUDPAddrPort(buf)
		if err != nil {
			if f.ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			f.log.Warn("port forward read", "forward", f.spec.String(), "err", err)
			select {
			case <-f.ctx.Done():
				return
			case <-time.After(100 * time.Millisecond):
			}
			continue
		}
		if n > MaxDatagram {
			continue
		}
		f.deliver(from, buf[:n])
	}
}

// deliver queues a client's datagram on its flow, opening the flow if needed.
func (f *Forwarder) deliver(from netip.AddrPort, p []byte) {
	u := &f.udp
	u.mu.Lock()
	defer u.mu.Unlock()
	s := u.sessions[from]
	if s == nil {
		if len(u.sessions) >= f.o.MaxUDPSessions {
			var oldest *udpSession
			for _, o := range u.sessions {
				if oldest == nil || o.last.Load() < oldest.last.Load() {
					oldest = o
				}
			}
			f.dropLocked(oldest)
		}
		ctx, cancel := context.WithCancel(f.ctx)
		s = &udpSession{client: from, in: make(chan []byte, udpFlowQueue), ctx: ctx, cancel: cancel}
		u.sessions[from] = s
		f.wg.Add(1)
		go f.runSession(s)
	}
	f.touch(s)
	if u.queued.Load()+int64(len(p)) > udpQueueBytes {
		return
	}
	select {
	case s.in <- append([]byte(nil), p...):
		u.queued.Add(int64(len(p)))
	default:
	}
}

// dropLocked ends s and forgets it; f.udp.mu is held. No datagram is queued on s after.
func (f *Forwarder) dropLocked(s *udpSession) {
	if f.udp.sessions[s.client] == s {
		delete(f.udp.sessions, s.client)
	}
	s.cancel()
}

// runSession relays one client's flow: its queued datagrams to the guest, the guest's
// datagrams back to it.
func (f *Forwarder) runSession(s *udpSession) {
	defer f.wg.Done()
	defer func() {
		f.udp.mu.Lock()
		f.dropLocked(s)
		f.udp.mu.Unlock()
		for {
			select {
			case p := <-s.in:
				f.udp.queued.Add(-int64(len(p)))
			default:
				return
			}
		}
	}()
	ctx, cancel := context.WithTimeout(s.ctx, dialTimeout)
	guest, err := f.o.UDP(ctx, f.spec.GuestPort)
	cancel()
	if err != nil {
		if s.ctx.Err() == nil {
			f.log.Info("port forward: guest end not reachable", "forward", f.spec.String(), "err", err)
		}
		return
	}
	// Ending the flow (idle, evicted, Close) closes the guest end, which also unblocks a
	// write to a guest end that stopped reading.
	stop := context.AfterFunc(s.ctx, func() { _ = guest.Close() })
	defer stop()
	fromGuest := make(chan struct{})
	go func() {
		defer close(fromGuest)
		buf := make([]byte, MaxDatagram)
		for {
			n, err := guest.ReadPacket(buf)
			if err != nil {
				// The guest end closed or sent a frame that is not a datagram.
				if s.ctx.Err() == nil {
					f.log.Info("port forward: UDP flow ended by the guest end", "forward", f.spec.String(), "client", s.client.String(), "err", err)
				}
				s.cancel()
				return
			}
			f.touch(s)
			_, _ = f.pc.WriteToUDPAddrPort(buf[:n], s.client)
		}
	}()
	for done := false; !done; {
		select {
		case p := <-s.in:
			f.udp.queued.Add(-int64(len(p)))
			done = guest.WritePacket(p) != nil
		case <-s.ctx.Done():
			done = true
		}
	}
	s.cancel()
	_ = guest.Close()
	<-fromGuest
}

// expireUDP ends the flows idle for longer than UDPIdle.
func (f *Forwarder) expireUDP() {
	defer f.wg.Done()
	t := time.NewTicker(max(f.o.UDPIdle/4, 10*time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-f.ctx.Done():
			return
		case <-t.C:
		}
		idleSince := int64(time.Since(f.udp.epoch) - f.o.UDPIdle)
		f.udp.mu.Lock()
		for _, s := range f.udp.sessions {
			if s.last.Load() < idleSince {
				f.dropLocked(s)
			}
		}
		f.udp.mu.Unlock()
	}
}
