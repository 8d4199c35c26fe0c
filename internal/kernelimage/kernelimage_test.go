package kernelimage

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/pierrec/lz4/v4"
	"github.com/ulikunitz/xz"
	"github.com/ulikunitz/xz/lzma"
)

// --- a tiny vmlinux ---------------------------------------------------------------------

const (
	testEntry    = 0x1000000
	testPVHEntry = 0x1000040
)

// tinyELF returns a minimal x86_64 ET_EXEC shaped like a vmlinux: one PT_LOAD with code
// full of CALL/JMP rel32 instructions (so the xz BCJ filter has work to do), a PT_NOTE with
// the Xen PHYS32_ENTRY note when pvh, and codeLen bytes of code.
func tinyELF(codeLen int, pvh bool) []byte {
	le := binary.LittleEndian
	var note []byte
	if pvh {
		// namesz 4 ("Xen\0"), descsz 8 (_ASM_PTR on x86_64), type 18.
		note = make([]byte, 12+4+8)
		le.PutUint32(note[0:], 4)
		le.PutUint32(note[4:], 8)
		le.PutUint32(note[8:], xenElfnotePhys32Entry)
		copy(note[12:], "Xen\x00")
		le.PutUint64(note[16:], testPVHEntry)
	}
	nph := 1
	if pvh {
		nph = 2
	}
	const ehsize, phsize = 64, 56
	noteOff := ehsize + phsize*nph
	codeOff := (noteOff + len(note) + 0xfff) &^ 0xfff
	code := make([]byte, codeLen)
	rng := rand.New(rand.NewSource(1))
	for i := 0; i+5 <= len(code); {
		switch rng.Intn(4) {
		case 0, 1: // call/jmp rel32 to somewhere near: top byte 00 or ff
			code[i] = 0xe8 + byte(rng.Intn(2))
			le.PutUint32(code[i+1:], uint32(int32(rng.Intn(1<<20)-1<<19)))
			i += 5
		case 2:
			code[i] = byte(rng.Intn(256))
			i++
		default:
			i += 3 // zeros, like padding
		}
	}
	f := make([]byte, codeOff+len(code))
	copy(f, elf.ELFMAG)
	f[elf.EI_CLASS] = byte(elf.ELFCLASS64)
	f[elf.EI_DATA] = byte(elf.ELFDATA2LSB)
	f[elf.EI_VERSION] = byte(elf.EV_CURRENT)
	le.PutUint16(f[16:], uint16(elf.ET_EXEC))
	le.PutUint16(f[18:], uint16(elf.EM_X86_64))
	le.PutUint32(f[20:], uint32(elf.EV_CURRENT))
	le.PutUint64(f[24:], testEntry)
	le.PutUint64(f[32:], ehsize) // e_phoff
	le.PutUint64(f[40:], 0)      // e_shoff: no sections, like a stripped loader image
	le.PutUint16(f[52:], ehsize)
	le.PutUint16(f[54:], phsize)
	le.PutUint16(f[56:], uint16(nph))
	le.PutUint16(f[58:], 64)
	ph := func(i int, typ elf.ProgType, flags elf.ProgFlag, off, addr, size, align uint64) {
		p := f[ehsize+i*phsize:]
		le.PutUint32(p[0:], uint32(typ))
		le.PutUint32(p[4:], uint32(flags))
		le.PutUint64(p[8:], off)
		le.PutUint64(p[16:], addr+0xffffffff80000000) // vaddr: __START_KERNEL_map + paddr
		le.PutUint64(p[24:], addr)                    // paddr
		le.PutUint64(p[32:], size)
		le.PutUint64(p[40:], size)
		le.PutUint64(p[48:], align)
	}
	ph(0, elf.PT_LOAD, elf.PF_R|elf.PF_X, uint64(codeOff), testEntry, uint64(len(code)), 0x1000)
	if pvh {
		ph(1, elf.PT_NOTE, elf.PF_R, uint64(noteOff), 0, uint64(len(note)), 4)
		copy(f[noteOff:], note)
	}
	copy(f[codeOff:], code)
	return f
}

