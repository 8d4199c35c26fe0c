package api

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// privateDir is a socket directory as the daemon makes it: 0700 (t.TempDir's may be 0755).
func privateDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	return dir
}

// listen listens on a socket called name in a fresh private directory, until the test ends.
func listen(t *testing.T, name string) (string, net.Listener) {
	t.Helper()
	sock := filepath.Join(privateDir(t), name)
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return sock, ln
}

// A daemon killed after accepting a connection resets it: the CLI must see "not running"
// (and start a new one) rather than a raw network error.
func TestResetConnectionMeansDaemonNotRunning(t *testing.T) {
	sock, ln := listen(t, "d.sock")
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
	_, err := NewClient(sock, "test").Status(context.Background())
	var ae *Error
	if !errors.As(err, &ae) || ae.Code != CodeDaemonNotRunning || ae.Hint == "" {
		t.Fatalf("status against a resetting daemon: %v", err)
	}
	ln.Close()
	_, err = NewClient(filepath.Join(privateDir(t), "none.sock"), "test").Status(context.Background())
	if !errors.As(err, &ae) || ae.Code != CodeDaemonNotRunning {
		t.Fatalf("status without a daemon: %v", err)
	}
}

// The peer check reads the listener's uid from the kernel: ours passes, a different uid is
// refused unless the listener is root.
func TestCheckPeer(t *testing.T) {
	sock, _ := listen(t, "p.sock")
	// No need to accept: the kernel records the listener's credentials at connect(2).
	conn, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	me := os.Geteuid()
	if err := checkPeer(conn, me); err != nil {
		t.Fatalf("our own listener refused: %v", err)
	}
	err = checkPeer(conn, me+1)
	switch {
	case me == 0 && err != nil:
		t.Fatalf("a root listener refused: %v", err)
	case me != 0 && (err == nil || !strings.Contains(err.Error(), "uid "+strconv.Itoa(me))):
		t.Fatalf("a listener of uid %d accepted for uid %d: %v", me, me+1, err)
	}
}

// A socket in a directory others can write to is refused with a typed error and a hint.
func TestUnsafeSocketDirRefused(t *testing.T) {
	sock, _ := listen(t, "d.sock")
	dir := filepath.Dir(sock)
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	_, err := NewClient(sock, "test").Status(context.Background())
	var ae *Error
	if !errors.As(err, &ae) || ae.Code != CodeUnsafeSocket || !strings.Contains(ae.Message, dir) || !strings.Contains(ae.Hint, "chmod 0700") {
		t.Fatalf("status through a 0777 directory: %#v", err)
	}
}
