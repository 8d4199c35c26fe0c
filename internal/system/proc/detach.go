// Package proc holds banger's process helpers: running a host binary and reading its exit
// code, and starting the daemon detached from the CLI.
package proc

import (
	"fmt"
	"os"
	"os/exec"
	"syscall"
)

// Detached is a process started by StartDetached.
type Detached struct {
	PID int
	// Exited is closed when the process exits while this process is still around to see it.
	Exited <-chan struct{}
}

// StartDetached starts path with args in its own session, stdin from /dev/null and
// stdout/stderr appended to logFile: the CLI uses it to start the owner daemon so that it
// outlives the terminal the user typed in. The child is reaped in the background so an
// early exit is seen at once (a zombie would still answer kill(pid, 0)).
func StartDetached(path string, args []string, logFile string, extraEnv []string) (Detached, error) {
	log, err := os.OpenFile(logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return Detached{}, fmt.Errorf("open log %s: %w", logFile, err)
	}
	defer log.Close()
	cmd := exec.Command(path, args...)
	cmd.Stdout = log
	cmd.Stderr = log
	cmd.Env = append(os.Environ(), extraEnv...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return Detached{}, fmt.Errorf("start %s: %w", path, err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	return Detached{PID: cmd.Process.Pid, Exited: exited}, nil
}
