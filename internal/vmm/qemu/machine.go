package qemu

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/banger-vm/banger/internal/agent"
	"github.com/banger-vm/banger/internal/agent/agentclient"
	"github.com/banger-vm/banger/internal/vmm"
	"github.com/banger-vm/banger/internal/vmm/proc"
)

// consoleTailLines is how many console lines an ExitInfo carries.
const consoleTailLines = 20

// machine is one QEMU process, started here or reattached, supervised by proc.
type machine struct {
	st vmm.State
	l  layout
	p  *proc.Process

	agent *agentclient.Client

	mu          sync.Mutex
	qmp         *qmpConn      // nil until the handshake succeeded
	qmpErr      error         // why the handshake failed
	stopTimeout time.Duration // of the Stop in progress, for the exit reason
	killNote    string        // why the driver itself killed QEMU, for the exit reason
	exit        vmm.ExitInfo

	qmpReady  chan struct{} // closed when the QMP handshake ended, either way
	qmpOnce   sync.Once
	done      chan struct{} // closed after exit is set
	closing   chan struct{} // closed by Close
	closeOnce sync.Once
}

var _ vmm.Machine = (*machine)(nil)

func newMachine(st vmm.State, l layout, p *proc.Process) *machine {
	m := &machine{st: st, l: l, p: p, done: make(chan struct{}), qmpReady: make(chan struct{}), closing: make(chan struct{})}
	go func() {
		<-p.Done()
		m.finish()
	}()
	return m
}