// relocs stands in for the relocation table the kernel build appends to vmlinux.bin.
var relocs = bytes.Repeat([]byte{0xde, 0xad, 0xbe, 0xef}, 64)

func sizeAppend(stream []byte, n int) []byte {
	return binary.LittleEndian.AppendUint32(stream, uint32(n))
}

// fakeBzImage wraps payload in a boot sector + setup header the way arch/x86/boot does:
// setup_sects setup sectors, then the protected-mode part with the payload at
// payload_offset.
func fakeBzImage(payload []byte) []byte {
	const setupSects = 2
	const pmStart = (setupSects + 1) * 512
	const payloadOff = 0x40 // some decompressor code precedes the payload in real images
	img := make([]byte, pmStart+payloadOff+len(payload)+32)
	le := binary.LittleEndian
	img[offSetupSects] = setupSects
	le.PutUint16(img[offBootFlag:], 0xaa55)
	copy(img[offHeaderMagic:], "HdrS")
	le.PutUint16(img[offVersion:], 0x020f)
	copy(img[0x300:], "6.1.0-test (banger@test) #1 SMP\x00")
	le.PutUint16(img[offKernelVersion:], 0x300-0x200)
	le.PutUint32(img[offPayloadOffset:], payloadOff)
	le.PutUint32(img[offPayloadLength:], uint32(len(payload)))
	copy(img[pmStart+payloadOff:], payload)
	return img
}

// compressors build payloads with Go libraries, in the shape the kernel build writes them.
var compressors = map[Compression]func(t *testing.T, in []byte) []byte{
	Gzip: func(t *testing.T, in []byte) []byte {
		var b bytes.Buffer
		w, _ := gzip.NewWriterLevel(&b, gzip.BestCompression)
		w.Write(in)
		must(t, w.Close())
		return b.Bytes() // gzip's own ISIZE trailer is the size
	},
	XZ: func(t *testing.T, in []byte) []byte {
		var b bytes.Buffer
		w, err := xz.WriterConfig{CheckSum: xz.CRC32}.NewWriter(&b)
		must(t, err)
		w.Write(in)
		must(t, w.Close())
		return sizeAppend(b.Bytes(), len(in))
	},
	LZMA: func(t *testing.T, in []byte) []byte {
		var b bytes.Buffer
		w, err := lzma.NewWriter(&b)
		must(t, err)
		w.Write(in)
		must(t, w.Close())
		return sizeAppend(b.Bytes(), len(in))
	},
	LZ4: func(t *testing.T, in []byte) []byte {
		out := binary.LittleEndian.AppendUint32(nil, lz4LegacyMagic)
		for rest := in; len(rest) > 0; {
			chunk := rest[:min(len(rest), lz4LegacyBlockMax)]
			rest = rest[len(chunk):]
			dst := make([]byte, lz4.CompressBlockBound(len(chunk)))
			n, err := lz4.CompressBlock(chunk, dst, nil)
			must(t, err)
			out = binary.LittleEndian.AppendUint32(out, uint32(n))
			out = append(out, dst[:n]...)
		}
		return sizeAppend(out, len(in))
	},
	Zstd: func(t *testing.T, in []byte) []byte {
		e, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedBestCompression))
		must(t, err)
		return sizeAppend(e.EncodeAll(in, nil), len(in))
	},
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func checkExtracted(t *testing.T, img, wantELF []byte, comp Compression) {
	t.Helper()
	got, info, err := Extract(img)
	if err != nil {
		t.Fatalf("Extract: %v", err)
	}
	if !bytes.Equal(got, wantELF) {
		t.Fatalf("extracted %d bytes, differ from the %d-byte ELF put in", len(got), len(wantELF))
	}
	if info.Compression != comp || info.Entry != testEntry || !info.PVH || info.PVHEntry != testPVHEntry {
		t.Fatalf("info = %+v", info)
	}
	if info.Version != "6.1.0-test (banger@test) #1 SMP" {
		t.Fatalf("version = %q", info.Version)
	}
	if info.Size != int64(len(wantELF)) {
		t.Fatalf("size = %d", info.Size)
	}
}

