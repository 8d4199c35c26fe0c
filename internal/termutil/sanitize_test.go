package termutil

import (
	"bytes"
	"math/rand/v2"
	"testing"
	"unicode/utf8"
)

func TestSanitizeHostileSequences(t *testing.T) {
	for _, tc := range []struct{ name, in, want string }{
		{"plain text and allowed controls", "a\tb\r\nc\n", "a\tb\r\nc\n"},
		{"UTF-8 text", "héllo — ✓ 日本\n", "héllo — ✓ 日本\n"},
		{"window title (OSC 0, BEL)", "x\x1b]0;pwned\x07y", "xy"},
		{"window title (OSC 2, ST)", "x\x1b]2;pwned\x1b\\y", "xy"},
		{"OSC 52 clipboard write", "x\x1b]52;c;cm0gLXJmIH4K\x07y", "xy"},
		{"OSC 8 hyperlink", "\x1b]8;;http://evil\x1b\\click\x1b]8;;\x1b\\", "click"},
		{"CSI clear screen", "x\x1b[2J\x1b[Hy", "xy"},
		{"CSI with private params", "x\x1b[?1049hy", "xy"},
		{"CSI colour", "\x1b[1;31mred\x1b[0m", "red"},
		{"8-bit C1 CSI", "x\x9b2Jy", "xy"},
		{"8-bit C1 OSC ... ST", "x\x9d0;pwned\x9cy", "xy"},
		{"UTF-8 encoded C1 CSI (U+009B)", "x\xc2\x9b2Jy", "xy"},
		{"UTF-8 encoded C1 OSC ... ST", "x\xc2\x9d0;pwned\xc2\x9cy", "xy"},
		{"UTF-8 encoded NEL (U+0085)", "x\xc2\x85y", "xy"},
		{"DCS request status", "x\x1bP1$qm\x1b\\y", "xy"},
		{"APC", "x\x1b_payload\x1b\\y", "xy"},
		{"two-character ESC sequences", "x\x1bcy\x1b7z\x1b8", "xyz"},
		{"ESC with intermediate (charset)", "x\x1b(0y", "xy"},
		{"bell, backspace, DEL, NUL", "a\a\bb\x7f\x00c", "abc"},
		{"form feed, vertical tab, SO/SI", "a\f\v\x0e\x0fb", "ab"},
		{"CSI cut by a newline", "x\x1b[31\ny", "x\ny"},
		{"unterminated OSC ends at the newline", "x\x1b]0;pwned\nafter\n", "x\nafter\n"},
		{"ESC ESC", "x\x1b\x1b[2Jy", "xy"},
		{"invalid UTF-8 becomes U+FFFD", "x\xffy", "x\uFFFDy"},
		{"truncated UTF-8 at the end", "x\xe2\x9c", "x\uFFFD"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := SanitizeString(tc.in); got != tc.want {
				t.Fatalf("Sanitize(%q) = %q, want %q", tc.in, got, tc.want)
			}
		})
	}
}

// An unterminated sequence swallows a bounded amount, not the rest of the stream.
func TestSanitizeBoundsUnterminatedSequence(t *testing.T) {
	in := "\x1b]0;" + string(bytes.Repeat([]byte("A"), 2*maxSequence)) + "tail"
	got := SanitizeString(in)
	if !bytes.HasSuffix([]byte(got), []byte("tail")) || len(got) > maxSequence+10 {
		t.Fatalf("unterminated OSC: got %d bytes, suffix %q", len(got), got[max(0, len(got)-10):])
	}
}

// hasControl reports a terminal control in out (besides \n, \r, \t) or invalid UTF-8.
func hasControl(out []byte) (rune, bool) {
	for len(out) > 0 {
		r, n := utf8.DecodeRune(out)
		if r == utf8.RuneError && n == 1 {
			return rune(out[0]), true
		}
		if (r < 0x20 && r != '\n' && r != '\r' && r != '\t') || (r >= 0x7f && r <= 0x9f) {
			return r, true
		}
		out = out[n:]
	}
	return 0, false
}

// The same bytes written in pieces, split anywhere (mid-sequence, mid-character), give the
// same output as written at once, and random hostile input never leaves a control behind.
func TestWriterSplitsAndRandomInput(t *testing.T) {
	alphabet := []string{"\x1b", "[", "]", "P", "\\", "\x07", "\x9b", "\x9c", "\x9d", "\xc2", "\x9b", "\xe2", "\x9c", "\x93",
		"0", ";", "2", "J", "m", "a", "\n", "\r", "\t", "\x00", "\x7f", "\xff", "é", "\x85", "\x90", "_", "(", "?"}
	rng := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 3000; i++ {
		var in []byte
		for j := rng.IntN(40); j >= 0; j-- {
			in = append(in, alphabet[rng.IntN(len(alphabet))]...)
		}
		whole := Sanitize(in)
		if r, bad := hasControl(whole); bad {
			t.Fatalf("Sanitize(%q) = %q keeps %U", in, whole, r)
		}
		var buf bytes.Buffer
		w := NewWriter(&buf)
		for rest := in; len(rest) > 0; {
			k := 1 + rng.IntN(len(rest))
			if _, err := w.Write(rest[:k]); err != nil {
				t.Fatal(err)
			}
			rest = rest[k:]
		}
		if err := w.Flush(); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(buf.Bytes(), whole) {
			t.Fatalf("split writes of %q gave %q, whole %q", in, buf.Bytes(), whole)
		}
	}
}

func FuzzSanitize(f *testing.F) {
	for _, s := range []string{"\x1b]0;pwned\x07", "\x1b]52;c;eA==\x07", "\x1b[2J", "\x9b2J", "\xc2\x9b2J", "ok\n"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		if r, bad := hasControl(Sanitize(in)); bad {
			t.Fatalf("Sanitize(%q) keeps %U", in, r)
		}
	})
}

func TestForTerminalLeavesNonTerminalsAlone(t *testing.T) {
	var buf bytes.Buffer
	w, flush := ForTerminal(&buf)
	if w != &buf {
		t.Fatalf("a buffer got wrapped: %T", w)
	}
	_, _ = w.Write([]byte("\x1b]0;x\x07"))
	_ = flush()
	if buf.String() != "\x1b]0;x\x07" {
		t.Fatalf("bytes changed: %q", buf.String())
	}
}
