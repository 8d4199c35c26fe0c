package initramfs

import (
	"bytes"
	"fmt"
	"io"
	"strings"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

// maxModuleSize bounds a decompressed module. The largest in-tree modules are
// tens of MiB; the bound only stops a corrupt or hostile file from exhausting
// memory.
const maxModuleSize = 512 << 20

// decompressModule returns the plain ELF bytes of a module stored at rel
// (".ko", ".ko.xz", ".ko.zst" or ".ko.gz"). The guest loads modules with
// finit_module and must not need a decompressor, so everything is unpacked
// on the host.
func decompressModule(rel string, raw []byte) ([]byte, error) {
	var r io.Reader
	switch {
	case strings.HasSuffix(rel, ".ko"):
		return raw, nil
	case strings.HasSuffix(rel, ".ko.xz"):
		// The kernel compresses modules with "xz --check=crc32"; ulikunitz/xz
		// verifies every check type xz writes.
		xr, err := xz.NewReader(bytes.NewReader(raw))
		if err != nil {
			return nil, fmt.Errorf("xz: %w", err)
		}
		r = xr
	case strings.HasSuffix(rel, ".ko.zst"):
		zr, err := zstd.NewReader(bytes.NewReader(raw), zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(maxModuleSize))
		if err != nil {
			return nil, fmt.Errorf("zstd: %w", err)
		}
		defer zr.Close()
		r = zr
	case strings.HasSuffix(rel, ".ko.gz"):
		gr, err := gzip.NewReader(bytes.NewReader(raw))
		if err != nil {
			return nil, fmt.Errorf("gzip: %w", err)
		}
		defer gr.Close()
		r = gr
	default:
		return nil, fmt.Errorf("unknown module compression of %s", rel)
	}
	out, err := io.ReadAll(io.LimitReader(r, maxModuleSize+1))
	if err != nil {
		return nil, fmt.Errorf("decompress: %w", err)
	}
	if len(out) > maxModuleSize {
		return nil, fmt.Errorf("decompressed module is larger than %d MiB", maxModuleSize>>20)
	}
	return out, nil
}
