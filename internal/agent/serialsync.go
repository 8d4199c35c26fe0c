package agent

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"
)

// Virtio-serial session handshake.
//
// A virtio-serial port is one byte pipe that outlives host connections: when the host side
// (QEMU's chardev socket, owned by the daemon) reconnects, either direction may still hold
// stale bytes of the previous yamux session, and the guest may not even have noticed the
// disconnect. So before every yamux session the two sides resynchronise with text lines
// that are found anywhere in the byte stream (everything else is discarded):
//
//	host  -> guest: "\nBANGER-AGENT-HELLO1 <nonce>\n"   repeated every HelloInterval until acked
//	guest -> host:  "\nBANGER-AGENT-ACK1 <nonce>\n"     once per new nonce
//	host  -> guest: "\nBANGER-AGENT-GO1 <nonce>\n"      once; yamux starts right after its "\n"
//
// <nonce> is 16 lowercase hex digits, fresh for every host connection. The host discards
// everything up to the ACK with its nonce; the guest discards everything up to the GO with the
// nonce it acked (a HELLO with a new nonce restarts it). The host repeats HELLO because a
// guest still inside a stale yamux session swallows bytes until that session fails on them.
// A yamux session that later fails (garbage, EOF, keepalive timeout) makes the guest reopen the
// port and wait for a HELLO again, and makes the host reconnect.
//
// Each time the guest (re)opens the port it first writes GuestResetLine. A host still in a
// yamux session with a previous agent (the guest rebooted, or the agent restarted) fails at
// once on it (it is not a yamux header) and reconnects, instead of waiting for keepalives.
// A host in the handshake sends its HELLO again at once: the guest is listening now (after a
// restore from a snapshot, the guest's first act is to fail the template's stale session).

const (
	helloMagic = "BANGER-AGENT-HELLO1 "
	ackMagic   = "BANGER-AGENT-ACK1 "
	goMagic    = "BANGER-AGENT-GO1 "
	nonceLen   = 16
)

// GuestResetLine is what the guest writes when it starts listening for a new session.
const GuestResetLine = "\n" + guestResetMagic + "\n"

const guestResetMagic = "BANGER-AGENT-RESET1"

// HelloInterval is how often the host repeats its HELLO until the guest answers.
const HelloInterval = 250 * time.Millisecond

// GuestHandshake runs the guest side of the handshake on a freshly opened port: it returns
// once the host sent GO, leaving br positioned at the first byte of the yamux session. Errors
// are the port's read/write errors (io.EOF when no host is connected).
func GuestHandshake(br *bufio.Reader, w io.Writer) error {
	acked := ""
	for {
		line, err := readChunk(br)
		if err != nil {
			return err
		}
		if n, ok := findNonce(line, helloMagic); ok {
			if n != acked {
				if _, err := io.WriteString(w, "\n"+ackMagic+n+"\n"); err != nil {
					return fmt.Errorf("write handshake ack: %w", err)
				}
				acked = n
			}
			continue
		}
		if acked == "" {
			continue
		}
		if n, ok := findNonce(line, goMagic); ok && n == acked {
			return nil
		}
	}
}

// HostHandshake runs the host side of the handshake on a new connection to the port's
// chardev socket. It returns a reader to use in place of conn for reading (it may hold
// buffered bytes). ctx bounds the wait for the agent.
func HostHandshake(ctx context.Context, conn net.Conn) (io.Reader, error) {
	var raw [nonceLen / 2]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return nil, err
	}
	nonce := hex.EncodeToString(raw[:])

	// Cancelling ctx unblocks reads and writes through a past deadline.
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	var (
		wmu      sync.Mutex
		done     bool
		werr     error
		quit     = make(chan struct{})
		finished = make(chan struct{})
		again    = make(chan struct{}, 1) // the guest reset: say HELLO now
	)
	go func() {
		defer close(finished)
		t := time.NewTicker(HelloInterval)
		defer t.Stop()
		for {
			wmu.Lock()
			if done {
				wmu.Unlock()
				return
			}
			_, err := io.WriteString(conn, "\n"+helloMagic+nonce+"\n")
			if err != nil {
				werr = err
				wmu.Unlock()
				_ = conn.SetReadDeadline(time.Unix(1, 0)) // wake the reader
				return
			}
			wmu.Unlock()
			select {
			case <-t.C:
			case <-again:
				t.Reset(HelloInterval)
			case <-quit:
				return
			}
		}
	}()
	finish := func() {
		wmu.Lock()
		done = true
		wmu.Unlock()
		close(quit)
		<-finished
	}

	br := bufio.NewReaderSize(conn, 4096)
	for {
		line, err := readChunk(br)
		if err != nil {
			finish()
			if ctx.Err() != nil {
				return nil, fmt.Errorf("virtio-serial handshake: no answer from banger-agent: %w", context.Cause(ctx))
			}
			if werr != nil {
				return nil, fmt.Errorf("virtio-serial handshake: send hello: %w", werr)
			}
			if errors.Is(err, io.EOF) {
				return nil, fmt.Errorf("virtio-serial handshake: chardev closed the connection: %w", err)
			}
			return nil, fmt.Errorf("virtio-serial handshake: %w", err)
		}
		if n, ok := findNonce(line, ackMagic); ok && n == nonce {
			break
		}
		if bytes.Contains(line, []byte(guestResetMagic)) {
			select {
			case again <- struct{}{}:
			default:
			}
		}
	}
	wmu.Lock()
	done = true
	_, err := io.WriteString(conn, "\n"+goMagic+nonce+"\n")
	wmu.Unlock()
	close(quit)
	<-finished
	if err != nil {
		return nil, fmt.Errorf("virtio-serial handshake: send go: %w", err)
	}
	if !stop() {
		return nil, fmt.Errorf("virtio-serial handshake: %w", context.Cause(ctx))
	}
	_ = conn.SetDeadline(time.Time{})
	return br, nil
}

// readChunk returns the next line (with its "\n"), or a full buffer of bytes without one.
// The slice is valid until the next read.
func readChunk(br *bufio.Reader) ([]byte, error) {
	line, err := br.ReadSlice('\n')
	if err == bufio.ErrBufferFull {
		return line, nil
	}
	return line, err
}

// findNonce finds magic in line followed by a nonce and "\n".
func findNonce(line []byte, magic string) (string, bool) {
	i := bytes.LastIndex(line, []byte(magic))
	if i < 0 {
		return "", false
	}
	rest := line[i+len(magic):]
	if len(rest) != nonceLen+1 || rest[nonceLen] != '\n' {
		return "", false
	}
	for _, c := range rest[:nonceLen] {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return "", false
		}
	}
	return string(rest[:nonceLen]), true
}
