package kernelimage

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"hash/crc64"
	"io"

	"github.com/ulikunitz/xz/lzma"
)

// The kernel's xz payloads (scripts/xz_wrap.sh) use the x86 BCJ filter in front of LZMA2
// (`xz --check=crc32 --x86 --lzma2=,dict=32MiB`). github.com/ulikunitz/xz decodes LZMA2 but
// rejects BCJ filter chains, so this file reads the .xz container itself (the format is
// https://tukaani.org/xz/xz-file-format.txt), decodes each block's LZMA2 data with
// ulikunitz/xz/lzma, and undoes the BCJ filter.

const (
	xzFilterX86   = 0x04
	xzFilterLZMA2 = 0x21
)

var crc64Table = crc64.MakeTable(crc64.ECMA)

func decodeXZ(src []byte, want int64) ([]byte, error) {
	if len(src) < 12 || !bytes.HasPrefix(src, []byte{0xfd, '7', 'z', 'X', 'Z', 0x00}) {
		return nil, errors.New("xz: bad stream header")
	}
	flags := src[6:8]
	if crc32.ChecksumIEEE(flags) != binary.LittleEndian.Uint32(src[8:12]) {
		return nil, errors.New("xz: stream header CRC mismatch")
	}
	if flags[0] != 0 || flags[1]&0xf0 != 0 {
		return nil, fmt.Errorf("xz: unsupported stream flags % x", flags)
	}
	checkID := flags[1] & 0x0f
	r := bytes.NewReader(src[12:])
	out := make([]byte, 0, want)
	for {
		blockStart := r.Size() - int64(r.Len())
		b, err := r.ReadByte()
		if err != nil {
			return nil, errors.New("xz: truncated before the index")
		}
		if b == 0 {
			// The index indicator: all blocks are done. The index and footer only repeat
			// sizes the blocks' own checks already vouched for.
			return out, nil
		}
		block, err := decodeXZBlock(r, b, blockStart, checkID, want-int64(len(out)))
		if err != nil {
			return nil, err
		}
		out = append(out, block...)
	}
}

// decodeXZBlock decodes one block whose header-size byte hs was just read.
func decodeXZBlock(r *bytes.Reader, hs byte, blockStart int64, checkID byte, limit int64) ([]byte, error) {
	hdr := make([]byte, (int(hs)+1)*4)
	hdr[0] = hs
	if _, err := io.ReadFull(r, hdr[1:]); err != nil {
		return nil, errors.New("xz: truncated block header")
	}
	body, sum := hdr[:len(hdr)-4], binary.LittleEndian.Uint32(hdr[len(hdr)-4:])
	if crc32.ChecksumIEEE(body) != sum {
		return nil, errors.New("xz: block header CRC mismatch")
	}
	hr := bytes.NewReader(body[2:])
	bflags := body[1]
	if bflags&0x3c != 0 {
		return nil, fmt.Errorf("xz: unsupported block flags %#x", bflags)
	}
	compSize, uncompSize := int64(-1), int64(-1)
	if bflags&0x40 != 0 {
		v, err := xzVarint(hr)
		if err != nil {
			return nil, err
		}
		compSize = int64(v)
	}
	if bflags&0x80 != 0 {
		v, err := xzVarint(hr)
		if err != nil {
			return nil, err
		}
		uncompSize = int64(v)
	}
	nfilters := int(bflags&3) + 1
	var x86 bool
	var x86Start uint32
	dictCap := -1
	for i := range nfilters {
		id, err := xzVarint(hr)
		if err != nil {
			return nil, err
		}
		psize, err := xzVarint(hr)
		if err != nil {
			return nil, err
		}
		if psize > uint64(hr.Len()) {
			return nil, errors.New("xz: truncated filter properties")
		}
		props := make([]byte, psize)
		_, _ = io.ReadFull(hr, props)
		last := i == nfilters-1
		switch {
		case id == xzFilterX86 && !last && !x86:
			switch len(props) {
			case 0:
			case 4:
				x86Start = binary.LittleEndian.Uint32(props)
			default:
				return nil, errors.New("xz: bad x86 BCJ filter properties")
			}
			x86 = true
		case id == xzFilterLZMA2 && last:
			if len(props) != 1 || props[0] > 40 {
				return nil, errors.New("xz: bad LZMA2 properties")
			}
			dictCap = lzma2DictCap(props[0])
		default:
			return nil, fmt.Errorf("%w: xz filter chain with filter %#x (banger decodes x86 BCJ + LZMA2)", ErrUnsupportedCompression, id)
		}
	}
	if dictCap < 0 {
		return nil, fmt.Errorf("%w: xz block without LZMA2", ErrUnsupportedCompression)
	}
	dataStart := r.Size() - int64(r.Len())
	lr, err := lzma.Reader2Config{DictCap: max(dictCap, lzma.MinDictCap)}.NewReader2(r)
	if err != nil {
		return nil, fmt.Errorf("xz: %w", err)
	}
	// Read one byte more than may come, to tell "too much" from "exactly enough".
	data, err := io.ReadAll(io.LimitReader(lr, limit+1))
	if err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, errors.New("xz: LZMA2 data truncated")
		}
		return nil, fmt.Errorf("xz: LZMA2: %w", err)
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("xz: more data than the %d bytes the trailer says", limit)
	}
	dataEnd := r.Size() - int64(r.Len())
	if compSize >= 0 && dataEnd-dataStart != compSize {
		return nil, fmt.Errorf("xz: block data is %d bytes, its header says %d", dataEnd-dataStart, compSize)
	}
	if uncompSize >= 0 && int64(len(data)) != uncompSize {
		return nil, fmt.Errorf("xz: block decodes to %d bytes, its header says %d", len(data), uncompSize)
	}
	// Block padding: zeros up to a multiple of four bytes from the block's start.
	for (r.Size()-int64(r.Len())-blockStart)%4 != 0 {
		if b, err := r.ReadByte(); err != nil || b != 0 {
			return nil, errors.New("xz: bad block padding")
		}
	}
	if x86 {
		bcjX86Decode(data, x86Start)
	}
	if err := xzVerifyCheck(r, checkID, data); err != nil {
		return nil, err
	}
	return data, nil
}

