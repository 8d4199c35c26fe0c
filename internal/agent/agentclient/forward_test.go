package agentclient_test

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/banger-vm/banger/internal/agent"
	"github.com/banger-vm/banger/internal/agent/agentclient"
	"github.com/banger-vm/banger/internal/agent/agentserver"
	"github.com/banger-vm/banger/internal/portfwd"
)

// udpResponder is the guest's UDP server (the agent runs in this process, so the guest's
// loopback is ours): it answers "re:PAYLOAD|PORT", PORT being the datagram's source port,
// and counts what it received.
func udpResponder(t *testing.T, addr string) (int, *atomic.Int32) {
	t.Helper()
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	var got atomic.Int32
	go func() {
		buf := make([]byte, 65536)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			got.Add(1)
			pc.WriteTo([]byte(fmt.Sprintf("re:%s|%d", buf[:n], from.(*net.UDPAddr).Port)), from)
		}
	}()
	return pc.LocalAddr().(*net.UDPAddr).Port, &got
}

// exchangeUDP sends msg from c and checks the answer is msg's; it returns the flow port.
func exchangeUDP(c net.Conn, msg string) (string, error) {
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

// TestForwardUDP: a host UDP forward through the real agent, over each transport, to a
// real UDP server: two clients exchange datagrams at once and each gets only its own
// answers through its own flow; an idle flow ends and the next datagram opens another.
func TestForwardUDP(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr.name, func(t *testing.T) {
			t.Parallel()
			c := tr.setup(t, newAgent(t, agentserver.Config{}))
			guestPort, _ := udpResponder(t, "127.0.0.1:0")
			var dials atomic.Int32
			spec, err := portfwd.Resolve(portfwd.Spec{HostIP: "127.0.0.1", GuestPort: guestPort, Proto: "udp"})
			if err != nil {
				t.Fatal(err)
			}
			f, err := portfwd.Listen(spec, portfwd.Options{
				UDP: func(ctx context.Context, port int) (portfwd.PacketConn, error) {
					dials.Add(1)
					s, err := c.ForwardUDP(ctx, port)
					if err != nil {
						return nil, err
					}
					return s, nil
				},
				UDPIdle: 200 * time.Millisecond,
			})
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			clients := make([]net.Conn, 2)
			for i := range clients {
				if clients[i], err = net.Dial("udp", "127.0.0.1:"+strconv.Itoa(spec.HostPort)); err != nil {
					t.Fatal(err)
				}
				defer clients[i].Close()
			}
			flows := make([]string, 2)
			errs := make(chan error, 2)
			var wg sync.WaitGroup
			for i, name := range []string{"alice", "bob"} {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for j := range 10 {
						port, err := exchangeUDP(clients[i], name+"-"+strconv.Itoa(j))
						if err == nil && flows[i] != "" && port != flows[i] {
							err = fmt.Errorf("%s's datagram %d came through guest port %s, not %s", name, j, port, flows[i])
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
			if flows[0] == flows[1] || dials.Load() != 2 {
				t.Fatalf("guest saw flows %v after %d agent streams: want one per client", flows, dials.Load())
			}
			waitFor(t, 10*time.Second, "the idle flows to end", func() bool { return f.UDPSessions() == 0 })
			if _, err := exchangeUDP(clients[0], "again"); err != nil {
				t.Fatal(err)
			}
			if dials.Load() != 3 {
				t.Fatalf("%d agent streams: want a new one after the idle timeout", dials.Load())
			}
		})
	}
}

// rawUDPForward opens the agent's UDP forward stream by hand, to send what the client
// never would.
func rawUDPForward(t *testing.T, sock string, query, upgrade string) (net.Conn, *bufio.Reader, *http.Response) {
	t.Helper()
	conn, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	fmt.Fprintf(conn, "POST %s?%s HTTP/1.1\r\nHost: agent\r\nConnection: Upgrade\r\nUpgrade: %s\r\nContent-Length: 0\r\n\r\n", agent.PathForward, query, upgrade)
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	return conn, br, resp
}

// TestForwardUDPHostile: the agent refuses a frame longer than a datagram (it ends the
// stream without sending anything on), bad protocols, and keeps a flow open while nothing
// listens on the guest port (ICMP refusals), so a server that comes up later answers.
func TestForwardUDPHostile(t *testing.T) {
	s := newAgent(t, agentserver.Config{})
	sock := filepath.Join(shortDir(t), "agent.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve(ln)
	guestPort, got := udpResponder(t, "127.0.0.1:0")
	q := "proto=udp&port=" + strconv.Itoa(guestPort)

	conn, br, resp := rawUDPForward(t, sock, q, agent.ForwardUDPUpgradeProtocol)
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade: %s", resp.Status)
	}
	frame, _ := agent.AppendDatagram(nil, []byte("ok"))
	conn.Write(frame)
	buf := make([]byte, agent.MaxDatagram)
	if n, err := agent.ReadDatagram(br, buf); err != nil || !strings.HasPrefix(string(buf[:n]), "re:ok|") {
		t.Fatalf("answer: %q %v", buf[:n], err)
	}
	hostile := binary.BigEndian.AppendUint16(nil, 0xffff)
	conn.Write(append(hostile, strings.Repeat("x", 100)...))
	if b, err := io.ReadAll(br); err != nil || len(b) != 0 {
		t.Fatalf("after a hostile frame the agent sent %q, %v; want the stream closed", b, err)
	}
	if got.Load() != 1 {
		t.Fatalf("the guest port received %d datagrams, want only the good one", got.Load())
	}

	for _, tc := range []struct{ query, upgrade, code string }{
		{"proto=sctp&port=53", agent.ForwardUDPUpgradeProtocol, agent.CodeBadRequest},
		{q, agent.ForwardUpgradeProtocol, agent.CodeUpgradeRequired},
		{"proto=udp&port=0", agent.ForwardUDPUpgradeProtocol, agent.CodeBadRequest},
		{"proto=udp&port=65536", agent.ForwardUDPUpgradeProtocol, agent.CodeBadRequest},
	} {
		_, _, resp := rawUDPForward(t, sock, tc.query, tc.upgrade)
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		if resp.StatusCode < 400 || !strings.Contains(string(body), tc.code) {
			t.Errorf("%s (%s): %s %s, want %s", tc.query, tc.upgrade, resp.Status, body, tc.code)
		}
	}

	// Nothing listens yet: the datagram is lost, the flow stays; then a server comes up.
	free, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	later := free.LocalAddr().String()
	free.Close()
	c := agentclient.New(func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}, nil)
	defer c.Close()
	_, port, _ := net.SplitHostPort(later)
	p, _ := strconv.Atoi(port)
	stream, err := c.ForwardUDP(ctxT(t, 10*time.Second), p)
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Close()
	for range 3 {
		if err := stream.WritePacket([]byte("anyone?")); err != nil {
			t.Fatal(err)
		}
	}
	// Give the agent time to meet the refusals (not needed for the test to pass, but without
	// it the test may not exercise them).
	time.Sleep(200 * time.Millisecond)
	udpResponder(t, later)
	answered := make(chan string, 1)
	go func() {
		n, err := stream.ReadPacket(buf)
		if err != nil {
			answered <- err.Error()
			return
		}
		answered <- string(buf[:n])
	}()
	deadline := time.After(10 * time.Second)
	for {
		if err := stream.WritePacket([]byte("now")); err != nil {
			t.Fatalf("the flow ended while nothing listened: %v", err)
		}
		select {
		case a := <-answered:
			if !strings.HasPrefix(a, "re:now|") && !strings.HasPrefix(a, "re:anyone?|") {
				t.Fatalf("answer %q", a)
			}
			return
		case <-time.After(100 * time.Millisecond):
		case <-deadline:
			t.Fatal("no answer from the server that came up")
		}
	}
}

// TestListeners: the agent lists a TCP port listening on 127.0.0.1 (forwardable), not one
// listening on ::1 only (its forwards dial 127.0.0.1).
func TestListeners(t *testing.T) {
	c := setupUnix(t, newAgent(t, agentserver.Config{}))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	want := ln.Addr().(*net.TCPAddr).Port
	v6only := -1
	if l6, err := net.Listen("tcp6", "[::1]:0"); err == nil {
		defer l6.Close()
		v6only = l6.Addr().(*net.TCPAddr).Port
	}
	ports, err := c.Listeners(ctxT(t, 10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for i, p := range ports {
		found = found || p == want
		if p == v6only {
			t.Errorf("::1-only port %d listed", p)
		}
		if i > 0 && ports[i-1] >= p {
			t.Errorf("ports not ascending and unique: %v", ports)
		}
	}
	if !found {
		t.Fatalf("port %d not in %v", want, ports)
	}
}

// TestListenersHostile: a guest answering ports out of range, or too many, is refused.
func TestListenersHostile(t *testing.T) {
	many := strings.Repeat("1,", agent.MaxListeners) + "1"
	for _, body := range []string{`{"tcp":[0]}`, `{"tcp":[65536]}`, `{"tcp":[-1]}`, `{"tcp":[` + many + `]}`} {
		sock := filepath.Join(shortDir(t), "agent.sock")
		ln, err := net.Listen("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			io.WriteString(w, body)
		})}
		go srv.Serve(ln)
		c := agentclient.New(func(ctx context.Context) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		}, nil)
		if ports, err := c.Listeners(ctxT(t, 10*time.Second)); err == nil {
			t.Errorf("%.40s: accepted %d ports", body, len(ports))
		}
		c.Close()
		srv.Close()
	}
}
