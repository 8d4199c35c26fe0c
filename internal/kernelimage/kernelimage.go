// Package kernelimage turns an x86 Linux kernel as distributions ship it (a bzImage) into the
// ELF vmlinux that Firecracker loads on x86_64, in pure Go: parse the boot protocol's setup
// header, find the compressed payload, decompress it by its magic, and check the result is an
// x86_64 ELF executable. It also reports facts a VMM cares about (entry point, the Xen PVH
// entry note), and caches extracted kernels by content.
//
// The boot protocol is documented in the kernel's Documentation/arch/x86/boot.rst.
package kernelimage

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
)

// Compression names a bzImage payload's compression.
type Compression string

const (
	None  Compression = "none" // the input was already an ELF vmlinux
	Gzip  Compression = "gzip"
	XZ    Compression = "xz"
	LZMA  Compression = "lzma"
	LZ4   Compression = "lz4"
	Zstd  Compression = "zstd"
	Bzip2 Compression = "bzip2"
	LZO   Compression = "lzo"
)

// Setup header offsets (boot.rst, "THE REAL-MODE KERNEL HEADER").
const (
	offSetupSects    = 0x1f1
	offBootFlag      = 0x1fe // 0xAA55
	offHeaderMagic   = 0x202 // "HdrS"
	offVersion       = 0x206
	offKernelVersion = 0x20e // pointer to a NUL-terminated string, minus 0x200
	offPayloadOffset = 0x248 // protocol 2.08+
	offPayloadLength = 0x24c
	minHeaderLen     = 0x250

	// minProtocol is the first boot protocol with payload_offset/payload_length.
	minProtocol = 0x0208
)

// maxVmlinux bounds the decompressed size: a stock vmlinux is 30-70 MiB; a payload claiming
// more than this is corrupt or hostile (a decompression bomb), not a kernel.
const maxVmlinux = 1 << 30

// Info is what banger needs to know about a kernel image.
type Info struct {
	// Compression is the bzImage payload's compression, None for an ELF input.
	Compression Compression
	// Version is the bzImage's kernel_version string ("6.1.0-56-cloud-amd64 (debian-kernel@...)
	// #1 SMP ..."), empty for an ELF input or when the header has none.
	Version string
	// Entry is the ELF entry point (a virtual address for a vmlinux).
	Entry uint64
	// PVH is true when the ELF carries a Xen PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY): the
	// kernel can be entered in 32-bit protected mode at PVHEntry, which is how Firecracker
	// boots it when present.
	PVH      bool
	PVHEntry uint64
	// Size is the length of the ELF vmlinux in bytes.
	Size int64
}

// Errors callers may want to tell apart.
var (
	// ErrNotKernel: the input is neither an ELF nor a bzImage.
	ErrNotKernel = errors.New("not a Linux kernel image (neither an ELF vmlinux nor an x86 bzImage)")
	// ErrUnsupportedCompression: a bzImage whose payload compression banger cannot decompress.
	ErrUnsupportedCompression = errors.New("unsupported kernel compression")
)

// Extract returns the ELF vmlinux inside image (a bzImage, or an ELF vmlinux, which is
// returned as is) and its facts.
func Extract(image []byte) ([]byte, Info, error) {
	if bytes.HasPrefix(image, []byte(elf.ELFMAG)) {
		info, err := InspectELF(image)
		if err != nil {
			return nil, Info{}, err
		}
		return image, info, nil
	}
	payload, version, err := bzImagePayload(image)
	if err != nil {
		return nil, Info{}, err
	}
	comp, err := detect(payload)
	if err != nil {
		return nil, Info{}, err
	}
	raw, err := decompress(comp, payload)
	if err != nil {
		return nil, Info{}, fmt.Errorf("decompress the %s kernel payload: %w", comp, err)
	}
	if !bytes.HasPrefix(raw, []byte(elf.ELFMAG)) {
		return nil, Info{}, fmt.Errorf("the decompressed %s payload is not an ELF (starts with % x)", comp, head(raw, 8))
	}
	// The payload is vmlinux.bin followed by the relocation table the bzImage's own
	// decompressor uses for KASLR (CONFIG_X86_NEED_RELOCS). A VMM loading the ELF does not
	// relocate it, so keep the ELF alone: the result is then byte-for-byte a stripped vmlinux.
	end, err := elfExtent(raw)
	if err != nil {
		return nil, Info{}, err
	}
	vmlinux := raw[:end]
	info, err := InspectELF(vmlinux)
	if err != nil {
		return nil, Info{}, fmt.Errorf("the decompressed %s payload: %w", comp, err)
	}
	info.Compression = comp
	info.Version = version
	return vmlinux, info, nil
}

// ExtractFile is Extract on a file.
func ExtractFile(path string) ([]byte, Info, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, Info{}, fmt.Errorf("read kernel: %w", err)
	}
	v, info, err := Extract(data)
	if err != nil {
		return nil, Info{}, fmt.Errorf("kernel %s: %w", path, err)
	}
	return v, info, nil
}

