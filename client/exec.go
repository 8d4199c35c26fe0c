package client

import (
	"context"
	"io"
	"syscall"

	"github.com/banger-vm/banger/internal/agent/agentclient"
)

// Command is a command to run in a VM through its agent (no guest network or sshd
// needed). It runs as root, in /root unless Dir says otherwise.
type Command struct {
	// Argv is the program and its arguments; the program is looked up on the guest's
	// PATH. It is not run by a shell: to use one, say so (Argv: sh -c SCRIPT).
	Argv []string
	// Env adds KEY=VALUE variables to the guest's default environment.
	Env []string
	// Dir is the working directory in the guest (default /root).
	Dir string
	// TTY gives the command a terminal of Rows x Cols; its output then comes as one
	// stream, on Stdout.
	TTY        bool
	Rows, Cols uint16
	// Stdin is copied to the command (nil: it reads EOF at once).
	Stdin io.Reader
	// Stdout and Stderr receive the command's output as it comes (nil: discarded). The
	// bytes are the guest's: bound them and strip terminal controls before showing them
	// to a user.
	Stdout, Stderr io.Writer
}

// ExecSession is a command running in a VM (StartExec).
type ExecSession struct {
	s *agentclient.ExecSession
}

// StartExec starts cmd in VM name and returns at once; Wait for its exit status. A VM
// that is not running or whose agent does not answer is an error here; a program that
// does not exist is not (it exits 127).
func (c *Client) StartExec(ctx context.Context, name string, cmd Command) (*ExecSession, error) {
	if len(cmd.Argv) == 0 {
		return nil, errNoArgv
	}
	conn, err := c.api.ExecStream(ctx, VMExecRequest{Name: name, Argv: cmd.Argv, Env: cmd.Env, Cwd: cmd.Dir,
		TTY: cmd.TTY, Rows: cmd.Rows, Cols: cmd.Cols})
	if err != nil {
		return nil, err
	}
	return &ExecSession{s: agentclient.AttachExec(ctx, conn, cmd.Stdin, cmd.Stdout, cmd.Stderr)}, nil
}

// ExecStream is the low-level form of StartExec: it opens the exec stream of req and
// returns the connection, which carries the guest agent's exec frames (banger's own
// tools attach to it with the same code StartExec uses). Most programs want StartExec or
// Exec; the frame format is banger's internal protocol and may change within API v1.
func (c *Client) ExecStream(ctx context.Context, req VMExecRequest) (io.ReadWriteCloser, error) {
	if len(req.Argv) == 0 {
		return nil, errNoArgv
	}
	return c.api.ExecStream(ctx, req)
}

// Exec runs cmd in VM name and waits for it. A command that ran returns its ExitStatus
// and a nil error whatever its exit code; err is set (with Code -1) when it could not
// run or the stream broke, or (with the status valid) when writing its output failed.
// Cancelling ctx kills the command.
func (c *Client) Exec(ctx context.Context, name string, cmd Command) (ExitStatus, error) {
	s, err := c.StartExec(ctx, name, cmd)
	if err != nil {
		return ExitStatus{Code: -1}, err
	}
	defer s.Close()
	return s.Wait()
}

// Wait waits for the command to end and returns its exit status. err is set when the
// stream failed (status Code -1: the VM stopped, ctx was cancelled) or when writing to
// Stdout or Stderr failed (the status is still valid).
func (s *ExecSession) Wait() (ExitStatus, error) { return s.s.Wait() }

// Resize sets the size of the command's terminal (Command.TTY).
func (s *ExecSession) Resize(rows, cols uint16) error { return s.s.Resize(rows, cols) }

// Signal sends sig to the command's process group in the guest.
func (s *ExecSession) Signal(sig syscall.Signal) error { return s.s.Signal(sig) }

// Done is closed once the command has ended (or the session was closed).
func (s *ExecSession) Done() <-chan struct{} { return s.s.Done() }

// Close hangs up; a command still running is killed by the agent.
func (s *ExecSession) Close() error { return s.s.Close() }
