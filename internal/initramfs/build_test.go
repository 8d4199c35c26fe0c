package initramfs

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cavaliergopher/cpio"
	"github.com/klauspost/compress/gzip"
)

// member is an archive entry as read back.
type member struct {
	hdr        *cpio.Header
	data       []byte
	rdevMajor  uint32
	rdevMinor  uint32
	nlink, ino int64
}

// readArchive decompresses and reads an initramfs with the cpio library (an
// independent reader), and separately decodes the raw newc headers for the
// rdev fields that library does not expose.
func readArchive(t *testing.T, gz []byte) (names []string, byName map[string]member) {
	t.Helper()
	zr, err := gzip.NewReader(bytes.NewReader(gz))
	must(t, err)
	if zr.Name != "" || !zr.ModTime.IsZero() && zr.ModTime.Unix() != 0 {
		t.Errorf("gzip header carries name %q / mtime %v", zr.Name, zr.ModTime)
	}
	raw, err := io.ReadAll(zr)
	must(t, err)

	byName = map[string]member{}
	r := cpio.NewReader(bytes.NewReader(raw))
	for {
		h, err := r.Next()
		if err == io.EOF {
			break
		}
		must(t, err)
		data, err := io.ReadAll(r)
		must(t, err)
		names = append(names, h.Name)
		byName[h.Name] = member{hdr: h, data: data}
	}

	// Raw pass: 110-byte headers, name, padding, data, padding.
	hex := func(b []byte) uint32 {
		v, err := strconv.ParseUint(string(b), 16, 32)
		must(t, err)
		return uint32(v)
	}
	off := 0
	for {
		h := raw[off : off+110]
		if string(h[:6]) != "070701" {
			t.Fatalf("bad magic at %d", off)
		}
		nameSize := int(hex(h[94:102]))
		name := string(raw[off+110 : off+110+nameSize-1])
		size := int(hex(h[54:62]))
		off = (off + 110 + nameSize + 3) &^ 3
		off = (off + size + 3) &^ 3
		if name == newcTrailer {
			break
		}
		m := byName[name]
		m.ino, m.nlink = int64(hex(h[6:14])), int64(hex(h[38:46]))
		m.rdevMajor, m.rdevMinor = hex(h[78:86]), hex(h[86:94])
		if hex(h[46:54]) != 0 || hex(h[22:30]) != 0 || hex(h[30:38]) != 0 {
			t.Errorf("%s: mtime/uid/gid not 0", name)
		}
		byName[name] = m
	}
	if rest := raw[off:]; len(bytes.Trim(rest, "\x00")) != 0 {
		t.Errorf("%d bytes of garbage after the trailer", len(rest))
	}
	return names, byName
}

// time1 is an arbitrary mtime to show input timestamps do not matter.
var time1 = time.Unix(1234567890, 0)

func fakeSpec(t *testing.T) Spec {
	t.Helper()
	dir := fakeTree(t, "6.1.0-test", defaultFakeMods(), []string{"kernel/fs/ext4/ext4.ko"})
	initBin, agentBin := fakeBinaries(t, "\x7fELF fake banger-init", "\x7fELF fake banger-agent, a little longer")
	return Spec{InitBinary: initBin, AgentBinary: agentBin, ModulesDir: dir, BangerVersion: "v0.0.0-test"}
}

func buildBytes(t *testing.T, spec Spec) ([]byte, Manifest) {
	t.Helper()
	var b bytes.Buffer
	m, err := Build(context.Background(), spec, &b)
	must(t, err)
	return b.Bytes(), m
}

