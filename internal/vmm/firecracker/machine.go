package firecracker

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/banger-vm/banger/internal/agent"
	"github.com/banger-vm/banger/internal/agent/agentclient"
	"github.com/banger-vm/banger/internal/vmm"
	"golang.org/x/sys/unix"
)

// stop phases, to tell why the process ended.
const (
	phaseNone = iota
	phaseAgent
	phaseCtrlAltDel
	phaseKill  // the graceful stop timed out
	phaseAbort // Stop's context ended
)

// machine is a running Firecracker VM.
type machine struct {
	d     *Driver
	pid   int
	st    vmm.State
	lay   layout
	api   *Client
	agent *agentclient.Client

	proc  *os.Process // set when this daemon started the process
	pidfd int         // set (>= 0) for a reattached process, when pidfds are supported

	done      chan struct{}
	closed    chan struct{} // Close: stop polling a reattached process
	closeOnce sync.Once

	mu    sync.Mutex
	phase int
	exit  vmm.ExitInfo
}

var _ vmm.Machine = (*machine)(nil)

func newMachine(d *Driver, pid int, lay layout, runDir string, port uint32) *machine {
	return &machine{
		d: d, pid: pid, lay: lay, pidfd: -1,
		api:    NewClient(lay.apiHost),
		agent:  agentClient(lay.vsockHost, port),
		done:   make(chan struct{}),
		closed: make(chan struct{}),
		st: vmm.State{
			Driver:         Name,
			PID:            pid,
			RunDir:         runDir,
			ConsoleLog:     lay.console,
			ControlSocket:  lay.apiHost,
			AgentSocket:    lay.vsockHost,
			AgentTransport: "hybrid-vsock",
			VsockCID:       GuestCID,
			AgentPort:      port,
		},
	}
}

func (m *machine) State() vmm.State           { return m.st }
func (m *machine) PID() int                   { return m.pid }
func (m *machine) Agent() *agentclient.Client { return m.agent }
func (m *machine) Done() <-chan struct{}      { return m.done }

func (m *machine) Exit() vmm.ExitInfo {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.exit
}

// Close releases the connections without stopping the VM.
func (m *machine) Close() error {
	m.closeOnce.Do(func() { close(m.closed) })
	m.api.Close()
	return m.agent.Close()
}

// Kill sends SIGKILL. It is not an error when the process is already gone.
func (m *machine) Kill() error {
	select {
	case <-m.done:
		return nil
	default:
	}
	var err error
	switch {
	case m.proc != nil:
		err = m.proc.Signal(syscall.SIGKILL)
		if errors.Is(err, os.ErrProcessDone) {
			err = nil
		}
	case m.pidfd >= 0:
		// The pidfd targets exactly our process, even if its PID were reused.
		err = unix.PidfdSendSignal(m.pidfd, unix.SIGKILL, nil, 0)
		if errors.Is(err, unix.ESRCH) {
			err = nil
		}
	default:
		// No pidfd (old kernel): check the start time right before signalling.
		if st, serr := processStartTime(m.pid); serr == nil && st == m.st.StartTime {
			err = syscall.Kill(m.pid, syscall.SIGKILL)
			if errors.Is(err, syscall.ESRCH) {
				err = nil
			}
		}
	}
	if err != nil {
		return fmt.Errorf("kill firecracker (pid %d): %w", m.pid, err)
	}
	return nil
}

// finish records why the process ended, removes its sockets, and closes done.
func (m *machine) finish(reason string, exited0, signaled bool) {
	m.mu.Lock()
	phase := m.phase
	info := vmm.ExitInfo{Reason: reason, At: time.Now()}
	switch {
	case exited0 && phase == phaseAgent:
		info.Reason, info.Clean = "guest powered off", true
	case exited0 && phase == phaseCtrlAltDel:
		info.Reason, info.Clean = "guest shut down after Ctrl-Alt-Del", true
	case exited0:
		// Firecracker exits 0 when the guest powers off or reboots (reboot=k).
		info.Reason, info.Clean = "guest shut down", true
	case signaled && phase == phaseKill:
		info.Reason += " after the graceful stop timed out"
	case signaled && phase == phaseAbort:
		info.Reason += " (stop canceled)"
	}
	m.mu.Unlock()
	info.ConsoleTail = consoleTail(m.lay.console, consoleTailLines)
	// Firecracker leaves its sockets behind; nothing may be left once the VM is gone.
	os.Remove(m.lay.apiHost)
	os.Remove(m.lay.vsockHost)
	if m.lay.chrootDir != "" {
		os.RemoveAll(m.lay.chrootDir)
	}
	if m.pidfd >= 0 {
		syscall.Close(m.pidfd)
	}
	m.mu.Lock()
	m.exit = info
	m.mu.Unlock()
	close(m.done)
}

