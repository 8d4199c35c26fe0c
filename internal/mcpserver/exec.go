package mcpserver

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/banger-vm/banger/internal/agent/agentclient"
	"github.com/banger-vm/banger/internal/api"
)

// Limits of the tools. Outputs go to a model's context: they are cut, and say so.
const (
	// MaxOutputBytes is what is kept of a command's stdout, and of its stderr.
	MaxOutputBytes = 64 << 10
	// DefaultTimeout and MaxTimeout bound a command (timeout_seconds).
	DefaultTimeout = 60 * time.Second
	MaxTimeout     = 30 * time.Minute
	// CreateTimeout bounds creating and booting a VM (slow under software emulation).
	CreateTimeout = 5 * time.Minute
	// FileTimeout bounds a file read or write in the guest.
	FileTimeout = 2 * time.Minute
	// MaxStdinBytes bounds the stdin given to a command.
	MaxStdinBytes = 1 << 20
	// MaxWriteBytes bounds a file written into a VM (after base64 decoding).
	MaxWriteBytes = 4 << 20
	// DefaultReadBytes and MaxReadBytes bound a file read out of a VM.
	DefaultReadBytes = 64 << 10
	MaxReadBytes     = 1 << 20
	// MaxArgv and MaxArgvBytes bound a command line.
	MaxArgv      = 1024
	MaxArgvBytes = 256 << 10
	// MaxForks bounds the clones of one vm_fork.
	MaxForks = 8
)

// capped keeps the first max bytes written to it and counts the rest.
type capped struct {
	buf     bytes.Buffer
	max     int
	dropped int64
}

func (c *capped) Write(p []byte) (int, error) {
	room := c.max - c.buf.Len()
	if room < 0 {
		room = 0
	}
	keep := min(len(p), room)
	c.buf.Write(p[:keep])
	c.dropped += int64(len(p) - keep)
	return len(p), nil
}

// encode returns b as JSON-safe text: itself when it is UTF-8 without NULs, else base64.
func encode(b []byte) (string, bool) {
	if utf8.Valid(b) && bytes.IndexByte(b, 0) < 0 {
		return string(b), false
	}
	return base64.StdEncoding.EncodeToString(b), true
}

// cutRune drops an incomplete UTF-8 sequence at the end of b (cut by a byte limit), so
// text cut mid-character still reads as text.
func cutRune(b []byte) []byte {
	for i := len(b) - 1; i >= 0 && i >= len(b)-utf8.UTFMax; i-- {
		if utf8.RuneStart(b[i]) {
			if !utf8.FullRune(b[i:]) {
				return b[:i]
			}
			return b
		}
	}
	return b
}

// output is one stream of a command as a tool returns it.
func output(c *capped) (text string, isBase64 bool, dropped int64) {
	b := c.buf.Bytes()
	if c.dropped > 0 {
		cut := cutRune(b)
		c.dropped += int64(len(b) - len(cut))
		b = cut
	}
	text, isBase64 = encode(b)
	if c.dropped > 0 && !isBase64 {
		text += fmt.Sprintf("\n[truncated: %d more bytes]", c.dropped)
	}
	return text, isBase64, c.dropped
}

// ExecOutput is what a command did.
type ExecOutput struct {
	VM       string `json:"vm" jsonschema:"the VM the command ran in"`
	ExitCode int    `json:"exit_code" jsonschema:"the command's exit code (128+N when killed by signal N; -1 when it timed out)"`
	Signal   int    `json:"signal,omitempty" jsonschema:"the signal that killed the command, if one did"`
	Stdout   string `json:"stdout" jsonschema:"what the command wrote to stdout (the first 64 KiB)"`
	Stderr   string `json:"stderr" jsonschema:"what the command wrote to stderr (the first 64 KiB)"`
	// Output that is not UTF-8 text comes base64-encoded, so no byte is lost or mangled.
	StdoutBase64         bool    `json:"stdout_base64,omitempty" jsonschema:"stdout is base64 (it was not UTF-8 text)"`
	StderrBase64         bool    `json:"stderr_base64,omitempty" jsonschema:"stderr is base64 (it was not UTF-8 text)"`
	StdoutTruncatedBytes int64   `json:"stdout_truncated_bytes,omitempty" jsonschema:"bytes of stdout left out"`
	StderrTruncatedBytes int64   `json:"stderr_truncated_bytes,omitempty" jsonschema:"bytes of stderr left out"`
	TimedOut             bool    `json:"timed_out,omitempty" jsonschema:"the command was killed at its timeout"`
	TimeoutSeconds       float64 `json:"timeout_seconds" jsonschema:"the timeout the command ran under"`
	Seconds              float64 `json:"seconds" jsonschema:"how long the command ran"`
	BootMode             string  `json:"boot_mode,omitempty" jsonschema:"vm_run: how the VM started (warm: restored from a template; cold: booted)"`
	BootSeconds          float64 `json:"boot_seconds,omitempty" jsonschema:"vm_run: seconds to create and start the VM"`
	Removed              bool    `json:"removed,omitempty" jsonschema:"vm_run: the VM was removed afterwards"`
	RemoveError          string  `json:"remove_error,omitempty" jsonschema:"vm_run: why the VM could not be removed"`
}