func TestBuildArchiveContents(t *testing.T) {
	spec := fakeSpec(t)
	out, m := buildBytes(t, spec)
	names, got := readArchive(t, out)

	// Directories come before their contents (the kernel does not create
	// missing parents), and names are sorted and unique.
	seen := map[string]bool{}
	for i, n := range names {
		if seen[n] {
			t.Fatalf("%s twice", n)
		}
		seen[n] = true
		if i > 0 && names[i-1] >= n {
			t.Errorf("not sorted: %s after %s", n, names[i-1])
		}
		if strings.HasPrefix(n, "/") {
			t.Errorf("absolute name %s", n)
		}
		if d := filepath.Dir(n); d != "." && !seen[d] {
			t.Errorf("%s before its directory %s", n, d)
		}
		if got[n].nlink < 1 {
			t.Errorf("%s: nlink %d", n, got[n].nlink)
		}
		if int(got[n].ino) != i+1 {
			t.Errorf("%s: inode %d, want %d", n, got[n].ino, i+1)
		}
	}

	for _, d := range []string{"dev", "proc", "sys", "run", "newroot", "tmp", "lib/modules/6.1.0-test", "banger"} {
		if e, ok := got[d]; !ok || e.hdr.Mode != cpio.TypeDir|0o755 {
			t.Errorf("directory %s: %+v", d, e.hdr)
		}
	}
	for name, want := range map[string][3]uint32{"dev/console": {0o600, 5, 1}, "dev/null": {0o666, 1, 3}} {
		e := got[name]
		if e.hdr == nil || e.hdr.Mode != cpio.FileMode(cpio.TypeChar|want[0]) || e.rdevMajor != want[1] || e.rdevMinor != want[2] {
			t.Errorf("%s: %+v rdev %d:%d, want char %o %d:%d", name, e.hdr, e.rdevMajor, e.rdevMinor, want[0], want[1], want[2])
		}
	}
	for name, src := range map[string]string{"init": spec.InitBinary, "banger-agent": spec.AgentBinary} {
		want, err := os.ReadFile(src)
		must(t, err)
		e := got[name]
		if e.hdr == nil || e.hdr.Mode != cpio.TypeReg|0o755 || !bytes.Equal(e.data, want) {
			t.Errorf("%s: header %+v, content equal: %v", name, e.hdr, e.hdr != nil && bytes.Equal(e.data, want))
		}
	}

	// Modules: plain .ko at the kernel tree's relative paths, decompressed.
	kdir := "lib/modules/6.1.0-test/"
	for _, mod := range m.Modules {
		e, ok := got[kdir+mod.Path]
		if !ok {
			t.Fatalf("module %s not at %s", mod.Name, kdir+mod.Path)
		}
		if !strings.HasSuffix(mod.Path, ".ko") || e.hdr.Mode != cpio.TypeReg|0o644 {
			t.Errorf("%s: path %s mode %v", mod.Name, mod.Path, e.hdr.Mode)
		}
		mi, err := parseModinfo(e.data)
		if err != nil || mi.name != mod.Name {
			t.Errorf("%s: archived module does not parse as itself: %v %+v", mod.Name, err, mi)
		}
	}
	for _, compressed := range []string{"virtio_ring.ko.xz", "virtio_mmio.ko.zst", "virtio_blk.ko.gz"} {
		for _, n := range names {
			if strings.HasSuffix(n, compressed) {
				t.Errorf("compressed module %s archived as is", n)
			}
		}
	}

	// The load list: module paths relative to lib/modules/<kver>/, deps first.
	load := got[kdir+"banger.load"]
	lines := strings.Split(strings.TrimSuffix(string(load.data), "\n"), "\n")
	if len(lines) != len(m.Modules) || len(lines) != 16 {
		t.Fatalf("banger.load has %d lines, manifest %d modules, want 16:\n%s", len(lines), len(m.Modules), load.data)
	}
	pos := map[string]int{}
	for i, l := range lines {
		if l != m.Modules[i].Path {
			t.Errorf("load line %d = %q, manifest says %q", i, l, m.Modules[i].Path)
		}
		name, _ := moduleNameFromPath(l)
		if _, dup := pos[name]; dup {
			t.Errorf("%s listed twice", name)
		}
		pos[name] = i
	}
	for _, mod := range m.Modules {
		for _, d := range append(mod.Depends, mod.SoftPre...) {
			if p, ok := pos[d]; !ok || p > pos[mod.Name] {
				t.Errorf("%s listed before its dependency %s", mod.Name, d)
			}
		}
	}

	// The manifest inside the archive is the one Build returned.
	var inArchive Manifest
	must(t, json.Unmarshal(got[ManifestPath].data, &inArchive))
	if !reflect.DeepEqual(inArchive, m) {
		t.Errorf("archived manifest differs:\n%+v\n%+v", inArchive, m)
	}
	if m.KernelRelease != "6.1.0-test" || m.BangerVersion != "v0.0.0-test" || m.DependencySource != DepSourceModinfo ||
		!reflect.DeepEqual(m.Builtin, []string{"ext4"}) || m.LoadOrderFile != kdir+"banger.load" {
		t.Errorf("manifest = %+v", m)
	}
}

