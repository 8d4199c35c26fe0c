package daemon

// A template is snapshotted once its guest has finished booting: every clone resumes
// whatever the guest was doing at the snapshot, so a template saved while systemd still
// starts units makes every clone finish that work again, on the same CPUs as the user's
// command.

import (
	"bytes"
	"context"
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
	// procStatMax bounds what is read of the guest's /proc/stat.
	procStatMax = 64 << 10
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
	var out bytes.Buffer
	st, err := a.Exec(ctx, agent.ExecRequest{Argv: []string{"systemctl", "is-system-running"}}, nil, &limitedWriter{w: &out, n: 256}, io.Discard)
	switch {
	case err != nil:
		return "", err
	case st.Code == 127:
		notes = append(notes, "no systemctl")
	default:
		notes = append(notes, fmt.Sprintf("systemd: %s (exit %d)", sanitizeNote(strings.TrimSpace(out.String())), st.Code))
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
	var buf bytes.Buffer
	if _, err := a.ReadFile(ctx, "/proc/stat", &limitedWriter{w: &buf, n: procStatMax}); err != nil {
		return cpuTimes{}, err
	}
	return parseCPUTimes(buf.String())
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

// limitedWriter takes at most n bytes and then fails the copy, so a hostile guest cannot
// make the daemon buffer without bound.
type limitedWriter struct {
	w io.Writer
	n int
}

func (l *limitedWriter) Write(p []byte) (int, error) {
	if len(p) > l.n {
		return 0, fmt.Errorf("the guest sent more than expected")
	}
	l.n -= len(p)
	return l.w.Write(p)
}

// sanitizeNote makes guest text safe and short for a log line or a terminal.
func sanitizeNote(s string) string { return termutil.SanitizeString(truncate(s, 120)) }
