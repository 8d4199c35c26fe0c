package agent

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestFrameRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	fw := NewFrameWriter(&buf)
	big := bytes.Repeat([]byte{0xAB}, MaxFramePayload+10)
	must(t, fw.WriteFrame(FrameStdout, []byte("out")))
	must(t, fw.WriteFrame(FrameStdinEOF, nil))
	must(t, fw.WriteFrame(FrameResize, ResizePayload(40, 120)))
	must(t, fw.WriteFrame(FrameSignal, SignalPayload(15)))
	must(t, fw.WriteFrame(FrameStderr, big)) // split in two frames

	typ, p, err := ReadFrame(&buf)
	if err != nil || typ != FrameStdout || string(p) != "out" {
		t.Fatalf("frame 1: %v %q %v", typ, p, err)
	}
	if typ, p, err = ReadFrame(&buf); err != nil || typ != FrameStdinEOF || len(p) != 0 {
		t.Fatalf("frame 2: %v %q %v", typ, p, err)
	}
	typ, p, _ = ReadFrame(&buf)
	if r, c, err := ParseResize(p); typ != FrameResize || err != nil || r != 40 || c != 120 {
		t.Fatalf("resize: %v %d %d %v", typ, r, c, err)
	}
	typ, p, _ = ReadFrame(&buf)
	if s, err := ParseSignal(p); typ != FrameSignal || err != nil || s != 15 {
		t.Fatalf("signal: %v %d %v", typ, s, err)
	}
	var got []byte
	for i := 0; i < 2; i++ {
		typ, p, err := ReadFrame(&buf)
		if err != nil || typ != FrameStderr {
			t.Fatalf("big frame %d: %v %v", i, typ, err)
		}
		got = append(got, p...)
	}
	if !bytes.Equal(got, big) {
		t.Fatal("big payload changed on the way")
	}
	if _, _, err := ReadFrame(&buf); err != io.EOF {
		t.Fatalf("at end: %v, want io.EOF", err)
	}
	// Truncated and oversized frames.
	if _, _, err := ReadFrame(bytes.NewReader([]byte{0x81, 0, 0, 0, 5, 'a'})); err != io.ErrUnexpectedEOF {
		t.Fatalf("truncated: %v", err)
	}
	if _, _, err := ReadFrame(bytes.NewReader([]byte{0x81, 0xff, 0, 0, 0})); !errors.Is(err, ErrFrameTooLarge) {
		t.Fatalf("oversized: %v", err)
	}
	if _, _, err := ParseResize([]byte{1}); err == nil {
		t.Fatal("short resize accepted")
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// socketPair returns two connected stream sockets.
func socketPair(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conn := func(fd int) net.Conn {
		f := os.NewFile(uintptr(fd), "socketpair")
		defer f.Close()
		c, err := net.FileConn(f)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	return conn(fds[0]), conn(fds[1])
}

// TestHandshakeSkipsGarbage: stale bytes in both directions, a HELLO and a GO of an old
// nonce, a reset line; afterwards the first bytes of the session arrive intact both ways.
func TestHandshakeSkipsGarbage(t *testing.T) {
	host, guest := socketPair(t)
	// Stale bytes waiting for each side before the handshake starts.
	_, _ = guest.Write([]byte("\x00\x01\x00\x02garbage from an old guest session" + GuestResetLine + "\nBANGER-AGENT-ACK1 0123456789abcdef\n\xff\xfe"))
	_, _ = host.Write([]byte("\x00\x00\x00\x01old yamux bytes\nBANGER-AGENT-HELLO1 ffffffffffffffff\n" +
		"BANGER-AGENT-GO1 0000000000000000\n\x00\x00"))

	guestErr := make(chan error, 1)
	go func() {
		br := bufio.NewReader(guest)
		if err := GuestHandshake(br, guest); err != nil {
			guestErr <- err
			return
		}
		// The first session bytes from the host follow GO directly.
		b := make([]byte, 5)
		if _, err := io.ReadFull(br, b); err != nil || string(b) != "hello" {
			guestErr <- errors.New("guest read " + string(b))
			return
		}
		_, err := guest.Write([]byte("world"))
		guestErr <- err
	}()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	r, err := HostHandshake(ctx, host)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := host.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 5)
	if _, err := io.ReadFull(r, b); err != nil || string(b) != "world" {
		t.Fatalf("host read %q, %v", b, err)
	}
	if err := <-guestErr; err != nil {
		t.Fatal(err)
	}
}

func TestHostHandshakeTimesOutWithoutAgent(t *testing.T) {
	host, guest := socketPair(t)
	go io.Copy(io.Discard, guest) // a port nobody answers on
	ctx, cancel := context.WithTimeout(context.Background(), 600*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := HostHandshake(ctx, host)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want deadline exceeded", err)
	}
	if time.Since(start) > 5*time.Second {
		t.Fatalf("handshake ignored its context for %v", time.Since(start))
	}
}

func TestFindNonce(t *testing.T) {
	for line, want := range map[string]string{
		"BANGER-AGENT-HELLO1 0123456789abcdef\n":     "0123456789abcdef",
		"junkBANGER-AGENT-HELLO1 0123456789abcdef\n": "0123456789abcdef",
		"BANGER-AGENT-HELLO1 0123456789ABCDEF\n":     "",
		"BANGER-AGENT-HELLO1 0123456789abcde\n":      "",
		"BANGER-AGENT-HELLO1 0123456789abcdef":       "",
		"BANGER-AGENT-HELLO1 0123456789abcdef0\n":    "",
		"BANGER-AGENT-ACK1 0123456789abcdef\n":       "",
	} {
		got, ok := findNonce([]byte(line), helloMagic)
		if got != want || ok != (want != "") {
			t.Errorf("findNonce(%q) = %q, %v; want %q", line, got, ok, want)
		}
	}
}

func TestErrorHelpers(t *testing.T) {
	err := error(&Error{Status: 404, Code: CodeNotFound, Message: "x: no such file"})
	wrapped := errors.Join(errors.New("ctx"), err)
	if !IsNotFound(wrapped) || ErrorCode(errors.New("plain")) != "" {
		t.Fatal("error helpers")
	}
	if StatusForCode(CodeIsDirectory) != 409 || StatusForCode("whatever") != 500 {
		t.Fatal("status mapping")
	}
}