func TestBuildReproducible(t *testing.T) {
	spec := fakeSpec(t)
	a, _ := buildBytes(t, spec)
	// Touch every input's mtime: only content may matter.
	must(t, filepath.WalkDir(filepath.Dir(filepath.Dir(filepath.Dir(spec.ModulesDir))), func(p string, d os.DirEntry, err error) error {
		must(t, err)
		return os.Chtimes(p, time1, time1)
	}))
	must(t, os.Chtimes(spec.InitBinary, time1, time1))
	b, _ := buildBytes(t, spec)
	if !bytes.Equal(a, b) {
		t.Fatal("two builds of the same inputs differ")
	}
	// Extras in another order and spelling: same archive.
	spec.ExtraModules = []string{"virtio-blk", "virtio_net"}
	c, _ := buildBytes(t, spec)
	spec.ExtraModules = []string{"virtio_net", "virtio_blk"}
	d, _ := buildBytes(t, spec)
	if !bytes.Equal(a, c) || !bytes.Equal(c, d) {
		t.Fatal("redundant or reordered extra modules changed the archive")
	}

	writeFile(t, spec.InitBinary, []byte("\x7fELF fake banger-init, rebuilt"))
	e, _ := buildBytes(t, spec)
	if bytes.Equal(a, e) {
		t.Fatal("a new init binary did not change the archive")
	}
}

func TestBuildWithoutModules(t *testing.T) {
	initBin, agentBin := fakeBinaries(t, "init", "agent")
	out, m := buildBytes(t, Spec{InitBinary: initBin, AgentBinary: agentBin, KernelRelease: "6.9-custom"})
	names, _ := readArchive(t, out)
	if len(m.Modules) != 0 || len(m.AssumedBuiltin) != len(DefaultModules()) {
		t.Fatalf("manifest = %+v", m)
	}
	if !strings.Contains(strings.Join(names, " "), "lib/modules/6.9-custom/banger.load") {
		t.Errorf("no (empty) load list: %v", names)
	}
}

