package system

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
)

// RunBinary runs path with args and returns its stdout and stderr. A non-zero exit is an
// *exec.ExitError (callers that parse stdout anyway, like doctor --json which exits 1 on a
// FAIL, check ExitCode). extraEnv is appended to this process's environment.
func RunBinary(ctx context.Context, path string, args []string, extraEnv []string) (stdout, stderr []byte, err error) {
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Env = append(os.Environ(), extraEnv...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err = cmd.Run()
	return out.Bytes(), errb.Bytes(), err
}

// ExitCode returns the exit status carried by err from RunBinary, or -1 when the process
// did not run to an exit (not found, killed, context cancelled).
func ExitCode(err error) int {
	var ee *exec.ExitError
	if errors.As(err, &ee) && ee.Exited() {
		return ee.ExitCode()
	}
	return -1
}

// ServiceScope picks the systemd instance: the user's (systemctl --user) or the system's.
type ServiceScope bool

const (
	UserService   ServiceScope = true
	SystemService ServiceScope = false
)

func systemctlArgs(scope ServiceScope, args ...string) []string {
	if scope == UserService {
		return append([]string{"--user"}, args...)
	}
	return args
}

// ServiceActive reports whether systemd runs unit now. No systemctl, no user session
// manager or an unknown unit all answer false: the caller then treats the process as not
// managed by systemd.
func ServiceActive(ctx context.Context, scope ServiceScope, unit string) bool {
	path, err := exec.LookPath("systemctl")
	if err != nil {
		return false
	}
	out, _, err := RunBinary(ctx, path, systemctlArgs(scope, "is-active", unit), nil)
	return err == nil && strings.TrimSpace(string(out)) == "active"
}

// RestartService restarts unit and waits for systemd to report the job done (for a
// Type=notify unit that means the service said READY).
func RestartService(ctx context.Context, scope ServiceScope, unit string) error {
	path, err := exec.LookPath("systemctl")
	if err != nil {
		return errors.New("systemctl not found")
	}
	_, stderr, err := RunBinary(ctx, path, systemctlArgs(scope, "--no-ask-password", "restart", unit), nil)
	if err != nil {
		return fmt.Errorf("systemctl restart %s: %v: %s", unit, err, strings.TrimSpace(string(stderr)))
	}
	return nil
}
