package qemu

import (
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

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
