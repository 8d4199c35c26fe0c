package agentclient_test

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/mdlayher/vsock"

	"github.com/banger-vm/banger/internal/agent"
	"github.com/banger-vm/banger/internal/agent/agentclient"
	"github.com/banger-vm/banger/internal/agent/agentserver"
)

func TestHybridVsockNothingListening(t *testing.T) {
	sock := fakeFirecracker(t, agent.DefaultVsockPort, nil) // Firecracker closes: no guest listener
	c := agentclient.NewHybridVsock(sock, agent.DefaultVsockPort)
	defer c.Close()
	_, err := c.WaitReady(ctxT(t, 700*time.Millisecond))
	if err == nil || !strings.Contains(err.Error(), "nothing listens on guest vsock port 1024") {
		t.Fatalf("%v", err)
	}
	// Wrong port: Firecracker closes too.
	s := newAgent(t, agentserver.Config{})
	guest := newChanListener()
	go s.Serve(guest)
	sock = fakeFirecracker(t, 5000, guest)
	c2 := agentclient.NewHybridVsock(sock, agent.DefaultVsockPort)
	defer c2.Close()
	if _, err := c2.Health(ctxT(t, 2*time.Second)); err == nil {
		t.Fatal("health through the wrong port")
	}
	c3 := agentclient.NewHybridVsock(sock, 5000)
	defer c3.Close()
	if _, err := c3.Health(ctxT(t, 5*time.Second)); err != nil {
		t.Fatal(err)
	}
}

// TestVsock dials a real AF_VSOCK listener through the local loopback (CID 1).
func TestVsock(t *testing.T) {
	if _, err := os.Stat("/dev/vsock"); err != nil {
		t.Skip("no /dev/vsock here")
	}
	// Without the loopback transport a connection to CID 1 goes out to this machine's own
	// hypervisor: never poke that from a test.
	if _, err := os.Stat("/sys/module/vsock_loopback"); err != nil {
		t.Skip("/dev/vsock exists but the vsock_loopback transport is not loaded: no local AF_VSOCK peer to dial")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	ln, err := agentserver.ListenVsock(ctx, 0, quietLogger()) // port 0: any free port
	if err != nil {
		t.Skipf("cannot listen on AF_VSOCK here: %v", err)
	}
	addr, ok := ln.Addr().(*vsock.Addr)
	if !ok {
		ln.Close()
		t.Fatalf("listener address %T", ln.Addr())
	}
	s := newAgent(t, agentserver.Config{})
	go s.Serve(ln)
	c := agentclient.NewVsock(1, addr.Port) // VMADDR_CID_LOCAL: needs vsock_loopback
	defer c.Close()
	h, err := c.Health(ctxT(t, 5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if h.Status != "ok" {
		t.Fatalf("%+v", h)
	}
	out, _, st := run(t, c, agent.ExecRequest{Argv: []string{"echo", "over vsock"}}, nil)
	if out != "over vsock\n" || st.Code != 0 {
		t.Fatalf("%q %v", out, st)
	}
}

// TestServerCloseKillsExecs: closing the agent kills running commands.
func TestServerCloseKillsExecs(t *testing.T) {
	s := newAgent(t, agentserver.Config{})
	c := setupUnix(t, s)
	sess, err := c.StartExec(ctxT(t, 20*time.Second), agent.ExecRequest{Argv: []string{"sleep", "100"}}, nil, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	done := make(chan struct{})
	go func() { s.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Close hung on a running exec")
	}
	if _, err := sess.Wait(); err == nil {
		t.Fatal("exec ended cleanly through a closed agent")
	}
}
