package initramfs

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// kmodReader reads the binary index the way libkmod-index.c does (index_search and
// index_searchwild), so the writer is checked against the reader's rules, not its own.
type kmodReader struct {
	t    testing.TB
	data []byte
}

type readNode struct {
	prefix      string
	first, last byte
	children    []uint32
	values      []kmodValue
}

func newKmodReader(t testing.TB, data []byte) kmodReader {
	t.Helper()
	if len(data) < 12 || binary.BigEndian.Uint32(data) != kmodIndexMagic || binary.BigEndian.Uint32(data[4:])>>16 != 2 {
		t.Fatalf("bad index header % x", data[:min(12, len(data))])
	}
	return kmodReader{t: t, data: data}
}

func (r kmodReader) node(off uint32) *readNode {
	p := off & kmodNodeMask
	if p == 0 {
		return nil
	}
	if int(p) == len(r.data) && off&^kmodNodeMask == 0 {
		return &readNode{first: kmodChildMax} // an empty root at the very end, as depmod writes it
	}
	if int(p) >= len(r.data) {
		r.t.Fatalf("node offset %d beyond the index (%d bytes)", p, len(r.data))
	}
	n := &readNode{first: kmodChildMax}
	b := r.data[p:]
	if off&kmodNodePrefix != 0 {
		i := bytes.IndexByte(b, 0)
		n.prefix, b = string(b[:i]), b[i+1:]
	}
	if off&kmodNodeChilds != 0 {
		n.first, n.last = b[0], b[1]
		if n.first > n.last || n.last >= kmodChildMax {
			r.t.Fatalf("bad child range %d..%d", n.first, n.last)
		}
		b = b[2:]
		for i := 0; i <= int(n.last-n.first); i++ {
			n.children = append(n.children, binary.BigEndian.Uint32(b))
			b = b[4:]
		}
	}
	if off&kmodNodeValues != 0 {
		count := binary.BigEndian.Uint32(b)
		b = b[4:]
		for i := uint32(0); i < count; i++ {
			prio := binary.BigEndian.Uint32(b)
			b = b[4:]
			j := bytes.IndexByte(b, 0)
			n.values = append(n.values, kmodValue{prio, string(b[:j])})
			b = b[j+1:]
		}
	}
	return n
}

func (r kmodReader) child(n *readNode, c byte) *readNode {
	if n.children == nil || c < n.first || c > n.last {
		return nil
	}
	return r.node(n.children[c-n.first])
}

func (r kmodReader) root() *readNode { return r.node(binary.BigEndian.Uint32(r.data[8:])) }

// search is index_search: the first value of an exact key.
func (r kmodReader) search(key string) (string, bool) {
	n, i := r.root(), 0
	for n != nil {
		for j := 0; j < len(n.prefix); j++ {
			if i+j >= len(key) || n.prefix[j] != key[i+j] {
				return "", false
			}
		}
		i += len(n.prefix)
		if i == len(key) {
			if len(n.values) == 0 {
				return "", false
			}
			return n.values[0].value, true
		}
		n = r.child(n, key[i])
		i++
	}
	return "", false
}

// dump lists every key with its values.
func (r kmodReader) dump() map[string][]string {
	out := map[string][]string{}
	var walk func(n *readNode, key string)
	walk = func(n *readNode, key string) {
		key += n.prefix
		for _, v := range n.values {
			out[key] = append(out[key], v.value)
		}
		for i, off := range n.children {
			if c := r.node(off); c != nil {
				walk(c, key+string(rune(int(n.first)+i)))
			}
		}
	}
	if root := r.root(); root != nil {
		walk(root, "")
	}
	return out
}

// searchWild is what index_searchwild returns: values of every pattern key matching name.
func (r kmodReader) searchWild(name string) []string {
	var out []string
	for pattern, vals := range r.dump() {
		if ok, _ := path.Match(pattern, name); ok {
			out = append(out, vals...)
		}
	}
	sort.Strings(out)
	return out
}

