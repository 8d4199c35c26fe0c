package guestinit

import (
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Signals PID 1 acts on, numbered as systemd numbers them (glibc's SIGRTMIN is 34), so the
// agent asks banger-init and systemd to power off the same way.
const (
	SigPowerOff = syscall.Signal(34 + 4)
	SigReboot   = syscall.Signal(34 + 5)
)

// service is a process banger-init keeps running when it stays PID 1.
type service struct {
	name    string
	argv    []string
	pid     int
	started time.Time
	backoff time.Duration
}

// supervise is the PID 1 loop for images without systemd: run the agent (and sshd when the
// image has one), restart them when they die, reap every orphan, and power off or reboot
// on request.
func (b *boot) supervise() error {
	var services []*service
	if b.cfg.Agent != "none" {
		services = append(services, &service{name: "agent", argv: b.agentArgs()})
	}
	if sshd, err := b.prepareSSHD(); err != nil {
		b.logf("warning: not starting sshd: %v", err)
	} else if sshd != nil {
		services = append(services, sshd)
	}
	// Ctrl-Alt-Del (Firecracker's SendCtrlAltDel) then reaches PID 1 as SIGINT, which powers
	// off cleanly, instead of an immediate kernel reboot.
	if err := unix.Reboot(unix.LINUX_REBOOT_CMD_CAD_OFF); err != nil {
		b.logf("warning: cannot route Ctrl-Alt-Del to banger-init: %v", err)
	}
	sigs := make(chan os.Signal, 16)
	signal.Notify(sigs, syscall.SIGCHLD, syscall.SIGTERM, syscall.SIGINT, syscall.SIGPWR, SigPowerOff, SigReboot)
	for _, s := range services {
		b.startService(s)
	}
	for sig := range sigs {
		switch sig {
		case syscall.SIGCHLD:
			b.reap(services)
		case SigReboot:
			b.shutdown(unix.LINUX_REBOOT_CMD_RESTART)
		default:
			b.shutdown(unix.LINUX_REBOOT_CMD_POWER_OFF)
		}
	}
	return nil
}

func (b *boot) startService(s *service) {
	attr := &os.ProcAttr{
		Dir:   "/",
		Env:   []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root", "LANG=C.UTF-8"},
		Files: []*os.File{nil, os.Stdout, os.Stderr},
		Sys:   &syscall.SysProcAttr{Setsid: true},
	}
	p, err := os.StartProcess(s.argv[0], s.argv, attr)
	if err != nil {
		b.logf("cannot start %s: %v", s.name, err)
		s.pid = 0
		return
	}
	s.pid, s.started = p.Pid, time.Now()
	_ = p.Release() // reaped by reap, not by os.Process
	b.debugf("started %s (pid %d)", s.name, s.pid)
}

// reap collects every exited child (PID 1 inherits all orphans) and restarts services that
// died, backing off when one keeps crashing.
func (b *boot) reap(services []*service) {
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
		if pid <= 0 || err != nil {
			return
		}
		for _, s := range services {
			if s.pid != pid {
				continue
			}
			b.logf("%s (pid %d) exited (%s); restarting", s.name, pid, describeWait(ws))
			if time.Since(s.started) < 5*time.Second {
				s.backoff = min(max(2*s.backoff, 100*time.Millisecond), 5*time.Second)
			} else {
				s.backoff = 0
			}
			time.Sleep(s.backoff)
			b.startService(s)
		}
	}
}

func describeWait(ws unix.WaitStatus) string {
	if ws.Signaled() {
		return "killed by " + ws.Signal().String()
	}
	return fmt.Sprintf("exit status %d", ws.ExitStatus())
}

// prepareSSHD returns the sshd service if the image has sshd, making sure it can start:
// its privilege separation directory and host keys.
func (b *boot) prepareSSHD() (*service, error) {
	const sshd = "/usr/sbin/sshd"
	if _, err := os.Stat(sshd); err != nil {
		return nil, nil
	}
	if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
		return nil, err
	}
	keys, _ := filepath.Glob("/etc/ssh/ssh_host_*_key")
	if len(keys) == 0 {
		// banger normally places a host key before boot; an image booted some other way
		// gets fresh ones.
		if err := b.runOnce("/usr/bin/ssh-keygen", "-A"); err != nil {
			return nil, fmt.Errorf("no host keys and ssh-keygen -A failed: %w", err)
		}
	}
	return &service{name: "sshd", argv: []string{sshd, "-D", "-e"}}, nil
}

// runOnce runs a helper command to completion before the supervisor loop starts reaping.
func (b *boot) runOnce(argv ...string) error {
	p, err := os.StartProcess(argv[0], argv, &os.ProcAttr{Files: []*os.File{nil, os.Stdout, os.Stderr}})
	if err != nil {
		return err
	}
	st, err := p.Wait()
	if err != nil {
		return err
	}
	if !st.Success() {
		return fmt.Errorf("%s: %s", argv[0], st)
	}
	return nil
}

// shutdown stops every process, flushes the disks and powers off (or reboots).
func (b *boot) shutdown(cmd int) {
	b.logf("shutting down")
	_ = unix.Kill(-1, unix.SIGTERM)
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
		if err == unix.ECHILD {
			break
		}
		if pid <= 0 {
			time.Sleep(20 * time.Millisecond)
		}
	}
	_ = unix.Kill(-1, unix.SIGKILL)
	unix.Sync()
	// The work disk is a separate filesystem: unmount it so its journal is clean.
	if err := unix.Unmount("/root", 0); err != nil && err != unix.EINVAL {
		b.logf("warning: unmount /root: %v", err)
	}
	unix.Sync()
	_ = unix.Reboot(cmd)
	select {}
}
