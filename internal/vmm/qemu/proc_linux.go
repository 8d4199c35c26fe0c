package qemu

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// procStat is what banger needs from /proc/PID/stat.
type procStat struct {
	State     byte   // field 3: R, S, D, Z, ...
	StartTime uint64 // field 22: clock ticks after boot
}

// readProcStat reads /proc/PID/stat. os.ErrNotExist means there is no such process.
func readProcStat(pid int) (procStat, error) {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return procStat{}, err
	}
	return parseProcStat(data)
}

// parseProcStat parses a /proc/PID/stat line. The command name (field 2) is in parentheses
// and may itself hold spaces and parentheses, so the fields are counted from the LAST ')'.
func parseProcStat(data []byte) (procStat, error) {
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return procStat{}, fmt.Errorf("malformed /proc stat line %q", data)
	}
	f := strings.Fields(string(data[i+1:]))
	// f[0] is field 3 (state), so field N is f[N-3].
	if len(f) < 22-3+1 || len(f[0]) != 1 {
		return procStat{}, fmt.Errorf("malformed /proc stat line %q", data)
	}
	st, err := strconv.ParseUint(f[22-3], 10, 64)
	if err != nil {
		return procStat{}, fmt.Errorf("malformed start time in /proc stat line %q", data)
	}
	return procStat{State: f[0][0], StartTime: st}, nil
}

// sameProcess checks that pid is alive and is the process that started at startTime. A
// zombie counts as gone: it has exited and only waits to be reaped.
func sameProcess(pid int, startTime uint64) error {
	st, err := readProcStat(pid)
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

// vhostSetGuestCID is VHOST_VSOCK_SET_GUEST_CID, _IOW(VHOST_VIRTIO 0xAF, 0x60, __u64).
const vhostSetGuestCID = 0x4008AF60

// reserveCID checks that /dev/vhost-vsock can be opened and finds a guest CID no other VM
// on this host uses: setting a CID on a vhost fd fails with EADDRINUSE when it is taken.
// The fd is closed again, so QEMU can claim the CID a moment later (a race with another VMM
// picking the same random 32-bit CID in that moment is accepted).
func reserveCID(device string, candidates func() uint32) (uint32, error) {
	fd, err := unix.Open(device, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("open %s: %w", device, err)
	}
	defer unix.Close(fd)
	for range 32 {
		cid := uint64(candidates())
		_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), vhostSetGuestCID, uintptr(unsafe.Pointer(&cid)))
		switch errno {
		case 0:
			return uint32(cid), nil
		case unix.EADDRINUSE:
			continue
		default:
			return 0, fmt.Errorf("%s: set guest CID: %w", device, errno)
		}
	}
	return 0, fmt.Errorf("%s: no free guest CID found", device)
}

// pidfdOpen opens a pidfd for pid (Linux 5.3+).
func pidfdOpen(pid int) (int, error) {
	fd, err := unix.PidfdOpen(pid, unix.PIDFD_NONBLOCK)
	if err != nil {
		return -1, fmt.Errorf("pidfd_open %d: %w", pid, err)
	}
	unix.CloseOnExec(fd)
	return fd, nil
}

// pidfdWait waits up to d for the process behind pidfd to exit (the pidfd turns readable).
func pidfdWait(pidfd int, d time.Duration) (bool, error) {
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

// pidfdKill sends SIGKILL through the pidfd, so it can only hit the process it pins.
func pidfdKill(pidfd int) error {
	err := unix.PidfdSendSignal(pidfd, unix.SIGKILL, nil, 0)
	if errors.Is(err, unix.ESRCH) {
		return nil // already exited
	}
	return err
}

func closeFD(fd int) {
	if fd >= 0 {
		_ = unix.Close(fd)
	}
}
