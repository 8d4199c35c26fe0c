package agentclient_test

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/banger-vm/banger/internal/agent"
	"github.com/banger-vm/banger/internal/agent/agentclient"
	"github.com/banger-vm/banger/internal/agent/agentserver"
)

// serveSerial runs an agent on fp until the test ends; stop ends it early.
func serveSerial(t *testing.T, fp *fakePort) (stop func()) {
	s := newAgent(t, agentserver.Config{})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.ServeSerial(ctx, fp.open); close(done) }()
	var once sync.Once
	stop = func() { once.Do(func() { cancel(); <-done; s.Close() }) }
	t.Cleanup(stop)
	return stop
}

func newSerialClient(t *testing.T, fp *fakePort) *agentclient.Client {
	c := agentclient.NewSerial(fp.sock)
	t.Cleanup(func() { c.Close() })
	return c
}

func TestSerialConcurrentExecs(t *testing.T) {
	fp := newFakePort(t)
	serveSerial(t, fp)
	c := newSerialClient(t, fp)
	const n = 12
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			var out, serr bytes.Buffer
			st, err := c.Exec(ctxT(t, 60*time.Second), agent.ExecRequest{
				Argv: []string{"sh", "-c", `i=0; while [ $i -lt 300 ]; do echo "$ID-$i"; echo "e$ID-$i" >&2; i=$((i+1)); done; exit $ID`},
				Env:  []string{fmt.Sprintf("ID=%d", i)},
			}, nil, &out, &serr)
			var want, wantErr strings.Builder
			for j := 0; j < 300; j++ {
				fmt.Fprintf(&want, "%d-%d\n", i, j)
				fmt.Fprintf(&wantErr, "e%d-%d\n", i, j)
			}
			switch {
			case err != nil:
				errs <- fmt.Errorf("exec %d: %w", i, err)
			case st.Code != i:
				errs <- fmt.Errorf("exec %d: %v", i, st)
			case out.String() != want.String() || serr.String() != wantErr.String():
				errs <- fmt.Errorf("exec %d: output mixed up (%d/%d bytes)", i, out.Len(), serr.Len())
			}
		}(i)
	}
	// Health calls in between, on the same session.
	for i := 0; i < 20; i++ {
		if _, err := c.Health(ctxT(t, 10*time.Second)); err != nil {
			t.Fatal(err)
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	fp.mu.Lock()
	conns := fp.hostGen
	fp.mu.Unlock()
	if conns != 1 {
		t.Errorf("%d host connections to the chardev: calls did not share one session", conns)
	}
}

// TestSerialHostReconnect: the daemon restarts (client closed, new client) or its
// connection breaks; the agent keeps serving new sessions.
func TestSerialHostReconnect(t *testing.T) {
	fp := newFakePort(t)
	serveSerial(t, fp)
	for round := 0; round < 3; round++ {
		c := agentclient.NewSerial(fp.sock)
		if _, err := c.WaitReady(ctxT(t, 10*time.Second)); err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		out, _, st := run(t, c, agent.ExecRequest{Argv: []string{"echo", "round", fmt.Sprint(round)}}, nil)
		if out != fmt.Sprintf("round %d\n", round) || st.Code != 0 {
			t.Fatalf("round %d: %q %v", round, out, st)
		}
		c.Close()
	}

	// The connection breaks under a live client, mid-exec: the exec fails, the client
	// reconnects on its next call.
	c := newSerialClient(t, fp)
	if _, err := c.WaitReady(ctxT(t, 10*time.Second)); err != nil {
		t.Fatal(err)
	}
	s, err := c.StartExec(ctxT(t, 20*time.Second), agent.ExecRequest{Argv: []string{"sleep", "100"}}, nil, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	fp.dropHost()
	if _, err := s.Wait(); err == nil {
		t.Fatal("exec survived a broken connection")
	}
	if _, err := c.WaitReady(ctxT(t, 10*time.Second)); err != nil {
		t.Fatalf("after the connection broke: %v", err)
	}
}

// TestSerialStaleBytes: bytes of an old session sit in the port before the host comes.
func TestSerialStaleBytes(t *testing.T) {
	fp := newFakePort(t)
	// Half a yamux header, a window update for a stream nobody knows, random junk with and
	// without newlines, an old GO that was never acked, and a data header announcing more
	// bytes than follow.
	fp.inject([]byte{0x00, 0x01})
	fp.inject([]byte{0x00, 0x01, 0x00, 0x01, 0x00, 0x00, 0x00, 0x07, 0x00, 0x00, 0x10, 0x00})
	fp.inject([]byte("junk\n\x00\x00\xffmore junk BANGER-AGENT-GO1 0123456789abcdef\n"))
	fp.inject([]byte{0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x03, 0x00, 0x00, 0x01, 0x00, 'x'})
	serveSerial(t, fp)
	c := newSerialClient(t, fp)
	start := time.Now()
	if _, err := c.WaitReady(ctxT(t, 15*time.Second)); err != nil {
		t.Fatal(err)
	}
	t.Logf("ready after %v", time.Since(start))
	out, _, _ := run(t, c, agent.ExecRequest{Argv: []string{"echo", "ok"}}, nil)
	if out != "ok\n" {
		t.Fatalf("%q", out)
	}

	// Garbage arriving in the middle of a live session: the session fails, both sides
	// start over, the next calls work.
	fp.inject([]byte("\xde\xad\xbe\xef garbage mid-session\n"))
	if _, err := c.WaitReady(ctxT(t, 15*time.Second)); err != nil {
		t.Fatal(err)
	}
	out, _, _ = run(t, c, agent.ExecRequest{Argv: []string{"echo", "still ok"}}, nil)
	if out != "still ok\n" {
		t.Fatalf("%q", out)
	}
}

// TestSerialSilentDisconnect: the host reconnects before the guest noticed it had gone, so
// the new host's handshake lands in the guest's stale yamux session.
func TestSerialSilentDisconnect(t *testing.T) {
	fp := newFakePort(t)
	serveSerial(t, fp)
	c1 := agentclient.NewSerial(fp.sock)
	if _, err := c1.WaitReady(ctxT(t, 10*time.Second)); err != nil {
		t.Fatal(err)
	}
	fp.mu.Lock()
	fp.silentDisconnect = true
	fp.mu.Unlock()
	c1.Close()
	c2 := newSerialClient(t, fp)
	start := time.Now()
	if _, err := c2.WaitReady(ctxT(t, 15*time.Second)); err != nil {
		t.Fatal(err)
	}
	t.Logf("ready after %v", time.Since(start))
}

// TestSerialAgentRestart: the agent restarts (guest reboot) while the host keeps its
// session; the agent's reset line makes the host start a new session at once.
func TestSerialAgentRestart(t *testing.T) {
	fp := newFakePort(t)
	stop1 := serveSerial(t, fp)
	c := newSerialClient(t, fp)
	if _, err := c.WaitReady(ctxT(t, 10*time.Second)); err != nil {
		t.Fatal(err)
	}
	fp.mu.Lock()
	fp.silentDisconnect = true // the host connection stays; only the guest side restarts
	fp.mu.Unlock()
	stop1()
	serveSerial(t, fp)
	start := time.Now()
	if _, err := c.WaitReady(ctxT(t, 15*time.Second)); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("host took %v to notice the agent restart", d)
	}
	out, _, _ := run(t, c, agent.ExecRequest{Argv: []string{"echo", "new agent"}}, nil)
	if out != "new agent\n" {
		t.Fatalf("%q", out)
	}
}

func TestSerialNoAgent(t *testing.T) {
	fp := newFakePort(t) // nobody serves the guest side
	c := newSerialClient(t, fp)
	_, err := c.WaitReady(ctxT(t, 1500*time.Millisecond))
	if err == nil || !strings.Contains(err.Error(), "no answer from banger-agent") {
		t.Fatalf("%v", err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Health(ctxT(t, time.Second)); err == nil {
		t.Fatal("health on a closed client")
	}
}
