package agentclient_test

// Issue 14 item 6 (agent JSON): a hostile guest's agent may answer with an endless JSON
// document; the host must stop reading at a cap and say why, not buffer it all.

import (
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/banger-vm/banger/internal/agent"
	"github.com/banger-vm/banger/internal/agent/agentclient"
)

// hugeJSONAgent answers every request 200 with a valid JSON object of about size bytes
// (one long string), counting what it managed to write.
func hugeJSONAgent(t *testing.T, status, size int) (*agentclient.Client, *atomic.Int64) {
	t.Helper()
	var written atomic.Int64
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		n, _ := io.WriteString(w, `{"version":"`)
		chunk := strings.Repeat("A", 64<<10)
		for n < size {
			k, err := io.WriteString(w, chunk)
			n += k
			if err != nil {
				break
			}
		}
		k, _ := io.WriteString(w, `"}`)
		written.Store(int64(n + k))
	})}
	a, b := net.Pipe()
	ln := &oneConnListener{conn: b, done: make(chan struct{})}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close(); _ = a.Close() })
	used := false
	c := agentclient.New(func(context.Context) (net.Conn, error) {
		if used {
			return nil, io.EOF
		}
		used = true
		return a, nil
	}, nil)
	t.Cleanup(func() { _ = c.Close() })
	return c, &written
}

type oneConnListener struct {
	conn net.Conn
	done chan struct{}
	sent bool
}

func (l *oneConnListener) Accept() (net.Conn, error) {
	if !l.sent {
		l.sent = true
		return l.conn, nil
	}
	<-l.done
	return nil, net.ErrClosed
}

func (l *oneConnListener) Close() error {
	select {
	case <-l.done:
	default:
		close(l.done)
	}
	return nil
}

func (l *oneConnListener) Addr() net.Addr { return l.conn.LocalAddr() }

func TestAgentJSONAnswerIsBounded(t *testing.T) {
	const size = 16 << 20
	for _, tc := range []struct {
		name string
		call func(c *agentclient.Client) error
	}{
		{"health", func(c *agentclient.Client) error { _, err := c.Health(context.Background()); return err }},
		{"power", func(c *agentclient.Client) error { _, err := c.Power(context.Background(), agent.PowerOff); return err }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status := http.StatusOK
			if tc.name == "power" {
				status = http.StatusAccepted
			}
			c, written := hugeJSONAgent(t, status, size)
			err := tc.call(c)
			if err == nil {
				t.Fatalf("a %d MiB JSON answer was accepted (the agent wrote %d bytes)", size>>20, written.Load())
			}
			if !strings.Contains(err.Error(), "larger than") {
				t.Fatalf("error does not say the answer was too large: %v", err)
			}
		})
	}
}
