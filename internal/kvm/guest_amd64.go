//go:build linux && amd64

package kvm

import (
	"encoding/binary"
	"time"
)

// The guest programs. Each writes probeValue to I/O port probePort with an
// OUT instruction (a KVM_EXIT_IO the probe checks) and then executes HLT
// (KVM_EXIT_HLT, since the probe creates no in-kernel irqchip). The value is
// computed by the guest rather than loaded as an immediate, so an exit with
// the right value proves instructions really executed in the intended mode.
const (
	probePort  = 0xE9 // the Bochs/QEMU "debug console" port, free in a bare VM
	probeValue = 0x42

	guestMemSize = 2 << 20 // 2 MiB of guest RAM at guest-physical 0
)

// Guest-physical layout of the long-mode guest. It copies what Firecracker
// does to enter a vmlinux at its 64-bit entry point (arch/x86_64/regs.rs and
// gdt.rs): GDT at 0x500, IDT at 0x520, identity-mapped page tables at
// 0x9000/0xa000/0xb000 with 2 MiB pages, stack just below 0x9000.
const (
	lmGDT     = 0x500
	lmIDT     = 0x520
	lmPML4    = 0x9000
	lmPDPT    = 0xa000
	lmPD      = 0xb000
	lmStack   = 0x8ff0
	lmCode    = 0x100000
	rmCode    = 0x1000
	rflagsRsv = 0x2 // bit 1 of RFLAGS is reserved and always 1
)

// Control-register and EFER bits.
const (
	cr0PE    = 1 << 0
	cr0PG    = 1 << 31
	cr4PAE   = 1 << 5
	eferLME  = 1 << 8
	eferLMA  = 1 << 10
	pteP     = 1 << 0
	pteRW    = 1 << 1
	ptePS    = 1 << 7 // 2 MiB page in a PD entry
	selCode  = 0x08
	selData  = 0x10
	selTSS   = 0x18
	segCode  = 0xb // execute/read, accessed
	segData  = 0x3 // read/write, accessed
	segTSS64 = 0xb // 64-bit TSS, busy
)

// realModeCode: mov al,0x40; add al,2; out 0xE9,al; hlt.
var realModeCode = []byte{0xb0, 0x40, 0x04, 0x02, 0xe6, probePort, 0xf4}

// speedLoopIters is how many times longModeCode spins in a dec/jnz loop
// (2 instructions per iteration) before reporting. Hardware-assisted KVM runs
// this in well under a millisecond. A hypervisor that emulates guest kernel
// code instead (PVM without a PVM-aware guest, observed here at about one
// million instructions per second) takes hundreds of milliseconds, and a stock
// kernel then needs minutes just to decompress itself.
const speedLoopIters = 200_000

// speedLoopLimit is the most time the loop may take: 400k instructions in
// 40 ms is 10 M instructions/s, two orders of magnitude below hardware
// virtualization and ten times above the emulation seen on PVM, so scheduling
// noise on a loaded host does not flip the verdict either way.
const speedLoopLimit = 40 * time.Millisecond

// longModeCode uses 64-bit-only encodings (REX.W immediates and shifts) and
// the stack (so memory accesses go through the page tables):
//
//	mov ecx, speedLoopIters ; loop: dec ecx ; jnz loop
//	mov rax, 0x42_0000_0000 ; push rax ; pop rbx ; shr rbx, 32
//	mov eax, ebx ; out 0xE9, al ; hlt
//
// Run in any other mode the REX prefixes decode as INC/DEC and the value
// written differs.
var longModeCode = []byte{
	0xb9, speedLoopIters & 0xff, speedLoopIters >> 8 & 0xff, speedLoopIters >> 16 & 0xff, speedLoopIters >> 24, // mov ecx, speedLoopIters
	0xff, 0xc9, 0x75, 0xfc, // loop: dec ecx; jnz loop
	0x48, 0xb8, 0, 0, 0, 0, probeValue, 0, 0, 0,
	0x50,
	0x5b,
	0x48, 0xc1, 0xeb, 0x20,
	0x89, 0xd8,
	0xe6, probePort,
	0xf4,
}

// guestProgram prepares guest memory and vCPU state for one CPU mode.
type guestProgram struct {
	mode  string
	setup func(mem []byte, regs *kvmRegs, sregs *kvmSregs)
	// wantRBX, when non-zero, is checked with KVM_GET_REGS after HLT.
	wantRBX uint64
	// maxTime, when non-zero, bounds the time from the first KVM_RUN to the
	// guest's OUT: the program's speed loop must run at hardware speed.
	maxTime time.Duration
}

