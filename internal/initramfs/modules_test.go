package initramfs

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
)

func TestParseModinfoSynthetic(t *testing.T) {
	ko := fakeKO(t, "license=GPL", "depends=a-b,c", "softdep=pre: x y-z post: w", "softdep=legacy", "name=foo-bar")
	mi, err := parseModinfo(ko)
	must(t, err)
	want := modinfo{name: "foo_bar", depends: []string{"a_b", "c"}, softPre: []string{"x", "y_z"}}
	if !reflect.DeepEqual(mi, want) {
		t.Fatalf("modinfo = %+v, want %+v", mi, want)
	}
	if _, err := parseModinfo([]byte("not an elf")); err == nil {
		t.Fatal("garbage parsed as a module")
	}
}

func TestNameHelpers(t *testing.T) {
	for in, want := range map[string]string{
		"kernel/drivers/char/hw_random/virtio-rng.ko": "virtio_rng",
		"kernel/fs/overlayfs/overlay.ko.xz":           "overlay",
		"x/vsock.ko.zst":                              "vsock",
		"x/a-b.ko.gz":                                 "a_b",
	} {
		if got, ok := moduleNameFromPath(in); !ok || got != want {
			t.Errorf("moduleNameFromPath(%q) = %q, %v; want %q", in, got, ok, want)
		}
	}
	for _, bad := range []string{"modules.dep", "kernel/x.ko.bz2", ".ko"} {
		if n, ok := moduleNameFromPath(bad); ok {
			t.Errorf("moduleNameFromPath(%q) = %q, want no module", bad, n)
		}
	}
	if got := plainPath("kernel/a/b.ko.zst"); got != "kernel/a/b.ko" {
		t.Errorf("plainPath = %q", got)
	}
}

func resolveTree(t *testing.T, dir string, wanted ...string) (resolution, *index, error) {
	t.Helper()
	ix, err := loadIndex(context.Background(), dir)
	must(t, err)
	res, err := ix.resolve(context.Background(), wanted)
	return res, ix, err
}

// assertDepsFirst checks every module's dependencies (as the index reports
// them) are loaded before it, and that nothing appears twice.
func assertDepsFirst(t *testing.T, ix *index, order []string) {
	t.Helper()
	pos := map[string]int{}
	for i, n := range order {
		if _, dup := pos[n]; dup {
			t.Fatalf("%s appears twice in %v", n, order)
		}
		pos[n] = i
	}
	for _, n := range order {
		hard, _, err := ix.deps(n)
		must(t, err)
		for _, d := range hard {
			p, ok := pos[d]
			if !ok || p > pos[n] {
				t.Errorf("%s loads before its dependency %s (order %v)", n, d, order)
			}
		}
	}
}

func TestResolveModinfoTree(t *testing.T) {
	mods := append(defaultFakeMods(),
		fakeMod{path: "kernel/crypto/crc32c_generic.ko"},
		fakeMod{path: "kernel/lib/needs-soft.ko", softdep: "pre: crc32c_generic not_a_module"},
	)
	dir := fakeTree(t, "6.1.0-test", mods, []string{"kernel/fs/ext4/ext4.ko", "kernel/fs/jbd2/jbd2.ko"})
	wanted := append(DefaultModules(), "needs-soft", "virtio-blk" /* duplicate, other spelling */)
	res, ix, err := resolveTree(t, dir, wanted...)
	must(t, err)
	if ix.hasDepFile {
		t.Fatal("synthetic tree has no modules.dep")
	}
	if !reflect.DeepEqual(res.builtin, []string{"ext4"}) || res.assumedBuiltin != nil {
		t.Errorf("builtin = %v, assumed = %v; want [ext4], none", res.builtin, res.assumedBuiltin)
	}
	assertDepsFirst(t, ix, res.order)
	wantSet := []string{"crc32c_generic", "failover", "needs_soft", "net_failover", "overlay", "virtio", "virtio_blk",
		"virtio_console", "virtio_mmio", "virtio_net", "virtio_pci", "virtio_pci_legacy_dev", "virtio_pci_modern_dev",
		"virtio_ring", "virtio_rng", "vmw_vsock_virtio_transport", "vmw_vsock_virtio_transport_common", "vsock"}
	got := slices.Clone(res.order)
	slices.Sort(got)
	if !reflect.DeepEqual(got, wantSet) {
		t.Errorf("resolved set = %v\nwant %v", got, wantSet)
	}
	if slices.Index(res.order, "crc32c_generic") > slices.Index(res.order, "needs_soft") {
		t.Errorf("softdep pre not loaded first: %v", res.order)
	}
	// The order is a pure function of the wanted set, not of its order.
	rev := slices.Clone(wanted)
	slices.Reverse(rev)
	res2, _, err := resolveTree(t, dir, rev...)
	must(t, err)
	if !reflect.DeepEqual(res.order, res2.order) {
		t.Errorf("order depends on the wanted order:\n%v\n%v", res.order, res2.order)
	}
}

