package agent

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"
)

// Exec stream.
//
// POST /v1/exec carries an ExecRequest as JSON with the headers
//
//	Connection: Upgrade
//	Upgrade: banger-exec.v1
//
// A bad request is answered with a typed JSON error as usual. Otherwise the agent answers
// "101 Switching Protocols" and from then on the connection is a raw bidirectional stream
// of frames, in both directions:
//
//	+---------+--------------------------+----------------------+
//	| type: 1 | length: 4, big-endian    | payload: length bytes|
//	+---------+--------------------------+----------------------+
//
// length is at most MaxFramePayload. Client -> agent:
//
//	0x01 stdin      payload: bytes for the process's stdin (the pty in TTY mode)
//	0x02 stdin-eof  payload: empty. Closes stdin (TTY mode: writes ^D, VEOF, to the pty)
//	0x03 resize     payload: rows uint16, cols uint16 (big-endian). Ignored without TTY
//	0x04 signal     payload: signal number uint32 (big-endian); sent to the process group
//
// Agent -> client:
//
//	0x81 stdout     payload: bytes, exactly as written (TTY mode: everything from the pty)
//	0x82 stderr     payload: bytes, exactly as written (never sent in TTY mode)
//	0x83 exit       payload: JSON ExitStatus {"code":N,"signal":S}; the last frame
//	0x84 error      payload: UTF-8 message; the agent failed, no exit frame follows
//
// A process that cannot be started still gets an exit frame, like a shell: 127 with
// "banger-agent: <cmd>: command not found" on stderr when the command does not exist, 126
// when it exists but cannot be executed. Receivers skip frame types they do not know.
//
// After the exit frame the agent half-closes (or closes) its side. If the client's side of
// the connection goes away (EOF or error) before the process has exited, the agent kills
// the process group with SIGKILL: dropping the connection is how a client kills a command.

// ExecUpgradeProtocol is the Upgrade header value of the exec stream.
const ExecUpgradeProtocol = "banger-exec.v1"

// FrameType identifies an exec stream frame.
type FrameType byte

// Frame types; see the exec stream description above.
const (
	FrameStdin    FrameType = 0x01
	FrameStdinEOF FrameType = 0x02
	FrameResize   FrameType = 0x03
	FrameSignal   FrameType = 0x04

	FrameStdout FrameType = 0x81
	FrameStderr FrameType = 0x82
	FrameExit   FrameType = 0x83
	FrameError  FrameType = 0x84
)

// MaxFramePayload bounds a frame's payload; writers split larger data.
const MaxFramePayload = 1 << 20

const frameHeaderSize = 5

// ErrFrameTooLarge is returned by ReadFrame for a frame longer than MaxFramePayload.
var ErrFrameTooLarge = errors.New("exec stream: frame larger than 1 MiB")

// FrameWriter writes frames; it is safe for concurrent use and never interleaves frames.
type FrameWriter struct {
	mu sync.Mutex
	w  io.Writer
}

// NewFrameWriter returns a FrameWriter on w.
func NewFrameWriter(w io.Writer) *FrameWriter { return &FrameWriter{w: w} }

// WriteFrame writes one frame, or several of the same type if payload exceeds
// MaxFramePayload.
func (fw *FrameWriter) WriteFrame(t FrameType, payload []byte) error {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	for {
		chunk := payload
		if len(chunk) > MaxFramePayload {
			chunk = chunk[:MaxFramePayload]
		}
		buf := make([]byte, frameHeaderSize+len(chunk))
		buf[0] = byte(t)
		binary.BigEndian.PutUint32(buf[1:], uint32(len(chunk)))
		copy(buf[frameHeaderSize:], chunk)
		if _, err := fw.w.Write(buf); err != nil {
			return err
		}
		payload = payload[len(chunk):]
		if len(payload) == 0 {
			return nil
		}
	}
}

// ReadFrame reads one frame. A clean EOF before the frame's first byte is io.EOF; an EOF
// inside a frame is io.ErrUnexpectedEOF.
func ReadFrame(r io.Reader) (FrameType, []byte, error) {
	var hdr [frameHeaderSize]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return 0, nil, err
	}
	n := binary.BigEndian.Uint32(hdr[1:])
	if n > MaxFramePayload {
		return 0, nil, fmt.Errorf("%w (type 0x%02x, %d bytes)", ErrFrameTooLarge, hdr[0], n)
	}
	payload := make([]byte, n)
	if _, err := io.ReadFull(r, payload); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return 0, nil, err
	}
	return FrameType(hdr[0]), payload, nil
}

// ResizePayload encodes a resize frame payload.
func ResizePayload(rows, cols uint16) []byte {
	b := make([]byte, 4)
	binary.BigEndian.PutUint16(b[0:], rows)
	binary.BigEndian.PutUint16(b[2:], cols)
	return b
}

// ParseResize decodes a resize frame payload.
func ParseResize(p []byte) (rows, cols uint16, err error) {
	if len(p) != 4 {
		return 0, 0, fmt.Errorf("exec stream: resize frame of %d bytes, want 4", len(p))
	}
	return binary.BigEndian.Uint16(p[0:]), binary.BigEndian.Uint16(p[2:]), nil
}

// SignalPayload encodes a signal frame payload.
func SignalPayload(sig int) []byte {
	b := make([]byte, 4)
	binary.BigEndian.PutUint32(b, uint32(sig))
	return b
}

// ParseSignal decodes a signal frame payload.
func ParseSignal(p []byte) (int, error) {
	if len(p) != 4 {
		return 0, fmt.Errorf("exec stream: signal frame of %d bytes, want 4", len(p))
	}
	return int(binary.BigEndian.Uint32(p)), nil
}