func TestKmodIndexRoundTrip(t *testing.T) {
	x := newKmodIndex()
	keys := map[string]string{
		"ask": "1", "ate": "2", "on": "3", "once": "4", "one": "5", "a": "6",
		"pci:v00001AF4d00001001sv*sd*bc*sc*i*": "virtio_blk", "fs_ext4": "ext4",
	}
	for k, v := range keys {
		x.insert(k, v, 0)
	}
	x.insert("on", "3b", 7)
	x.insert("on", "3", 0) // identical: not added twice
	x.insert("bad\x80key", "x", 0)
	r := newKmodReader(t, x.bytes())
	for k, v := range keys {
		if got, ok := r.search(k); !ok || got != v {
			t.Errorf("search(%q) = %q, %v; want %q", k, got, ok, v)
		}
	}
	for _, k := range []string{"as", "o", "onex", "", "b", "bad"} {
		if got, ok := r.search(k); ok {
			t.Errorf("search(%q) = %q; want nothing", k, got)
		}
	}
	if d := r.dump(); strings.Join(d["on"], ",") != "3,3b" || len(d) != len(keys) {
		t.Errorf("dump: %v", d)
	}
	if got := r.searchWild("pci:v00001AF4d00001001sv00001AF4sd00000002bc01sc00i00"); strings.Join(got, ",") != "virtio_blk" {
		t.Errorf("wildcard search = %v", got)
	}
	if x.bad != 1 {
		t.Errorf("non-ASCII key not refused: bad = %d", x.bad)
	}
	empty := newKmodReader(t, newKmodIndex().bytes())
	if _, ok := empty.search("x"); ok {
		t.Error("empty index found a key")
	}
}

