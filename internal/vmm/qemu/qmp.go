package qemu

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// QMP, the QEMU Machine Protocol, is one JSON object per line over the socket: a greeting,
// then commands and their answers, with asynchronous events in between.
//
// This is a small client of our own rather than github.com/digitalocean/go-qemu/qmp: that
// package imports go-libvirt (a module this repository does not carry), and its
// SocketMonitor takes no contexts or deadlines (Connect and Run block forever on a wedged
// QEMU, Disconnect deadlocks when an event is not read). banger needs three commands and
// one event, each bounded by the caller's context.

// shutdownEvent is QEMU's SHUTDOWN event: guest is true when the guest asked for it (power
// off, reset), reason is QEMU's ShutdownCause ("guest-shutdown", "guest-reset",
// "host-signal", "host-qmp-quit", ...).
type shutdownEvent struct {
	Guest  bool   `json:"guest"`
	Reason string `json:"reason"`
}

// qmpMessage is any line QEMU sends.
type qmpMessage struct {
	QMP    json.RawMessage `json:"QMP"`
	ID     json.RawMessage `json:"id"`
	Return json.RawMessage `json:"return"`
	Error  *struct {
		Class string `json:"class"`
		Desc  string `json:"desc"`
	} `json:"error"`
	Event string          `json:"event"`
	Data  json.RawMessage `json:"data"`
}

type qmpConn struct {
	c          net.Conn
	eventsDone chan struct{} // closed when the connection ended (QEMU exited, or Close)

	wmu sync.Mutex // one command written at a time

	mu       sync.Mutex
	pending  map[string]chan qmpMessage
	nextID   uint64
	shutdown *shutdownEvent
	readErr  error

	closeOnce sync.Once
}

// listenQMP makes the QMP socket at path, listening, for QEMU to inherit (-chardev
// socket,fd=): the daemon connects the moment it exists rather than polling for QEMU to make
// it, and its connection is queued when QEMU's monitor starts. The caller passes the file
// to QEMU and closes it; the socket stays at path, for Reattach.
func listenQMP(path string) (*os.File, error) {
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("qmp socket: %w", err)
	}
	ln.SetUnlinkOnClose(false) // the socket is QEMU's once it runs
	f, err := ln.File()
	_ = ln.Close()
	if err != nil {
		_ = os.Remove(path)
		return nil, fmt.Errorf("qmp socket: %w", err)
	}
	return f, nil
}

// dialQMP connects to the QMP socket at path and does the handshake (handshakeQMP).
func dialQMP(ctx context.Context, path string) (*qmpConn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, err
	}
	return handshakeQMP(ctx, c, path)
}

// handshakeQMP does QMP's capabilities handshake on c and its first query-status in one
// round trip: both commands are written at once, before the greeting is read (QEMU runs
// them in order once its main loop starts). On error c is closed.
func handshakeQMP(ctx context.Context, c net.Conn, path string) (*qmpConn, error) {
	// The handshake is bounded by ctx: a QEMU that accepts but never greets (e.g. another
	// client holds the monitor) must not hang us. The deadline is set only once ctx is
	// done, so the error names ctx's reason rather than a bare i/o timeout.
	stop := context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Unix(1, 0)) })
	r := bufio.NewReader(c)
	fail := func(what string, err error) (*qmpConn, error) {
		stop()
		_ = c.Close()
		if ctx.Err() != nil {
			err = context.Cause(ctx)
		}
		return nil, fmt.Errorf("qmp %s: %s: %w", path, what, err)
	}
	if _, err := c.Write([]byte(`{"execute":"qmp_capabilities"}` + "\n" + `{"execute":"query-status"}` + "\n")); err != nil {
		return fail("send qmp_capabilities", err)
	}
	var greet qmpMessage
	if err := readMessage(r, &greet); err != nil {
		return fail("read greeting", err)
	}
	if greet.QMP == nil {
		return fail("greeting", errors.New("not a QMP greeting"))
	}
	for _, cmd := range []string{"qmp_capabilities", "query-status"} {
		var ans qmpMessage
		for {
			if err := readMessage(r, &ans); err != nil {
				return fail("read "+cmd+" answer", err)
			}
			if ans.Event == "" {
				break
			}
		}
		if ans.Error != nil {
			return fail(cmd, errors.New(ans.Error.Desc))
		}
	}
	if !stop() {
		return fail("handshake", context.Cause(ctx))
	}
	_ = c.SetDeadline(time.Time{})
	q := &qmpConn{c: c, eventsDone: make(chan struct{}), pending: map[string]chan qmpMessage{}}
	go q.read(r)
	return q, nil
}

