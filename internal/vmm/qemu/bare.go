package qemu

// The bare baseline of `banger bench create`: the same QEMU command line Start runs, started
// directly, with none of the driver's or the daemon's bookkeeping around it.

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
	"time"

	"github.com/banger-vm/banger/internal/vmm"
	"github.com/banger-vm/banger/internal/vmm/proc"
)

// BootBare boots spec with exactly the argv Start would build for it (same kernel, initramfs,
// drives and agent channel: qemuArgs), started directly and timed to the guest agent
// answering /v1/healthz. There is no QMP handshake, no persisted state and no reattach.
// QEMU is killed and its sockets removed before BootBare returns, whatever happens; the
// run directory and its logs stay for the caller to remove.
func (d *Driver) BootBare(ctx context.Context, spec vmm.MachineSpec) (_ vmm.BareBoot, err error) {
	if err := d.check(spec); err != nil {
		return vmm.BareBoot{}, err
	}
	bin, err := exec.LookPath(d.cfg.Binary)
	if err != nil {
		return vmm.BareBoot{}, fmt.Errorf("qemu: %w (apt-get install qemu-system-x86)", err)
	}
	transport, cid, err := d.agentChannel()
	if err != nil {
		return vmm.BareBoot{}, err
	}
	sandbox, err := d.useSandbox(ctx, bin)
	if err != nil {
		return vmm.BareBoot{}, err
	}
	l := newLayout(spec.RunDir, transport, cid, spec.AgentPort)
	// Own session like Start (spawn); unlike a VM, a bare boot must not outlive the daemon
	// that measures it, so it dies with it. The console is copied (and capped) as for a VM:
	// an unread FIFO would stall the guest. The clock starts before the QMP socket is made,
	// as Start's stage does.
	start := time.Now()
	argv, p, _, err := d.spawn(bin, spec, l, d.argOpts(sandbox), false, true)
	out := vmm.BareBoot{Argv: argv, SameArgv: true}
	if err != nil {
		return out, fmt.Errorf("bare boot %s: %w", spec.Name, err)
	}
	defer func() {
		_ = p.Kill()
		removeSockets(spec.RunDir)
	}()

	a := agentClient(l)
	defer a.Close()
	actx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	go func() {
		select {
		case <-p.Done():
			cancel(fmt.Errorf("qemu exited: %v: %s", p.ProcessState(), strings.Join(proc.TailLines(l.QEMULog, 3), "; ")))
		case <-actx.Done():
		}
	}()
	if _, err := a.WaitReady(actx); err != nil {
		if c := context.Cause(actx); c != nil && ctx.Err() == nil {
			err = c
		}
		return out, fmt.Errorf("bare boot %s: %w\nlast console lines:\n  %s", spec.Name, err, strings.Join(proc.ConsoleTail(l.ConsoleLog, 10), "\n  "))
	}
	out.AgentReady = time.Since(start)
	return out, nil
}