func TestExtractEachCompression(t *testing.T) {
	vmlinux := tinyELF(64<<10, true)
	for comp, compress := range compressors {
		t.Run(string(comp), func(t *testing.T) {
			in := append(append([]byte(nil), vmlinux...), relocs...)
			checkExtracted(t, fakeBzImage(compress(t, in)), vmlinux, comp)
		})
	}
}

// TestExtractLZ4ManyBlocks covers a payload larger than one 8 MiB legacy block, like a
// real kernel's.
func TestExtractLZ4ManyBlocks(t *testing.T) {
	vmlinux := tinyELF(9<<20, true)
	in := append(append([]byte(nil), vmlinux...), relocs...)
	checkExtracted(t, fakeBzImage(compressors[LZ4](t, in)), vmlinux, LZ4)
}

// TestExtractKernelToolchainFormats compresses with the very commands the kernel build uses
// (scripts/Makefile.lib, scripts/xz_wrap.sh), where those tools are installed: notably xz
// with the x86 BCJ filter, which Go's xz library does not write.
func TestExtractKernelToolchainFormats(t *testing.T) {
	vmlinux := tinyELF(256<<10, true)
	in := append(append([]byte(nil), vmlinux...), relocs...)
	cases := []struct {
		comp Compression
		argv []string
		size bool // the build appends the size (all but gzip)
	}{
		{Gzip, []string{"gzip", "-n", "-f", "-9"}, false},
		{XZ, []string{"xz", "--check=crc32", "--x86", "--lzma2=,dict=32MiB"}, true},
		{XZ, []string{"xz", "--check=crc64", "--x86=start=0", "--lzma2=,dict=1MiB"}, true},
		{LZMA, []string{"lzma", "-9"}, true},
		{LZ4, []string{"lz4", "-l", "-9", "-c"}, true},
		{Zstd, []string{"zstd", "-22", "--ultra", "-c"}, true},
	}
	for _, c := range cases {
		t.Run(strings.Join(c.argv, " "), func(t *testing.T) {
			if _, err := exec.LookPath(c.argv[0]); err != nil {
				t.Skipf("no %s on PATH", c.argv[0])
			}
			cmd := exec.Command(c.argv[0], c.argv[1:]...)
			cmd.Stdin = bytes.NewReader(in)
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			out, err := cmd.Output()
			if err != nil {
				t.Fatalf("%v: %v: %s", c.argv, err, stderr.String())
			}
			if c.size {
				out = sizeAppend(out, len(in))
			}
			checkExtracted(t, fakeBzImage(out), vmlinux, c.comp)
		})
	}
}

func TestBCJDecode(t *testing.T) {
	// bcjX86Decode on data without E8/E9 bytes is the identity.
	data := bytes.Repeat([]byte{1, 2, 3, 4, 5, 6, 7}, 100)
	orig := append([]byte(nil), data...)
	bcjX86Decode(data, 0)
	if !bytes.Equal(data, orig) {
		t.Fatal("BCJ decode changed data with no branch opcodes")
	}
	// A lone CALL with an absolute target 0x105 at offset 0 decodes to rel32 0x100.
	call := []byte{0xe8, 0x05, 0x01, 0x00, 0x00, 0x90, 0x90, 0x90, 0x90}
	bcjX86Decode(call, 0)
	if got := binary.LittleEndian.Uint32(call[1:]); got != 0x100 {
		t.Fatalf("decoded rel32 = %#x, want 0x100", got)
	}
}

func TestELFPassesThrough(t *testing.T) {
	vmlinux := tinyELF(4096, false)
	got, info, err := Extract(vmlinux)
	must(t, err)
	if !bytes.Equal(got, vmlinux) || info.Compression != None || info.PVH || info.Entry != testEntry {
		t.Fatalf("info = %+v", info)
	}
}

