package daemon

import (
	"bytes"
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

func TestLimitedWriterStopsAHostileStream(t *testing.T) {
	var buf bytes.Buffer
	w := &limitedWriter{w: &buf, n: 8}
	if _, err := w.Write([]byte("12345")); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write([]byte("67890")); err == nil {
		t.Fatal("a write past the limit succeeded")
	}
	if buf.String() != "12345" {
		t.Fatalf("kept %q", buf.String())
	}
	if got := sanitizeNote("run\x1b[2Jning" + strings.Repeat("x", 500)); strings.ContainsRune(got, 0x1b) || len(got) > 200 {
		t.Fatalf("sanitizeNote kept an escape or the length: %q", got)
	}
}
