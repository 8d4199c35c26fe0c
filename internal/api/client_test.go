package api

import (
	"context"
	"errors"
	"net"
	"path/filepath"
	"testing"
)

// A daemon killed after accepting a connection resets it: the CLI must see "not running"
// (and start a new one) rather than a raw network error.
func TestResetConnectionMeansDaemonNotRunning(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "d.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			// Read part of the request and close with the rest unread: the kernel resets.
			_, _ = c.Read(make([]byte, 1))
			c.Close()
		}
	}()
	_, err = NewClient(sock, "test").Status(context.Background())
	var ae *Error
	if !errors.As(err, &ae) || ae.Code != CodeDaemonNotRunning || ae.Hint == "" {
		t.Fatalf("status against a resetting daemon: %v", err)
	}
	ln.Close()
	_, err = NewClient(filepath.Join(t.TempDir(), "none.sock"), "test").Status(context.Background())
	if !errors.As(err, &ae) || ae.Code != CodeDaemonNotRunning {
		t.Fatalf("status without a daemon: %v", err)
	}
}