func TestRejectsWrongELF(t *testing.T) {
	for name, mutate := range map[string]func([]byte){
		"32-bit":  func(b []byte) { b[elf.EI_CLASS] = byte(elf.ELFCLASS32) },
		"aarch64": func(b []byte) { binary.LittleEndian.PutUint16(b[18:], uint16(elf.EM_AARCH64)) },
		"ET_DYN":  func(b []byte) { binary.LittleEndian.PutUint16(b[16:], uint16(elf.ET_DYN)) },
	} {
		t.Run(name, func(t *testing.T) {
			b := tinyELF(4096, true)
			mutate(b)
			if _, _, err := Extract(b); err == nil {
				t.Fatal("accepted")
			}
			// Also when it is what a bzImage decompresses to.
			if _, _, err := Extract(fakeBzImage(compressors[Gzip](t, b))); err == nil {
				t.Fatal("accepted inside a bzImage")
			}
		})
	}
}

func TestUnsupportedCompressions(t *testing.T) {
	for name, magic := range map[Compression][]byte{
		Bzip2: []byte("BZh91AY&SY"),
		LZO:   {0x89, 'L', 'Z', 'O', 0x00, '\r', '\n', 0x1a, '\n', 0x10, 0x30},
		"?":   []byte("ELFNOPE!!!"),
	} {
		payload := sizeAppend(append(magic, make([]byte, 64)...), 1000)
		_, _, err := Extract(fakeBzImage(payload))
		if !errors.Is(err, ErrUnsupportedCompression) {
			t.Errorf("%s: err = %v, want ErrUnsupportedCompression", name, err)
		} else if name != "?" && !strings.Contains(err.Error(), string(name)) {
			t.Errorf("%s: error does not name the format: %v", name, err)
		}
	}
}

func TestGarbageAndTruncation(t *testing.T) {
	rng := rand.New(rand.NewSource(2))
	garbage := make([]byte, 1<<16)
	rng.Read(garbage)
	if _, _, err := Extract(garbage); !errors.Is(err, ErrNotKernel) {
		t.Fatalf("garbage: %v", err)
	}
	if _, _, err := Extract(nil); !errors.Is(err, ErrNotKernel) {
		t.Fatalf("empty: %v", err)
	}
	vmlinux := tinyELF(32<<10, true)
	in := append(append([]byte(nil), vmlinux...), relocs...)
	for comp, compress := range compressors {
		img := fakeBzImage(compress(t, in))
		// Cut the image everywhere interesting: inside the header, inside the payload.
		for _, n := range []int{0, 100, 0x204, 0x249, 1600, 1700, len(img) / 2, len(img) - 40, len(img) - 33} {
			if _, _, err := Extract(img[:n]); err == nil {
				t.Errorf("%s: image cut to %d bytes extracted without error", comp, n)
			}
		}
		// A payload whose stream is cut short (the header still says it is whole).
		p := compress(t, in)
		short := sizeAppend(p[:len(p)/2], len(in))
		if _, _, err := Extract(fakeBzImage(short)); err == nil {
			t.Errorf("%s: half a payload extracted without error", comp)
		}
		// A corrupt payload must fail, never produce a wrong kernel silently.
		bad := append([]byte(nil), p...)
		for i := 16; i < len(bad)-8; i += 97 {
			bad[i] ^= 0x5a
		}
		if got, _, err := Extract(fakeBzImage(bad)); err == nil && !bytes.Equal(got, vmlinux) {
			t.Errorf("%s: corrupt payload gave a different kernel without error", comp)
		}
	}
	// An ELF cut short.
	if _, _, err := Extract(vmlinux[:len(vmlinux)-100]); err == nil {
		t.Errorf("truncated ELF accepted")
	}
}

// --- cache ------------------------------------------------------------------------------

func writeFile(t *testing.T, path string, data []byte) {
	t.Helper()
	must(t, os.WriteFile(path, data, 0o644))
}

func inode(t *testing.T, path string) uint64 {
	t.Helper()
	fi, err := os.Stat(path)
	must(t, err)
	return fi.Sys().(*syscall.Stat_t).Ino
}

