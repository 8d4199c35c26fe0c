//go:build linux && amd64

package kvm

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// maxExits bounds the exits handled per guest run; the programs need two.
const maxExits = 16

// kickInterval is how often a timed-out vCPU is re-signalled, in case a
// kick raced with the thread entering KVM_RUN on a kernel without
// KVM_CAP_IMMEDIATE_EXIT.
const kickInterval = 20 * time.Millisecond

// kickGrace is how long Probe waits for a kicked vCPU to leave KVM_RUN
// before giving up on it (its goroutine then cleans up whenever it returns).
const kickGrace = 500 * time.Millisecond

// Probe opens device (DefaultDevice if "") and runs tiny guests in real mode
// and 64-bit long mode. It never panics and always fills Detail and Hint.
// It returns within the context deadline or DefaultTimeout (whichever is
// sooner) plus a short grace period, even if the guest never exits.
func Probe(ctx context.Context, device string) ProbeResult {
	if device == "" {
		device = DefaultDevice
	}
	start := time.Now()
	res := probe(ctx, device)
	res.Device = device
	res.Elapsed = time.Since(start)
	if res.Hint == "" {
		res.Hint = hintTCG
	}
	return res
}

func probe(ctx context.Context, device string) ProbeResult {
	res := ProbeResult{Hypervisor: hypervisorInfo()}
	if err := ctx.Err(); err != nil {
		res.Status = StatusUnusable
		res.Detail = "probe not run: " + err.Error()
		return res
	}

	fd, err := unix.Open(device, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		classifyOpenError(&res, device, err)
		return res
	}
	// From here on fd is owned by the vCPU worker, which closes it: if the
	// worker is abandoned after a timeout it must still release everything.

	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err == nil && st.Mode&unix.S_IFMT != unix.S_IFCHR {
		unix.Close(fd)
		res.Status = StatusUnusable
		res.Detail = fmt.Sprintf("%s is not a character device, so not a KVM device", device)
		res.Hint = "point banger at the KVM device node (normally " + DefaultDevice + "); " + hintTCG
		return res
	}

	v, err := ioctlInt(fd, kvmGetAPIVersion, 0)
	if err != nil {
		unix.Close(fd)
		res.Status = StatusUnusable
		res.Detail = fmt.Sprintf("%s is not a KVM device: KVM_GET_API_VERSION: %v", device, err)
		res.Hint = "point banger at the KVM device node (normally " + DefaultDevice + "); " + hintTCG
		return res
	}
	res.APIVersion = v
	if v != kvmAPIVersion {
		unix.Close(fd)
		res.Status = StatusUnusable
		res.Detail = fmt.Sprintf("KVM_GET_API_VERSION returned %d, want %d", v, kvmAPIVersion)
		return res
	}

	start := time.Now()
	deadline := start.Add(DefaultTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}

	w := &worker{sysFD: fd, done: make(chan struct{})}
	go w.loop()

	timer := time.NewTimer(time.Until(deadline))
	defer timer.Stop()
	var why string
	select {
	case <-w.done:
		return w.result(res)
	case <-timer.C:
	case <-ctx.Done():
	}
	why = fmt.Sprintf("timed out after %s", time.Since(start).Round(time.Millisecond))
	if err := ctx.Err(); err != nil {
		why += " (" + err.Error() + ")"
	}

	// Out of time: make the vCPU leave KVM_RUN and wait briefly for it.
	w.stop.Store(true)
	tick := time.NewTicker(kickInterval)
	defer tick.Stop()
	grace := time.NewTimer(kickGrace)
	defer grace.Stop()
	for {
		w.kick()
		select {
		case <-w.done:
			r := w.result(res)
			if r.Status != StatusUsable {
				r.Status = StatusUnusable
				r.Detail = why + ": " + r.Detail
			}
			return r
		case <-tick.C:
		case <-grace.C:
			res.Status = StatusUnusable
			res.Checks = w.snapshotChecks()
			res.Detail = fmt.Sprintf("%s: the vCPU did not leave KVM_RUN even when signalled", why)
			return res
		}
	}
}