// waitChild reaps a process this daemon started.
func (m *machine) waitChild(cmd *exec.Cmd) {
	err := cmd.Wait()
	ps := cmd.ProcessState
	if ps == nil {
		m.finish(fmt.Sprintf("firecracker: %v", err), false, false)
		return
	}
	ws := ps.Sys().(syscall.WaitStatus)
	switch {
	case ws.Signaled():
		m.finish(fmt.Sprintf("killed by signal %d (%v)", int(ws.Signal()), ws.Signal()), false, true)
	case ws.ExitStatus() == 0:
		m.finish("exit status 0", true, false)
	default:
		m.finish(fmt.Sprintf("firecracker exit status %d", ws.ExitStatus()), false, false)
	}
}

// pollGone watches a reattached process, which is not our child: wait(2) cannot be used,
// so poll its pidfd (readable once it exits) or, without pidfds, its /proc entry.
func (m *machine) pollGone() {
	interval := m.d.cfg.PollInterval
	usePidfd := m.pidfd >= 0
	for {
		select {
		case <-m.closed:
			return
		default:
		}
		if usePidfd {
			fds := []unix.PollFd{{Fd: int32(m.pidfd), Events: unix.POLLIN}}
			n, err := unix.Poll(fds, int(interval/time.Millisecond))
			switch {
			case n > 0:
				m.finishReattached()
				return
			case err != nil && !errors.Is(err, unix.EINTR):
				usePidfd = false // fall back to /proc
			}
			continue
		}
		st, err := processStartTime(m.pid)
		if err != nil || st != m.st.StartTime {
			m.finishReattached()
			return
		}
		if s, _ := processState(m.pid); s == "Z" {
			m.finishReattached()
			return
		}
		select {
		case <-m.closed:
			return
		case <-time.After(interval):
		}
	}
}

func (m *machine) finishReattached() {
	m.mu.Lock()
	phase := m.phase
	m.mu.Unlock()
	switch phase {
	case phaseAgent, phaseCtrlAltDel:
		// It went away while being asked to: the guest shut down (its exit status is
		// not ours to read, the process is not our child).
		m.finish("", true, false)
	case phaseKill, phaseAbort:
		m.finish("killed by signal 9 (killed)", false, true)
	default:
		m.finish("firecracker exited (exit status unknown: the VM was started by an earlier daemon)", false, false)
	}
}

// waitAPI waits for the API socket to accept connections, failing early if the process
// exits.
func (m *machine) waitAPI(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		c, err := net.Dial("unix", m.lay.apiHost)
		if err == nil {
			c.Close()
			return nil
		}
		select {
		case <-m.done:
			return m.withConsole(fmt.Errorf("firecracker exited before its API socket appeared: %s", m.Exit().Reason))
		case <-ctx.Done():
			return fmt.Errorf("waiting for the firecracker API socket: %w", context.Cause(ctx))
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return m.withConsole(fmt.Errorf("firecracker did not open its API socket %s within %v", m.lay.apiHost, timeout))
		}
	}
}

