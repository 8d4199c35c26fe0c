package cli

import (
	"bytes"
	"testing"

	"github.com/banger-vm/banger/internal/api"
)

func TestProgressQuietWhenNotATerminal(t *testing.T) {
	var buf bytes.Buffer
	a := &app{env: Env{Stderr: &buf}}
	for _, asJSON := range []bool{false, true} {
		p := a.newProgress(asJSON)
		p.update(api.Progress{Stage: "downloading", Current: 10, Total: 100, Unit: "bytes"})
		p.done()
	}
	if buf.Len() != 0 {
		t.Fatalf("progress written to a non-terminal: %q", buf.String())
	}
	// On a terminal it draws the stage, bytes, percentage and rate.
	p := &progress{w: &buf, on: true}
	p.update(api.Progress{Stage: "downloading", Current: 1 << 20, Total: 4 << 20, Unit: "bytes"})
	p.done()
	if !bytes.Contains(buf.Bytes(), []byte("downloading: 1")) || !bytes.Contains(buf.Bytes(), []byte("(25%)")) {
		t.Fatalf("progress line: %q", buf.String())
	}
}