// bzImagePayload returns the compressed payload of a bzImage and its version string.
func bzImagePayload(image []byte) ([]byte, string, error) {
	if len(image) < minHeaderLen {
		if len(image) > offHeaderMagic+4 && string(image[offHeaderMagic:offHeaderMagic+4]) == "HdrS" {
			return nil, "", fmt.Errorf("bzImage truncated: %d bytes, shorter than its setup header", len(image))
		}
		return nil, "", ErrNotKernel
	}
	if string(image[offHeaderMagic:offHeaderMagic+4]) != "HdrS" {
		return nil, "", ErrNotKernel
	}
	le := binary.LittleEndian
	proto := le.Uint16(image[offVersion:])
	if proto < minProtocol {
		return nil, "", fmt.Errorf("bzImage boot protocol %d.%02d is older than 2.08 (no payload fields): kernel too old", proto>>8, proto&0xff)
	}
	setupSects := int(image[offSetupSects])
	if setupSects == 0 {
		setupSects = 4 // boot.rst: "If this field is 0, the real value is 4."
	}
	// The protected-mode code (and in it the payload) starts after the boot sector and the
	// setup sectors; payload_offset is relative to that.
	pmStart := (setupSects + 1) * 512
	off := int64(pmStart) + int64(le.Uint32(image[offPayloadOffset:]))
	n := int64(le.Uint32(image[offPayloadLength:]))
	if n == 0 {
		return nil, "", errors.New("bzImage has no payload (payload_length is 0)")
	}
	if off+n > int64(len(image)) {
		return nil, "", fmt.Errorf("bzImage truncated: payload at %d+%d runs past the end of the %d-byte file", off, n, len(image))
	}
	return image[off : off+n], kernelVersion(image, pmStart), nil
}

// kernelVersion reads the kernel_version string the header points at (protocol 2.00+).
func kernelVersion(image []byte, pmStart int) string {
	p := int(binary.LittleEndian.Uint16(image[offKernelVersion:]))
	if p == 0 {
		return ""
	}
	p += 0x200
	if p >= pmStart || p >= len(image) {
		return ""
	}
	s := image[p:min(pmStart, len(image))]
	if i := bytes.IndexByte(s, 0); i >= 0 {
		s = s[:i]
	}
	return string(s)
}

