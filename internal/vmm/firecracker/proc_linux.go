package firecracker

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
)

// errNoProcess means /proc has no such process.
var errNoProcess = errors.New("no such process")

// processStartTime returns field 22 of /proc/PID/stat (starttime, clock ticks after boot),
// which with the PID identifies a process: a PID reused later has a later start time.
func processStartTime(pid int) (uint64, error) {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ESRCH) {
			return 0, errNoProcess
		}
		return 0, err
	}
	return parseStatStartTime(string(data))
}

// parseStatStartTime reads starttime from a /proc/PID/stat line. Field 2, comm, is the
// executable name in parentheses and may itself hold spaces and parentheses ("(a) b)"),
// so fields are counted after the last ')': there, field 3 (state) is the first.
func parseStatStartTime(stat string) (uint64, error) {
	i := strings.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, fmt.Errorf("malformed /proc stat line %q", stat)
	}
	f := strings.Fields(stat[i+1:])
	const idx = 22 - 3
	if len(f) <= idx {
		return 0, fmt.Errorf("/proc stat line has %d fields after comm, want at least %d", len(f), idx+1)
	}
	v, err := strconv.ParseUint(f[idx], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("/proc stat starttime %q: %w", f[idx], err)
	}
	return v, nil
}

// processState returns field 3 of /proc/PID/stat ("R", "S", "Z", ...).
func processState(pid int) (string, error) {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return "", errNoProcess
	}
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return "", fmt.Errorf("malformed /proc stat line")
	}
	f := strings.Fields(s[i+1:])
	if len(f) == 0 {
		return "", fmt.Errorf("malformed /proc stat line")
	}
	return f[0], nil
}
