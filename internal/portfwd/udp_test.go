package portfwd

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/banger-vm/banger/internal/agent"
)

// udpResponder is a stand-in for a guest's UDP server: it answers each datagram with
// "re:PAYLOAD|PORT", PORT being the source port it came from (one per forward flow).
func udpResponder(t *testing.T) string {
	t.Helper()
	pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 65536)
		for {
			n, from, err := pc.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			pc.WriteToUDPAddrPort([]byte(fmt.Sprintf("re:%s|%d", buf[:n], from.Port())), from)
		}
	}()
	return pc.LocalAddr().String()
}

// connectedUDP is a PacketConn over a connected UDP socket: the guest end without an agent.
type connectedUDP struct{ *net.UDPConn }

func (c connectedUDP) ReadPacket(b []byte) (int, error) { return c.Read(b) }
func (c connectedUDP) WritePacket(p []byte) error       { _, err := c.Write(p); return err }

// udpDialer dials addr for each flow and counts the flows.
func udpDialer(addr string, dials *atomic.Int32) PacketDialer {
	return func(ctx context.Context, _ int) (PacketConn, error) {
		dials.Add(1)
		var d net.Dialer
		c, err := d.DialContext(ctx, "udp", addr)
		if err != nil {
			return nil, err
		}
		return connectedUDP{c.(*net.UDPConn)}, nil
	}
}