func TestEnsureCaches(t *testing.T) {
	dir := t.TempDir()
	cache := filepath.Join(dir, "cache")
	vmlinux := tinyELF(64<<10, true)
	bz := filepath.Join(dir, "vmlinuz")
	writeFile(t, bz, fakeBzImage(compressors[Zstd](t, vmlinux)))

	p1, info, err := EnsureInfo(cache, bz)
	must(t, err)
	if filepath.Dir(p1) != cache || !strings.HasPrefix(filepath.Base(p1), "vmlinux-") {
		t.Fatalf("path %s is not in the cache", p1)
	}
	if got, _ := os.ReadFile(p1); !bytes.Equal(got, vmlinux) {
		t.Fatal("cached vmlinux differs")
	}
	if !info.PVH || info.Compression != Zstd {
		t.Fatalf("info = %+v", info)
	}
	ino := inode(t, p1)
	// A hit reuses the file (same inode: not rewritten) and reports the same facts.
	p2, info2, err := EnsureInfo(cache, bz)
	must(t, err)
	if p2 != p1 || inode(t, p2) != ino {
		t.Fatal("second Ensure did not reuse the cached file")
	}
	if info2 != info {
		t.Fatalf("cache hit info %+v, miss info %+v", info2, info)
	}

	// A different kernel (same name, new content) gets its own entry.
	other := tinyELF(8<<10, false)
	writeFile(t, bz, fakeBzImage(compressors[Gzip](t, other)))
	p3, err := Ensure(cache, bz)
	must(t, err)
	if p3 == p1 {
		t.Fatal("new kernel content mapped to the old cache entry")
	}
	if got, _ := os.ReadFile(p3); !bytes.Equal(got, other) {
		t.Fatal("cached vmlinux differs")
	}

	// A damaged entry is replaced, not handed out.
	writeFile(t, p3, []byte("not an elf"))
	p4, err := Ensure(cache, bz)
	must(t, err)
	if got, _ := os.ReadFile(p4); p4 != p3 || !bytes.Equal(got, other) {
		t.Fatal("damaged cache entry not replaced")
	}

	// An ELF input is its own vmlinux: nothing is written.
	elfPath := filepath.Join(dir, "vmlinux")
	writeFile(t, elfPath, vmlinux)
	p5, err := Ensure(cache, elfPath)
	must(t, err)
	if p5 != elfPath {
		t.Fatalf("ELF input: got %s", p5)
	}
	entries, _ := os.ReadDir(cache)
	if len(entries) != 2 {
		t.Fatalf("cache holds %d entries, want 2", len(entries))
	}

	// Errors name the file.
	writeFile(t, bz, []byte("garbage"))
	if _, err := Ensure(cache, bz); err == nil || !strings.Contains(err.Error(), bz) {
		t.Fatalf("err = %v", err)
	}
}

func TestEnsureConcurrent(t *testing.T) {
	dir := t.TempDir()
	cache := filepath.Join(dir, "cache")
	vmlinux := tinyELF(1<<20, true)
	bz := filepath.Join(dir, "vmlinuz")
	writeFile(t, bz, fakeBzImage(compressors[XZ](t, vmlinux)))
	const n = 8
	paths := make([]string, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			paths[i], errs[i] = Ensure(cache, bz)
			if errs[i] == nil {
				// Whatever a caller is handed is complete, at once.
				if got, err := os.ReadFile(paths[i]); err != nil || !bytes.Equal(got, vmlinux) {
					errs[i] = fmt.Errorf("read %s: %v (%d bytes)", paths[i], err, len(got))
				}
			}
		}()
	}
	wg.Wait()
	for i := range n {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		if paths[i] != paths[0] {
			t.Fatalf("paths differ: %s, %s", paths[i], paths[0])
		}
	}
	entries, _ := os.ReadDir(cache)
	if len(entries) != 1 {
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		t.Fatalf("cache holds %v: temporary files left behind", names)
	}
}

