package qemu

// The bare baseline of `banger bench create`: the same QEMU command line Start runs, started
// directly, with none of the driver's or the daemon's bookkeeping around it.

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"github.com/banger-vm/banger/internal/vmm"
)

// BareBoot is one boot by the bare VMM command.
type BareBoot struct {
	// Argv is what ran, binary first.
	Argv []string
	// AgentReady is from starting the process to the guest agent answering /v1/healthz.
	AgentReady time.Duration
}

// BootBare boots spec with exactly the argv Start would build for it (same kernel, initramfs,
// drives and agent channel: qemuArgs), started directly and timed to the guest agent
// answering /v1/healthz. There is no QMP handshake, no persisted state and no reattach.
// QEMU is killed and its sockets removed before BootBare returns, whatever happens; the
// run directory and its logs stay for the caller to remove.
func (d *Driver) BootBare(ctx context.Context, spec vmm.MachineSpec) (_ BareBoot, err error) {
	if err := d.check(spec); err != nil {
		return BareBoot{}, err
	}
	bin, err := exec.LookPath(d.cfg.Binary)
	if err != nil {
		return BareBoot{}, fmt.Errorf("qemu: %w (apt-get install qemu-system-x86)", err)
	}
	transport, cid, err := d.agentChannel()
	if err != nil {
		return BareBoot{}, err
	}
	l := newLayout(spec.RunDir, transport, cid, spec.AgentPort)
	args := qemuArgs(spec, l, d.cfg.Accel, d.cfg.CPUModel, d.tscKHz())
	out := BareBoot{Argv: append([]string{bin}, args...)}

	removeSockets(spec.RunDir)
	logf, err := os.OpenFile(l.QEMULog, os.O_CREATE|os.O_TRUNC|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return out, fmt.Errorf("bare boot %s: %w", spec.Name, err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Dir = spec.RunDir
	cmd.Stdout, cmd.Stderr = logf, logf
	// Own session like Start; unlike a VM, a bare boot must not outlive the daemon that
	// measures it, so it dies with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Pdeathsig: syscall.SIGKILL}
	start := time.Now()
	err = cmd.Start()
	logf.Close()
	if err != nil {
		removeSockets(spec.RunDir)
		return out, fmt.Errorf("bare boot %s: run %s: %w", spec.Name, bin, err)
	}
	exited := make(chan struct{})
	var waitErr error
	go func() { waitErr = cmd.Wait(); close(exited) }()
	defer func() {
		_ = cmd.Process.Kill()
		<-exited
		removeSockets(spec.RunDir)
	}()

	a := agentClient(l)
	defer a.Close()
	actx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	go func() {
		select {
		case <-exited:
			cancel(fmt.Errorf("qemu exited: %v: %s", waitErr, strings.Join(tailLines(l.QEMULog, 3), "; ")))
		case <-actx.Done():
		}
	}()
	if _, err := a.WaitReady(actx); err != nil {
		if c := context.Cause(actx); c != nil && ctx.Err() == nil {
			err = c
		}
		return out, fmt.Errorf("bare boot %s: %w\nlast console lines:\n  %s", spec.Name, err, strings.Join(tailLines(l.ConsoleLog, 10), "\n  "))
	}
	out.AgentReady = time.Since(start)
	return out, nil
}
