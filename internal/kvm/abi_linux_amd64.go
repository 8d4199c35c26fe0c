//go:build linux && amd64

package kvm

import "unsafe"

// KVM ABI for x86_64, transcribed from <linux/kvm.h> and
// arch/x86/include/uapi/asm/kvm.h. golang.org/x/sys/unix does not export any
// KVM ioctl numbers or structures, so they live here. Every struct size is
// asserted at compile time below, because the ioctl numbers encode the size
// and a mismatch would make the kernel reject (or misread) the argument.

const (
	kvmio = 0xAE

	iocNone  = 0
	iocWrite = 1
	iocRead  = 2
)

// ioc mirrors the kernel's _IOC macro (x86 layout: dir<<30 | size<<16 | type<<8 | nr).
func ioc(dir, nr, size uintptr) uintptr {
	return dir<<30 | size<<16 | kvmio<<8 | nr
}

var (
	kvmGetAPIVersion       = ioc(iocNone, 0x00, 0)
	kvmCreateVM            = ioc(iocNone, 0x01, 0)
	kvmCheckExtension      = ioc(iocNone, 0x03, 0)
	kvmGetVCPUMmapSize     = ioc(iocNone, 0x04, 0)
	kvmGetSupportedCPUID   = ioc(iocRead|iocWrite, 0x05, unsafe.Sizeof(kvmCPUID2Header{}))
	kvmCreateVCPU          = ioc(iocNone, 0x41, 0)
	kvmSetUserMemoryRegion = ioc(iocWrite, 0x46, unsafe.Sizeof(kvmUserspaceMemoryRegion{}))
	kvmSetTSSAddr          = ioc(iocNone, 0x47, 0)
	kvmRun                 = ioc(iocNone, 0x80, 0)
	kvmGetRegs             = ioc(iocRead, 0x81, unsafe.Sizeof(kvmRegs{}))
	kvmSetRegs             = ioc(iocWrite, 0x82, unsafe.Sizeof(kvmRegs{}))
	kvmGetSregs            = ioc(iocRead, 0x83, unsafe.Sizeof(kvmSregs{}))
	kvmSetSregs            = ioc(iocWrite, 0x84, unsafe.Sizeof(kvmSregs{}))
	kvmSetCPUID2           = ioc(iocWrite, 0x90, unsafe.Sizeof(kvmCPUID2Header{}))
)

// kvmAPIVersion is the only KVM API version that has ever shipped (since 2.6.22).
const kvmAPIVersion = 12

// Capabilities queried with KVM_CHECK_EXTENSION.
const (
	capUserMemory    = 3
	capSetTSSAddr    = 4
	capExtCPUID      = 7
	capImmediateExit = 136
)

// Exit reasons (struct kvm_run.exit_reason).
const (
	exitUnknown       = 0
	exitException     = 1
	exitIO            = 2
	exitHypercall     = 3
	exitDebug         = 4
	exitHLT           = 5
	exitMMIO          = 6
	exitIRQWindowOpen = 7
	exitShutdown      = 8
	exitFailEntry     = 9
	exitIntr          = 10
	exitSetTPR        = 11
	exitTPRAccess     = 12
	exitNMI           = 16
	exitInternalError = 17
	exitSystemEvent   = 24
	exitX86RDMSR      = 29
	exitX86WRMSR      = 30
	exitNotify        = 37
	exitMemoryFault   = 39
)

var exitNames = map[uint32]string{
	exitUnknown:       "KVM_EXIT_UNKNOWN",
	exitException:     "KVM_EXIT_EXCEPTION",
	exitIO:            "KVM_EXIT_IO",
	exitHypercall:     "KVM_EXIT_HYPERCALL",
	exitDebug:         "KVM_EXIT_DEBUG",
	exitHLT:           "KVM_EXIT_HLT",
	exitMMIO:          "KVM_EXIT_MMIO",
	exitIRQWindowOpen: "KVM_EXIT_IRQ_WINDOW_OPEN",
	exitShutdown:      "KVM_EXIT_SHUTDOWN",
	exitFailEntry:     "KVM_EXIT_FAIL_ENTRY",
	exitIntr:          "KVM_EXIT_INTR",
	exitSetTPR:        "KVM_EXIT_SET_TPR",
	exitTPRAccess:     "KVM_EXIT_TPR_ACCESS",
	exitNMI:           "KVM_EXIT_NMI",
	exitInternalError: "KVM_EXIT_INTERNAL_ERROR",
	exitSystemEvent:   "KVM_EXIT_SYSTEM_EVENT",
	exitX86RDMSR:      "KVM_EXIT_X86_RDMSR",
	exitX86WRMSR:      "KVM_EXIT_X86_WRMSR",
	exitNotify:        "KVM_EXIT_NOTIFY",
	exitMemoryFault:   "KVM_EXIT_MEMORY_FAULT",
}

// Sub-errors of KVM_EXIT_INTERNAL_ERROR.
var internalSuberrorNames = map[uint32]string{
	1: "KVM_INTERNAL_ERROR_EMULATION (instruction emulation failed)",
	2: "KVM_INTERNAL_ERROR_SIMUL_EX (exception while delivering an exception)",
	3: "KVM_INTERNAL_ERROR_DELIVERY_EV (event delivery failed)",
	4: "KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON (hypervisor got an exit it cannot handle)",
}

