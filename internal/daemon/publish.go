package daemon

// --publish-all: the daemon asks a VM's agent which TCP ports the guest listens on (on
// 127.0.0.1 or a wildcard address) every couple of seconds, and forwards each, from 1024
// up, from the same port on the host's 127.0.0.1, closing the forward when the guest port
// goes away (Lima's way). Ports the VM already forwards explicitly are left to those
// forwards; a host port that is taken is reported and not retried until the guest port
// goes away and comes back.

import (
	"context"
	"slices"
	"sync"
	"time"

	"github.com/banger-vm/banger/internal/api"
	"github.com/banger-vm/banger/internal/portfwd"
)

const (
	// maxAutoForwards bounds a VM's --publish-all forwards: the guest chooses how many
	// ports it listens on.
	maxAutoForwards = 64
	// minAutoPort: privileged ports are not published (an unprivileged daemon cannot bind
	// them, and the guest's sshd is reached with vm ssh).
	minAutoPort = 1024
)

// publisher is a VM's --publish-all forwards.
type publisher struct {
	cancel context.CancelFunc
	done   chan struct{}
	mu     sync.Mutex
	fwd    map[int]*portfwd.Forwarder // by guest (and host) port
	failed map[int]string             // guest port -> why its host port does not listen
}

// startPublisher starts following a VM's listeners, unless it already is.
func (d *Daemon) startPublisher(vmID, vmName string) {
	p := &d.ports
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.active == nil {
		p.init()
	}
	if p.auto[vmID] != nil {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	pub := &publisher{cancel: cancel, done: make(chan struct{}), fwd: map[int]*portfwd.Forwarder{}, failed: map[int]string{}}
	p.auto[vmID] = pub
	every := p.publishEvery
	if every <= 0 {
		every = 2 * time.Second
	}
	go d.runPublisher(ctx, vmID, vmName, pub, every)
}

func (pub *publisher) stop() {
	pub.cancel()
	<-pub.done
}

func (d *Daemon) runPublisher(ctx context.Context, vmID, vmName string, pub *publisher, every time.Duration) {
	defer close(pub.done)
	defer pub.follow(nil, nil)
	t := time.NewTicker(every)
	defer t.Stop()
	dial := d.tcpDialer(vmID, vmName)
	for {
		if m := d.machine(vmID); m != nil {
			lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			ports, err := m.Agent().Listeners(lctx)
			cancel()
			if err == nil && ctx.Err() == nil {
				pub.follow(d.autoCandidates(vmID, ports), func(port int) (*portfwd.Forwarder, error) {
					return portfwd.Listen(portfwd.Spec{HostIP: portfwd.DefaultHostIP, HostPort: port, GuestPort: port, Proto: "tcp"},
						portfwd.Options{TCP: dial, Log: d.log})
				})
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// autoCandidates are the guest ports to publish: from minAutoPort up, not forwarded
// explicitly (by guest port, or by the host port it would take), at most maxAutoForwards.
func (d *Daemon) autoCandidates(vmID string, ports []int) []int {
	p := &d.ports
	explicit := map[int]bool{}
	p.mu.Lock()
	for _, f := range p.active[vmID] {
		if s := f.Spec(); s.Proto == "tcp" {
			explicit[s.GuestPort], explicit[s.HostPort] = true, true
		}
	}
	p.mu.Unlock()
	var out []int
	for _, port := range ports {
		if port >= minAutoPort && !explicit[port] && len(out) < maxAutoForwards {
			out = append(out, port)
		}
	}
	return out
}

// follow makes the forwards those of want: gone ports close, new ones listen (with
// listen), taken ones are remembered as failed until they go away.
func (pub *publisher) follow(want []int, listen func(int) (*portfwd.Forwarder, error)) {
	pub.mu.Lock()
	defer pub.mu.Unlock()
	keep := map[int]bool{}
	for _, port := range want {
		keep[port] = true
	}
	for port, f := range pub.fwd {
		if !keep[port] {
			f.Close()
			delete(pub.fwd, port)
		}
	}
	for port := range pub.failed {
		if !keep[port] {
			delete(pub.failed, port)
		}
	}
	for _, port := range want {
		if pub.fwd[port] != nil || pub.failed[port] != "" {
			continue
		}
		f, err := listen(port)
		if err != nil {
			pub.failed[port] = err.Error()
			continue
		}
		pub.fwd[port] = f
	}
}

// ports describes the forwards, ascending.
func (pub *publisher) ports() []api.VMPort {
	pub.mu.Lock()
	defer pub.mu.Unlock()
	var out []api.VMPort
	for port := range pub.fwd {
		out = append(out, api.VMPort{HostIP: portfwd.DefaultHostIP, HostPort: port, GuestPort: port, Proto: "tcp", Listening: true, Auto: true})
	}
	for port, why := range pub.failed {
		out = append(out, api.VMPort{HostIP: portfwd.DefaultHostIP, HostPort: port, GuestPort: port, Proto: "tcp", Error: why, Auto: true})
	}
	slices.SortFunc(out, func(a, b api.VMPort) int { return a.HostPort - b.HostPort })
	return out
}
