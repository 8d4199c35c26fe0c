package qemu

import (
	"context"
	"errors"
	"fmt"
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
	qmp         *qmpConn
	stopTimeout time.Duration // of the Stop in progress, for the exit reason
	exit        vmm.ExitInfo

	done      chan struct{} // closed after exit is set
	closeOnce sync.Once
}

var _ vmm.Machine = (*machine)(nil)

func newMachine(st vmm.State, l layout, p *proc.Process) *machine {
	m := &machine{st: st, l: l, p: p, done: make(chan struct{})}
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
func (m *machine) setQMP(q *qmpConn)          { m.mu.Lock(); m.qmp = q; m.mu.Unlock() }
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

// finish records why QEMU ended (the process is gone and its console copied) and closes
// done.
func (m *machine) finish() {
	// QEMU is gone, so everything it wrote is in our socket buffer: let the QMP reader reach
	// EOF, so a SHUTDOWN event sent just before the exit is seen.
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

// waitQMP waits for QEMU's QMP socket to answer query-status, or for QEMU to exit.
func (m *machine) waitQMP(ctx context.Context) (*qmpConn, error) {
	var last error
	for {
		q, err := dialQMP(ctx, m.l.QMPSocket)
		if err == nil {
			if _, err = q.queryStatus(ctx); err == nil {
				return q, nil
			}
			q.Close()
		}
		last = err
		t := time.NewTimer(10 * time.Millisecond)
		select {
		case <-m.done:
			t.Stop()
			return nil, fmt.Errorf("qemu exited: %s", m.Exit().Reason)
		case <-ctx.Done():
			t.Stop()
			// QEMU may have failed in the same moment: its reason is the better error.
			select {
			case <-m.done:
				return nil, fmt.Errorf("qemu exited: %s", m.Exit().Reason)
			case <-time.After(50 * time.Millisecond):
			}
			return nil, fmt.Errorf("QMP on %s did not answer: %w (last attempt: %v)", m.l.QMPSocket, context.Cause(ctx), last)
		case <-t.C:
		}
	}
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
			q := m.getQMP()
			if q == nil {
				return errors.New("no QMP connection")
			}
			_, err := q.run(ctx, "system_powerdown", nil)
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
		if q := m.getQMP(); q != nil {
			q.Close()
		}
		if m.agent != nil {
			_ = m.agent.Close()
		}
	})
	return nil
}
