package qemu

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/banger-vm/banger/internal/agent"
	"github.com/banger-vm/banger/internal/agent/agentclient"
	"github.com/banger-vm/banger/internal/vmm"
)

// consoleTailLines is how many console lines an ExitInfo carries.
const consoleTailLines = 20

// machine is one QEMU process, started here (cmd set) or reattached (pidfd set).
type machine struct {
	st vmm.State
	l  layout

	cmd   *exec.Cmd // our child: exit status known
	pidfd int       // reattached: not our child, watched through a pidfd

	agent *agentclient.Client

	mu       sync.Mutex
	qmp      *qmpConn
	killNote string // why we sent SIGKILL, for the exit reason
	killed   bool   // we sent SIGKILL (a reattached VM's status is otherwise unknown)
	exit     vmm.ExitInfo

	done      chan struct{} // closed after exit is set
	stopWatch chan struct{} // closed to stop watching a reattached VM (failed Reattach)
	closeOnce sync.Once
}

var _ vmm.Machine = (*machine)(nil)

func newMachine(st vmm.State, l layout) *machine {
	return &machine{st: st, l: l, pidfd: -1, done: make(chan struct{}), stopWatch: make(chan struct{})}
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

// waitChild reaps our QEMU child and records why it ended.
func (m *machine) waitChild() {
	err := m.cmd.Wait()
	var ps *os.ProcessState
	var ee *exec.ExitError
	switch {
	case err == nil:
		ps = m.cmd.ProcessState
	case errors.As(err, &ee):
		ps = ee.ProcessState
	}
	m.finish(ps)
}

// watchPidfd waits for a reattached QEMU to end. It is not our child, so there is no status
// to collect: the reason comes from QMP's SHUTDOWN event or from our own SIGKILL.
func (m *machine) watchPidfd() {
	defer closeFD(m.pidfd)
	for {
		exited, err := vmm.PidfdWait(m.pidfd, 250*time.Millisecond)
		if exited || err != nil {
			break
		}
		if isClosed(m.stopWatch) {
			return
		}
	}
	m.finish(nil)
}

// finish records the exit (ps is nil for a reattached VM) and closes done.
func (m *machine) finish(ps *os.ProcessState) {
	// QEMU is gone, so everything it wrote is in our socket buffer: let the QMP reader reach
	// EOF, so a SHUTDOWN event sent just before the exit is seen.
	q := m.getQMP()
	var sd *shutdownEvent
	if q != nil {
		q.waitEventsDone(time.Second)
		sd = q.lastShutdown()
	}
	console := tailLines(m.l.ConsoleLog, consoleTailLines)
	m.mu.Lock()
	reason, clean := exitReason(ps, sd, m.killed, m.killNote, console, tailLines(m.l.QEMULog, 3))
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

// tailLines returns the last n non-empty lines of a log file.
func tailLines(path string, n int) []string {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	const window = 32 << 10
	if fi, err := f.Stat(); err == nil && fi.Size() > window {
		_, _ = f.Seek(fi.Size()-window, io.SeekStart)
	}
	data, _ := io.ReadAll(io.LimitReader(f, window))
	var lines []string
	for _, l := range bytes.Split(data, []byte("\n")) {
		if s := strings.TrimRight(string(l), "\r \t"); s != "" {
			lines = append(lines, s)
		}
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return lines
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

// sigkill sends SIGKILL to QEMU, noting why for the exit reason.
func (m *machine) sigkill(note string) error {
	m.mu.Lock()
	if !m.killed {
		m.killed, m.killNote = true, note
	}
	m.mu.Unlock()
	if m.exited() {
		return nil
	}
	var err error
	if m.cmd != nil {
		// os.Process signals through a pidfd, so a reaped and reused PID is never hit.
		err = m.cmd.Process.Kill()
		if errors.Is(err, os.ErrProcessDone) {
			err = nil
		}
	} else {
		err = vmm.PidfdKill(m.pidfd)
	}
	if err != nil && !m.exited() {
		return fmt.Errorf("kill qemu pid %d: %w", m.st.PID, err)
	}
	return nil
}

// killWait bounds the wait for a SIGKILLed QEMU to be gone (it can only be slow when stuck
// in the kernel, e.g. on a hung disk).
const killWait = 30 * time.Second

// Kill ends QEMU at once and waits for it to be gone.
func (m *machine) Kill() error {
	if err := m.sigkill(""); err != nil {
		return err
	}
	select {
	case <-m.done:
		return nil
	case <-time.After(killWait):
		return fmt.Errorf("qemu pid %d still there %s after SIGKILL", m.st.PID, killWait)
	}
}

func (m *machine) killAndWait() { _ = m.Kill() }

// Stop shuts the guest down: the agent's power off first; at half the timeout an ACPI power
// button press over QMP (for guests whose agent is not up; it needs a guest that acts on
// the button, like systemd); at the timeout SIGKILL. If ctx ends first, QEMU is killed
// at once and the error says so. A nil error means QEMU is gone; Exit says how.
func (m *machine) Stop(ctx context.Context, timeout time.Duration) (vmm.ExitInfo, error) {
	if m.exited() {
		return m.Exit(), nil
	}
	if timeout <= 0 {
		timeout = 30 * time.Second
	}
	half := time.NewTimer(timeout / 2)
	defer half.Stop()
	full := time.NewTimer(timeout)
	defer full.Stop()

	// The agent answers before it acts; errors are ignored (the agent may not be up yet,
	// or the VM may go away mid-answer): the escalation below covers both.
	pctx, cancel := context.WithTimeout(ctx, timeout/2)
	defer cancel()
	if m.agent != nil {
		go func() { _, _ = m.agent.Power(pctx, agent.PowerOff) }()
	}
	for {
		select {
		case <-m.done:
			return m.Exit(), nil
		case <-half.C:
			if q := m.getQMP(); q != nil {
				go func() {
					qctx, qcancel := context.WithTimeout(ctx, 5*time.Second)
					defer qcancel()
					_, _ = q.run(qctx, "system_powerdown", nil)
				}()
			}
		case <-full.C:
			if err := m.sigkill(fmt.Sprintf("the guest did not shut down within %s", timeout)); err != nil {
				return m.Exit(), err
			}
			<-m.done
			return m.Exit(), nil
		case <-ctx.Done():
			err := m.sigkill("stop was cancelled")
			if err == nil {
				<-m.done
			}
			return m.Exit(), fmt.Errorf("stop qemu pid %d: %w: killed it", m.st.PID, context.Cause(ctx))
		}
	}
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
