package agent

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
)

func TestDatagramFrames(t *testing.T) {
	var stream []byte
	for _, p := range [][]byte{[]byte("query"), {}, bytes.Repeat([]byte{7}, MaxDatagram)} {
		var err error
		if stream, err = AppendDatagram(stream, p); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := AppendDatagram(nil, make([]byte, MaxDatagram+1)); err == nil {
		t.Fatal("an oversized datagram was framed")
	}
	r := bytes.NewReader(stream)
	buf := make([]byte, MaxDatagram)
	for _, want := range []int{5, 0, MaxDatagram} {
		if n, err := ReadDatagram(r, buf); err != nil || n != want {
			t.Fatalf("read %d, %v; want %d", n, err, want)
		}
	}
	if _, err := ReadDatagram(r, buf); err != io.EOF {
		t.Fatalf("at the end: %v", err)
	}

	// Hostile frames: a length above MaxDatagram or above the buffer is refused before any
	// payload is read; a cut payload is an error.
	for _, tc := range []struct {
		in   string
		buf  int
		want string
	}{
		{"\xff\xffjunk", MaxDatagram, "at most 65507"},
		{"\xff\xe4", MaxDatagram, "at most 65507"}, // 65508
		{"\x00\x10" + strings.Repeat("x", 16), 8, "at most 8"},
		{"\x00\x10short", MaxDatagram, io.ErrUnexpectedEOF.Error()},
		{"\x00", MaxDatagram, io.ErrUnexpectedEOF.Error()},
	} {
		r := strings.NewReader(tc.in)
		_, err := ReadDatagram(r, make([]byte, tc.buf))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: %v, want %q", tc.in, err, tc.want)
		}
		if strings.HasPrefix(tc.want, "at most") && r.Len() != len(tc.in)-2 {
			t.Errorf("%q: payload read after a refused length", tc.in)
		}
	}
	if _, err := ReadDatagram(strings.NewReader(""), buf); !errors.Is(err, io.EOF) {
		t.Errorf("empty stream: %v", err)
	}
}