func TestResolveCompressedModulesParsed(t *testing.T) {
	// virtio_mmio is .zst, virtio_ring .xz, virtio_blk .gz in the fake tree:
	// their dependencies can only be known by decompressing them.
	dir := fakeTree(t, "k", defaultFakeMods(), nil)
	res, _, err := resolveTree(t, dir, "virtio_mmio", "virtio_blk")
	must(t, err)
	want := []string{"virtio", "virtio_ring", "virtio_blk", "virtio_mmio"}
	if !reflect.DeepEqual(res.order, want) {
		t.Fatalf("order = %v, want %v", res.order, want)
	}
}

func TestResolveMissingModule(t *testing.T) {
	dir := fakeTree(t, "k", defaultFakeMods(), []string{"kernel/fs/ext4/ext4.ko"})
	_, _, err := resolveTree(t, dir, "virtio_blk", "no-such-mod", "ext4")
	if err == nil {
		t.Fatal("unknown module accepted")
	}
	for _, want := range []string{"no_such_mod", dir, "kernel/", "wanted: virtio_blk, no-such-mod, ext4"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
}

func TestResolveMissingDependency(t *testing.T) {
	dir := fakeTree(t, "k", []fakeMod{{path: "kernel/a.ko", depends: "gone"}}, nil)
	_, _, err := resolveTree(t, dir, "a")
	if err == nil || !strings.Contains(err.Error(), "a depends on gone") {
		t.Fatalf("err = %v, want a clear missing-dependency error", err)
	}
}

func TestResolveWithoutBuiltinListAssumesBuiltin(t *testing.T) {
	dir := fakeTree(t, "k", defaultFakeMods(), nil)
	res, _, err := resolveTree(t, dir, "overlay", "ext4", "crc16")
	must(t, err)
	if !reflect.DeepEqual(res.assumedBuiltin, []string{"crc16", "ext4"}) || res.builtin != nil {
		t.Fatalf("assumed = %v builtin = %v", res.assumedBuiltin, res.builtin)
	}
	if !reflect.DeepEqual(res.order, []string{"overlay"}) {
		t.Fatalf("order = %v", res.order)
	}
}

func TestResolveCycle(t *testing.T) {
	dir := fakeTree(t, "k", []fakeMod{
		{path: "kernel/x.ko", depends: "y"},
		{path: "kernel/y.ko", depends: "z"},
		{path: "kernel/z.ko", depends: "x"},
	}, nil)
	_, _, err := resolveTree(t, dir, "x")
	if err == nil || !strings.Contains(err.Error(), "cycle: x -> y -> z -> x") {
		t.Fatalf("err = %v, want a cycle error naming the path", err)
	}
}

func TestResolveSoftdepCycleIsDropped(t *testing.T) {
	// a softdep can point back at a module that depends on it; modprobe copes,
	// and so must we: the soft edge is only an ordering hint.
	dir := fakeTree(t, "k", []fakeMod{
		{path: "kernel/a.ko", depends: "b"},
		{path: "kernel/b.ko", softdep: "pre: a"},
	}, nil)
	res, _, err := resolveTree(t, dir, "a")
	must(t, err)
	if !reflect.DeepEqual(res.order, []string{"b", "a"}) {
		t.Fatalf("order = %v", res.order)
	}
}

func TestResolveModulesDep(t *testing.T) {
	// The .modinfo of these files says nothing about dependencies: the order
	// below can only come from modules.dep (and modules.softdep).
	dir := fakeTree(t, "k", []fakeMod{
		{path: "kernel/fs/ext4/ext4.ko.xz"},
		{path: "kernel/fs/jbd2/jbd2.ko"},
		{path: "kernel/fs/mbcache.ko"},
		{path: "kernel/lib/crc16.ko"},
		{path: "kernel/crypto/crc32c_generic.ko"},
		{path: "kernel/drivers/char/hw_random/virtio-rng.ko"},
	}, nil)
	writeFile(t, filepath.Join(dir, "modules.dep"), []byte(`kernel/fs/ext4/ext4.ko.xz: kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko kernel/lib/crc16.ko
kernel/fs/jbd2/jbd2.ko:
kernel/fs/mbcache.ko:
kernel/lib/crc16.ko:
kernel/crypto/crc32c_generic.ko:
kernel/drivers/char/hw_random/virtio-rng.ko:
`))
	writeFile(t, filepath.Join(dir, "modules.softdep"), []byte("# comment\nsoftdep ext4 pre: crc32c_generic absent\n"))
	res, ix, err := resolveTree(t, dir, "ext4", "virtio-rng")
	must(t, err)
	if !ix.hasDepFile {
		t.Fatal("modules.dep ignored")
	}
	want := []string{"crc16", "jbd2", "mbcache", "crc32c_generic", "ext4", "virtio_rng"}
	if !reflect.DeepEqual(res.order, want) {
		t.Fatalf("order = %v, want %v", res.order, want)
	}

	writeFile(t, filepath.Join(dir, "modules.dep"), []byte("kernel/a.ko kernel/b.ko\n"))
	if _, err := loadIndex(context.Background(), dir); err == nil || !strings.Contains(err.Error(), "line 1") {
		t.Fatalf("malformed modules.dep: err = %v", err)
	}
	writeFile(t, filepath.Join(dir, "modules.dep"), []byte("kernel/a.ko: ../../etc/evil.ko\n"))
	if _, err := loadIndex(context.Background(), dir); err == nil {
		t.Fatal("modules.dep path escaping the modules dir accepted")
	}
}

func TestResolveUpdatesOverrideKernel(t *testing.T) {
	dir := fakeTree(t, "k", []fakeMod{
		{path: "kernel/fs/overlayfs/overlay.ko"},
		{path: "updates/overlay.ko.zst"},
		{path: "extra/overlay.ko"},
	}, nil)
	ix, err := loadIndex(context.Background(), dir)
	must(t, err)
	if got := ix.files["overlay"]; got != "updates/overlay.ko.zst" {
		t.Fatalf("overlay from %s, want updates/ (depmod's priority)", got)
	}
}

func TestResolveInvalidName(t *testing.T) {
	dir := fakeTree(t, "k", defaultFakeMods(), nil)
	if _, _, err := resolveTree(t, dir, "../etc"); err == nil {
		t.Fatal("path accepted as a module name")
	}
}

func TestDecompressModule(t *testing.T) {
	ko := fakeKO(t, "name=x", "depends=")
	for _, suf := range []string{".ko", ".ko.xz", ".ko.zst", ".ko.gz"} {
		raw := compress(t, suf, ko)
		if suf != ".ko" && bytes.Equal(raw, ko) {
			t.Fatalf("%s: test input not compressed", suf)
		}
		got, err := decompressModule("kernel/x"+suf, raw)
		if err != nil {
			t.Fatalf("%s: %v", suf, err)
		}
		if !bytes.Equal(got, ko) {
			t.Fatalf("%s: round trip differs", suf)
		}
	}
	for _, suf := range []string{".ko.xz", ".ko.zst", ".ko.gz"} {
		if _, err := decompressModule("kernel/x"+suf, []byte("corrupt data here")); err == nil {
			t.Errorf("%s: corrupt input accepted", suf)
		}
	}
}

func TestLoadIndexMissingDir(t *testing.T) {
	_, err := loadIndex(context.Background(), filepath.Join(t.TempDir(), "nope"))
	if !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("err = %v", err)
	}
}

