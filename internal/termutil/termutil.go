// Package termutil puts the user's terminal into raw mode for an interactive guest session
// and reports its size changes, shared by `vm exec -t` and the in-process SSH client.
package termutil

import (
	"context"

	"os"
	"os/signal"
	"syscall"

	"golang.org/x/term"
)

// FD returns r's file descriptor when r is a terminal.
func FD(r any) (int, bool) {
	f, ok := r.(interface{ Fd() uintptr })
	if !ok {
		return 0, false
	}
	fd := int(f.Fd())
	return fd, term.IsTerminal(fd)
}

// IsTerminal reports whether r (an *os.File, usually) is a terminal.
func IsTerminal(r any) bool {
	_, ok := FD(r)
	return ok
}

// Size returns the terminal size of w (rows, cols), or 24x80 when it is not a terminal.
func Size(w any) (rows, cols uint16) {
	if fd, ok := FD(w); ok {
		if c, r, err := term.GetSize(fd); err == nil && r > 0 && c > 0 {
			return uint16(r), uint16(c)
		}
	}
	return 24, 80
}

// Raw puts the terminal behind in into raw mode and returns the function that restores
// it; a non-terminal is left alone.
func Raw(in any) (restore func(), err error) {
	fd, ok := FD(in)
	if !ok {
		return func() {}, nil
	}
	st, err := term.MakeRaw(fd)
	if err != nil {
		return func() {}, err
	}
	return func() { _ = term.Restore(fd, st) }, nil
}

// WatchResize calls fn with the new size of out each time the terminal is resized, until
// ctx ends.
func WatchResize(ctx context.Context, out any, fn func(rows, cols uint16)) {
	if !IsTerminal(out) {
		return
	}
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGWINCH)
	go func() {
		defer signal.Stop(ch)
		for {
			select {
			case <-ctx.Done():
				return
			case <-ch:
				fn(Size(out))
			}
		}
	}()
}
