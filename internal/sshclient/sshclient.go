// Package sshclient is banger's in-process SSH client (golang.org/x/crypto/ssh) over a byte
// stream that reaches a guest's sshd, usually relayed by the guest agent. The CLI falls back
// to it when there is no system ssh; the daemon provisions image builds with it.
package sshclient

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"golang.org/x/crypto/ssh"
)

// streamConn makes a relayed byte stream usable where x/crypto/ssh wants a net.Conn.
type streamConn struct {
	io.ReadWriteCloser
}

func (streamConn) LocalAddr() net.Addr { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)} }

// RemoteAddr is a TCP address because knownhosts insists on one; the pin is checked by
// alias, not by address.
func (streamConn) RemoteAddr() net.Addr { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 22} }

func (streamConn) SetDeadline(time.Time) error      { return nil }
func (streamConn) SetReadDeadline(time.Time) error  { return nil }
func (streamConn) SetWriteDeadline(time.Time) error { return nil }

// handshakeTimeout bounds the SSH handshake (a stuck sshd must not hang the caller).
const handshakeTimeout = 30 * time.Second

// Dial runs the SSH handshake over conn as user, accepting only the host key hostKeys
// pins for alias (ed25519). conn is closed with the client, or on failure.
func Dial(ctx context.Context, conn io.ReadWriteCloser, user, alias string, signer ssh.Signer, hostKeys ssh.HostKeyCallback) (*ssh.Client, error) {
	// NewClientConn ignores Timeout: bound the handshake by closing the stream.
	hctx, cancel := context.WithTimeout(ctx, handshakeTimeout)
	defer cancel()
	stop := context.AfterFunc(hctx, func() { conn.Close() })
	defer stop()
	cfg := &ssh.ClientConfig{
		User:              user,
		Auth:              []ssh.AuthMethod{ssh.PublicKeys(signer)},
		HostKeyCallback:   hostKeys,
		HostKeyAlgorithms: []string{ssh.KeyAlgoED25519},
	}
	cc, chans, reqs, err := ssh.NewClientConn(streamConn{conn}, alias+":22", cfg)
	if err != nil {
		conn.Close()
		if hctx.Err() != nil {
			return nil, fmt.Errorf("ssh to %s: handshake: %w", alias, context.Cause(hctx))
		}
		return nil, fmt.Errorf("ssh to %s: %w", alias, err)
	}
	return ssh.NewClient(cc, chans, reqs), nil
}

// Run runs cmd (a shell command line) in a new session and returns its exit status;
// cancelling ctx closes the session. A session that ends without a status (the connection
// dropped) is an error.
func Run(ctx context.Context, c *ssh.Client, cmd string, stdin io.Reader, stdout, stderr io.Writer) (int, error) {
	sess, err := c.NewSession()
	if err != nil {
		return -1, fmt.Errorf("ssh session: %w", err)
	}
	defer sess.Close()
	sess.Stdin, sess.Stdout, sess.Stderr = stdin, stdout, stderr
	stop := context.AfterFunc(ctx, func() { sess.Close() })
	defer stop()
	err = sess.Run(cmd)
	return ExitCode(err)
}

// ExitCode turns a session's end into its exit code, or an error when it has none.
func ExitCode(err error) (int, error) {
	var ee *ssh.ExitError
	switch {
	case err == nil:
		return 0, nil
	case errors.As(err, &ee):
		return ee.ExitStatus(), nil
	default:
		return -1, fmt.Errorf("ssh: %w", err)
	}
}