// configure sends the VM's configuration: machine, kernel, drives (in spec order: that
// order names them /dev/vda, /dev/vdb, ... in the guest), NICs, vsock.
func (m *machine) configure(ctx context.Context, spec vmm.MachineSpec, lay layout, cmdline string) error {
	if err := m.api.PutMachineConfig(ctx, MachineConfig{VCPUCount: spec.VCPUs, MemSizeMiB: spec.MemoryMiB}); err != nil {
		return err
	}
	if err := m.api.PutBootSource(ctx, BootSource{KernelImagePath: lay.kernelGuest, InitrdPath: lay.initGuest, BootArgs: cmdline}); err != nil {
		return err
	}
	for i, d := range spec.Drives {
		// Never is_root_device: that would make Firecracker add root=/dev/vda to the
		// command line; banger-init assembles the root itself from banger.root=.
		err := m.api.PutDrive(ctx, Drive{DriveID: d.ID, PathOnHost: lay.driveGuest[i], IsRootDevice: false, IsReadOnly: d.ReadOnly})
		if err != nil {
			return fmt.Errorf("drive %s (%s): %w", d.ID, d.Role, err)
		}
	}
	for i, n := range spec.NICs {
		ni := NetworkInterface{IfaceID: fmt.Sprintf("eth%d", i), HostDevName: n.TAP}
		if len(n.MAC) > 0 {
			ni.GuestMAC = n.MAC.String()
		}
		if err := m.api.PutNetworkInterface(ctx, ni); err != nil {
			return fmt.Errorf("network interface on %s: %w", n.TAP, err)
		}
	}
	return m.api.PutVsock(ctx, Vsock{GuestCID: GuestCID, UDSPath: lay.vsockGuest})
}

// withConsole adds the console's last lines to a start error: Firecracker and the early
// guest say there what went wrong.
func (m *machine) withConsole(err error) error {
	tail := consoleTail(m.lay.console, consoleTailLines)
	if len(tail) == 0 {
		return err
	}
	return fmt.Errorf("%w\nconsole (%s), last lines:\n  %s", err, m.lay.console, strings.Join(tail, "\n  "))
}

func (m *machine) setPhase(p int) {
	m.mu.Lock()
	m.phase = p
	m.mu.Unlock()
}

// Stop shuts the guest down: ask the agent to power off (two thirds of timeout), then press
// Ctrl-Alt-Del (the rest), then SIGKILL. If ctx ends first, it kills at once and returns
// ctx's error once the process is gone.
func (m *machine) Stop(ctx context.Context, timeout time.Duration) (vmm.ExitInfo, error) {
	select {
	case <-m.done:
		return m.Exit(), nil
	default:
	}
	start := time.Now()
	deadline := start.Add(timeout)
	agentDeadline := start.Add(timeout * 2 / 3)

	// wait returns true when the process is gone by t, false at t; err when ctx ended.
	wait := func(t time.Time) (bool, error) {
		timer := time.NewTimer(time.Until(t))
		defer timer.Stop()
		select {
		case <-m.done:
			return true, nil
		case <-timer.C:
			return false, nil
		case <-ctx.Done():
			return false, context.Cause(ctx)
		}
	}
	kill := func(cause error) (vmm.ExitInfo, error) {
		if cause != nil {
			m.setPhase(phaseAbort)
		} else {
			m.setPhase(phaseKill)
		}
		if err := m.Kill(); err != nil {
			return m.Exit(), err
		}
		// SIGKILL cannot be ignored; the wait is for the kernel to tear the VM down.
		select {
		case <-m.done:
			return m.Exit(), cause
		case <-time.After(30 * time.Second):
			return m.Exit(), fmt.Errorf("firecracker (pid %d) still running 30s after SIGKILL", m.pid)
		}
	}

	m.setPhase(phaseAgent)
	actx, cancel := context.WithDeadline(ctx, agentDeadline)
	_, perr := m.agent.Power(actx, agent.PowerOff)
	cancel()
	if perr == nil {
		if gone, err := wait(agentDeadline); gone || err != nil {
			if err != nil {
				return kill(err)
			}
			return m.Exit(), nil
		}
	} else if ctx.Err() != nil {
		return kill(context.Cause(ctx))
	}

	m.setPhase(phaseCtrlAltDel)
	cctx, cancel := context.WithDeadline(ctx, deadline)
	cerr := m.api.Action(cctx, ActionSendCtrlAltDel)
	cancel()
	if cerr == nil {
		if gone, err := wait(deadline); gone || err != nil {
			if err != nil {
				return kill(err)
			}
			return m.Exit(), nil
		}
	} else if ctx.Err() != nil {
		return kill(context.Cause(ctx))
	} else {
		// The API may be gone with the process; else give the guest the rest of the time
		// it had.
		if gone, err := wait(deadline); gone || err != nil {
			if err != nil {
				return kill(err)
			}
			return m.Exit(), nil
		}
	}
	return kill(nil)
}
