package hosttools

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"

	"github.com/banger-vm/banger/internal/system/proc"
)

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
	out, _, err := proc.RunBinary(ctx, path, systemctlArgs(scope, "is-active", unit), nil)
	return err == nil && strings.TrimSpace(string(out)) == "active"
}

// RestartService restarts unit and waits for systemd to report the job done (for a
// Type=notify unit that means the service said READY).
func RestartService(ctx context.Context, scope ServiceScope, unit string) error {
	path, err := exec.LookPath("systemctl")
	if err != nil {
		return errors.New("systemctl not found")
	}
	_, stderr, err := proc.RunBinary(ctx, path, systemctlArgs(scope, "--no-ask-password", "restart", unit), nil)
	if err != nil {
		return fmt.Errorf("systemctl restart %s: %v: %s", unit, err, strings.TrimSpace(string(stderr)))
	}
	return nil
}
