package cli

import (
	"context"
	"errors"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/banger-vm/banger/client"
)

// signalCause is the cancel cause of an interruptible context: the signal that ended it.
type signalCause struct{ sig os.Signal }

func (s *signalCause) Error() string { return s.sig.String() + " received" }

// interruptible cancels ctx on Ctrl-C/SIGTERM, which aborts the daemon's work too (it
// rolls back what the cancelled request made); interruptedBy tells which signal it was.
func interruptible(ctx context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancelCause(ctx)
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, os.Interrupt, syscall.SIGTERM)
	go func() {
		select {
		case s := <-ch:
			cancel(&signalCause{sig: s})
		case <-ctx.Done():
		}
	}()
	return ctx, func() {
		signal.Stop(ch)
		cancel(context.Canceled)
	}
}

// interruptibleCall reaches the daemon (starting it if need be) and runs call with a context
// that Ctrl-C or SIGTERM cancels (see interruptible): the shape of the commands whose daemon
// work an interrupt aborts, like pulls, builds and boots.
func interruptibleCall[T any](a *app, cmd *cobra.Command, call func(context.Context, *client.Client) (T, error)) (T, error) {
	ctx, stop := interruptible(cmd.Context())
	defer stop()
	c, err := a.ensureDaemon(ctx, false)
	if err != nil {
		var zero T
		return zero, err
	}
	return call(ctx, c)
}

// interruptedBy returns the signal that cancelled an interruptible ctx.
func interruptedBy(ctx context.Context) (os.Signal, bool) {
	var sc *signalCause
	if errors.As(context.Cause(ctx), &sc) {
		return sc.sig, true
	}
	return nil, false
}

// interruptedError is a command stopped by a signal: its message says what was interrupted
// and what was cleaned up; the exit status is the shell's 128+signal (130 for Ctrl-C).
type interruptedError struct {
	sig os.Signal
	msg string
}

func (e *interruptedError) Error() string { return e.msg }

func (e *interruptedError) exitCode() int {
	if s, ok := e.sig.(syscall.Signal); ok {
		return 128 + int(s)
	}
	return 130
}
