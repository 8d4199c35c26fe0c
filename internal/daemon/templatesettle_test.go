package daemon

import (
	"errors"
	"io"
	"strings"
	"testing"
)

func TestParseCPUTimes(t *testing.T) {
	c, err := parseCPUTimes("cpu  10 0 20 900 50 0 5 0 0 0\ncpu0 1 2 3 4 5\n")
	if err != nil {
		t.Fatal(err)
	}
	if c.total != 985 || c.idle != 950 {
		t.Fatalf("got %+v, want total 985 idle 950", c)
	}
	prev := cpuTimes{total: 885, idle: 860}
	if got := c.idleShareSince(prev); got != 0.9 {
		t.Fatalf("idle share %v, want 0.9", got)
	}
	// A counter that went backwards (a hostile or restored guest) reads as idle, not as
	// a negative share or a division by zero.
	if got := prev.idleShareSince(c); got != 1 {
		t.Fatalf("idle share with time going back: %v", got)
	}
	for _, bad := range []string{"", "intr 1 2 3", "cpu 1 2", "cpu 1 2 x 4 5", "cpu -1 2 3 4 5", "cpu 99999999999999999999999 1 1 1 1"} {
		if _, err := parseCPUTimes(bad); err == nil {
			t.Errorf("parseCPUTimes(%q): no error", bad)
		}
	}
}

func TestSettleWritersBoundAHostileStream(t *testing.T) {
	h := &headWriter{n: 8}
	for _, chunk := range []string{"12345", "67890", strings.Repeat("x", 1<<20)} {
		if n, err := h.Write([]byte(chunk)); err != nil || n != len(chunk) {
			t.Fatalf("headWriter.Write(%d bytes) = %d, %v", len(chunk), n, err)
		}
	}
	if h.buf.String() != "12345678" {
		t.Fatalf("headWriter kept %q", h.buf.String())
	}

	// /proc/stat: the copy stops at the first line end, whatever follows.
	var l firstLineWriter
	src := io.MultiReader(strings.NewReader("cpu  1 2 "), strings.NewReader("3 4 5\nintr "), strings.NewReader(strings.Repeat("9 ", 1<<20)))
	n, err := io.Copy(&l, src)
	if !errors.Is(err, errFirstLine) || l.buf.String() != "cpu  1 2 3 4 5\n" || n > 64 {
		t.Fatalf("first line: %q after %d bytes, %v", l.buf.String(), n, err)
	}
	var endless firstLineWriter
	if _, err := io.Copy(&endless, io.LimitReader(zeros{}, 1<<20)); err == nil || errors.Is(err, errFirstLine) || endless.buf.Len() > procStatMax {
		t.Fatalf("a line without end: %v, kept %d bytes", err, endless.buf.Len())
	}

	if got := sanitizeNote("run\x1b[2Jning" + strings.Repeat("x", 500)); strings.ContainsRune(got, 0x1b) || len(got) > 200 {
		t.Fatalf("sanitizeNote kept an escape or the length: %q", got)
	}
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = '0'
	}
	return len(p), nil
}
