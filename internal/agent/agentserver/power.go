package agentserver

import (
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/banger-vm/banger/internal/agent"
)

// systemd's shutdown signals (systemd(1), SIGNALS): SIGRTMIN+3 halt, SIGRTMIN+4 poweroff,
// SIGRTMIN+5 reboot. SIGRTMIN is the C library's, 34 with glibc (the kernel's 32 and 33 are
// reserved by NPTL), so poweroff is signal 38 and reboot 39. banger-init, when it stays PID 1,
// answers the same signals.
const (
	sigRTMin    = 34
	sigPoweroff = syscall.Signal(sigRTMin + 4)
	sigReboot   = syscall.Signal(sigRTMin + 5)
)

// PID 1 names (from /proc/1/comm or the basename of /proc/1/exe) that take the systemd
// shutdown signals.
var signalledInits = map[string]bool{"systemd": true, "banger-init": true}

// powerPlan decides how to carry out action: signal PID 1 when it is an init that knows the
// systemd signals, otherwise sync and reboot(2) directly.
func (s *Server) powerPlan(action string) (method string, sig syscall.Signal) {
	names := []string{}
	if b, err := os.ReadFile(filepath.Join(s.cfg.ProcDir, "1", "comm")); err == nil {
		names = append(names, strings.TrimSpace(string(b)))
	}
	if exe, err := os.Readlink(filepath.Join(s.cfg.ProcDir, "1", "exe")); err == nil {
		names = append(names, filepath.Base(exe))
	}
	for _, n := range names {
		if n == "runit" {
			return "runit stage 3 (stopit + SIGCONT to pid1)", syscall.SIGCONT
		}
		if signalledInits[n] {
			sig = sigPoweroff
			if action == agent.PowerReboot {
				sig = sigReboot
			}
			return fmt.Sprintf("signal %d to pid1 (%s)", sig, n), sig
		}
	}
	return "reboot(2)", 0
}

func (s *Server) handlePower(w http.ResponseWriter, r *http.Request) {
	var req agent.PowerRequest
	if !decodeJSON(w, r, &req) {
		return
	}
	if req.Action != agent.PowerOff && req.Action != agent.PowerReboot {
		writeError(w, agent.CodeBadRequest, fmt.Sprintf("action %q: want %q or %q", req.Action, agent.PowerOff, agent.PowerReboot))
		return
	}
	method, sig := s.powerPlan(req.Action)
	s.log.Info("power request accepted", "action", req.Action, "method", method)
	writeJSON(w, http.StatusAccepted, agent.PowerResponse{Action: req.Action, Method: method})
	if f, ok := w.(http.Flusher); ok {
		f.Flush()
	}
	go func() {
		// The act outlives the request: only closing the server cancels it.
		select {
		case <-s.closing:
			return
		case <-time.After(s.cfg.PowerDelay):
		}
		if s.cfg.PowerHook != nil {
			s.cfg.PowerHook(req.Action, method)
			return
		}
		s.power(req.Action, sig)
	}()
}

func (s *Server) power(action string, sig syscall.Signal) {
	if sig == syscall.SIGCONT {
		// runit(8) shuts down on SIGCONT when stopit is executable by its owner; reboot
		// then decides between restarting and powering off. (Debian links both into /run.)
		err := s.runitShutdown(action)
		if err == nil {
			err = unix.Kill(1, sig)
		}
		if err == nil {
			return
		}
		s.log.Error("runit shutdown failed; falling back to reboot(2)", "err", err)
		sig = 0
	}
	if sig != 0 {
		err := unix.Kill(1, sig)
		if err == nil {
			return
		}
		s.log.Error("signal pid1 failed; falling back to reboot(2)", "signal", int(sig), "err", err)
	}
	unix.Sync()
	cmd := unix.LINUX_REBOOT_CMD_POWER_OFF
	if action == agent.PowerReboot {
		cmd = unix.LINUX_REBOOT_CMD_RESTART
	}
	if err := unix.Reboot(cmd); err != nil {
		s.log.Error("reboot(2) failed", "action", action, "err", err)
	}
}

// runitFlagPairs are where runit builds look for their stop and reboot flags: Debian's
// patched runit uses /run/runit.*, Void's /run/runit/ (linked from /etc/runit), upstream
// /etc/runit. Each pair is used when its directory exists.
var runitFlagPairs = [][2]string{
	{"/run/runit.stopit", "/run/runit.reboot"},
	{"/run/runit/stopit", "/run/runit/reboot"},
	{"/etc/runit/stopit", "/etc/runit/reboot"},
}

// runitShutdown arms runit's stage 3 for action. The flags may be symlinks, so they are
// rewritten in place rather than replaced.
func (s *Server) runitShutdown(action string) error {
	root := s.cfg.RunitRoot
	if root == "" {
		root = "/"
	}
	reboot := os.FileMode(0)
	if action == agent.PowerReboot {
		reboot = 0o100
	}
	armed := 0
	var errs []error
	for _, pair := range runitFlagPairs {
		if st, err := os.Stat(filepath.Join(root, filepath.Dir(pair[0]))); err != nil || !st.IsDir() {
			continue
		}
		err := writeFlag(filepath.Join(root, pair[0]), 0o100)
		if err == nil {
			err = writeFlag(filepath.Join(root, pair[1]), reboot)
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		armed++
	}
	if armed == 0 {
		return fmt.Errorf("no runit stop flag could be written: %w", errors.Join(errs...))
	}
	return nil
}

func writeFlag(p string, mode os.FileMode) error {
	_ = os.Chmod(p, 0o600) // writable again if it exists
	if err := os.WriteFile(p, nil, 0o600); err != nil {
		return err
	}
	return os.Chmod(p, mode)
}