func TestAliasNormalize(t *testing.T) {
	for in, want := range map[string]string{
		"fs-ext4":               "fs_ext4",
		"pci:v*d*sv*sd*bc01sc*": "pci:v*d*sv*sd*bc01sc*",
		"acpi*:PNP0A0[3-8]:*":   "acpi*:PNP0A0[3-8]:*",
		"char-major-10-[a-b]-x": "char_major_10_[a-b]_x",
	} {
		if got, err := aliasNormalize(in); err != nil || got != want {
			t.Errorf("aliasNormalize(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"a]b", "a[b"} {
		if _, err := aliasNormalize(bad); err == nil {
			t.Errorf("aliasNormalize(%q) accepted", bad)
		}
	}
}

func TestDepmodSynthetic(t *testing.T) {
	dir := t.TempDir()
	ko := func(rel string, info ...string) { writeFile(t, filepath.Join(dir, rel), fakeKO(t, info...)) }
	ko("kernel/fs/ext4/ext4.ko", "name=ext4", "depends=jbd2,mbcache,crc16", "alias=fs-ext4", "softdep=pre: crc32c")
	ko("kernel/fs/jbd2/jbd2.ko", "name=jbd2", "depends=crc16")
	ko("kernel/fs/mbcache.ko", "name=mbcache", "depends=")
	ko("kernel/lib/crc16.ko", "name=crc16", "depends=")
	ko("kernel/drivers/x/fuse.ko", "name=fuse", "depends=", "alias=devname:fuse", "alias=char-major-10-229", "alias=fs-fuse")
	ko("kernel/drivers/x/loopy.ko", "name=loopy", "depends=ghost")
	writeFile(t, filepath.Join(dir, "kernel/drivers/x/notamodule.ko"), []byte("junk"))
	writeFile(t, filepath.Join(dir, "updates/crc16.ko"), compress(t, "crc16.ko.xz", fakeKO(t, "name=crc16")))
	must(t, os.Rename(filepath.Join(dir, "updates/crc16.ko"), filepath.Join(dir, "updates/crc16.ko.xz")))
	writeFile(t, filepath.Join(dir, "modules.order"), []byte("kernel/lib/crc16.ko\nkernel/fs/jbd2/jbd2.ko\nkernel/fs/mbcache.ko\nkernel/fs/ext4/ext4.ko\n"))
	writeFile(t, filepath.Join(dir, "modules.builtin"), []byte("kernel/crypto/crc32c_generic.ko\nkernel/fs/overlayfs/overlay.ko\n"))
	writeFile(t, filepath.Join(dir, "modules.builtin.modinfo"), []byte("crc32c_generic.alias=crypto-crc32c\x00crc32c_generic.license=GPL\x00overlay.alias=fs-overlay\x00"))

	res, err := Depmod(context.Background(), dir)
	if err != nil {
		t.Fatal(err)
	}
	if res.Modules != 6 {
		t.Errorf("modules = %d, want 6 (the junk file skipped)", res.Modules)
	}
	warn := strings.Join(res.Warnings, "\n")
	for _, w := range []string{"skipping kernel/drivers/x/notamodule.ko", "loopy depends on ghost", "kernel/lib/crc16.ko is shadowed by updates/crc16.ko.xz"} {
		if !strings.Contains(warn, w) {
			t.Errorf("warnings lack %q:\n%s", w, warn)
		}
	}
	dep := string(res.Files["modules.dep"])
	wantExt4 := "kernel/fs/ext4/ext4.ko: kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko updates/crc16.ko.xz\n"
	if !strings.Contains(dep, wantExt4) || !strings.Contains(dep, "updates/crc16.ko.xz:\n") {
		t.Errorf("modules.dep:\n%s\nwant a line %q", dep, wantExt4)
	}
	// modules.order decides the priority: crc16 (from updates) is first, then jbd2, ...
	if first, _, _ := strings.Cut(dep, "\n"); first != "updates/crc16.ko.xz:" {
		t.Errorf("first modules.dep line %q, want crc16's (modules.order)", first)
	}
	r := newKmodReader(t, res.Files["modules.dep.bin"])
	if v, ok := r.search("ext4"); !ok || v+"\n" != wantExt4 {
		t.Errorf("modules.dep.bin ext4 = %q, %v", v, ok)
	}
	if v, _ := r.search("mbcache"); v != "kernel/fs/mbcache.ko:" {
		t.Errorf("modules.dep.bin mbcache = %q", v)
	}
	ra := newKmodReader(t, res.Files["modules.alias.bin"])
	if v, ok := ra.search("fs_ext4"); !ok || v != "ext4" {
		t.Errorf("alias fs_ext4 = %q %v", v, ok)
	}
	if !strings.Contains(string(res.Files["modules.alias"]), "alias fs-ext4 ext4\n") {
		t.Errorf("modules.alias:\n%s", res.Files["modules.alias"])
	}
	if !strings.Contains(string(res.Files["modules.softdep"]), "softdep ext4 pre: crc32c\n") {
		t.Errorf("modules.softdep:\n%s", res.Files["modules.softdep"])
	}
	if !strings.Contains(string(res.Files["modules.devname"]), "fuse fuse c10:229\n") {
		t.Errorf("modules.devname:\n%s", res.Files["modules.devname"])
	}
	rb := newKmodReader(t, res.Files["modules.builtin.bin"])
	if v, ok := rb.search("overlay"); !ok || v != "" {
		t.Errorf("builtin overlay = %q %v", v, ok)
	}
	rba := newKmodReader(t, res.Files["modules.builtin.alias.bin"])
	for k, want := range map[string]string{"crypto_crc32c": "crc32c_generic", "crc32c_generic": "crc32c_generic", "fs_overlay": "overlay"} {
		if v, ok := rba.search(k); !ok || v != want {
			t.Errorf("builtin alias %s = %q %v, want %s", k, v, ok, want)
		}
	}
	for name := range res.Files {
		found := false
		for _, n := range DepmodFiles() {
			found = found || n == name
		}
		if !found {
			t.Errorf("Depmod wrote %s, which DepmodFiles does not list", name)
		}
	}
}

func TestDepmodCycleLeftOut(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "kernel/a.ko"), fakeKO(t, "name=a", "depends=b"))
	writeFile(t, filepath.Join(dir, "kernel/b.ko"), fakeKO(t, "name=b", "depends=a"))
	writeFile(t, filepath.Join(dir, "kernel/c.ko"), fakeKO(t, "name=c"))
	res, err := Depmod(context.Background(), dir)
	if err != nil {
		t.Fatal(err)
	}
	if dep := string(res.Files["modules.dep"]); dep != "kernel/c.ko:\n" {
		t.Errorf("modules.dep = %q, want only c", dep)
	}
	if !strings.Contains(strings.Join(res.Warnings, "\n"), "dependency cycle a -> b -> a") {
		t.Errorf("warnings: %v", res.Warnings)
	}
}