// classifyOpenError maps open(2) failures to absent / no-access / unusable.
func classifyOpenError(res *ProbeResult, device string, err error) {
	switch {
	case errors.Is(err, unix.ENOENT):
		res.Status = StatusAbsent
		res.Detail = fmt.Sprintf("no %s: the kernel has no KVM (module not loaded, or no VT-x/AMD-V)", device)
		res.Hint = hintAbsent
	case errors.Is(err, unix.ENXIO), errors.Is(err, unix.ENODEV):
		res.Status = StatusAbsent
		res.Detail = fmt.Sprintf("%s exists but no KVM driver is behind it (open: %v)", device, err)
		res.Hint = hintAbsent
	case errors.Is(err, unix.EACCES), errors.Is(err, unix.EPERM):
		res.Status = StatusNoAccess
		res.Detail = fmt.Sprintf("permission denied opening %s (%s)", device, describeOwner(device))
		res.Hint = fmt.Sprintf("add the user to group kvm (usermod -aG kvm %s, then log in again); if %s is root-only, "+
			"install the udev rule KERNEL==\"kvm\", GROUP=\"kvm\", MODE=\"0660\" or run chgrp kvm %s && chmod 0660 %s; until then %s",
			currentUser(), device, device, device, hintTCG)
	default:
		res.Status = StatusUnusable
		res.Detail = fmt.Sprintf("cannot open %s: %v", device, err)
	}
}

// describeOwner renders "mode 0600, owner 0, group 0" for a no-access Detail.
func describeOwner(path string) string {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return "cannot stat: " + err.Error()
	}
	return fmt.Sprintf("mode %04o, uid %d, gid %d; running as uid %d", st.Mode&0o7777, st.Uid, st.Gid, os.Geteuid())
}

func currentUser() string {
	if u := os.Getenv("USER"); u != "" {
		return u
	}
	return "$USER"
}

// worker owns every KVM fd and mapping of one probe and runs the vCPU on its
// own locked OS thread. Probe talks to it only through done, stop, kick and
// (after done) its fields.
type worker struct {
	sysFD int
	done  chan struct{}
	stop  atomic.Bool

	// Guarded by mu: the running vCPU's thread and kvm_run mapping, so a
	// kick never touches a mapping that is being unmapped.
	mu     sync.Mutex
	tid    int
	run    []byte
	checks []Check

	// Written by the worker before close(done); read after.
	setupErr   string
	exitReason string
}

// kick makes a vCPU in KVM_RUN return: immediate_exit makes any KVM_RUN
// return EINTR at once, and the signal interrupts one already in the guest.
// SIGURG is used because the Go runtime already expects it (goroutine
// preemption) and handles it harmlessly on any thread.
func (w *worker) kick() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.run == nil {
		return
	}
	// immediate_exit is byte 1 of kvm_run; x86 is little-endian, so it is
	// bits 8-15 of the aligned first word. Atomic because the vCPU thread
	// and the kernel read it concurrently.
	atomic.OrUint32((*uint32)(unsafe.Pointer(&w.run[0])), 1<<(8*runImmediateExit))
	_ = unix.Tgkill(unix.Getpid(), w.tid, unix.SIGURG)
}

func (w *worker) snapshotChecks() []Check {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]Check(nil), w.checks...)
}

func (w *worker) addCheck(c Check) {
	w.mu.Lock()
	w.checks = append(w.checks, c)
	w.mu.Unlock()
}

func (w *worker) loop() {
	defer close(w.done)
	defer unix.Close(w.sysFD)
	// KVM binds a vCPU to the thread that runs it and the kick targets a
	// thread id, so the whole worker stays on one OS thread. The thread is
	// not unlocked: it dies with the goroutine rather than returning to the
	// scheduler after hosting a vCPU that may have been signalled.
	runtime.LockOSThread()

	runSize, err := ioctlInt(w.sysFD, kvmGetVCPUMmapSize, 0)
	if err != nil {
		w.setupErr = "KVM_GET_VCPU_MMAP_SIZE: " + err.Error()
		return
	}
	if runSize < runMinSize {
		w.setupErr = fmt.Sprintf("KVM_GET_VCPU_MMAP_SIZE returned %d, smaller than struct kvm_run", runSize)
		return
	}
	cpuid, err := supportedCPUID(w.sysFD)
	if err != nil {
		w.setupErr = "KVM_GET_SUPPORTED_CPUID: " + err.Error()
		return
	}

	for _, p := range guestPrograms {
		if w.stop.Load() {
			return
		}
		// A timed program gets a few attempts so that one unlucky
		// preemption of this thread on a busy host is not a verdict.
		var c Check
		var last string
		var err error
		for attempt := 0; attempt < 3 && !w.stop.Load(); attempt++ {
			c, last, err = w.runGuest(p, runSize, cpuid)
			// Retry only a run that was slow but near the limit: far over
			// it is emulation, not noise, and other failures are final.
			nearMiss := err == nil && !c.OK && p.maxTime > 0 &&
				c.GuestTime > p.maxTime && c.GuestTime <= 4*p.maxTime
			if !nearMiss {
				break
			}
		}
		if err != nil {
			w.setupErr = fmt.Sprintf("%s setup: %v", p.mode, err)
			return
		}
		w.exitReason = last
		w.addCheck(c)
	}
}