func lzma2DictCap(p byte) int {
	if p == 40 {
		return 0xffffffff
	}
	return (2 | int(p&1)) << (p/2 + 11)
}

// xzVarint reads the format's multibyte integer: 7 bits a byte, least significant first.
func xzVarint(r io.ByteReader) (uint64, error) {
	var v uint64
	for i := range 9 {
		b, err := r.ReadByte()
		if err != nil {
			return 0, errors.New("xz: truncated integer")
		}
		v |= uint64(b&0x7f) << (7 * i)
		if b&0x80 == 0 {
			if b == 0 && i > 0 {
				return 0, errors.New("xz: non-minimal integer")
			}
			return v, nil
		}
	}
	return 0, errors.New("xz: integer too long")
}

// xzVerifyCheck reads the block's check field and compares it with data.
func xzVerifyCheck(r *bytes.Reader, id byte, data []byte) error {
	var h hash.Hash
	switch id {
	case 0x00:
		return nil
	case 0x01:
		h = crc32.NewIEEE()
	case 0x04:
		h = crc64.New(crc64Table)
	case 0x0a:
		h = sha256.New()
	}
	size := [16]int{0, 4, 4, 4, 8, 8, 8, 16, 16, 16, 32, 32, 32, 64, 64, 64}[id]
	got := make([]byte, size)
	if _, err := io.ReadFull(r, got); err != nil {
		return errors.New("xz: truncated block check")
	}
	if h == nil {
		return nil // a check type this reader cannot compute: the size is known, skip it
	}
	h.Write(data)
	sum := h.Sum(nil)
	if id == 0x01 || id == 0x04 {
		// CRC32 and CRC64 are stored little-endian; hash.Hash sums are big-endian.
		for i, j := 0, len(sum)-1; i < j; i, j = i+1, j-1 {
			sum[i], sum[j] = sum[j], sum[i]
		}
	}
	if !bytes.Equal(sum, got) {
		return errors.New("xz: block check mismatch: corrupt data")
	}
	return nil
}

// bcjX86Decode undoes the x86 BCJ filter in place: the encoder turned the relative targets of
// CALL (E8) and JMP (E9) rel32 instructions into absolute ones to help compression; this
// turns them back. It is xz-embedded's bcj_x86 (linux/lib/xz/xz_dec_bcj.c) over one whole
// buffer, so the state carried between calls there stays local here. start is the filter's
// start offset property (0 unless set).
func bcjX86Decode(buf []byte, start uint32) {
	maskToAllowed := [8]bool{true, true, true, false, true, false, false, false}
	maskToBitNum := [8]uint32{0, 1, 2, 2, 3, 3, 3, 3}
	testMSByte := func(b byte) bool { return b == 0x00 || b == 0xff }
	le := binary.LittleEndian

	if len(buf) <= 4 {
		return
	}
	size := len(buf) - 4
	prevPos := -1
	var prevMask uint32
	for i := 0; i < size; i++ {
		if buf[i]&0xfe != 0xe8 {
			continue
		}
		d := i - prevPos
		if d > 3 {
			prevMask = 0
		} else {
			prevMask = (prevMask << (d - 1)) & 7
			if prevMask != 0 {
				b := buf[i+4-int(maskToBitNum[prevMask])]
				if !maskToAllowed[prevMask] || testMSByte(b) {
					prevPos = i
					prevMask = prevMask<<1 | 1
					continue
				}
			}
		}
		prevPos = i
		if testMSByte(buf[i+4]) {
			src := le.Uint32(buf[i+1:])
			var dest uint32
			for {
				dest = src - (start + uint32(i) + 5)
				if prevMask == 0 {
					break
				}
				j := maskToBitNum[prevMask] * 8
				b := byte(dest >> (24 - j))
				if !testMSByte(b) {
					break
				}
				src = dest ^ (1<<(32-j) - 1)
			}
			dest &= 0x01ffffff
			dest |= 0 - (dest & 0x01000000)
			le.PutUint32(buf[i+1:], dest)
			i += 4
		} else {
			prevMask = prevMask<<1 | 1
		}
	}
}
