package vmm

// Process identity for drivers: a VM's VMM process is identified by PID plus start time, and
// pinned with a pidfd once found, so a reused PID is never mistaken for (or signalled as) the VM.

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// ProcStat is what the drivers need from /proc/PID/stat.
type ProcStat struct {
	State     byte   // field 3: R, S, D, Z, ...
	StartTime uint64 // field 22: clock ticks after boot
}

// ReadProcStat reads /proc/PID/stat. os.ErrNotExist means there is no such process.
func ReadProcStat(pid int) (ProcStat, error) {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return ProcStat{}, err
	}
	return ParseProcStat(data)
}

// ParseProcStat parses a /proc/PID/stat line. The command name (field 2) is in parentheses
// and may itself hold spaces and parentheses, so the fields are counted from the LAST ')'.
func ParseProcStat(data []byte) (ProcStat, error) {
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return ProcStat{}, fmt.Errorf("malformed /proc stat line %q", data)
	}
	f := strings.Fields(string(data[i+1:]))
	// f[0] is field 3 (state), so field N is f[N-3].
	if len(f) < 22-3+1 || len(f[0]) != 1 {
		return ProcStat{}, fmt.Errorf("malformed /proc stat line %q", data)
	}
	st, err := strconv.ParseUint(f[22-3], 10, 64)
	if err != nil {
		return ProcStat{}, fmt.Errorf("malformed start time in /proc stat line %q", data)
	}
	return ProcStat{State: f[0][0], StartTime: st}, nil
}

// SameProcess checks that pid is alive and is the process that started at startTime. A
// zombie counts as gone: it has exited and only waits to be reaped.
func SameProcess(pid int, startTime uint64) error {
	st, err := ReadProcStat(pid)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return fmt.Errorf("pid %d does not exist", pid)
	case err != nil:
		return err
	case st.StartTime != startTime:
		return fmt.Errorf("pid %d now belongs to another process (started at tick %d, not %d)", pid, st.StartTime, startTime)
	case st.State == 'Z' || st.State == 'X':
		return fmt.Errorf("pid %d has exited", pid)
	}
	return nil
}

// PidfdOpen opens a pidfd for pid (Linux 5.3+).
func PidfdOpen(pid int) (int, error) {
	fd, err := unix.PidfdOpen(pid, unix.PIDFD_NONBLOCK)
	if err != nil {
		return -1, fmt.Errorf("pidfd_open %d: %w", pid, err)
	}
	unix.CloseOnExec(fd)
	return fd, nil
}

// PidfdWait waits up to d for the process behind pidfd to exit (the pidfd turns readable).
func PidfdWait(pidfd int, d time.Duration) (bool, error) {
	fds := []unix.PollFd{{Fd: int32(pidfd), Events: unix.POLLIN}}
	n, err := unix.Poll(fds, int(d/time.Millisecond))
	if errors.Is(err, unix.EINTR) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("poll pidfd: %w", err)
	}
	return n > 0 && fds[0].Revents&(unix.POLLIN|unix.POLLHUP|unix.POLLERR) != 0, nil
}

// PidfdKill sends SIGKILL through the pidfd, so it can only hit the process it pins.
func PidfdKill(pidfd int) error {
	err := unix.PidfdSendSignal(pidfd, unix.SIGKILL, nil, 0)
	if errors.Is(err, unix.ESRCH) {
		return nil // already exited
	}
	return err
}

// ReadPSS returns a process's proportional set size in bytes (/proc/PID/smaps_rollup):
// its private memory plus its share of pages it maps with others, such as the clones of
// one snapshot mapping its memory file.
func ReadPSS(pid int) (int64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, "Pss:"); ok {
			f := strings.Fields(rest)
			if len(f) == 2 && f[1] == "kB" {
				kb, err := strconv.ParseInt(f[0], 10, 64)
				if err != nil {
					return 0, fmt.Errorf("smaps_rollup of %d: %w", pid, err)
				}
				return kb << 10, nil
			}
		}
	}
	return 0, fmt.Errorf("smaps_rollup of %d: no Pss line", pid)
}
