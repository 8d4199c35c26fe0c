package kernelimage

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/pierrec/lz4/v4"
	"github.com/ulikunitz/xz/lzma"
)

// decompress undoes the payload compression. The kernel build (scripts/Makefile.lib) appends
// the uncompressed size as 4 little-endian bytes to every payload ("size_append"; for gzip
// the format's own ISIZE trailer is those bytes), so the expected size is known up front:
// it bounds memory and catches a truncated or corrupt payload.
func decompress(c Compression, payload []byte) ([]byte, error) {
	if len(payload) < 8 {
		return nil, fmt.Errorf("payload of %d bytes is too short", len(payload))
	}
	want := int64(binary.LittleEndian.Uint32(payload[len(payload)-4:]))
	if want == 0 || want > maxVmlinux {
		return nil, fmt.Errorf("payload trailer says the kernel is %d bytes: corrupt", want)
	}
	stream := payload[:len(payload)-4] // the compressed stream without the size trailer
	var out []byte
	var err error
	switch c {
	case Gzip:
		// gzip's trailer is part of its stream (CRC32 + ISIZE): keep it so it is verified.
		var r *gzip.Reader
		if r, err = gzip.NewReader(bytes.NewReader(payload)); err == nil {
			r.Multistream(false)
			out, err = readExactly(r, want)
		}
	case XZ:
		out, err = decodeXZ(stream, want)
	case LZMA:
		var r *lzma.Reader
		if r, err = lzma.NewReader(bytes.NewReader(stream)); err == nil {
			out, err = readExactly(r, want)
		}
	case LZ4:
		out, err = decodeLZ4Legacy(stream, want)
	case Zstd:
		var d *zstd.Decoder
		d, err = zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(maxVmlinux))
		if err == nil {
			out, err = d.DecodeAll(stream, make([]byte, 0, want))
			d.Close()
		}
	default:
		return nil, fmt.Errorf("%w: %s", ErrUnsupportedCompression, c)
	}
	if err != nil {
		return nil, err
	}
	if int64(len(out)) != want {
		return nil, fmt.Errorf("decompressed to %d bytes, but the payload trailer says %d: truncated or corrupt", len(out), want)
	}
	return out, nil
}

// readExactly reads want bytes from r and checks the stream ends there (which also makes
// gzip verify its CRC).
func readExactly(r io.Reader, want int64) ([]byte, error) {
	out := make([]byte, want)
	if n, err := io.ReadFull(r, out); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("stream ended after %d of %d bytes: truncated", n, want)
		}
		return nil, err
	}
	var one [1]byte
	n, err := r.Read(one[:])
	for n == 0 && err == nil {
		n, err = r.Read(one[:])
	}
	if n > 0 {
		return nil, fmt.Errorf("stream holds more than the %d bytes its trailer says", want)
	}
	if !errors.Is(err, io.EOF) {
		return nil, err
	}
	return out, nil
}

// LZ4 legacy format (what `lz4 -l` writes and lib/decompress_unlz4.c reads): the magic, then
// blocks, each a little-endian compressed length and an LZ4 block that decompresses to at
// most 8 MiB. The magic may repeat between blocks (concatenated files).
const (
	lz4LegacyMagic    = 0x184c2102
	lz4LegacyBlockMax = 8 << 20
)

func decodeLZ4Legacy(src []byte, want int64) ([]byte, error) {
	le := binary.LittleEndian
	if len(src) < 4 || le.Uint32(src) != lz4LegacyMagic {
		return nil, errors.New("lz4: not the legacy frame format")
	}
	src = src[4:]
	out := make([]byte, want)
	pos := 0
	for len(src) > 0 {
		if len(src) < 4 {
			return nil, fmt.Errorf("lz4: %d stray bytes after the last block", len(src))
		}
		n := le.Uint32(src)
		src = src[4:]
		if n == lz4LegacyMagic {
			continue
		}
		if uint64(n) > uint64(len(src)) {
			return nil, fmt.Errorf("lz4: block of %d bytes, only %d left: truncated", n, len(src))
		}
		if pos == len(out) {
			return nil, fmt.Errorf("lz4: more data than the %d bytes the trailer says", want)
		}
		dst := out[pos:min(pos+lz4LegacyBlockMax, len(out))]
		k, err := lz4.UncompressBlock(src[:n], dst)
		if err != nil {
			return nil, fmt.Errorf("lz4: block at output offset %d: %w", pos, err)
		}
		pos += k
		src = src[n:]
	}
	return out[:pos], nil
}
