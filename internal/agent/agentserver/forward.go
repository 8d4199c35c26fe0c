package agentserver

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"syscall"
	"time"

	"github.com/banger-vm/banger/internal/agent"
	"github.com/banger-vm/banger/internal/procnet"
)

// forwardDialTimeout bounds the connect to the guest port: loopback answers at once or
// nothing listens.
const forwardDialTimeout = 5 * time.Second

// handleForward connects to a port on the guest's loopback and, once connected, turns the
// request's connection into that TCP connection (or, with proto=udp, into a stream of
// framed datagrams to and from that UDP port). Only loopback: the agent is not a general
// proxy into the guest's networks.
func (s *Server) handleForward(w http.ResponseWriter, r *http.Request) {
	proto := r.URL.Query().Get("proto")
	upgrade := agent.ForwardUpgradeProtocol
	switch proto {
	case "", "tcp":
		proto = "tcp"
	case "udp":
		upgrade = agent.ForwardUDPUpgradeProtocol
	default:
		writeError(w, agent.CodeBadRequest, fmt.Sprintf("proto %q: want tcp or udp", proto))
		return
	}
	if !agent.IsUpgrade(r, upgrade) {
		writeError(w, agent.CodeUpgradeRequired, fmt.Sprintf("POST %s?proto=%s needs the headers Connection: Upgrade and Upgrade: %s", agent.PathForward, proto, upgrade))
		return
	}
	port, err := strconv.Atoi(r.URL.Query().Get("port"))
	if err != nil || port < 1 || port > 65535 {
		writeError(w, agent.CodeBadRequest, fmt.Sprintf("port %q: want a port 1-65535", r.URL.Query().Get("port")))
		return
	}
	// For UDP this only binds and connects the socket: nothing is sent yet.
	target, err := net.DialTimeout(proto, net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), forwardDialTimeout)
	if err != nil {
		writeError(w, agent.CodeUnreachable, fmt.Sprintf("guest port %d/%s: %v", port, proto, err))
		return
	}
	defer target.Close()
	conn, brw, done, ok := s.upgradeStream(w, upgrade, "the forward")
	if !ok {
		return
	}
	defer done()
	defer conn.Close()
	out := make(chan struct{})
	if proto == "udp" {
		go func() {
			relayDatagramsIn(target, brw.Reader)
			_ = target.Close()
		}()
		go func() {
			relayDatagramsOut(conn, target)
			close(out)
		}()
	} else {
		go func() {
			// Bytes the HTTP server already buffered belong to the forwarded stream. The host
			// finishing (EOF) is passed on as a half-close; a broken host connection ends it all.
			_, err := io.Copy(target, brw.Reader)
			if tc, ok := target.(*net.TCPConn); ok && err == nil {
				_ = tc.CloseWrite()
			} else {
				_ = target.Close()
			}
		}()
		go func() {
			_, _ = io.Copy(conn, target)
			close(out)
		}()
	}
	// The guest port closing ends the forward; closing both unblocks the other copy.
	select {
	case <-out:
	case <-s.closing:
	}
	_ = conn.Close()
	_ = target.Close()
	<-out
}

// relayDatagramsIn sends each framed datagram from the host to the guest's UDP port until
// the host's side ends or sends a frame too long to be a datagram.
func relayDatagramsIn(target net.Conn, from io.Reader) {
	buf := make([]byte, agent.MaxDatagram)
	for {
		n, err := agent.ReadDatagram(from, buf)
		if err != nil {
			return
		}
		// Nothing listening (ECONNREFUSED from an earlier ICMP) loses the datagram, as UDP
		// does; the flow stays open for a server that comes up.
		if _, err := target.Write(buf[:n]); err != nil && !errors.Is(err, syscall.ECONNREFUSED) {
			return
		}
	}
}

// relayDatagramsOut frames each datagram the guest's UDP port answers back to the host.
func relayDatagramsOut(conn io.Writer, target net.Conn) {
	buf := make([]byte, agent.MaxDatagram+1) // one more: a longer datagram shows as truncated
	var frame []byte
	for {
		n, err := target.Read(buf)
		if err != nil {
			if errors.Is(err, syscall.ECONNREFUSED) {
				continue
			}
			return
		}
		if n > agent.MaxDatagram {
			continue // cannot be framed (an IPv4 peer never sends one)
		}
		frame, _ = agent.AppendDatagram(frame[:0], buf[:n])
		if _, err := conn.Write(frame); err != nil {
			return
		}
	}
}

// handleListeners lists the TCP ports listening where handleForward reaches them: on
// 127.0.0.1 or a wildcard address (not ::1 only, nor another address only).
func (s *Server) handleListeners(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, agent.ListenersResponse{TCP: listeningPorts(procnet.Read("tcp", "tcp6"))})
}

func listeningPorts(socks []procnet.Socket) []int {
	ports := []int{}
	for _, sk := range socks {
		a := sk.Local.Addr()
		if sk.State != procnet.TCPListen || !(a.IsUnspecified() || a == netip.AddrFrom4([4]byte{127, 0, 0, 1})) {
			continue
		}
		ports = append(ports, int(sk.Local.Port()))
	}
	slices.Sort(ports)
	ports = slices.Compact(ports)
	if len(ports) > agent.MaxListeners {
		ports = ports[:agent.MaxListeners]
	}
	return ports
}