func TestBuildErrors(t *testing.T) {
	spec := fakeSpec(t)
	for name, mut := range map[string]func(*Spec){
		"no init":        func(s *Spec) { s.InitBinary = "" },
		"missing agent":  func(s *Spec) { s.AgentBinary = filepath.Join(t.TempDir(), "nope") },
		"agent is a dir": func(s *Spec) { s.AgentBinary = t.TempDir() },
		"unknown module": func(s *Spec) { s.ExtraModules = []string{"frobnicator"} },
		"bad release":    func(s *Spec) { s.KernelRelease = "../x" },
	} {
		s := spec
		mut(&s)
		if _, err := Build(context.Background(), s, io.Discard); err == nil {
			t.Errorf("%s: no error", name)
		} else {
			t.Logf("%s: %v", name, err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Build(ctx, spec, io.Discard); err == nil {
		t.Error("cancelled context: no error")
	}
}

func TestFindKernel(t *testing.T) {
	root := t.TempDir()
	writeFile(t, filepath.Join(root, "boot/vmlinuz-6.1.0-9-cloud-amd64"), []byte("bz"))
	writeFile(t, filepath.Join(root, "boot/config-6.1.0-9-cloud-amd64"), []byte("CONFIG_X=y"))
	writeFile(t, filepath.Join(root, "lib/modules/6.1.0-9-cloud-amd64/kernel/fs/overlay.ko"), []byte("x"))
	k, err := FindKernel(root)
	must(t, err)
	want := Kernel{Root: root, Release: "6.1.0-9-cloud-amd64",
		Image:      filepath.Join(root, "boot/vmlinuz-6.1.0-9-cloud-amd64"),
		ModulesDir: filepath.Join(root, "lib/modules/6.1.0-9-cloud-amd64"),
		Config:     filepath.Join(root, "boot/config-6.1.0-9-cloud-amd64")}
	if k != want {
		t.Fatalf("FindKernel = %+v\nwant %+v", k, want)
	}

	must(t, os.MkdirAll(filepath.Join(root, "lib/modules/6.2-other"), 0o755))
	if _, err := FindKernel(root); err == nil || !strings.Contains(err.Error(), "several kernels") {
		t.Fatalf("two releases: err = %v", err)
	}

	// merged-/usr layout, ELF vmlinux, no config.
	root2 := t.TempDir()
	writeFile(t, filepath.Join(root2, "boot/vmlinux-6.12"), []byte("elf"))
	must(t, os.MkdirAll(filepath.Join(root2, "usr/lib/modules/6.12"), 0o755))
	k, err = FindKernel(root2)
	must(t, err)
	if k.Release != "6.12" || k.Image != filepath.Join(root2, "boot/vmlinux-6.12") || k.ModulesDir != filepath.Join(root2, "usr/lib/modules/6.12") || k.Config != "" {
		t.Fatalf("FindKernel = %+v", k)
	}

	// A monolithic kernel: no modules at all.
	root3 := t.TempDir()
	writeFile(t, filepath.Join(root3, "boot/vmlinux-fc"), []byte("elf"))
	k, err = FindKernel(root3)
	must(t, err)
	if k.Release != "fc" || k.ModulesDir != "" {
		t.Fatalf("FindKernel = %+v", k)
	}

	if _, err := FindKernel(t.TempDir()); err == nil || !strings.Contains(err.Error(), "no kernel in") {
		t.Fatalf("empty dir: err = %v", err)
	}
}

func TestRealKernelFindAndBuild(t *testing.T) {
	k := testAssets(t)
	if k.Release != "6.1.0-56-cloud-amd64" && !strings.HasPrefix(k.Release, "6.") {
		t.Logf("test kernel is %s", k.Release)
	}
	if !strings.HasPrefix(filepath.Base(k.Image), "vmlinuz-") {
		t.Errorf("image = %s", k.Image)
	}
	initBin, agentBin := fakeBinaries(t, "init stand-in", "agent stand-in")
	out, m := buildBytes(t, Spec{InitBinary: initBin, AgentBinary: agentBin, ModulesDir: k.ModulesDir, BangerVersion: "test"})
	_, got := readArchive(t, out)
	if m.KernelRelease != k.Release || len(m.Modules) < 16 {
		t.Fatalf("manifest = %+v", m)
	}
	for _, mod := range m.Modules {
		src, err := os.ReadFile(filepath.Join(k.ModulesDir, mod.Source))
		must(t, err)
		if e := got["lib/modules/"+k.Release+"/"+mod.Path]; !bytes.Equal(e.data, src) {
			t.Errorf("%s: archived bytes differ from %s", mod.Name, mod.Source)
		}
	}
	if load := string(got[m.LoadOrderFile].data); !strings.Contains(load, "kernel/net/vmw_vsock/vsock.ko\n") {
		t.Errorf("load list:\n%s", load)
	}
	t.Logf("real kernel: %d modules, archive %d bytes", len(m.Modules), len(out))
}
