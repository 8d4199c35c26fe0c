package proc

import (
	"context"
	"fmt"
	"time"
)

// Rung is a step of the stop ladder.
type Rung int

const (
	RungNone   Rung = iota // not asked to stop
	RungAgent              // the guest agent was asked to power off
	RungButton             // the driver's button was pressed (ACPI power button, Ctrl-Alt-Del)
	RungKill               // the timeout ran out: SIGKILL
	RungCancel             // Stop's context ended: SIGKILL
)

func (r Rung) String() string {
	return [...]string{"none", "agent", "button", "kill", "cancel"}[r]
}

// Ladder is how a driver asks its guest to shut down. Either may be nil (skipped).
type Ladder struct {
	// Agent asks the guest agent to power off; it returns once the agent answered.
	Agent func(ctx context.Context) error
	// Button presses the VMM's button: the ACPI power button (qemu) or Ctrl-Alt-Del
	// (firecracker). It needs a guest that acts on it (systemd does).
	Button func(ctx context.Context) error
}

// ButtonAt is when, as a fraction of the stop timeout, the button is pressed if the guest
// is still running; the same for every driver. A refusing agent (not up yet) presses it at
// once: there is nothing to wait for.
const (
	buttonAtNum, buttonAtDen = 1, 2
	// buttonCallTimeout bounds one press of the button (an API call to the VMM).
	buttonCallTimeout = 5 * time.Second
)

// DefaultStopTimeout is used when Stop gets none.
const DefaultStopTimeout = 30 * time.Second

// Stop shuts the VMM down along the ladder: the agent's power off; at ButtonAt of timeout
// (or at once if the agent refuses) the button; at timeout SIGKILL. If ctx ends first the
// VMM is killed at once and the error says so. A nil error means the VMM is gone; Rung then
// says how far the ladder went.
func (p *Process) Stop(ctx context.Context, timeout time.Duration, l Ladder) error {
	if p.Exited() {
		return nil
	}
	if timeout <= 0 {
		timeout = DefaultStopTimeout
	}
	buttonAt := timeout * buttonAtNum / buttonAtDen
	btn := time.NewTimer(buttonAt)
	defer btn.Stop()
	full := time.NewTimer(timeout)
	defer full.Stop()

	p.setRung(RungAgent)
	agentDone := make(chan error, 1)
	actx, cancel := context.WithTimeout(ctx, buttonAt)
	defer cancel()
	if l.Agent != nil {
		// The agent answers before it acts, or fails (not up yet, or the VM went away
		// mid-answer): the rungs below cover both.
		go func() { agentDone <- l.Agent(actx) }()
	} else {
		agentDone <- fmt.Errorf("no agent")
	}
	pressed := false
	press := func() {
		if pressed {
			return
		}
		pressed = true
		p.setRung(RungButton)
		if l.Button != nil {
			go func() {
				bctx, bcancel := context.WithTimeout(context.WithoutCancel(ctx), buttonCallTimeout)
				defer bcancel()
				_ = l.Button(bctx) // an API gone with the VMM is fine; SIGKILL follows anyway
			}()
		}
	}
	for {
		select {
		case <-p.done:
			return nil
		case err := <-agentDone:
			if err != nil && ctx.Err() == nil {
				press()
			}
		case <-btn.C:
			press()
		case <-full.C:
			p.setRung(RungKill)
			return p.Kill()
		case <-ctx.Done():
			p.setRung(RungCancel)
			if err := p.Kill(); err != nil {
				return err
			}
			return fmt.Errorf("stop pid %d: %w: killed it", p.pid, context.Cause(ctx))
		}
	}
}