// result turns the worker's findings into a verdict. Call after done.
func (w *worker) result(res ProbeResult) ProbeResult {
	res.Checks = w.snapshotChecks()
	res.ExitReason = w.exitReason
	if w.setupErr != "" {
		res.Status = StatusUnusable
		res.Detail = w.setupErr
		res.withHypervisor()
		return res
	}
	var failed []string
	for _, c := range res.Checks {
		if !c.OK {
			failed = append(failed, c.Mode+": "+c.Detail)
		}
	}
	switch {
	case len(failed) > 0:
		res.Status = StatusUnusable
		res.Detail = "KVM present but cannot run stock guests: " + strings.Join(failed, "; ")
		// Report the exit that decided it, not the last one seen.
		for _, c := range res.Checks {
			if !c.OK && len(c.Exits) > 0 {
				res.ExitReason = c.Exits[len(c.Exits)-1]
				break
			}
		}
		res.withHypervisor()
	case len(res.Checks) < len(guestPrograms):
		res.Status = StatusUnusable
		res.Detail = "probe stopped before every guest ran"
	default:
		res.Status = StatusUsable
		modes := make([]string, len(res.Checks))
		for i, c := range res.Checks {
			modes[i] = c.Mode
		}
		res.Detail = fmt.Sprintf("KVM usable: guest code ran and halted in %s (API %d)", strings.Join(modes, " and "), res.APIVersion)
		if res.Hypervisor != "" {
			res.Detail += "; " + res.Hypervisor
		}
		res.Hint = hintUsable
	}
	return res
}

func (res *ProbeResult) withHypervisor() {
	if res.Hypervisor != "" {
		res.Detail += "; host KVM: " + res.Hypervisor
	}
}