// errTimedOut is the cause of a command's context when its timeout ends it.
var errTimedOut = errors.New("command timed out")

// guestExec runs req in the VM with stdin, keeping a bounded copy of its output, and kills
// it at timeout (dropping the stream makes the agent kill its process group). An error is a
// failure to run it at all; a timeout is a result.
func guestExec(ctx context.Context, d Daemon, req api.VMExecRequest, stdin string, timeout time.Duration, maxOut int) (ExecOutput, error) {
	out := ExecOutput{VM: req.Name, TimeoutSeconds: timeout.Seconds()}
	ectx, cancel := context.WithTimeoutCause(ctx, timeout, errTimedOut)
	defer cancel()
	began := time.Now()
	conn, err := d.ExecStream(ectx, req)
	if err != nil {
		if ctx.Err() == nil && errors.Is(context.Cause(ectx), errTimedOut) {
			return out, fmt.Errorf("the command in VM %s did not start within its %s timeout", req.Name, timeout)
		}
		return out, fmt.Errorf("run %s in VM %s: %w", commandLine(req.Argv), req.Name, err)
	}
	var stdout, stderr = &capped{max: maxOut}, &capped{max: maxOut}
	s := attach(ectx, conn, stdin, stdout, stderr)
	st, err := s.Wait()
	s.Close()
	out.Seconds = time.Since(began).Seconds()
	out.Stdout, out.StdoutBase64, out.StdoutTruncatedBytes = output(stdout)
	out.Stderr, out.StderrBase64, out.StderrTruncatedBytes = output(stderr)
	if err != nil && st.Code < 0 {
		switch {
		case ctx.Err() != nil:
			return out, fmt.Errorf("cancelled: the command in VM %s was killed", req.Name)
		case errors.Is(context.Cause(ectx), errTimedOut):
			out.ExitCode, out.TimedOut = -1, true
			return out, nil
		}
		return out, fmt.Errorf("run %s in VM %s: %w (is the VM still running? vm_ls shows its state)", commandLine(req.Argv), req.Name, err)
	}
	out.ExitCode, out.Signal = st.Code, st.Signal
	return out, nil
}

// commandLine shows argv in a message, shortened and quoted.
func commandLine(argv []string) string {
	s := strings.Join(argv, " ")
	if len(s) > 60 {
		s = s[:57] + "..."
	}
	return fmt.Sprintf("%q", s)
}

// summary is the text form of a command's outcome.
func (o ExecOutput) summary() string {
	var b strings.Builder
	switch {
	case o.TimedOut:
		fmt.Fprintf(&b, "timed out: the command in VM %s was killed after %.0f s\n", o.VM, o.TimeoutSeconds)
	case o.Signal != 0:
		fmt.Fprintf(&b, "killed by signal %d (exit code %d) in VM %s\n", o.Signal, o.ExitCode, o.VM)
	default:
		fmt.Fprintf(&b, "exit code %d in VM %s (%.1f s)\n", o.ExitCode, o.VM, o.Seconds)
	}
	if o.BootMode != "" {
		fmt.Fprintf(&b, "VM booted %s in %.1f s", o.BootMode, o.BootSeconds)
		switch {
		case o.Removed:
			b.WriteString(", removed afterwards")
		case o.RemoveError != "":
			b.WriteString(", NOT removed: " + o.RemoveError)
		}
		b.WriteString("\n")
	}
	stream := func(name, text string, b64 bool, dropped int64) {
		if text == "" && dropped == 0 {
			fmt.Fprintf(&b, "%s: (empty)\n", name)
			return
		}
		enc := ""
		if b64 {
			enc = " (base64: not UTF-8 text)"
			if dropped > 0 {
				enc += fmt.Sprintf(" [truncated: %d more bytes]", dropped)
			}
		}
		fmt.Fprintf(&b, "%s%s:\n%s", name, enc, text)
		if !strings.HasSuffix(text, "\n") {
			b.WriteString("\n")
		}
	}
	stream("stdout", o.Stdout, o.StdoutBase64, o.StdoutTruncatedBytes)
	stream("stderr", o.Stderr, o.StderrBase64, o.StderrTruncatedBytes)
	return b.String()
}

// attach drives an exec stream; stdin "" gives the command EOF at once.
func attach(ctx context.Context, conn io.ReadWriteCloser, stdin string, stdout, stderr io.Writer) *agentclient.ExecSession {
	var in io.Reader
	if stdin != "" {
		in = strings.NewReader(stdin)
	}
	return agentclient.AttachExec(ctx, conn, in, stdout, stderr)
}
