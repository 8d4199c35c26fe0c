package agentserver

// POST /v1/resizefs: grow a mounted ext4 filesystem to fill its disk, online, after the
// host grew the disk (vm resize). The kernel's online resize (EXT4_IOC_RESIZE_FS, what
// resize2fs uses on a mounted filesystem) needs no tool in the image.

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/banger-vm/banger/internal/agent"
)

// ioctlEXT4ResizeFS is _IOW('f', 16, __u64) of linux/ext4.h.
const ioctlEXT4ResizeFS = 0x40086610

// resizeWait bounds the wait for the guest kernel to see the disk's new capacity (the
// VMM's notice arrives as an interrupt, a little after the host's call returns).
const resizeWait = 15 * time.Second

// mountDevice finds the block device and type of the filesystem mounted at mp.
func (s *Server) mountDevice(mp string) (dev, fstype string, err error) {
	f, err := os.Open(filepath.Join(s.cfg.ProcDir, "self", "mounts"))
	if err != nil {
		return "", "", err
	}
	defer f.Close()
	lines, err := readMountTable(f)
	if err != nil {
		return "", "", err
	}
	for _, m := range lines {
		if m.point == mp {
			dev, fstype = m.device, m.fstype // the last mount there is the visible one
		}
	}
	if dev == "" {
		return "", "", fmt.Errorf("%s is not a mount point", mp)
	}
	return dev, fstype, nil
}

func (s *Server) handleResizeFS(w http.ResponseWriter, r *http.Request) {
	var req agent.ResizeFSRequest
	if !decodeJSON(w, r, &req) {
		return
	}
	if !filepath.IsAbs(req.Path) || filepath.Clean(req.Path) != req.Path || req.SizeBytes < 1<<20 {
		writeError(w, agent.CodeBadRequest, fmt.Sprintf("want an absolute clean mount point and size_bytes of at least 1 MiB, not %q and %d", req.Path, req.SizeBytes))
		return
	}
	dev, fstype, err := s.mountDevice(req.Path)
	if err != nil {
		writeError(w, agent.CodeNotFound, err.Error())
		return
	}
	if fstype != "ext4" || len(dev) < 6 || dev[:5] != "/dev/" {
		writeError(w, agent.CodeBadRequest, fmt.Sprintf("%s is %s on %s: only ext4 on a disk grows online", req.Path, fstype, dev))
		return
	}
	// Wait for the kernel to see the disk at (at least) its new size.
	var devBytes uint64
	deadline := time.Now().Add(resizeWait)
	for {
		devBytes, err = blockDeviceBytes(dev)
		if err != nil {
			writeError(w, agent.CodeInternal, err.Error())
			return
		}
		if int64(devBytes) >= req.SizeBytes || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if int64(devBytes) < req.SizeBytes {
		writeError(w, agent.CodeInternal, fmt.Sprintf("%s is still %d bytes, not %d: the guest kernel did not see the disk grow", dev, devBytes, req.SizeBytes))
		return
	}
	var before unix.Statfs_t
	if err := unix.Statfs(req.Path, &before); err != nil {
		writeError(w, agent.CodeInternal, err.Error())
		return
	}
	fd, err := unix.Open(req.Path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		writeError(w, agent.CodeInternal, err.Error())
		return
	}
	defer unix.Close(fd)
	blocks := devBytes / uint64(before.Bsize)
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), ioctlEXT4ResizeFS, uintptr(unsafe.Pointer(&blocks))); errno != 0 {
		writeError(w, agent.CodeInternal, fmt.Sprintf("grow %s to %d blocks: %v", req.Path, blocks, errno))
		return
	}
	var after unix.Statfs_t
	if err := unix.Statfs(req.Path, &after); err != nil {
		writeError(w, agent.CodeInternal, err.Error())
		return
	}
	res := agent.ResizeFSResponse{Device: dev, DeviceBytes: int64(devBytes),
		BeforeBytes: int64(before.Blocks) * int64(before.Bsize), AfterBytes: int64(after.Blocks) * int64(after.Bsize)}
	s.log.Info("filesystem grown", "path", req.Path, "device", dev, "before", res.BeforeBytes, "after", res.AfterBytes)
	writeJSON(w, http.StatusOK, res)
}

// blockDeviceBytes is a block device's size (BLKGETSIZE64).
func blockDeviceBytes(dev string) (uint64, error) {
	fd, err := unix.Open(dev, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, err
	}
	defer unix.Close(fd)
	var n uint64
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.BLKGETSIZE64, uintptr(unsafe.Pointer(&n))); errno != 0 {
		return 0, fmt.Errorf("size of %s: %v", dev, errno)
	}
	return n, nil
}
