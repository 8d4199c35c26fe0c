// Package proc supervises VMM processes for both drivers: it spawns a VMM in its own session
// with a log file, identifies it by PID and start time, finds it again after a daemon
// restart (refusing a PID that now belongs to another process), waits for it (as our child,
// or through a pidfd when an earlier daemon started it), kills it and waits, copies its
// serial console into a capped log, and runs the stop ladder: agent power off, then the
// driver's button, then SIGKILL.
package proc

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/banger-vm/banger/internal/vmm"
)

// MaxSocketPath is the longest path a Unix socket can have: sun_path is 108 bytes on Linux,
// including the terminating NUL.
const MaxSocketPath = 107

// CheckSocketPath says, in words a user can act on, when path cannot be a Unix socket.
func CheckSocketPath(path string) error {
	if len(path) > MaxSocketPath {
		return fmt.Errorf("socket path %s is %d bytes, Unix sockets allow %d: use a shorter run directory", path, len(path), MaxSocketPath)
	}
	return nil
}

// KillWait bounds the wait for a SIGKILLed VMM to be gone: it is only slow when stuck in the
// kernel (a hung disk, say).
const KillWait = 30 * time.Second

// Options says how to spawn a VMM.
type Options struct {
	Argv []string // binary first
	Dir  string
	// Log gets the VMM's own stdout and stderr (truncated first), unless the console takes
	// them. A file, not a pipe to the daemon: the VMM outlives a daemon restart.
	Log string
	// Console, when set, is the VMM's serial console, copied into a capped log.
	Console *Console
	// DieWithParent kills the VMM when the daemon dies (bare boots for bench; VMs outlive
	// the daemon on purpose).
	DieWithParent bool
	// ExtraFiles are passed to the VMM as file descriptors 3, 4, ...; the caller closes its
	// own copies.
	ExtraFiles []*os.File
}

// Process is one VMM process: our child (Spawn) or one an earlier daemon started (Attach).
type Process struct {
	pid       int
	startTime uint64
	cmd       *exec.Cmd // our child: its exit status is known

	console *copier

	mu     sync.Mutex
	pidfd  int // reattached: not our child, watched (and signalled) through a pidfd
	killed bool
	rung   Rung
	state  *os.ProcessState

	done    chan struct{} // closed once the process is gone and its console drained
	release chan struct{} // closed by Release: stop watching a reattached process
	relOnce sync.Once
	wakeR   *os.File // reattached: readable once Release is called, to end the pidfd poll
	wakeW   *os.File
}

// Spawn starts o.Argv in its own session (so Ctrl-C in the daemon's terminal does not reach
// it) and starts watching it. The console copier, if any, runs before the VMM does, so no
// console output is lost.
func Spawn(o Options) (_ *Process, err error) {
	if len(o.Argv) == 0 {
		return nil, errors.New("spawn: no command")
	}
	p := &Process{pidfd: -1, done: make(chan struct{}), release: make(chan struct{})}
	var files []*os.File
	defer func() {
		for _, f := range files {
			f.Close() // the VMM has its own copies
		}
		if err != nil && p.console != nil {
			p.console.stop()
		}
	}()
	cmd := exec.Command(o.Argv[0], o.Argv[1:]...)
	cmd.Dir = o.Dir
	if o.Log != "" {
		logf, err := os.OpenFile(o.Log, os.O_CREATE|os.O_TRUNC|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			return nil, fmt.Errorf("spawn %s: %w", o.Argv[0], err)
		}
		files = append(files, logf)
		cmd.Stdout, cmd.Stderr = logf, logf
	}
	if c := o.Console; c != nil {
		if p.console, err = startCopier(*c, true); err != nil {
			return nil, fmt.Errorf("spawn %s: console: %w", o.Argv[0], err)
		}
		if c.Stdout {
			// Read-write: the VMM then never gets EPIPE (or SIGPIPE) while no daemon reads.
			w, err := os.OpenFile(c.FIFO, os.O_RDWR, 0)
			if err != nil {
				return nil, fmt.Errorf("spawn %s: console: %w", o.Argv[0], err)
			}
			files = append(files, w)
			cmd.Stdout, cmd.Stderr = w, w
		}
	}
	cmd.ExtraFiles = o.ExtraFiles
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if o.DieWithParent {
		cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("run %s: %w", o.Argv[0], err)
	}
	p.cmd, p.pid = cmd, cmd.Process.Pid
	// Not reaped yet (the wait below has not started), so /proc/PID exists even if the VMM
	// already exited.
	if st, err := vmm.ReadProcStat(p.pid); err == nil {
		p.startTime = st.StartTime
	}
	go p.waitChild()
	return p, nil
}