func TestDepmodMissingDir(t *testing.T) {
	if _, err := Depmod(context.Background(), filepath.Join(t.TempDir(), "nope")); err == nil || !strings.Contains(err.Error(), "kernel modules directory") {
		t.Fatalf("err = %v", err)
	}
}

// The real test kernel: every module's dependencies in modules.dep agree with what the
// initramfs resolver computes from .modinfo, and the indexes find them.
func TestDepmodRealKernel(t *testing.T) {
	dir := testAssets(t).ModulesDir
	ctx := context.Background()
	res, err := Depmod(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Warnings) > 0 {
		t.Errorf("warnings on Debian's kernel: %v", res.Warnings)
	}
	ix, err := loadIndex(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	if res.Modules != len(ix.files) {
		t.Errorf("depmod saw %d modules, the resolver %d", res.Modules, len(ix.files))
	}
	r := newKmodReader(t, res.Files["modules.dep.bin"])
	for _, name := range []string{"ext4", "xfs", "btrfs", "overlay", "vmw_vsock_virtio_transport", "br_netfilter", "nf_tables"} {
		if _, ok := ix.files[name]; !ok {
			continue // not a module in this kernel
		}
		line, ok := r.search(name)
		if !ok {
			t.Errorf("modules.dep.bin has no %s", name)
			continue
		}
		res2, err := ix.resolve(ctx, []string{name})
		if err != nil {
			t.Fatal(err)
		}
		hardOnly := map[string]bool{}
		// The resolver adds soft pre-dependencies; modules.dep holds hard ones only.
		var hard func(n string)
		hard = func(n string) {
			if hardOnly[n] {
				return
			}
			hardOnly[n] = true
			ds, _, _ := ix.deps(n)
			for _, d := range ds {
				hard(d)
			}
		}
		hard(name)
		var want []string
		for _, n := range res2.order {
			if hardOnly[n] && n != name {
				want = append(want, ix.files[n])
			}
		}
		mod, deps, _ := strings.Cut(line, ":")
		got := strings.Fields(deps)
		sort.Strings(got)
		sort.Strings(want)
		if mod != ix.files[name] || fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("%s: modules.dep.bin %q; want %s: %v", name, line, ix.files[name], want)
		}
	}
	ra := newKmodReader(t, res.Files["modules.alias.bin"])
	if v, ok := ra.search("fs_xfs"); ix.files["xfs"] != "" && (!ok || v != "xfs") {
		t.Errorf("alias fs_xfs = %q %v", v, ok)
	}
	t.Logf("%d modules; modules.dep.bin %d bytes, modules.alias.bin %d bytes, modules.symbols.bin %d bytes",
		res.Modules, len(res.Files["modules.dep.bin"]), len(res.Files["modules.alias.bin"]), len(res.Files["modules.symbols.bin"]))
}

func BenchmarkDepmodRealKernel(b *testing.B) {
	dir := testAssets(b).ModulesDir
	for b.Loop() {
		if _, err := Depmod(context.Background(), dir); err != nil {
			b.Fatal(err)
		}
	}
}