// --- the real kernel --------------------------------------------------------------------

// testKernel returns Debian's cloud kernel from the test assets, or skips (fails in CI).
func testKernel(t *testing.T) (string, string) {
	t.Helper()
	dir := os.Getenv("BANGER_TEST_ASSETS")
	if dir == "" {
		dir = "/var/cache/banger-test"
	}
	k, _ := filepath.Glob(filepath.Join(dir, "kernel/boot/vmlinuz-*"))
	if len(k) == 0 {
		msg := fmt.Sprintf("no test kernel in %s: run scripts/fetch-test-assets.sh", dir)
		if os.Getenv("BANGER_REQUIRE_ASSETS") == "1" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return k[0], strings.TrimPrefix(filepath.Base(k[0]), "vmlinuz-")
}

func kernelConfig(t *testing.T, kernel, release, key string) string {
	data, err := os.ReadFile(filepath.Join(filepath.Dir(kernel), "config-"+release))
	if err != nil {
		return ""
	}
	for _, l := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(l, key+"="); ok {
			return v
		}
	}
	return ""
}

func TestDebianCloudKernel(t *testing.T) {
	kernel, release := testKernel(t)
	cache := t.TempDir()
	path, info, err := EnsureInfo(cache, kernel)
	must(t, err)
	t.Logf("%s: %s payload, entry %#x, PVH entry %#x, %d bytes", release, info.Compression, info.Entry, info.PVHEntry, info.Size)

	f, err := elf.Open(path)
	must(t, err)
	defer f.Close()
	if f.Class != elf.ELFCLASS64 || f.Machine != elf.EM_X86_64 || f.Type != elf.ET_EXEC {
		t.Fatalf("ELF header: class %v machine %v type %v", f.Class, f.Machine, f.Type)
	}
	if f.Entry != info.Entry {
		t.Fatalf("entry %#x, info says %#x", f.Entry, info.Entry)
	}
	// vmlinux enters at phys_startup_64, i.e. CONFIG_PHYSICAL_START on a stock build.
	if s := kernelConfig(t, kernel, release, "CONFIG_PHYSICAL_START"); s != "" {
		want, err := strconv.ParseUint(s, 0, 64)
		must(t, err)
		if info.Entry != want {
			t.Fatalf("entry %#x, CONFIG_PHYSICAL_START is %#x", info.Entry, want)
		}
	}
	// The Debian cloud kernel has CONFIG_PVH=y: the note must be there, and point into a
	// loaded segment's physical range.
	if !info.PVH {
		t.Fatal("no Xen PVH entry note in the vmlinux of a CONFIG_PVH=y kernel")
	}
	inLoad := func(addr uint64) bool {
		for _, p := range f.Progs {
			if p.Type == elf.PT_LOAD && addr >= p.Paddr && addr < p.Paddr+p.Memsz {
				return true
			}
		}
		return false
	}
	if !inLoad(info.PVHEntry) || !inLoad(info.Entry) {
		t.Fatalf("entry %#x / PVH entry %#x outside the loaded segments", info.Entry, info.PVHEntry)
	}
	if !strings.HasPrefix(info.Version, release+" ") {
		t.Fatalf("version %q does not start with %q", info.Version, release)
	}
	// A second Ensure is a cache hit on the same file.
	ino := inode(t, path)
	path2, err := Ensure(cache, kernel)
	must(t, err)
	if path2 != path || inode(t, path2) != ino {
		t.Fatal("second Ensure re-extracted")
	}
}

func BenchmarkExtractDebianKernel(b *testing.B) {
	dir := os.Getenv("BANGER_TEST_ASSETS")
	if dir == "" {
		dir = "/var/cache/banger-test"
	}
	k, _ := filepath.Glob(filepath.Join(dir, "kernel/boot/vmlinuz-*"))
	if len(k) == 0 {
		b.Skip("no test kernel")
	}
	data, err := os.ReadFile(k[0])
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		if _, _, err := Extract(data); err != nil {
			b.Fatal(err)
		}
	}
}
