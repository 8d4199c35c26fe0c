package initramfs

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

// fakeKO returns a minimal but valid ELF64 relocatable file whose .modinfo
// section holds the given "key=value" strings, the way modpost lays them out.
// It is enough for debug/elf and for parseModinfo; a real module is tested
// against the test kernel.
func fakeKO(t testing.TB, modinfo ...string) []byte {
	t.Helper()
	var mi bytes.Buffer
	for _, kv := range modinfo {
		mi.WriteString(kv)
		mi.WriteByte(0)
	}
	shstr := []byte("\x00.modinfo\x00.shstrtab\x00")
	const ehSize, shSize = 64, 64
	miOff := uint64(ehSize)
	strOff := miOff + uint64(mi.Len())
	shOff := (strOff + uint64(len(shstr)) + 7) &^ 7

	var b bytes.Buffer
	hdr := elf.Header64{
		Type: uint16(elf.ET_REL), Machine: uint16(elf.EM_X86_64), Version: uint32(elf.EV_CURRENT),
		Shoff: shOff, Ehsize: ehSize, Shentsize: shSize, Shnum: 3, Shstrndx: 2,
	}
	copy(hdr.Ident[:], elf.ELFMAG)
	hdr.Ident[elf.EI_CLASS] = byte(elf.ELFCLASS64)
	hdr.Ident[elf.EI_DATA] = byte(elf.ELFDATA2LSB)
	hdr.Ident[elf.EI_VERSION] = byte(elf.EV_CURRENT)
	must(t, binary.Write(&b, binary.LittleEndian, hdr))
	b.Write(mi.Bytes())
	b.Write(shstr)
	b.Write(make([]byte, int(shOff)-b.Len()))
	secs := []elf.Section64{
		{},
		{Name: 1, Type: uint32(elf.SHT_PROGBITS), Flags: uint64(elf.SHF_ALLOC), Off: miOff, Size: uint64(mi.Len()), Addralign: 1},
		{Name: 10, Type: uint32(elf.SHT_STRTAB), Off: strOff, Size: uint64(len(shstr)), Addralign: 1},
	}
	for _, s := range secs {
		must(t, binary.Write(&b, binary.LittleEndian, s))
	}
	return b.Bytes()
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func writeFile(t testing.TB, path string, data []byte) {
	t.Helper()
	must(t, os.MkdirAll(filepath.Dir(path), 0o755))
	must(t, os.WriteFile(path, data, 0o644))
}

// compress encodes data the way the kernel's build compresses modules,
// chosen by the suffix of name.
func compress(t testing.TB, name string, data []byte) []byte {
	t.Helper()
	var b bytes.Buffer
	switch {
	case strings.HasSuffix(name, ".xz"):
		// The kernel uses xz --check=crc32.
		w, err := xz.WriterConfig{CheckSum: xz.CRC32}.NewWriter(&b)
		must(t, err)
		_, err = w.Write(data)
		must(t, err)
		must(t, w.Close())
	case strings.HasSuffix(name, ".zst"):
		w, err := zstd.NewWriter(&b)
		must(t, err)
		_, err = w.Write(data)
		must(t, err)
		must(t, w.Close())
	case strings.HasSuffix(name, ".gz"):
		w := gzip.NewWriter(&b)
		_, err := w.Write(data)
		must(t, err)
		must(t, w.Close())
	default:
		return data
	}
	return b.Bytes()
}

// fakeMod describes one module of a synthetic kernel tree.
type fakeMod struct {
	path    string // relative to the modules dir, with its compression suffix
	depends string // comma-separated, as in .modinfo
	softdep string // e.g. "pre: a b"
}

// fakeTree writes a synthetic lib/modules/<kver> and returns its path. The
// module's modinfo name comes from the file name, as kbuild does it.
func fakeTree(t testing.TB, kver string, mods []fakeMod, builtin []string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "lib", "modules", kver)
	for _, m := range mods {
		name, ok := moduleNameFromPath(m.path)
		if !ok {
			t.Fatalf("bad fake module path %s", m.path)
		}
		info := []string{"license=GPL", "depends=" + m.depends, "name=" + name, "vermagic=" + kver + " SMP mod_unload"}
		if m.softdep != "" {
			info = append(info, "softdep="+m.softdep)
		}
		writeFile(t, filepath.Join(dir, m.path), compress(t, m.path, fakeKO(t, info...)))
	}
	if builtin != nil {
		writeFile(t, filepath.Join(dir, "modules.builtin"), []byte(strings.Join(builtin, "\n")+"\n"))
	}
	return dir
}

// defaultFakeMods is a synthetic kernel holding every default module and the
// real dependency shape of Debian's 6.1 cloud kernel, in mixed compressions.
func defaultFakeMods() []fakeMod {
	return []fakeMod{
		{path: "kernel/drivers/virtio/virtio.ko"},
		{path: "kernel/drivers/virtio/virtio_ring.ko.xz"},
		{path: "kernel/drivers/virtio/virtio_mmio.ko.zst", depends: "virtio,virtio_ring"},
		{path: "kernel/drivers/virtio/virtio_pci_modern_dev.ko"},
		{path: "kernel/drivers/virtio/virtio_pci_legacy_dev.ko"},
		{path: "kernel/drivers/virtio/virtio_pci.ko", depends: "virtio_ring,virtio_pci_modern_dev,virtio_pci_legacy_dev,virtio"},
		{path: "kernel/drivers/block/virtio_blk.ko.gz", depends: "virtio,virtio_ring"},
		{path: "kernel/net/core/failover.ko"},
		{path: "kernel/drivers/net/net_failover.ko", depends: "failover"},
		{path: "kernel/drivers/net/virtio_net.ko", depends: "virtio_ring,virtio,net_failover"},
		{path: "kernel/drivers/char/virtio_console.ko", depends: "virtio,virtio_ring"},
		{path: "kernel/net/vmw_vsock/vsock.ko"},
		{path: "kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko", depends: "vsock"},
		{path: "kernel/net/vmw_vsock/vmw_vsock_virtio_transport.ko", depends: "virtio,vmw_vsock_virtio_transport_common,virtio_ring,vsock"},
		{path: "kernel/drivers/char/hw_random/virtio-rng.ko", depends: "virtio,virtio_ring"},
		{path: "kernel/fs/overlayfs/overlay.ko"},
	}
}

// testAssets returns the unpacked test kernel, skipping (or failing under
// BANGER_REQUIRE_ASSETS=1) when it is not there.
func testAssets(t testing.TB) Kernel {
	t.Helper()
	dir := os.Getenv("BANGER_TEST_ASSETS")
	if dir == "" {
		dir = "/var/cache/banger-test"
	}
	k, err := FindKernel(filepath.Join(dir, "kernel"))
	if err != nil || k.ModulesDir == "" {
		if os.Getenv("BANGER_REQUIRE_ASSETS") == "1" {
			t.Fatalf("no test kernel in %s (%v): run scripts/fetch-test-assets.sh", dir, err)
		}
		t.Skipf("no test kernel in %s: run scripts/fetch-test-assets.sh", dir)
	}
	return k
}

// fakeBinaries writes two small stand-ins for banger-init and banger-agent.
func fakeBinaries(t testing.TB, initContent, agentContent string) (string, string) {
	t.Helper()
	dir := t.TempDir()
	i, a := filepath.Join(dir, "banger-init"), filepath.Join(dir, "banger-agent")
	writeFile(t, i, []byte(initContent))
	writeFile(t, a, []byte(agentContent))
	return i, a
}