// Attach finds a VMM an earlier daemon started: pid must still be the process that started
// at startTime, else the error wraps vmm.ErrGone. console, if set, resumes copying the
// console (appending to its log).
func Attach(pid int, startTime uint64, console *Console) (_ *Process, err error) {
	if pid <= 0 {
		return nil, fmt.Errorf("%w: no pid recorded", vmm.ErrGone)
	}
	if err := vmm.SameProcess(pid, startTime); err != nil {
		return nil, fmt.Errorf("%w: %v", vmm.ErrGone, err)
	}
	// The pidfd pins the process: once open, a PID reused later cannot be mistaken for the
	// VM. Check the start time again in case it was reused just before the open.
	pidfd, err := vmm.PidfdOpen(pid)
	if err != nil {
		if errors.Is(err, syscall.ESRCH) {
			return nil, fmt.Errorf("%w: pid %d exited", vmm.ErrGone, pid)
		}
		return nil, err
	}
	if err := vmm.SameProcess(pid, startTime); err != nil {
		unix.Close(pidfd)
		return nil, fmt.Errorf("%w: %v", vmm.ErrGone, err)
	}
	p := &Process{pid: pid, startTime: startTime, pidfd: pidfd, done: make(chan struct{}), release: make(chan struct{})}
	if p.wakeR, p.wakeW, err = os.Pipe(); err != nil {
		unix.Close(pidfd)
		return nil, err
	}
	if console != nil {
		if _, err := os.Lstat(console.FIFO); errors.Is(err, os.ErrNotExist) {
			// Started by a banger that had the VMM write its console file itself: it still
			// does, so there is nothing to copy.
			console = nil
		}
	}
	if console != nil {
		if p.console, err = startCopier(*console, false); err != nil {
			unix.Close(pidfd)
			p.wakeR.Close()
			p.wakeW.Close()
			return nil, fmt.Errorf("reattach pid %d: console: %w", pid, err)
		}
	}
	go p.watchPidfd()
	return p, nil
}

// PID is the VMM's process id.
func (p *Process) PID() int { return p.pid }

// StartTime is the VMM's start time in clock ticks after boot (0 if it was gone too soon).
func (p *Process) StartTime() uint64 { return p.startTime }

// Done is closed once the VMM is gone and its console copied.
func (p *Process) Done() <-chan struct{} { return p.done }

// Exited reports whether Done is closed.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// ProcessState is the exit status of our child, nil for a reattached VMM (not ours to
// reap) or one still running.
func (p *Process) ProcessState() *os.ProcessState {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.state
}

// Killed reports whether the supervisor sent SIGKILL.
func (p *Process) Killed() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.killed
}

// Rung is how far Stop got: what the VMM was last asked to do.
func (p *Process) Rung() Rung {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.rung
}

func (p *Process) setRung(r Rung) {
	p.mu.Lock()
	p.rung = r
	p.mu.Unlock()
}

// waitChild reaps our child, drains its console, and closes done.
func (p *Process) waitChild() {
	_ = p.cmd.Wait()
	p.mu.Lock()
	p.state = p.cmd.ProcessState
	p.mu.Unlock()
	if p.console != nil {
		p.console.stop()
	}
	close(p.done)
}

// watchPidfd waits for a reattached VMM to end (its pidfd turns readable), or for Release.
func (p *Process) watchPidfd() {
	defer p.wakeR.Close()
	for {
		fds := []unix.PollFd{{Fd: int32(p.pidfd), Events: unix.POLLIN}, {Fd: int32(p.wakeR.Fd()), Events: unix.POLLIN}}
		_, err := unix.Poll(fds, -1)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if fds[1].Revents != 0 {
			p.closePidfd()
			return // released: the VMM keeps running, nobody watches it here any more
		}
		if err != nil || fds[0].Revents != 0 {
			break
		}
	}
	p.closePidfd()
	if p.console != nil {
		p.console.stop()
	}
	close(p.done)
}

func (p *Process) closePidfd() {
	p.mu.Lock()
	if p.pidfd >= 0 {
		unix.Close(p.pidfd)
		p.pidfd = -1
	}
	p.mu.Unlock()
}

func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// signalKill sends SIGKILL to exactly this process: os.Process and the pidfd both pin it,
// so a reaped and reused PID is never hit.
func (p *Process) signalKill() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.killed = true
	var err error
	switch {
	case p.cmd != nil:
		err = p.cmd.Process.Kill()
		if errors.Is(err, os.ErrProcessDone) {
			err = nil
		}
	case p.pidfd >= 0:
		err = vmm.PidfdKill(p.pidfd)
	}
	return err
}

// Kill ends the VMM at once and waits for it to be gone (at most KillWait).
func (p *Process) Kill() error {
	if p.Exited() {
		return nil
	}
	if p.cmd == nil && isClosed(p.release) {
		return fmt.Errorf("kill pid %d: released: reattach it first", p.pid)
	}
	if err := p.signalKill(); err != nil && !p.Exited() {
		return fmt.Errorf("kill pid %d: %w", p.pid, err)
	}
	t := time.NewTimer(KillWait)
	defer t.Stop()
	select {
	case <-p.done:
		return nil
	case <-t.C:
		return fmt.Errorf("pid %d still there %s after SIGKILL", p.pid, KillWait)
	}
}

// Release stops watching the VMM and copying its console, and leaves it running (daemon
// exit, or a failed reattach). Done is then never closed for a reattached VMM; our child is
// still reaped.
func (p *Process) Release() {
	p.relOnce.Do(func() {
		close(p.release)
		if p.wakeW != nil {
			p.wakeW.Close() // ends watchPidfd's poll
		}
		if p.console != nil {
			p.console.stop()
		}
	})
}
