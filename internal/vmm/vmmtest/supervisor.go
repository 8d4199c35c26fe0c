// Package vmmtest holds the supervisor tests every VMM driver must pass, run by each
// driver's tests against a fake VMM: a real process (the test binary re-executed) with the
// driver's real control socket and a real guest agent, so spawn, kill, reaping, reattach and
// the stop ladder are exercised for real; only the guest is pretend.
package vmmtest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/banger-vm/banger/internal/vmm"
)

// What a fake VMM prints on its console, so the table can tell which rung stopped it.
const (
	MarkBoot        = "fake guest: booted"
	MarkAgentPower  = "fake guest: the agent was asked to power off"
	MarkButton      = "fake guest: the button was pressed"
	MarkPoweredOff  = "fake guest: powered off"
	ConsoleLinePref = "fake guest: console line "
)

// Behaviour is how a fake VMM's guest acts.
type Behaviour struct {
	IgnoreAgent  bool // the agent answers a power off but the guest stays up
	IgnoreButton bool // the guest ignores the VMM's button
	ConsoleLines int  // numbered console lines printed at boot, before the agent is up
}

// Modes encodes b for a fake's environment (comma-separated).
func (b Behaviour) Modes() string {
	m := []string{"ok"}
	if b.IgnoreAgent {
		m = append(m, "ignore-power")
	}
	if b.IgnoreButton {
		m = append(m, "ignore-button")
	}
	if b.ConsoleLines > 0 {
		m = append(m, fmt.Sprintf("lines=%d", b.ConsoleLines))
	}
	return strings.Join(m, ",")
}

// ParseModes decodes Modes.
func ParseModes(s string) (b Behaviour) {
	for _, m := range strings.Split(s, ",") {
		k, v, _ := strings.Cut(m, "=")
		switch k {
		case "ignore-power":
			b.IgnoreAgent = true
		case "ignore-button", "ignore-cad":
			b.IgnoreButton = true
		case "lines":
			fmt.Sscanf(v, "%d", &b.ConsoleLines)
		}
	}
	return b
}