// Types of KVM_EXIT_SYSTEM_EVENT.
var systemEventNames = map[uint32]string{
	1: "KVM_SYSTEM_EVENT_SHUTDOWN",
	2: "KVM_SYSTEM_EVENT_RESET",
	3: "KVM_SYSTEM_EVENT_CRASH",
	4: "KVM_SYSTEM_EVENT_WAKEUP",
	5: "KVM_SYSTEM_EVENT_SUSPEND",
	6: "KVM_SYSTEM_EVENT_SEV_TERM",
	7: "KVM_SYSTEM_EVENT_TDX_FATAL",
}

// struct kvm_userspace_memory_region.
type kvmUserspaceMemoryRegion struct {
	Slot          uint32
	Flags         uint32
	GuestPhysAddr uint64
	MemorySize    uint64
	UserspaceAddr uint64
}

// struct kvm_regs.
type kvmRegs struct {
	RAX, RBX, RCX, RDX, RSI, RDI, RSP, RBP uint64
	R8, R9, R10, R11, R12, R13, R14, R15   uint64
	RIP, RFLAGS                            uint64
}

// struct kvm_segment.
type kvmSegment struct {
	Base     uint64
	Limit    uint32
	Selector uint16
	Type     uint8
	Present  uint8
	DPL      uint8
	DB       uint8
	S        uint8
	L        uint8
	G        uint8
	AVL      uint8
	Unusable uint8
	_        uint8
}

// struct kvm_dtable.
type kvmDtable struct {
	Base  uint64
	Limit uint16
	_     [3]uint16
}

// struct kvm_sregs.
type kvmSregs struct {
	CS, DS, ES, FS, GS, SS  kvmSegment
	TR, LDT                 kvmSegment
	GDT, IDT                kvmDtable
	CR0, CR2, CR3, CR4, CR8 uint64
	EFER                    uint64
	APICBase                uint64
	InterruptBitmap         [4]uint64
}

// struct kvm_cpuid2 without its flexible array member.
type kvmCPUID2Header struct {
	Nent uint32
	_    uint32
}

// struct kvm_cpuid_entry2.
type kvmCPUIDEntry2 struct {
	Function uint32
	Index    uint32
	Flags    uint32
	EAX      uint32
	EBX      uint32
	ECX      uint32
	EDX      uint32
	_        [3]uint32
}

// Offsets into the mmap'd struct kvm_run. Only the fields the probe needs
// are read, directly from the shared page, at their ABI offsets.
const (
	runImmediateExit = 1  // __u8 immediate_exit
	runExitReason    = 8  // __u32 exit_reason
	runUnion         = 32 // start of the exit-specific union

	// io: __u8 direction; __u8 size; __u16 port; __u32 count; __u64 data_offset.
	runIODirection  = runUnion + 0
	runIOSize       = runUnion + 1
	runIOPort       = runUnion + 2
	runIOCount      = runUnion + 4
	runIODataOffset = runUnion + 8

	// fail_entry: __u64 hardware_entry_failure_reason; __u32 cpu.
	runFailEntryReason = runUnion + 0
	runFailEntryCPU    = runUnion + 8

	// internal: __u32 suberror; __u32 ndata; __u64 data[16].
	runInternalSuberror = runUnion + 0
	runInternalNdata    = runUnion + 4
	runInternalData     = runUnion + 8

	// ex: __u32 exception; __u32 error_code.
	runExException = runUnion + 0
	runExErrorCode = runUnion + 4

	// hw: __u64 hardware_exit_reason.
	runHWExitReason = runUnion + 0

	// mmio: __u64 phys_addr; __u8 data[8]; __u32 len; __u8 is_write.
	runMMIOPhysAddr = runUnion + 0
	runMMIOLen      = runUnion + 16
	runMMIOIsWrite  = runUnion + 20

	// system_event: __u32 type; __u32 ndata; __u64 data[16].
	runSystemEventType = runUnion + 0

	// msr: __u8 error; __u8 pad[7]; __u32 reason; __u32 index; __u64 data.
	runMSRIndex = runUnion + 12

	// The smallest kvm_run mapping that holds every field read above.
	runMinSize = runUnion + 8 + 16*8
)

const ioDirOut = 1 // KVM_EXIT_IO_OUT

// Compile-time ABI size checks: a negative array length fails the build.
var (
	_ [unsafe.Sizeof(kvmUserspaceMemoryRegion{}) - 32]byte
	_ [32 - unsafe.Sizeof(kvmUserspaceMemoryRegion{})]byte
	_ [unsafe.Sizeof(kvmRegs{}) - 144]byte
	_ [144 - unsafe.Sizeof(kvmRegs{})]byte
	_ [unsafe.Sizeof(kvmSegment{}) - 24]byte
	_ [24 - unsafe.Sizeof(kvmSegment{})]byte
	_ [unsafe.Sizeof(kvmDtable{}) - 16]byte
	_ [16 - unsafe.Sizeof(kvmDtable{})]byte
	_ [unsafe.Sizeof(kvmSregs{}) - 312]byte
	_ [312 - unsafe.Sizeof(kvmSregs{})]byte
	_ [unsafe.Sizeof(kvmCPUIDEntry2{}) - 40]byte
	_ [40 - unsafe.Sizeof(kvmCPUIDEntry2{})]byte
)
