package firecracker

import (
	"context"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/banger-vm/banger/internal/agent"
	"github.com/banger-vm/banger/internal/agent/agentclient"
	"github.com/banger-vm/banger/internal/vmm"
	"github.com/banger-vm/banger/internal/vmm/proc"
)

// machine is a running Firecracker VM, supervised by proc.
type machine struct {
	d     *Driver
	pid   int
	st    vmm.State
	lay   layout
	api   *Client
	agent *agentclient.Client
	p     *proc.Process

	done      chan struct{} // closed after exit is set
	closeOnce sync.Once

	mu   sync.Mutex
	exit vmm.ExitInfo
}

var _ vmm.Machine = (*machine)(nil)

func newMachine(d *Driver, p *proc.Process, lay layout, runDir string, port uint32) *machine {
	m := &machine{
		d: d, pid: p.PID(), lay: lay, p: p,
		api:   NewClient(lay.apiHost),
		agent: agentClient(lay.vsockHost, port),
		done:  make(chan struct{}),
		st: vmm.State{
			PID:            p.PID(),
			StartTime:      p.StartTime(),
			RunDir:         runDir,
			ConsoleLog:     lay.console,
			ControlSocket:  lay.apiHost,
			AgentSocket:    lay.vsockHost,
			AgentTransport: "hybrid-vsock",
			VsockCID:       GuestCID,
			AgentPort:      port,
		},
	}
	go func() {
		<-p.Done()
		m.finish()
	}()
	return m
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
	m.closeOnce.Do(m.p.Release)
	m.api.Close()
	return m.agent.Close()
}

// Kill ends Firecracker at once and waits for it to be gone. It is not an error when the
// process is already gone.
func (m *machine) Kill() error {
	if err := m.p.Kill(); err != nil {
		return fmt.Errorf("firecracker: %w", err)
	}
	<-m.done
	return nil
}

// exitReason says why Firecracker ended: ps is its status (nil when an earlier daemon
// started it), rung how far a Stop got, killed whether we sent SIGKILL.
func exitReason(ps *os.ProcessState, rung proc.Rung, killed bool) (string, bool) {
	if ps == nil {
		switch {
		case killed:
			return "killed by signal 9 (killed)" + killSuffix(rung), false
		case rung == proc.RungAgent:
			// It went away while being asked to: the guest shut down (its exit status is
			// not ours to read, the process is not our child).
			return "guest powered off", true
		case rung == proc.RungButton:
			return "guest shut down after Ctrl-Alt-Del", true
		}
		return "firecracker exited (exit status unknown: the VM was started by an earlier daemon)", false
	}
	ws, _ := ps.Sys().(syscall.WaitStatus)
	switch {
	case ws.Signaled():
		return fmt.Sprintf("killed by signal %d (%v)", int(ws.Signal()), ws.Signal()) + killSuffix(rung), false
	case ws.ExitStatus() != 0:
		return fmt.Sprintf("firecracker exit status %d", ws.ExitStatus()), false
	case rung == proc.RungAgent:
		return "guest powered off", true
	case rung == proc.RungButton:
		return "guest shut down after Ctrl-Alt-Del", true
	}
	// Firecracker exits 0 when the guest powers off or reboots (reboot=k).
	return "guest shut down", true
}

func killSuffix(r proc.Rung) string {
	switch r {
	case proc.RungKill:
		return " after the graceful stop timed out"
	case proc.RungCancel:
		return " (stop canceled)"
	}
	return ""
}

// finish records why the process ended, removes its sockets, and closes done.
func (m *machine) finish() {
	reason, clean := exitReason(m.p.ProcessState(), m.p.Rung(), m.p.Killed())
	info := vmm.ExitInfo{Reason: reason, Clean: clean, At: time.Now()}
	info.ConsoleTail = proc.ConsoleTail(m.lay.console, consoleTailLines)
	// Firecracker leaves its sockets behind; nothing may be left once the VM is gone.
	os.Remove(m.lay.apiHost)
	os.Remove(m.lay.vsockHost)
	if m.lay.driveLinks {
		unlinkDrives(m.st.RunDir)
	}
	if m.lay.chrootDir != "" {
		os.RemoveAll(m.lay.chrootDir)
	}
	m.mu.Lock()
	m.exit = info
	m.mu.Unlock()
	close(m.done)
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
	tail := proc.ConsoleTail(m.lay.console, consoleTailLines)
	if len(tail) == 0 {
		return err
	}
	return fmt.Errorf("%w\nconsole (%s), last lines:\n  %s", err, m.lay.console, strings.Join(tail, "\n  "))
}

// Stop shuts the guest down along proc's ladder: the agent's power off, then Ctrl-Alt-Del
// through the API, then SIGKILL. If ctx ends first, it kills at once and returns ctx's
// error once the process is gone.
func (m *machine) Stop(ctx context.Context, timeout time.Duration) (vmm.ExitInfo, error) {
	err := m.p.Stop(ctx, timeout, proc.Ladder{
		Agent: func(ctx context.Context) error {
			_, err := m.agent.Power(ctx, agent.PowerOff)
			return err
		},
		Button: func(ctx context.Context) error { return m.api.Action(ctx, ActionSendCtrlAltDel) },
	})
	if m.p.Exited() {
		<-m.done
	}
	if err != nil {
		return m.Exit(), fmt.Errorf("firecracker: %w", err)
	}
	return m.Exit(), nil
}