// detect names the payload's compression from its magic, as the kernel's own
// arch/x86/boot/compressed/misc.c expects it (one of the CONFIG_KERNEL_* choices).
func detect(p []byte) (Compression, error) {
	switch {
	case bytes.HasPrefix(p, []byte{0x1f, 0x8b}):
		return Gzip, nil
	case bytes.HasPrefix(p, []byte{0xfd, '7', 'z', 'X', 'Z', 0x00}):
		return XZ, nil
	case bytes.HasPrefix(p, []byte{0x02, 0x21, 0x4c, 0x18}):
		return LZ4, nil
	case bytes.HasPrefix(p, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		return Zstd, nil
	case bytes.HasPrefix(p, []byte{'B', 'Z', 'h'}):
		return Bzip2, fmt.Errorf("%w: bzip2 (CONFIG_KERNEL_BZIP2); use a kernel built with gzip, xz, lzma, lz4 or zstd", ErrUnsupportedCompression)
	case bytes.HasPrefix(p, []byte{0x89, 'L', 'Z', 'O', 0x00, '\r', '\n', 0x1a, '\n'}):
		return LZO, fmt.Errorf("%w: lzo (CONFIG_KERNEL_LZO); use a kernel built with gzip, xz, lzma, lz4 or zstd", ErrUnsupportedCompression)
	case len(p) >= 13 && p[0] == 0x5d && p[1] == 0x00:
		// The .lzma ("LZMA alone") header: properties byte 0x5d (lc=3 lp=0 pb=2, what
		// `lzma -9` writes) and a little-endian dictionary size whose low byte is 0.
		return LZMA, nil
	}
	return "", fmt.Errorf("%w: unknown payload magic % x", ErrUnsupportedCompression, head(p, 8))
}

func head(b []byte, n int) []byte {
	if len(b) < n {
		return b
	}
	return b[:n]
}

// XEN_ELFNOTE_PHYS32_ENTRY from xen/include/public/elfnote.h: the 32-bit physical entry
// point of a PVH kernel (arch/x86/platform/pvh/head.S emits it with CONFIG_PVH).
const xenElfnotePhys32Entry = 18

// InspectELF checks that data is an x86_64 ELF executable (what a vmlinux is) and returns
// its facts.
func InspectELF(data []byte) (Info, error) {
	f, err := elf.NewFile(bytes.NewReader(data))
	if err != nil {
		return Info{}, fmt.Errorf("not a valid ELF: %w", err)
	}
	defer f.Close()
	switch {
	case f.Class != elf.ELFCLASS64:
		return Info{}, fmt.Errorf("ELF class %v: a vmlinux for x86_64 is ELFCLASS64", f.Class)
	case f.Machine != elf.EM_X86_64:
		return Info{}, fmt.Errorf("ELF machine %v: want EM_X86_64", f.Machine)
	case f.Type != elf.ET_EXEC:
		return Info{}, fmt.Errorf("ELF type %v: a vmlinux is ET_EXEC", f.Type)
	}
	loads := 0
	for _, p := range f.Progs {
		if p.Type == elf.PT_LOAD {
			loads++
		}
	}
	if loads == 0 {
		return Info{}, errors.New("ELF has no loadable segments")
	}
	if _, err := elfExtent(data); err != nil {
		return Info{}, err // a segment past the end: a truncated file
	}
	info := Info{Compression: None, Entry: f.Entry, Size: int64(len(data))}
	info.PVHEntry, info.PVH, err = pvhEntry(f)
	if err != nil {
		return Info{}, err
	}
	return info, nil
}

// pvhEntry finds the Xen PHYS32_ENTRY note, in the PT_NOTE segments (what loaders such as
// Firecracker's linux-loader read) or, failing those, in SHT_NOTE sections.
func pvhEntry(f *elf.File) (uint64, bool, error) {
	var blobs [][]byte
	for _, p := range f.Progs {
		if p.Type != elf.PT_NOTE {
			continue
		}
		b := make([]byte, p.Filesz)
		if _, err := p.ReadAt(b, 0); err != nil {
			return 0, false, fmt.Errorf("read ELF note segment: %w", err)
		}
		blobs = append(blobs, b)
	}
	if len(blobs) == 0 {
		for _, s := range f.Sections {
			if s.Type != elf.SHT_NOTE {
				continue
			}
			b, err := s.Data()
			if err != nil {
				return 0, false, fmt.Errorf("read ELF note section %s: %w", s.Name, err)
			}
			blobs = append(blobs, b)
		}
	}
	for _, b := range blobs {
		if addr, ok := findNote(b, f.ByteOrder, "Xen", xenElfnotePhys32Entry); ok {
			return addr, true, nil
		}
	}
	return 0, false, nil
}

// findNote walks ELF notes (Elf64_Nhdr: namesz, descsz, type, then name and desc, each
// padded to 4 bytes) and returns the descriptor of the first note named name with type typ,
// read as a little-endian address (4 or 8 bytes: the kernel emits it with _ASM_PTR).
func findNote(b []byte, bo binary.ByteOrder, name string, typ uint32) (uint64, bool) {
	align4 := func(n uint64) uint64 { return (n + 3) &^ 3 }
	for len(b) >= 12 {
		namesz, descsz, t := uint64(bo.Uint32(b)), uint64(bo.Uint32(b[4:])), bo.Uint32(b[8:])
		b = b[12:]
		if align4(namesz) > uint64(len(b)) {
			return 0, false
		}
		n := b[:namesz]
		b = b[align4(namesz):]
		if align4(descsz) > uint64(len(b)) {
			// The last note's padding may be cut off; its descriptor must still fit.
			if descsz > uint64(len(b)) {
				return 0, false
			}
		}
		desc := b[:descsz]
		b = b[min(align4(descsz), uint64(len(b))):]
		if t != typ || string(bytes.TrimRight(n, "\x00")) != name {
			continue
		}
		switch len(desc) {
		case 4:
			return uint64(bo.Uint32(desc)), true
		case 8:
			return bo.Uint64(desc), true
		}
		return 0, false
	}
	return 0, false
}

// elfExtent returns the length of the ELF file at the start of data: the furthest end of
// its headers, program segments and sections. Bytes after it are not part of the ELF.
func elfExtent(data []byte) (int, error) {
	f, err := elf.NewFile(bytes.NewReader(data))
	if err != nil {
		return 0, fmt.Errorf("not a valid ELF: %w", err)
	}
	defer f.Close()
	if f.Class != elf.ELFCLASS64 {
		return 0, fmt.Errorf("ELF class %v: a vmlinux for x86_64 is ELFCLASS64", f.Class)
	}
	// The ELF64 header: e_phoff at 32, e_shoff at 40, e_phentsize at 54, e_phnum at 56,
	// e_shentsize at 58, e_shnum at 60. debug/elf does not expose the table offsets.
	bo := f.ByteOrder
	end := uint64(64)
	phoff, shoff := bo.Uint64(data[32:]), bo.Uint64(data[40:])
	phentsize, phnum := uint64(bo.Uint16(data[54:])), uint64(bo.Uint16(data[56:]))
	shentsize, shnum := uint64(bo.Uint16(data[58:])), uint64(bo.Uint16(data[60:]))
	end = max(end, phoff+phentsize*phnum)
	if shoff != 0 {
		end = max(end, shoff+shentsize*shnum)
	}
	for _, p := range f.Progs {
		end = max(end, p.Off+p.Filesz)
	}
	for _, s := range f.Sections {
		if s.Type != elf.SHT_NOBITS {
			end = max(end, s.Offset+s.FileSize)
		}
	}
	if end > uint64(len(data)) {
		return 0, fmt.Errorf("ELF truncated: it needs %d bytes, have %d", end, len(data))
	}
	return int(end), nil
}