func readMessage(r *bufio.Reader, m *qmpMessage) error {
	line, err := r.ReadBytes('\n')
	if err != nil {
		return err
	}
	*m = qmpMessage{}
	if err := json.Unmarshal(line, m); err != nil {
		return fmt.Errorf("bad QMP line %q: %w", line, err)
	}
	return nil
}

// read dispatches answers to their commands and records events until the connection ends.
func (q *qmpConn) read(r *bufio.Reader) {
	var err error
	for {
		var m qmpMessage
		if err = readMessage(r, &m); err != nil {
			break
		}
		if m.Event != "" {
			if m.Event == "SHUTDOWN" {
				var sd shutdownEvent
				_ = json.Unmarshal(m.Data, &sd)
				q.mu.Lock()
				q.shutdown = &sd
				q.mu.Unlock()
			}
			continue
		}
		id, _ := strconv.Unquote(string(m.ID))
		q.mu.Lock()
		ch := q.pending[id]
		delete(q.pending, id)
		q.mu.Unlock()
		if ch != nil {
			ch <- m
		}
	}
	q.mu.Lock()
	q.readErr = err
	q.mu.Unlock()
	close(q.eventsDone)
}

// lastShutdown is the SHUTDOWN event QEMU sent, if any.
func (q *qmpConn) lastShutdown() *shutdownEvent {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.shutdown
}

// run executes one QMP command and returns its "return" value.
func (q *qmpConn) run(ctx context.Context, cmd string, args any) (json.RawMessage, error) {
	return q.runFD(ctx, cmd, args, nil)
}

// runFD is run with f passed along the command (SCM_RIGHTS), as getfd needs; f may be nil.
func (q *qmpConn) runFD(ctx context.Context, cmd string, args any, f *os.File) (json.RawMessage, error) {
	q.mu.Lock()
	q.nextID++
	id := "banger-" + strconv.FormatUint(q.nextID, 10)
	ch := make(chan qmpMessage, 1)
	q.pending[id] = ch
	q.mu.Unlock()
	defer func() {
		q.mu.Lock()
		delete(q.pending, id)
		q.mu.Unlock()
	}()
	req, err := json.Marshal(struct {
		Execute string `json:"execute"`
		Args    any    `json:"arguments,omitempty"`
		ID      string `json:"id"`
	}{cmd, args, id})
	if err != nil {
		return nil, err
	}
	q.wmu.Lock()
	dl, ok := ctx.Deadline()
	if !ok {
		dl = time.Now().Add(10 * time.Second)
	}
	_ = q.c.SetWriteDeadline(dl)
	if f != nil {
		uc, ok := q.c.(*net.UnixConn)
		if !ok {
			q.wmu.Unlock()
			return nil, fmt.Errorf("qmp %s: passing a file needs a Unix socket", cmd)
		}
		_, _, err = uc.WriteMsgUnix(append(req, '\n'), unix.UnixRights(int(f.Fd())), nil)
	} else {
		_, err = q.c.Write(append(req, '\n'))
	}
	q.wmu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("qmp %s: %w", cmd, err)
	}
	answer := func(m qmpMessage) (json.RawMessage, error) {
		if m.Error != nil {
			return nil, fmt.Errorf("qmp %s: %s: %s", cmd, m.Error.Class, m.Error.Desc)
		}
		return m.Return, nil
	}
	select {
	case m := <-ch:
		return answer(m)
	case <-q.eventsDone:
		select { // the answer may have come just before the end (e.g. for "quit")
		case m := <-ch:
			return answer(m)
		default:
		}
		q.mu.Lock()
		err := q.readErr
		q.mu.Unlock()
		return nil, fmt.Errorf("qmp %s: connection closed: %v", cmd, err)
	case <-ctx.Done():
		return nil, fmt.Errorf("qmp %s: %w", cmd, context.Cause(ctx))
	}
}

// queryStatus asks query-status and returns the run state ("running", "paused", ...).
func (q *qmpConn) queryStatus(ctx context.Context) (string, error) {
	out, err := q.run(ctx, "query-status", nil)
	if err != nil {
		return "", err
	}
	var st struct {
		Status string `json:"status"`
	}
	if err := json.Unmarshal(out, &st); err != nil {
		return "", fmt.Errorf("qmp query-status: %w", err)
	}
	return st.Status, nil
}

// waitEventsDone waits up to d for QEMU's side of the socket to close, so a SHUTDOWN event
// QEMU wrote just before exiting is read before anyone asks why it exited.
func (q *qmpConn) waitEventsDone(d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-q.eventsDone:
	case <-t.C:
	}
}

// Close drops the connection; QEMU keeps running.
func (q *qmpConn) Close() error {
	var err error
	q.closeOnce.Do(func() { err = q.c.Close() })
	return err
}