var guestPrograms = []guestProgram{
	{mode: "real-mode", setup: setupRealMode},
	{mode: "long-mode", setup: setupLongMode, wantRBX: probeValue, maxTime: speedLoopLimit},
}

// setupRealMode starts the vCPU at 0000:1000 in the 16-bit real mode every
// x86 CPU resets into (what BIOS-style firmware runs in).
func setupRealMode(mem []byte, regs *kvmRegs, sregs *kvmSregs) {
	copy(mem[rmCode:], realModeCode)
	setupRealModeRegs(regs, sregs)
}

// setupRealModeRegs points the vCPU at 0000:1000 in real mode.
func setupRealModeRegs(regs *kvmRegs, sregs *kvmSregs) {
	sregs.CS.Base = 0
	sregs.CS.Selector = 0
	*regs = kvmRegs{RIP: rmCode, RFLAGS: rflagsRsv}
}

// gdtEntry packs a segment descriptor the way Firecracker's gdt_entry does:
// flags holds the access byte in bits 0-7 and the G/DB/L/AVL nibble in 12-15.
func gdtEntry(flags uint16, base, limit uint32) uint64 {
	return uint64(base&0xff000000)<<(56-24) |
		uint64(flags&0xf0ff)<<40 |
		uint64(limit&0x000f0000)<<(48-16) |
		uint64(base&0x00ffffff)<<16 |
		uint64(limit&0x0000ffff)
}

// setupLongMode enters 64-bit long mode directly through KVM_SET_SREGS, as
// Firecracker does for a vmlinux: paging on with PAE and 4-level tables,
// EFER.LME|LMA, a 64-bit code segment, flat data segments, a TSS.
func setupLongMode(mem []byte, regs *kvmRegs, sregs *kvmSregs) {
	le := binary.LittleEndian
	gdt := []uint64{
		0,                            // null
		gdtEntry(0xa09b, 0, 0xfffff), // 0x08: 64-bit code, DPL 0, G, L
		gdtEntry(0xc093, 0, 0xfffff), // 0x10: flat data, DPL 0, G, DB
		gdtEntry(0x808b, 0, 0xfffff), // 0x18: TSS (busy)
	}
	for i, e := range gdt {
		le.PutUint64(mem[lmGDT+8*i:], e)
	}
	le.PutUint64(mem[lmIDT:], 0) // one empty gate, as Firecracker has

	// Identity-map the first 1 GiB with 2 MiB pages.
	le.PutUint64(mem[lmPML4:], lmPDPT|pteP|pteRW)
	le.PutUint64(mem[lmPDPT:], lmPD|pteP|pteRW)
	for i := uint64(0); i < 512; i++ {
		le.PutUint64(mem[lmPD+8*i:], i<<21|pteP|pteRW|ptePS)
	}

	copy(mem[lmCode:], longModeCode)

	seg := func(sel uint16, typ uint8, desc uint64) kvmSegment {
		return kvmSegment{
			Base:     0,
			Limit:    0xffffffff,
			Selector: sel,
			Type:     typ,
			Present:  1,
			DPL:      0,
			DB:       uint8(desc >> 54 & 1),
			S:        uint8(desc >> 44 & 1),
			L:        uint8(desc >> 53 & 1),
			G:        uint8(desc >> 55 & 1),
		}
	}
	code := seg(selCode, segCode, gdt[1])
	data := seg(selData, segData, gdt[2])
	tss := seg(selTSS, segTSS64, gdt[3])
	sregs.CS = code
	sregs.DS, sregs.ES, sregs.FS, sregs.GS, sregs.SS = data, data, data, data, data
	sregs.TR = tss
	sregs.GDT = kvmDtable{Base: lmGDT, Limit: uint16(8*len(gdt) - 1)}
	sregs.IDT = kvmDtable{Base: lmIDT, Limit: 7}
	sregs.CR3 = lmPML4
	sregs.CR4 |= cr4PAE
	sregs.CR0 |= cr0PE | cr0PG
	sregs.EFER |= eferLME | eferLMA

	*regs = kvmRegs{RIP: lmCode, RSP: lmStack, RBP: lmStack, RFLAGS: rflagsRsv}
}
