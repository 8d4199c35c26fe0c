package daemon

// A template is snapshotted once its guest has finished booting: every clone resumes
// whatever the guest was doing at the snapshot, so a template saved while systemd still
// starts units makes every clone finish that work again, on the same CPUs as the user's
// command.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/banger-vm/banger/internal/agent"
	"github.com/banger-vm/banger/internal/termutil"
	"github.com/banger-vm/banger/internal/vmm"
)

const (
	// settleIdleShare: the guest counts as idle when its CPUs were idle this share of a
	// settleWindow, twice in a row.
	settleIdleShare = 0.9
	settleWindow    = 250 * time.Millisecond
	// settleMax bounds the wait: a guest that never settles is snapshotted anyway
	// (its clones are still correct, only slower to become quiet).
	settleMax = 30 * time.Second
	// procStatMax bounds the first line of the guest's /proc/stat (the only one read).
	procStatMax = 4 << 10
)

// settleGuest waits until the builder's guest is done booting, that is until its CPUs are
// idle (systemd's own "boot finished" is no test: a unit waiting for a device that never
// comes keeps it "starting" for minutes while nothing runs). It returns a note for the log;
// only a dead agent is an error.
func settleGuest(ctx context.Context, m vmm.Machine) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, settleMax)
	defer cancel()
	var notes []string
	a := m.Agent()
	// For the log: where systemd is (images without it answer 127, or "offline").
	out := &headWriter{n: 256}
	st, err := a.Exec(ctx, agent.ExecRequest{Argv: []string{"systemctl", "is-system-running"}}, nil, out, io.Discard)
	switch {
	case err != nil:
		return "", err
	case st.Code == 127:
		notes = append(notes, "no systemctl")
	default:
		notes = append(notes, fmt.Sprintf("systemd: %s (exit %d)", sanitizeNote(strings.TrimSpace(out.buf.String())), st.Code))
	}
	prev, err := readCPUTimes(ctx, a)
	if err != nil {
		return strings.Join(append(notes, "no /proc/stat: "+sanitizeNote(err.Error())), "; "), nil
	}
	quiet := 0
	for quiet < 2 {
		select {
		case <-ctx.Done():
			return strings.Join(append(notes, "the guest stayed busy"), "; "), nil
		case <-time.After(settleWindow):
		}
		cur, err := readCPUTimes(ctx, a)
		if err != nil && ctx.Err() != nil {
			return strings.Join(append(notes, "the guest stayed busy"), "; "), nil
		}
		if err != nil {
			return "", err
		}
		if share := cur.idleShareSince(prev); share >= settleIdleShare {
			quiet++
		} else {
			quiet = 0
		}
		prev = cur
	}
	notes = append(notes, "idle")
	return strings.Join(notes, "; "), nil
}

// cpuTimes is the first ("cpu") line of /proc/stat: total and idle (idle + iowait) ticks.
type cpuTimes struct{ total, idle uint64 }

func (c cpuTimes) idleShareSince(prev cpuTimes) float64 {
	if c.total <= prev.total {
		return 1
	}
	return float64(c.idle-prev.idle) / float64(c.total-prev.total)
}

func readCPUTimes(ctx context.Context, a interface {
	ReadFile(context.Context, string, io.Writer) (*agent.FileInfo, error)
}) (cpuTimes, error) {
	var line firstLineWriter
	if _, err := a.ReadFile(ctx, "/proc/stat", &line); err != nil && !errors.Is(err, errFirstLine) {
		return cpuTimes{}, err
	}
	return parseCPUTimes(line.buf.String())
}

// parseCPUTimes reads the aggregate "cpu" line of a (guest's, so untrusted) /proc/stat.
func parseCPUTimes(stat string) (cpuTimes, error) {
	line, _, _ := strings.Cut(stat, "\n")
	f := strings.Fields(line)
	if len(f) < 5 || f[0] != "cpu" {
		return cpuTimes{}, fmt.Errorf("/proc/stat: no cpu line")
	}
	var c cpuTimes
	for i, s := range f[1:min(len(f), 11)] {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return cpuTimes{}, fmt.Errorf("/proc/stat: field %d: not a number", i+1)
		}
		c.total += v
		if i == 3 || i == 4 { // idle, iowait
			c.idle += v
		}
	}
	return c, nil
}

// headWriter keeps the first n bytes written to it and drops the rest, so a guest's
// output costs the daemon at most n bytes of memory (the exec is bounded by its context).
type headWriter struct {
	buf bytes.Buffer
	n   int
}

func (h *headWriter) Write(p []byte) (int, error) {
	if room := h.n - h.buf.Len(); room > 0 {
		h.buf.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}

// errFirstLine ends a copy once the first line is in: only /proc/stat's first line is
// used, and a guest could otherwise stream without end.
var errFirstLine = errors.New("first line read")

// firstLineWriter keeps a guest file's first line (at most procStatMax bytes of it) and
// stops the copy there.
type firstLineWriter struct{ buf bytes.Buffer }

func (f *firstLineWriter) Write(p []byte) (int, error) {
	if i := bytes.IndexByte(p, '\n'); i >= 0 {
		f.buf.Write(p[:i+1])
		return i + 1, errFirstLine
	}
	if f.buf.Len()+len(p) > procStatMax {
		return 0, fmt.Errorf("the guest's /proc/stat has no line end in its first %d bytes", procStatMax)
	}
	return f.buf.Write(p)
}

// sanitizeNote makes guest text safe and short for a log line or a terminal.
func sanitizeNote(s string) string { return termutil.SanitizeString(truncate(s, 120)) }