// Harness adapts one driver to the table.
type Harness struct {
	// Driver reattaches (a new daemon's driver).
	Driver vmm.Driver
	// Start boots a fake VM acting as b, and makes sure it is gone when the test ends.
	Start func(t *testing.T, b Behaviour) vmm.Machine
	// ConsoleCap is the driver's Config.ConsoleCap in Start (small, so a test floods it).
	ConsoleCap int64
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func isDone(m vmm.Machine) bool {
	select {
	case <-m.Done():
		return true
	default:
		return false
	}
}

// gone reports whether pid has no process (reaped) or only a zombie not ours to reap.
func gone(pid int) bool {
	if errors.Is(syscall.Kill(pid, 0), syscall.ESRCH) {
		return true
	}
	st, err := vmm.ReadProcStat(pid)
	return err != nil || st.State == 'Z'
}

func ready(t *testing.T, m vmm.Machine) {
	t.Helper()
	if _, err := m.Agent().WaitReady(ctxT(t)); err != nil {
		t.Fatalf("agent: %v", err)
	}
}

func console(e vmm.ExitInfo) string { return strings.Join(e.ConsoleTail, "\n") }

// Run runs the supervisor table against h.
func Run(t *testing.T, h Harness) {
	t.Run("KillWaits", func(t *testing.T) {
		m := h.Start(t, Behaviour{})
		ready(t, m)
		pid := m.PID()
		if err := m.Kill(); err != nil {
			t.Fatal(err)
		}
		// Kill returned: the process must be gone now, not later.
		if !isDone(m) || !gone(pid) {
			t.Fatalf("Kill returned with pid %d still there (done %v)", pid, isDone(m))
		}
		if e := m.Exit(); e.Clean || !strings.Contains(e.Reason, "signal 9") {
			t.Errorf("exit %+v", e)
		}
		if err := m.Kill(); err != nil {
			t.Errorf("second Kill: %v", err)
		}
	})

	stop := func(t *testing.T, b Behaviour, timeout time.Duration, ctx context.Context) (vmm.Machine, vmm.ExitInfo, error) {
		m := h.Start(t, b)
		ready(t, m)
		e, err := m.Stop(ctx, timeout)
		if !isDone(m) || !gone(m.PID()) {
			t.Fatalf("Stop returned with the VMM still there")
		}
		return m, e, err
	}
	t.Run("StopAgentRung", func(t *testing.T) {
		// A long timeout: the agent's power off is all it takes.
		_, e, err := stop(t, Behaviour{}, 10*time.Minute, ctxT(t))
		if err != nil || !e.Clean {
			t.Fatalf("stop: %+v, %v", e, err)
		}
		if c := console(e); !strings.Contains(c, MarkAgentPower) || !strings.Contains(c, MarkPoweredOff) || strings.Contains(c, MarkButton) {
			t.Errorf("console tail %q: want the agent rung only", e.ConsoleTail)
		}
	})
	t.Run("StopButtonRung", func(t *testing.T) {
		_, e, err := stop(t, Behaviour{IgnoreAgent: true}, 2*time.Second, ctxT(t))
		if err != nil || !e.Clean {
			t.Fatalf("stop: %+v, %v", e, err)
		}
		if c := console(e); !strings.Contains(c, MarkAgentPower) || !strings.Contains(c, MarkButton) || !strings.Contains(c, MarkPoweredOff) {
			t.Errorf("console tail %q: want agent, then button, then power off", e.ConsoleTail)
		}
	})
	t.Run("StopKillRung", func(t *testing.T) {
		_, e, err := stop(t, Behaviour{IgnoreAgent: true, IgnoreButton: true}, time.Second, ctxT(t))
		if err != nil || e.Clean || !strings.Contains(e.Reason, "signal 9") {
			t.Fatalf("stop: %+v, %v", e, err)
		}
		if c := console(e); !strings.Contains(c, MarkAgentPower) || !strings.Contains(c, MarkButton) || strings.Contains(c, MarkPoweredOff) {
			t.Errorf("console tail %q: want agent and button tried, no power off", e.ConsoleTail)
		}
	})
	t.Run("StopCancelled", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		_, e, err := stop(t, Behaviour{IgnoreAgent: true, IgnoreButton: true}, 10*time.Minute, ctx)
		if err == nil || !errors.Is(err, context.Canceled) || e.Clean {
			t.Fatalf("stop: %+v, %v", e, err)
		}
	})

	t.Run("Reattach", func(t *testing.T) {
		m := h.Start(t, Behaviour{})
		ready(t, m)
		st := m.State()
		if st.PID != m.PID() || st.StartTime == 0 {
			t.Fatalf("state %+v", st)
		}
		m.Close()
		// A later daemon: the persisted state through JSON, as the store keeps it.
		b, _ := json.Marshal(st)
		var st2 vmm.State
		if err := json.Unmarshal(b, &st2); err != nil {
			t.Fatal(err)
		}
		m2, err := h.Driver.Reattach(ctxT(t), st2)
		if err != nil {
			t.Fatal(err)
		}
		if m2.PID() != st.PID || m2.State().StartTime != st.StartTime {
			t.Errorf("reattached %+v, want %+v", m2.State(), st)
		}
		ready(t, m2)
		if isDone(m2) {
			t.Fatal("reattached VM done while running")
		}
		// Kill through the reattached handle (a pidfd: not our child) waits too.
		if err := m2.Kill(); err != nil {
			t.Fatal(err)
		}
		if !isDone(m2) || !gone(st.PID) {
			t.Fatalf("Kill of a reattached VM returned with it still there")
		}
		<-m.Done() // the original child handle sees it too
		if _, err := h.Driver.Reattach(ctxT(t), st2); !errors.Is(err, vmm.ErrGone) {
			t.Errorf("reattach to an exited VM: %v", err)
		}
	})

	t.Run("ReusedPIDRefused", func(t *testing.T) {
		m := h.Start(t, Behaviour{})
		ready(t, m)
		st := m.State()
		// Another process now has the PID: a real one, with its own start time.
		other := exec.Command("sleep", "600")
		if err := other.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { other.Process.Kill(); other.Wait() }()
		reused := st
		reused.PID = other.Process.Pid
		if _, err := h.Driver.Reattach(ctxT(t), reused); !errors.Is(err, vmm.ErrGone) || !strings.Contains(err.Error(), "another process") {
			t.Errorf("reattach to a reused pid: %v", err)
		}
		if err := syscall.Kill(other.Process.Pid, 0); err != nil {
			t.Errorf("the other process was hurt: %v", err)
		}
		// The same PID with another start time is another process too.
		wrong := st
		wrong.StartTime++
		if _, err := h.Driver.Reattach(ctxT(t), wrong); !errors.Is(err, vmm.ErrGone) {
			t.Errorf("reattach with a wrong start time: %v", err)
		}
		if isDone(m) {
			t.Error("a refused reattach stopped the VM")
		}
	})

	t.Run("ConsoleCapped", func(t *testing.T) {
		// Four times the cap through the driver's console path: console.log and its
		// rotated half stay within the cap, and the tail is still the newest output.
		lines := int(4*h.ConsoleCap) / len(ConsoleLinePref+"00000\n")
		m := h.Start(t, Behaviour{ConsoleLines: lines})
		ready(t, m)
		if err := m.Kill(); err != nil {
			t.Fatal(err)
		}
		log := m.State().ConsoleLog
		total := int64(0)
		for _, p := range []string{log, log + ".1"} {
			if fi, err := os.Stat(p); err == nil {
				total += fi.Size()
			}
		}
		if total > h.ConsoleCap || total < h.ConsoleCap/4 {
			t.Errorf("console log %d bytes after %d lines; cap %d", total, lines, h.ConsoleCap)
		}
		if tail := m.Exit().ConsoleTail; len(tail) == 0 || tail[len(tail)-1] != MarkBoot {
			t.Errorf("console tail %q", tail)
		}
	})

	t.Run("ConsoleTail", func(t *testing.T) {
		const lines = 5000 // far more than the tail window
		m := h.Start(t, Behaviour{ConsoleLines: lines})
		ready(t, m)
		if err := m.Kill(); err != nil {
			t.Fatal(err)
		}
		tail := m.Exit().ConsoleTail
		joined := strings.Join(tail, "\n")
		if len(tail) != 20 || !strings.Contains(joined, fmt.Sprintf("%s%d\n", ConsoleLinePref, lines-1)) ||
			strings.Contains(joined, ConsoleLinePref+"0\n") || tail[len(tail)-1] != MarkBoot {
			t.Errorf("console tail (%d lines) %q", len(tail), tail)
		}
	})
}

// PrintBoot prints what every fake guest prints as it boots: the numbered lines, then
// MarkBoot.
func PrintBoot(w interface{ Write([]byte) (int, error) }, b Behaviour) {
	for i := range b.ConsoleLines {
		fmt.Fprintf(w, "%s%d\n", ConsoleLinePref, i)
	}
	fmt.Fprintln(w, MarkBoot)
}
