package agentserver

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/banger-vm/banger/internal/agent"
)

// forwardDialTimeout bounds the connect to the guest port: loopback answers at once or
// nothing listens.
const forwardDialTimeout = 5 * time.Second

// handleForward connects to a port on the guest's loopback and, once connected, turns the
// request's connection into that TCP connection. Only loopback: the agent is not a general
// proxy into the guest's networks.
func (s *Server) handleForward(w http.ResponseWriter, r *http.Request) {
	if !agent.IsUpgrade(r, agent.ForwardUpgradeProtocol) {
		writeError(w, agent.CodeUpgradeRequired, fmt.Sprintf("POST %s needs the headers Connection: Upgrade and Upgrade: %s", agent.PathForward, agent.ForwardUpgradeProtocol))
		return
	}
	port, err := strconv.Atoi(r.URL.Query().Get("port"))
	if err != nil || port < 1 || port > 65535 {
		writeError(w, agent.CodeBadRequest, fmt.Sprintf("port %q: want a TCP port 1-65535", r.URL.Query().Get("port")))
		return
	}
	target, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), forwardDialTimeout)
	if err != nil {
		writeError(w, agent.CodeUnreachable, fmt.Sprintf("guest port %d: %v", port, err))
		return
	}
	defer target.Close()
	conn, brw, done, ok := s.upgradeStream(w, agent.ForwardUpgradeProtocol, "the forward")
	if !ok {
		return
	}
	defer done()
	defer conn.Close()
	out := make(chan struct{})
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
	// The guest port closing ends the forward; closing both unblocks the other copy.
	select {
	case <-out:
	case <-s.closing:
	}
	_ = conn.Close()
	_ = target.Close()
	<-out
}