func (m *machine) State() vmm.State           { return m.st }
func (m *machine) PID() int                   { return m.st.PID }
func (m *machine) Agent() *agentclient.Client { return m.agent }
func (m *machine) Done() <-chan struct{}      { return m.done }
func (m *machine) getQMP() *qmpConn           { m.mu.Lock(); defer m.mu.Unlock(); return m.qmp }
func (m *machine) exited() bool               { return isClosed(m.done) }
func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// Exit says why the VM stopped; it is the zero ExitInfo until Done is closed.
func (m *machine) Exit() vmm.ExitInfo {
	if !m.exited() {
		return vmm.ExitInfo{}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	e := m.exit
	e.ConsoleTail = append([]string(nil), e.ConsoleTail...)
	return e
}

// qmpEnded records how the QMP handshake ended: q connected, or err.
func (m *machine) qmpEnded(q *qmpConn, err error) {
	m.qmpOnce.Do(func() {
		m.mu.Lock()
		if q != nil && isClosed(m.closing) {
			q.Close() // Close came first and had nothing to close yet
			q, err = nil, errors.New("qmp: the connection was closed")
		}
		m.qmp, m.qmpErr = q, err
		m.mu.Unlock()
		close(m.qmpReady)
	})
}

// connectQMP does the QMP handshake on c, a connection made before QEMU started, within
// timeout. A QEMU that does not answer in time is killed: a VM banger cannot control over
// QMP must not run on. QEMU exiting, or Close, ends the handshake early.
func (m *machine) connectQMP(c net.Conn, timeout time.Duration) {
	ctx, cancel := context.WithTimeoutCause(context.Background(), timeout, fmt.Errorf("QMP did not answer within %s", timeout))
	defer cancel()
	go func() {
		select {
		case <-m.p.Done():
			cancel()
		case <-m.closing:
			cancel()
		case <-ctx.Done():
		}
	}()
	q, err := handshakeQMP(ctx, c, m.l.QMPSocket)
	if err != nil && !m.p.Exited() && !isClosed(m.closing) {
		m.mu.Lock()
		m.killNote = err.Error()
		m.mu.Unlock()
		_ = m.p.Kill()
	}
	m.qmpEnded(q, err)
}

// awaitQMP waits for the QMP handshake and returns the connection, or why there is none.
func (m *machine) awaitQMP(ctx context.Context) (*qmpConn, error) {
	select {
	case <-m.qmpReady:
	case <-m.done:
	case <-ctx.Done():
		return nil, context.Cause(ctx)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	switch {
	case m.qmp != nil:
		return m.qmp, nil
	case m.qmpErr != nil:
		return nil, m.qmpErr
	}
	return nil, errors.New("qemu exited before QMP answered")
}

// finish records why QEMU ended (the process is gone and its console copied) and closes
// done.
func (m *machine) finish() {
	// QEMU is gone, so a handshake in flight fails at once (connectQMP watches for it).
	select {
	case <-m.qmpReady:
	case <-time.After(5 * time.Second):
	}
	// Everything QEMU wrote is in our socket buffer: let the QMP reader reach EOF, so a
	// SHUTDOWN event sent just before the exit is seen.
	q := m.getQMP()
	var sd *shutdownEvent
	if q != nil {
		q.waitEventsDone(time.Second)
		sd = q.lastShutdown()
	}
	console := proc.ConsoleTail(m.l.ConsoleLog, consoleTailLines)
	m.mu.Lock()
	note := ""
	switch m.p.Rung() {
	case proc.RungKill:
		note = fmt.Sprintf("the guest did not shut down within %s", m.stopTimeout)
	case proc.RungCancel:
		note = "stop was cancelled"
	default:
		note = m.killNote
	}
	reason, clean := exitReason(m.p.ProcessState(), sd, m.p.Killed(), note, console, proc.TailLines(m.l.QEMULog, 3))
	m.exit = vmm.ExitInfo{Reason: reason, Clean: clean, ConsoleTail: console, At: time.Now()}
	m.mu.Unlock()
	// Nobody can talk to a dead VM; drop the connections now rather than at Close, and
	// remove its sockets so none is left behind. Before Done: a caller may start the VM
	// again in the same run directory as soon as Done is closed.
	if q != nil {
		q.Close()
	}
	removeSockets(m.st.RunDir)
	close(m.done)
}

// exitReason turns what is known about an exit into one line. ps is nil when QEMU was not
// our child (reattached).
func exitReason(ps *os.ProcessState, sd *shutdownEvent, killed bool, killNote string, console, qemuLog []string) (string, bool) {
	withNote := func(s string) string {
		if killNote != "" {
			return s + ": " + killNote
		}
		return s
	}
	withLog := func(s string) string {
		if len(qemuLog) > 0 {
			return s + ": " + strings.Join(qemuLog, "; ")
		}
		return s
	}
	if ps != nil {
		if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			sig := ws.Signal()
			return withNote(fmt.Sprintf("killed by signal %d (%s)", int(sig), unix.SignalName(sig))), false
		}
		if code := ps.ExitCode(); code != 0 {
			return withLog("exit status " + strconv.Itoa(code)), false
		}
	} else if killed {
		return withNote("killed by signal 9 (SIGKILL)"), false
	}
	// QEMU exits 0 for a guest power off and also for SIGTERM/SIGINT or a QMP quit: the
	// SHUTDOWN event tells them apart.
	panicked := false
	for _, line := range console {
		if strings.Contains(line, "Kernel panic") {
			panicked = true
		}
	}
	if sd != nil {
		switch sd.Reason {
		case "guest-shutdown":
			return "guest powered off", true
		case "guest-reset":
			// -no-reboot turns a reboot into an exit; with panic=N a kernel panic is a reset.
			if panicked {
				return "guest kernel panicked", false
			}
			return "guest rebooted (QEMU runs with -no-reboot, so the VM stopped)", true
		case "guest-panic":
			return "guest kernel panicked", false
		case "host-signal":
			return withLog("qemu was stopped by a signal on the host"), false
		case "host-qmp-quit":
			return "qemu was told to quit over QMP", false
		default:
			return "qemu shut down (" + sd.Reason + ")", sd.Guest
		}
	}
	if ps == nil {
		return withLog("qemu exited (status unknown: it was started by an earlier daemon)"), false
	}
	// No event (QMP was not connected): QEMU prints this on SIGTERM/SIGINT/SIGHUP.
	for _, line := range qemuLog {
		if strings.Contains(line, "terminating on signal") {
			return "qemu was stopped by a signal on the host: " + line, false
		}
	}
	if panicked {
		return "guest kernel panicked", false
	}
	return "guest powered off", true
}

// Kill ends QEMU at once and waits for it to be gone.
func (m *machine) Kill() error {
	if err := m.p.Kill(); err != nil {
		return fmt.Errorf("qemu: %w", err)
	}
	<-m.done
	return nil
}

func (m *machine) killAndWait() { _ = m.Kill() }

// Stop shuts the guest down along proc's ladder: the agent's power off, then an ACPI power
// button press over QMP (for guests whose agent is not up; it needs a guest that acts on
// the button, like systemd), then SIGKILL. If ctx ends first, QEMU is killed at once and
// the error says so. A nil error means QEMU is gone; Exit says how.
func (m *machine) Stop(ctx context.Context, timeout time.Duration) (vmm.ExitInfo, error) {
	if m.exited() {
		return m.Exit(), nil
	}
	if timeout <= 0 {
		timeout = proc.DefaultStopTimeout
	}
	m.mu.Lock()
	m.stopTimeout = timeout
	m.mu.Unlock()
	l := proc.Ladder{
		Button: func(ctx context.Context) error {
			q, err := m.awaitQMP(ctx)
			if err != nil {
				return err
			}
			_, err = q.run(ctx, "system_powerdown", nil)
			return err
		},
	}
	if m.agent != nil {
		l.Agent = func(ctx context.Context) error {
			_, err := m.agent.Power(ctx, agent.PowerOff)
			return err
		}
	}
	err := m.p.Stop(ctx, timeout, l)
	if m.p.Exited() {
		<-m.done
	}
	if err != nil {
		return m.Exit(), fmt.Errorf("qemu: %w", err)
	}
	return m.Exit(), nil
}

// Close drops the QMP and agent connections; QEMU keeps running.
func (m *machine) Close() error {
	m.closeOnce.Do(func() {
		// Under mu, so a handshake ending now either sees closing or leaves its
		// connection here to be closed.
		m.mu.Lock()
		close(m.closing)
		q := m.qmp
		m.mu.Unlock()
		if q != nil {
			q.Close()
		}
		if m.agent != nil {
			_ = m.agent.Close()
		}
	})
	return nil
}
