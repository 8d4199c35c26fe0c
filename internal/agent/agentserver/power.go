package agentserver

import (
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