// runGuest creates a fresh VM with one vCPU, loads p and runs it. A non-nil
// error means the VM could not be set up (before any guest code ran); guest
// failures are reported in the Check.
func (w *worker) runGuest(p guestProgram, runSize int, cpuid []byte) (Check, string, error) {
	c := Check{Mode: p.mode}

	vmFD, err := ioctlInt(w.sysFD, kvmCreateVM, 0)
	if err != nil {
		return c, "", fmt.Errorf("KVM_CREATE_VM: %w", err)
	}
	defer unix.Close(vmFD)

	// Intel VMX without "unrestricted guest" emulates real mode with vm86
	// and needs three pages for a TSS; QEMU and Firecracker set it too.
	if n, _ := ioctlInt(vmFD, kvmCheckExtension, capSetTSSAddr); n > 0 {
		if _, err := ioctlInt(vmFD, kvmSetTSSAddr, 0xfffbd000); err != nil {
			return c, "", fmt.Errorf("KVM_SET_TSS_ADDR: %w", err)
		}
	}

	mem, err := unix.Mmap(-1, 0, guestMemSize, unix.PROT_READ|unix.PROT_WRITE,
		unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
	if err != nil {
		return c, "", fmt.Errorf("mmap guest memory: %w", err)
	}
	defer unix.Munmap(mem)

	region := kvmUserspaceMemoryRegion{
		Slot:          0,
		GuestPhysAddr: 0,
		MemorySize:    guestMemSize,
		UserspaceAddr: uint64(uintptr(unsafe.Pointer(&mem[0]))),
	}
	if err := ioctlPtr(vmFD, kvmSetUserMemoryRegion, unsafe.Pointer(&region)); err != nil {
		return c, "", fmt.Errorf("KVM_SET_USER_MEMORY_REGION: %w", err)
	}

	vcpuFD, err := ioctlInt(vmFD, kvmCreateVCPU, 0)
	if err != nil {
		return c, "", fmt.Errorf("KVM_CREATE_VCPU: %w", err)
	}
	defer unix.Close(vcpuFD)

	run, err := unix.Mmap(vcpuFD, 0, runSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return c, "", fmt.Errorf("mmap kvm_run: %w", err)
	}
	defer unix.Munmap(run)

	// A vCPU without CPUID has no long-mode feature bit, and KVM refuses
	// EFER.LME for it. VMMs hand the supported CPUID through; so do we.
	if err := ioctlPtr(vcpuFD, kvmSetCPUID2, unsafe.Pointer(&cpuid[0])); err != nil {
		return c, "", fmt.Errorf("KVM_SET_CPUID2: %w", err)
	}

	var sregs kvmSregs
	if err := ioctlPtr(vcpuFD, kvmGetSregs, unsafe.Pointer(&sregs)); err != nil {
		return c, "", fmt.Errorf("KVM_GET_SREGS: %w", err)
	}
	var regs kvmRegs
	p.setup(mem, &regs, &sregs)
	if err := ioctlPtr(vcpuFD, kvmSetSregs, unsafe.Pointer(&sregs)); err != nil {
		return c, "", fmt.Errorf("KVM_SET_SREGS: %w", err)
	}
	if err := ioctlPtr(vcpuFD, kvmSetRegs, unsafe.Pointer(&regs)); err != nil {
		return c, "", fmt.Errorf("KVM_SET_REGS: %w", err)
	}

	// Publish the vCPU for kick; withdraw it before the deferred munmap.
	w.mu.Lock()
	w.tid, w.run = unix.Gettid(), run
	w.mu.Unlock()
	defer func() {
		w.mu.Lock()
		w.run = nil
		w.mu.Unlock()
	}()

	last := w.runVCPU(vcpuFD, run, p, &c)
	return c, last, nil
}

// runVCPU drives KVM_RUN until the guest halts, fails, or the probe is
// stopped. It fills c and returns the name of the last exit.
func (w *worker) runVCPU(vcpuFD int, run []byte, p guestProgram, c *Check) string {
	le := binary.LittleEndian
	sawOut := false
	last := ""
	start := time.Now()
	for range maxExits {
		if w.stop.Load() {
			c.Detail = "stopped: guest did not finish in time" + w.ripSuffix(vcpuFD)
			return last
		}
		err := ioctlPtr(vcpuFD, kvmRun, nil)
		if errors.Is(err, unix.EINTR) || errors.Is(err, unix.EAGAIN) {
			// A signal (the Go runtime preempting this thread, or our own
			// kick) or immediate_exit. Re-enter unless we were stopped.
			if w.stop.Load() {
				c.Exits = append(c.Exits, "KVM_EXIT_INTR")
				c.Detail = "timed out: guest was still running (no exit) when stopped" + w.ripSuffix(vcpuFD)
				return "KVM_EXIT_INTR"
			}
			continue
		}
		if err != nil {
			c.Detail = "KVM_RUN failed: " + err.Error() + w.ripSuffix(vcpuFD)
			return last
		}
		reason := le.Uint32(run[runExitReason:])
		last = exitName(reason)
		c.Exits = append(c.Exits, last)
		switch reason {
		case exitIO:
			dir, size := run[runIODirection], run[runIOSize]
			port, count := le.Uint16(run[runIOPort:]), le.Uint32(run[runIOCount:])
			off := le.Uint64(run[runIODataOffset:])
			var val byte
			if off < uint64(len(run)) {
				val = run[off]
			}
			if dir != ioDirOut || size != 1 || port != probePort || count != 1 || val != probeValue {
				c.Detail = fmt.Sprintf("unexpected I/O exit: dir %d size %d port %#x count %d value %#x, want OUT of %#x to port %#x",
					dir, size, port, count, val, probeValue, probePort)
				return last
			}
			sawOut = true
			c.GuestTime = time.Since(start)
		case exitHLT:
			if !sawOut {
				c.Detail = "guest halted without writing the probe value" + w.ripSuffix(vcpuFD)
				return last
			}
			if p.wantRBX != 0 {
				var regs kvmRegs
				if err := ioctlPtr(vcpuFD, kvmGetRegs, unsafe.Pointer(&regs)); err != nil {
					c.Detail = "KVM_GET_REGS after HLT: " + err.Error()
					return last
				}
				if regs.RBX != p.wantRBX {
					c.Detail = fmt.Sprintf("guest halted with rbx %#x, want %#x", regs.RBX, p.wantRBX)
					return last
				}
			}
			if p.maxTime > 0 && c.GuestTime > p.maxTime {
				ips := float64(2*speedLoopIters) / c.GuestTime.Seconds()
				c.Detail = fmt.Sprintf("guest code is emulated, not run by hardware: %d instructions took %s (%.1f M instructions/s, limit %s; hardware does >1000 M/s), so a stock kernel would take minutes to boot",
					2*speedLoopIters, c.GuestTime.Round(time.Millisecond), ips/1e6, p.maxTime)
				return last
			}
			c.OK = true
			c.Detail = fmt.Sprintf("OUT %#x to port %#x, then HLT, in %s", probeValue, probePort, c.GuestTime.Round(time.Microsecond))
			return last
		default:
			c.Detail = describeExit(reason, run) + w.ripSuffix(vcpuFD)
			return last
		}
	}
	c.Detail = fmt.Sprintf("guest did not halt within %d exits", maxExits)
	return last
}

// ripSuffix names where the guest was, for failure details.
func (w *worker) ripSuffix(vcpuFD int) string {
	var regs kvmRegs
	if err := ioctlPtr(vcpuFD, kvmGetRegs, unsafe.Pointer(&regs)); err != nil {
		return ""
	}
	return fmt.Sprintf(" (guest rip %#x)", regs.RIP)
}

func exitName(reason uint32) string {
	if n, ok := exitNames[reason]; ok {
		return n
	}
	return fmt.Sprintf("exit reason %d", reason)
}

// describeExit decodes a failure exit into one line.
func describeExit(reason uint32, run []byte) string {
	le := binary.LittleEndian
	name := exitName(reason)
	switch reason {
	case exitInternalError:
		sub := le.Uint32(run[runInternalSuberror:])
		s := fmt.Sprintf("KVM internal error: %s suberror %d", name, sub)
		if n, ok := internalSuberrorNames[sub]; ok {
			s += " " + n
		}
		nd := min(le.Uint32(run[runInternalNdata:]), 16)
		if nd > 0 {
			data := make([]string, nd)
			for i := range data {
				data[i] = fmt.Sprintf("%#x", le.Uint64(run[runInternalData+8*i:]))
			}
			s += ", data [" + strings.Join(data, " ") + "]"
		}
		return s
	case exitFailEntry:
		return fmt.Sprintf("%s: VM entry failed, hardware_entry_failure_reason %#x on cpu %d",
			name, le.Uint64(run[runFailEntryReason:]), le.Uint32(run[runFailEntryCPU:]))
	case exitShutdown:
		return name + ": guest triple-faulted (shutdown)"
	case exitException:
		return fmt.Sprintf("%s: exception %d, error code %#x", name,
			le.Uint32(run[runExException:]), le.Uint32(run[runExErrorCode:]))
	case exitUnknown:
		return fmt.Sprintf("%s: hardware_exit_reason %#x", name, le.Uint64(run[runHWExitReason:]))
	case exitMMIO:
		w := "read"
		if run[runMMIOIsWrite] != 0 {
			w = "write"
		}
		return fmt.Sprintf("%s: %d-byte %s at unbacked guest address %#x", name,
			le.Uint32(run[runMMIOLen:]), w, le.Uint64(run[runMMIOPhysAddr:]))
	case exitSystemEvent:
		t := le.Uint32(run[runSystemEventType:])
		if n, ok := systemEventNames[t]; ok {
			return name + ": " + n
		}
		return fmt.Sprintf("%s: type %d", name, t)
	case exitX86RDMSR, exitX86WRMSR:
		return fmt.Sprintf("%s: msr %#x", name, le.Uint32(run[runMSRIndex:]))
	}
	return "unexpected " + name
}

// supportedCPUID returns a struct kvm_cpuid2 (header plus entries) filled by
// KVM_GET_SUPPORTED_CPUID, ready for KVM_SET_CPUID2.
func supportedCPUID(sysFD int) ([]byte, error) {
	hdr := int(unsafe.Sizeof(kvmCPUID2Header{}))
	ent := int(unsafe.Sizeof(kvmCPUIDEntry2{}))
	for n := 128; n <= 4096; n *= 2 {
		// []uint64 backing keeps the buffer 8-byte aligned like the C struct.
		words := make([]uint64, (hdr+n*ent+7)/8)
		buf := unsafe.Slice((*byte)(unsafe.Pointer(&words[0])), len(words)*8)
		binary.LittleEndian.PutUint32(buf, uint32(n))
		err := ioctlPtr(sysFD, kvmGetSupportedCPUID, unsafe.Pointer(&buf[0]))
		if errors.Is(err, unix.E2BIG) {
			continue
		}
		if err != nil {
			return nil, err
		}
		return buf, nil
	}
	return nil, unix.E2BIG
}

// ioctlInt issues an ioctl whose argument and result are plain integers.
func ioctlInt(fd int, req uintptr, arg uintptr) (int, error) {
	r, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, arg)
	if errno != 0 {
		return int(r), errno
	}
	return int(r), nil
}

// ioctlPtr issues an ioctl that takes a pointer. The conversion to uintptr
// happens in the Syscall argument list so the pointee stays alive and pinned
// for the duration of the call (unsafe.Pointer rule 4).
func ioctlPtr(fd int, req uintptr, arg unsafe.Pointer) error {
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, uintptr(arg))
	if errno != 0 {
		return errno
	}
	return nil
}
