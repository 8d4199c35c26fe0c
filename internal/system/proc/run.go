package proc

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
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