func TestRealKernelModinfo(t *testing.T) {
	k := testAssets(t)
	raw, err := os.ReadFile(filepath.Join(k.ModulesDir, "kernel/net/vmw_vsock/vmw_vsock_virtio_transport.ko"))
	must(t, err)
	mi, err := parseModinfo(raw)
	must(t, err)
	slices.Sort(mi.depends)
	want := []string{"virtio", "virtio_ring", "vmw_vsock_virtio_transport_common", "vsock"}
	if mi.name != "vmw_vsock_virtio_transport" || !reflect.DeepEqual(mi.depends, want) {
		t.Fatalf("modinfo = %+v", mi)
	}
	// A real "softdep=pre:" entry.
	raw, err = os.ReadFile(filepath.Join(k.ModulesDir, "kernel/crypto/xts.ko"))
	must(t, err)
	mi, err = parseModinfo(raw)
	must(t, err)
	if !reflect.DeepEqual(mi.softPre, []string{"ecb"}) {
		t.Fatalf("xts softdep pre = %v, want [ecb]", mi.softPre)
	}
}

func TestRealKernelResolve(t *testing.T) {
	k := testAssets(t)
	if _, err := os.Stat(filepath.Join(k.ModulesDir, "modules.dep")); err == nil {
		t.Log("test kernel has modules.dep; the modinfo path is covered by the synthetic tests only")
	}
	res, ix, err := resolveTree(t, k.ModulesDir, DefaultModules()...)
	must(t, err)
	t.Logf("load order (%d): %v; built in: %v", len(res.order), res.order, res.builtin)
	assertDepsFirst(t, ix, res.order)
	for _, want := range []string{"virtio", "virtio_ring", "virtio_mmio", "virtio_pci", "virtio_pci_modern_dev",
		"virtio_pci_legacy_dev", "virtio_blk", "virtio_net", "net_failover", "failover", "virtio_console",
		"vsock", "vmw_vsock_virtio_transport_common", "vmw_vsock_virtio_transport", "virtio_rng", "overlay"} {
		if !slices.Contains(res.order, want) {
			t.Errorf("%s missing from %v", want, res.order)
		}
	}
	pos := func(n string) int { return slices.Index(res.order, n) }
	if pos("vsock") > pos("vmw_vsock_virtio_transport_common") || pos("vmw_vsock_virtio_transport_common") > pos("vmw_vsock_virtio_transport") {
		t.Errorf("vsock stack out of order: %v", res.order)
	}
	if !slices.Contains(res.builtin, "ext4") {
		t.Errorf("ext4 (CONFIG_EXT4_FS=y) not reported built in: %v", res.builtin)
	}
	if ix.files["virtio_rng"] != "kernel/drivers/char/hw_random/virtio-rng.ko" {
		t.Errorf("virtio_rng found at %q", ix.files["virtio_rng"])
	}
}