// udpClient is a host-side client of a forward on 127.0.0.1:port.
func udpClient(t *testing.T, port int) *net.UDPConn {
	t.Helper()
	c, err := net.DialUDP("udp", nil, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// exchange sends msg and returns the answer's flow port, checking the answer is msg's.
func exchange(c *net.UDPConn, msg string) (string, error) {
	if _, err := c.Write([]byte(msg)); err != nil {
		return "", err
	}
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 65536)
	n, err := c.Read(buf)
	if err != nil {
		return "", fmt.Errorf("answer to %q: %w", msg, err)
	}
	body, port, ok := strings.Cut(string(buf[:n]), "|")
	if !ok || body != "re:"+msg {
		return "", fmt.Errorf("sent %q, got %q", msg, buf[:n])
	}
	return port, nil
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestForwardUDP: two clients exchange datagrams at once and each gets only its own
// answers, over one flow each; a TCP forward shares the port number; a taken UDP port
// names its holder; Close ends the flows and frees the port.
func TestForwardUDP(t *testing.T) {
	spec, err := Resolve(Spec{HostIP: "127.0.0.1", GuestPort: 53, Proto: "udp"})
	if err != nil || spec.HostPort == 0 {
		t.Fatalf("resolve %+v %v", spec, err)
	}
	var dials atomic.Int32
	f, err := Listen(spec, Options{UDP: udpDialer(udpResponder(t), &dials)})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var wg sync.WaitGroup
	flows := make([]string, 2)
	errs := make(chan error, 2)
	for i, name := range []string{"alice", "bob"} {
		c := udpClient(t, spec.HostPort)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range 20 {
				port, err := exchange(c, name+"-"+strconv.Itoa(j))
				if err == nil && flows[i] != "" && port != flows[i] {
					err = fmt.Errorf("%s's datagram %d came through flow %s, not %s", name, j, port, flows[i])
				}
				if err != nil {
					errs <- err
					return
				}
				flows[i] = port
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if flows[0] == flows[1] || dials.Load() != 2 || f.UDPSessions() != 2 {
		t.Fatalf("flows %v, %d dials, %d sessions: want one flow per client", flows, dials.Load(), f.UDPSessions())
	}

	// On the wildcard address (a dual-stack socket): answers still reach the client.
	wild, err := Resolve(Spec{HostIP: "0.0.0.0", GuestPort: 53, Proto: "udp"})
	if err != nil {
		t.Fatal(err)
	}
	var wdials atomic.Int32
	w, err := Listen(wild, Options{UDP: udpDialer(udpResponder(t), &wdials)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := exchange(udpClient(t, wild.HostPort), "wildcard"); err != nil {
		t.Fatalf("through 0.0.0.0: %v", err)
	}
	w.Close()

	// TCP and UDP on the same port number are two forwards.
	tcp, err := Listen(Spec{HostIP: "127.0.0.1", HostPort: spec.HostPort, GuestPort: 80, Proto: "tcp"}, Options{TCP: echoGuest(t)})
	if err != nil {
		t.Fatalf("TCP forward on the UDP forward's port number: %v", err)
	}
	tcp.Close()
	_, err = Listen(spec, Options{UDP: udpDialer("127.0.0.1:9", &dials)})
	want := "pid " + strconv.Itoa(os.Getpid()) + " ("
	if err == nil || !strings.Contains(err.Error(), "is taken by "+want) || !strings.Contains(err.Error(), "-p OTHER:53/udp") {
		t.Fatalf("second listen on %d/udp: %v (want it to name %q)", spec.HostPort, err, want)
	}
	if _, err := Listen(spec, Options{TCP: echoGuest(t)}); err == nil {
		t.Fatal("a UDP forward without a UDP dialer listened")
	}

	f.Close()
	if n := f.UDPSessions(); n != 0 {
		t.Fatalf("%d flows after Close", n)
	}
	g, err := Listen(spec, Options{UDP: udpDialer("127.0.0.1:9", &dials)})
	if err != nil {
		t.Fatalf("listen after Close: %v", err)
	}
	g.Close()
}

// TestForwardUDPLimits: an idle flow ends and the next datagram opens another; at the
// limit a new client ends the least recently active flow.
func TestForwardUDPLimits(t *testing.T) {
	guest := udpResponder(t)
	var dials atomic.Int32
	spec, _ := Resolve(Spec{HostIP: "127.0.0.1", GuestPort: 53, Proto: "udp"})
	f, err := Listen(spec, Options{UDP: udpDialer(guest, &dials), UDPIdle: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	c := udpClient(t, spec.HostPort)
	if _, err := exchange(c, "one"); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the idle flow to end", func() bool { return f.UDPSessions() == 0 })
	if _, err := exchange(c, "two"); err != nil {
		t.Fatal(err)
	}
	if dials.Load() != 2 {
		t.Fatalf("%d flows opened, want a new one after the idle timeout", dials.Load())
	}
	f.Close()

	dials.Store(0)
	spec, _ = Resolve(Spec{HostIP: "127.0.0.1", GuestPort: 53, Proto: "udp"})
	f, err = Listen(spec, Options{UDP: udpDialer(guest, &dials), MaxUDPSessions: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	a, b, cc := udpClient(t, spec.HostPort), udpClient(t, spec.HostPort), udpClient(t, spec.HostPort)
	for _, step := range []struct {
		c     *net.UDPConn
		dials int32
	}{{a, 1}, {b, 2}, {b, 2}, {cc, 3}, {b, 3}, {a, 4}} { // cc ends a's flow, then a ends cc's
		if _, err := exchange(step.c, "x"); err != nil {
			t.Fatal(err)
		}
		if dials.Load() != step.dials || f.UDPSessions() > 2 {
			t.Fatalf("%d flows opened, %d open; want %d opened, at most 2 open", dials.Load(), f.UDPSessions(), step.dials)
		}
	}
}

// TestForwardUDPGarbledGuest: a guest end that sends a frame longer than any datagram ends
// its flow, after the datagrams before it were delivered.
func TestForwardUDPGarbledGuest(t *testing.T) {
	spec, _ := Resolve(Spec{HostIP: "127.0.0.1", GuestPort: 53, Proto: "udp"})
	guestDone := make(chan struct{})
	f, err := Listen(spec, Options{UDP: func(context.Context, int) (PacketConn, error) {
		host, guest := net.Pipe()
		go func() {
			defer close(guestDone)
			buf := make([]byte, MaxDatagram)
			s := agent.NewDatagramStream(guest)
			if _, err := s.ReadPacket(buf); err != nil {
				return
			}
			s.WritePacket([]byte("re:hi|1"))
			hostile := binary.BigEndian.AppendUint16(nil, 0xffff)
			guest.Write(append(hostile, "junk"...))
			io.Copy(io.Discard, guest) // until the host end hangs up
		}()
		return agent.NewDatagramStream(host), nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := exchange(udpClient(t, spec.HostPort), "hi"); err != nil {
		t.Fatal(err)
	}
	<-guestDone // the host end closed the stream
	waitUntil(t, "the flow to end", func() bool { return f.UDPSessions() == 0 })
}

// TestForwardUDPStuckGuest: a guest end that stops reading blocks its flow's writes; Close
// still ends the flow and returns.
func TestForwardUDPStuckGuest(t *testing.T) {
	spec, _ := Resolve(Spec{HostIP: "127.0.0.1", GuestPort: 53, Proto: "udp"})
	writing := make(chan struct{}, 1)
	f, err := Listen(spec, Options{UDP: func(context.Context, int) (PacketConn, error) {
		host, guest := net.Pipe()
		t.Cleanup(func() { guest.Close() })
		go func() {
			// Take one byte of the first frame, then stop reading: the write is stuck.
			guest.Read(make([]byte, 1))
			writing <- struct{}{}
		}()
		return agent.NewDatagramStream(host), nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	c := udpClient(t, spec.HostPort)
	if _, err := c.Write([]byte("stuck")); err != nil {
		t.Fatal(err)
	}
	<-writing
	closed := make(chan struct{})
	go func() {
		f.Close()
		close(closed)
	}()
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not return with a flow blocked writing to its guest end")
	}
}
