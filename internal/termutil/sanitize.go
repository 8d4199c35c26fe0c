package termutil

import (
	"io"
	"os"
	"unicode/utf8"
)

// Guest consoles, guest command output and image metadata are hostile: on a terminal, an
// escape sequence can set the window title, write the clipboard (OSC 52), redraw the
// screen, or on some terminals answer back with keystrokes. Writer drops every C0 and C1
// control but \n, \t and \r, and with them the whole sequence an ESC or C1 introducer
// starts (CSI, OSC, DCS, SOS, PM, APC), in 7-bit, raw 8-bit and UTF-8 encoded forms.

// maxSequence bounds how much a sequence may swallow: an unterminated OSC must not hide the
// rest of the output (say, the hint after a console tail).
const maxSequence = 4096

type sanState uint8

const (
	sanText   sanState = iota
	sanEsc             // after ESC
	sanEscInt          // ESC and intermediates (0x20-0x2f), until a final byte
	sanCSI             // control sequence: parameters and intermediates until a final byte
	sanString          // OSC/DCS/SOS/PM/APC body, until BEL or ST
	sanStrEsc          // ESC inside a string: ST if '\\' follows
)

// Writer strips terminal controls from what is written through it to W. It keeps state
// across writes (a sequence or a UTF-8 character may be split between two), so one Writer
// serves one stream; Flush at the end.
type Writer struct {
	W       io.Writer
	state   sanState
	seqLen  int
	pending []byte // an incomplete UTF-8 character from the last write
	out     []byte
}

// NewWriter returns a Writer stripping controls on the way to w.
func NewWriter(w io.Writer) *Writer { return &Writer{W: w} }

// Write filters p; it reports len(p) when everything kept was written.
func (s *Writer) Write(p []byte) (int, error) {
	s.out = s.filter(s.out[:0], p)
	if len(s.out) > 0 {
		if _, err := s.W.Write(s.out); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

// Flush writes an incomplete UTF-8 character left from the last write as U+FFFD.
func (s *Writer) Flush() error {
	if len(s.pending) == 0 {
		return nil
	}
	s.pending = s.pending[:0]
	if s.state != sanText {
		return nil
	}
	_, err := s.W.Write([]byte(string(utf8.RuneError)))
	return err
}

// Sanitize returns b without terminal controls (see Writer).
func Sanitize(b []byte) []byte {
	var s Writer
	out := s.filter(nil, b)
	if len(s.pending) > 0 && s.state == sanText {
		out = utf8.AppendRune(out, utf8.RuneError)
	}
	return out
}

// SanitizeString is Sanitize for strings.
func SanitizeString(str string) string { return string(Sanitize([]byte(str))) }

func (s *Writer) filter(out, p []byte) []byte {
	if len(s.pending) > 0 {
		p = append(s.pending, p...)
		s.pending = nil
	}
	for len(p) > 0 {
		r, n := utf8.DecodeRune(p)
		if r == utf8.RuneError && n == 1 {
			if !utf8.FullRune(p) {
				s.pending = append([]byte(nil), p...) // wait for the rest of the character
				return out
			}
			// Not UTF-8. A lone 0x80-0x9f is an 8-bit C1 control to some terminals.
			if b := p[0]; b >= 0x80 && b <= 0x9f {
				r = rune(b)
			}
		}
		p = p[n:]
		out = s.rune(out, r, n)
	}
	return out
}

// rune handles one character; n is its encoded length (for bounding sequences).
func (s *Writer) rune(out []byte, r rune, n int) []byte {
	if s.state != sanText {
		s.seqLen += n
		if s.seqLen > maxSequence {
			s.state = sanText
		}
	}
	switch s.state {
	case sanEsc:
		switch {
		case r == '[':
			s.state = sanCSI
		case r == ']' || r == 'P' || r == 'X' || r == '^' || r == '_':
			s.state = sanString
		case r >= 0x20 && r <= 0x2f:
			s.state = sanEscInt
		case r >= 0x30 && r <= 0x7e:
			s.state = sanText // a two-character sequence, dropped whole
		default:
			s.state = sanText
			return s.text(out, r)
		}
		return out
	case sanEscInt:
		switch {
		case r >= 0x20 && r <= 0x2f:
		case r >= 0x30 && r <= 0x7e:
			s.state = sanText
		default:
			s.state = sanText
			return s.text(out, r)
		}
		return out
	case sanCSI:
		switch {
		case r >= 0x20 && r <= 0x3f: // parameters, intermediates
		case r >= 0x40 && r <= 0x7e: // final byte
			s.state = sanText
		default:
			s.state = sanText
			return s.text(out, r)
		}
		return out
	case sanString:
		switch r {
		case 0x07, 0x9c: // BEL, ST
			s.state = sanText
		case 0x1b:
			s.state = sanStrEsc
		case '\n': // keep lines: a log stays readable past an unterminated string
			s.state = sanText
			return append(out, '\n')
		}
		return out
	case sanStrEsc:
		if r == '\\' {
			s.state = sanText
			return out
		}
		s.state = sanString
		return s.rune(out, r, 0)
	}
	return s.text(out, r)
}

// text handles a character outside any sequence.
func (s *Writer) text(out []byte, r rune) []byte {
	switch {
	case r == '\n' || r == '\t' || r == '\r':
		return append(out, byte(r))
	case r == 0x1b:
		s.state, s.seqLen = sanEsc, 0
	case r == 0x9b: // CSI
		s.state, s.seqLen = sanCSI, 0
	case r == 0x90 || r == 0x98 || r == 0x9d || r == 0x9e || r == 0x9f: // DCS, SOS, OSC, PM, APC
		s.state, s.seqLen = sanString, 0
	case r < 0x20 || (r >= 0x7f && r <= 0x9f):
		// other C0 and C1 controls and DEL: dropped
	default:
		return utf8.AppendRune(out, r)
	}
	return out
}

// terminalWriter is a Writer in front of a terminal; it keeps the terminal's Fd so code
// asking "is this a terminal?" (sizes, progress lines) still gets the right answer.
type terminalWriter struct {
	*Writer
	f *os.File
}

func (t terminalWriter) Fd() uintptr { return t.f.Fd() }

// ForTerminal returns w itself when w is not a terminal (pipes and files get the bytes as
// they are), else a Writer stripping controls in front of it. flush writes what a split
// UTF-8 character left pending; call it when done.
func ForTerminal(w io.Writer) (out io.Writer, flush func() error) {
	f, ok := w.(*os.File)
	if !ok || !IsTerminal(f) {
		return w, func() error { return nil }
	}
	sw := NewWriter(f)
	return terminalWriter{Writer: sw, f: f}, sw.Flush
}
