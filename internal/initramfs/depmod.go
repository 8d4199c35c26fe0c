package initramfs

import (
	"bytes"
	"context"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// Depmod computes, in Go, the index files depmod(8) writes into lib/modules/<release>, so
// modprobe works in a guest that mounts a kernel's module tree read-only. Debian's kernel
// package ships none of them (depmod runs at install time, and banger never installs), and
// the host need not have kmod.
//
// kmod's lookups read only the binary indexes (modules.dep.bin, modules.alias.bin,
// modules.symbols.bin, modules.builtin.bin, modules.builtin.alias.bin); the text files
// are written too for busybox modprobe and for people. Everything comes from the modules'
// own .modinfo and __ksymtab_strings sections, as depmod reads them.
//
// A file that is not a readable kernel module is skipped with a warning (depmod does the
// same); a dependency that is not a module is reported and left out of that module's line.
func Depmod(ctx context.Context, dir string) (DepmodResult, error) {
	st, err := os.Stat(dir)
	if err != nil {
		return DepmodResult{}, fmt.Errorf("depmod: kernel modules directory: %w", err)
	}
	if !st.IsDir() {
		return DepmodResult{}, fmt.Errorf("depmod: %s is not a directory", dir)
	}
	d := &depmod{dir: dir, byName: map[string]*depMod{}}
	if err := d.scan(ctx); err != nil {
		return DepmodResult{}, err
	}
	if err := d.readModules(ctx); err != nil {
		return DepmodResult{}, err
	}
	files := map[string][]byte{}
	files["modules.dep"], files["modules.dep.bin"] = d.deps(ctx)
	files["modules.alias"], files["modules.alias.bin"] = d.aliases()
	files["modules.softdep"] = d.softdeps()
	files["modules.symbols"], files["modules.symbols.bin"] = d.symbols()
	files["modules.devname"] = d.devnames()
	builtin, err := d.builtin()
	if err != nil {
		return DepmodResult{}, err
	}
	files["modules.builtin.bin"] = builtin
	if alias, ok, err := d.builtinAliases(); err != nil {
		return DepmodResult{}, err
	} else if ok {
		files["modules.builtin.alias.bin"] = alias
	}
	if err := ctx.Err(); err != nil {
		return DepmodResult{}, err
	}
	return DepmodResult{Files: files, Modules: len(d.mods), Warnings: d.warnings}, nil
}

// DepmodResult is what Depmod computed: file name (relative to the modules directory) to
// contents.
type DepmodResult struct {
	Files    map[string][]byte
	Modules  int
	Warnings []string
}

// DepmodFiles are the names Depmod may write; a tree that already has modules.dep.bin was
// indexed by a real depmod and is best left as it is.
func DepmodFiles() []string {
	return []string{"modules.dep", "modules.dep.bin", "modules.alias", "modules.alias.bin", "modules.softdep",
		"modules.symbols", "modules.symbols.bin", "modules.devname", "modules.builtin.bin", "modules.builtin.alias.bin"}
}

type depMod struct {
	name    string
	rel     string // path relative to the modules directory, as stored (compression kept)
	prio    uint32 // position in modules.order (depmod's mod->idx); unlisted ones after
	depends []string
	softdep []string // raw "pre: a post: b" values
	aliases []string
	symbols []string
}

type depmod struct {
	dir      string
	mods     []*depMod // in priority order
	byName   map[string]*depMod
	warnings []string
	warned   map[string]bool
}

func (d *depmod) warnf(format string, args ...any) {
	w := fmt.Sprintf(format, args...)
	if d.warned == nil {
		d.warned = map[string]bool{}
	}
	if !d.warned[w] {
		d.warned[w] = true
		d.warnings = append(d.warnings, w)
	}
}

// scan finds every module file. Where a name occurs twice, updates/ beats kernel/ beats
// anything else (depmod's default search order), then the lexically first path.
func (d *depmod) scan(ctx context.Context) error {
	rank := func(rel string) int {
		switch {
		case strings.HasPrefix(rel, "updates/"):
			return 0
		case strings.HasPrefix(rel, "kernel/"):
			return 1
		}
		return 2
	}
	var found []*depMod
	err := filepath.WalkDir(d.dir, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if e.IsDir() || !(e.Type().IsRegular() || e.Type()&fs.ModeSymlink != 0) {
			return nil
		}
		name, ok := moduleNameFromPath(p)
		if !ok {
			return nil
		}
		rel, err := filepath.Rel(d.dir, p)
		if err != nil {
			return err
		}
		found = append(found, &depMod{name: name, rel: filepath.ToSlash(rel)})
		return nil
	})
	if err != nil {
		return fmt.Errorf("depmod: scan %s: %w", d.dir, err)
	}
	sort.SliceStable(found, func(i, j int) bool {
		if ri, rj := rank(found[i].rel), rank(found[j].rel); ri != rj {
			return ri < rj
		}
		return found[i].rel < found[j].rel
	})
	for _, m := range found {
		if prev, dup := d.byName[m.name]; dup {
			d.warnf("module %s: %s is shadowed by %s", m.name, m.rel, prev.rel)
			continue
		}
		d.byName[m.name] = m
	}
	// Priority: the build's modules.order, then the rest by path.
	order := map[string]int{}
	if lines, err := readLines(filepath.Join(d.dir, "modules.order")); err == nil {
		for i, l := range lines {
			if name, ok := moduleNameFromPath(l); ok {
				if _, seen := order[name]; !seen {
					order[name] = i
				}
			}
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	for _, m := range d.byName {
		d.mods = append(d.mods, m)
	}
	sort.Slice(d.mods, func(i, j int) bool {
		oi, iok := order[d.mods[i].name]
		oj, jok := order[d.mods[j].name]
		switch {
		case iok && jok:
			return oi < oj
		case iok != jok:
			return iok
		}
		return d.mods[i].rel < d.mods[j].rel
	})
	for i, m := range d.mods {
		m.prio = uint32(i)
	}
	return nil
}

// readModules reads every module's .modinfo and exported symbols.
func (d *depmod) readModules(ctx context.Context) error {
	var keep []*depMod
	for _, m := range d.mods {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := d.readModule(m); err != nil {
			d.warnf("skipping %s: %v", m.rel, err)
			delete(d.byName, m.name)
			continue
		}
		keep = append(keep, m)
	}
	d.mods = keep
	return nil
}

func (d *depmod) readModule(m *depMod) error {
	raw, err := os.ReadFile(filepath.Join(d.dir, filepath.FromSlash(m.rel)))
	if err != nil {
		return err
	}
	plain, err := decompressModule(m.rel, raw)
	if err != nil {
		return err
	}
	f, err := elf.NewFile(bytes.NewReader(plain))
	if err != nil {
		return fmt.Errorf("not an ELF kernel module: %w", err)
	}
	defer f.Close()
	sec := f.Section(".modinfo")
	if sec == nil {
		return errors.New("no .modinfo section: not a kernel module")
	}
	data, err := sec.Data()
	if err != nil {
		return fmt.Errorf("read .modinfo: %w", err)
	}
	for _, field := range bytes.Split(data, []byte{0}) {
		key, value, ok := strings.Cut(string(field), "=")
		if !ok {
			continue
		}
		switch key {
		case "depends":
			for _, dep := range strings.Split(value, ",") {
				if dep = normalizeName(dep); dep != "" {
					m.depends = append(m.depends, dep)
				}
			}
		case "softdep":
			m.softdep = append(m.softdep, value)
		case "alias":
			m.aliases = append(m.aliases, value)
		}
	}
	if ks := f.Section("__ksymtab_strings"); ks != nil {
		data, err := ks.Data()
		if err != nil {
			return fmt.Errorf("read __ksymtab_strings: %w", err)
		}
		for _, s := range bytes.Split(data, []byte{0}) {
			if len(s) > 0 {
				m.symbols = append(m.symbols, string(s))
			}
		}
	}
	return nil
}

// deps writes modules.dep and its index: each module's path, a colon, and every module it
// needs, directly or not, those loaded last listed first (as depmod orders them, so a
// loader walking the list backwards loads dependencies first).
func (d *depmod) deps(ctx context.Context) (text, bin []byte) {
	var b bytes.Buffer
	idx := newKmodIndex()
	for _, m := range d.mods {
		if ctx.Err() != nil {
			return nil, nil
		}
		order, err := d.loadOrder(m)
		if err != nil {
			d.warnf("module %s: %v: left out of modules.dep", m.name, err)
			continue
		}
		line := m.rel + ":"
		for i := len(order) - 2; i >= 0; i-- { // the last entry is m itself
			line += " " + order[i].rel
		}
		b.WriteString(line + "\n")
		idx.insert(m.name, line, m.prio)
	}
	return b.Bytes(), idx.bytes()
}

// loadOrder is m's dependency closure, dependencies before dependents, m last.
func (d *depmod) loadOrder(m *depMod) ([]*depMod, error) {
	const (
		visiting = 1
		done     = 2
	)
	state := map[string]int{}
	var out []*depMod
	var visit func(x *depMod, path []string) error
	visit = func(x *depMod, path []string) error {
		state[x.name] = visiting
		for _, dn := range sortedUnique(x.depends) {
			dep, ok := d.byName[dn]
			if !ok {
				d.warnf("module %s depends on %s, which is not a module here", x.name, dn)
				continue
			}
			switch state[dn] {
			case visiting:
				return fmt.Errorf("dependency cycle %s", strings.Join(append(path, x.name, dn), " -> "))
			case 0:
				if err := visit(dep, append(path, x.name)); err != nil {
					return err
				}
			}
		}
		state[x.name] = done
		out = append(out, x)
		return nil
	}
	return out, visit(m, nil)
}

func (d *depmod) aliases() (text, bin []byte) {
	var b bytes.Buffer
	b.WriteString("# Aliases extracted from modules themselves.\n")
	idx := newKmodIndex()
	for _, m := range d.mods {
		for _, a := range m.aliases {
			norm, err := aliasNormalize(a)
			if err != nil {
				d.warnf("module %s: alias %q: %v", m.name, a, err)
				continue
			}
			fmt.Fprintf(&b, "alias %s %s\n", a, m.name)
			idx.insert(norm, m.name, m.prio)
		}
	}
	return b.Bytes(), idx.bytes()
}

func (d *depmod) softdeps() []byte {
	var b bytes.Buffer
	b.WriteString("# Soft dependencies extracted from modules themselves.\n")
	for _, m := range d.mods {
		for _, s := range m.softdep {
			fmt.Fprintf(&b, "softdep %s %s\n", m.name, s)
		}
	}
	return b.Bytes()
}

// symbols maps exported symbols to their modules (for symbol_request).
func (d *depmod) symbols() (text, bin []byte) {
	var b bytes.Buffer
	b.WriteString("# Aliases for symbols, used by symbol_request().\n")
	idx := newKmodIndex()
	owner := map[string]bool{}
	for _, m := range d.mods {
		for _, s := range m.symbols {
			if owner[s] {
				continue // the first module (by priority) owns a symbol
			}
			owner[s] = true
			fmt.Fprintf(&b, "alias symbol:%s %s\n", s, m.name)
			idx.insert("symbol:"+s, m.name, m.prio)
		}
	}
	return b.Bytes(), idx.bytes()
}

// devnames lists modules that provide a device node on demand (devname: and
// char-major/block-major aliases), for kmod static-nodes.
func (d *depmod) devnames() []byte {
	var b bytes.Buffer
	b.WriteString("# Device nodes to trigger on-demand module loading.\n")
	for _, m := range d.mods {
		var devname string
		var kind byte
		var major, minor uint
		for _, a := range m.aliases {
			if n, ok := strings.CutPrefix(a, "devname:"); ok {
				devname = n
				continue
			}
			for _, p := range []struct {
				prefix string
				kind   byte
			}{{"char-major-", 'c'}, {"block-major-", 'b'}} {
				if rest, ok := strings.CutPrefix(a, p.prefix); ok {
					if _, err := fmt.Sscanf(rest, "%d-%d", &major, &minor); err == nil {
						kind = p.kind
					}
				}
			}
		}
		if devname != "" && kind != 0 {
			fmt.Fprintf(&b, "%s %s %c%d:%d\n", m.name, devname, kind, major, minor)
		}
	}
	return b.Bytes()
}

// builtin indexes modules.builtin: modprobe of a built-in module then succeeds quietly.
func (d *depmod) builtin() ([]byte, error) {
	idx := newKmodIndex()
	lines, err := readLines(filepath.Join(d.dir, "modules.builtin"))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	for _, l := range lines {
		if name, ok := moduleNameFromPath(l); ok {
			idx.insert(name, "", 0)
		}
	}
	return idx.bytes(), nil
}

// builtinAliases indexes modules.builtin.modinfo ("name.key=value" strings): every
// built-in module's aliases and its own name. ok is false when the tree has no such file.
func (d *depmod) builtinAliases() (data []byte, ok bool, err error) {
	raw, err := os.ReadFile(filepath.Join(d.dir, "modules.builtin.modinfo"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	idx := newKmodIndex()
	for _, field := range bytes.Split(raw, []byte{0}) {
		kv, value, found := strings.Cut(string(field), "=")
		if !found {
			continue
		}
		mod, key, found := strings.Cut(kv, ".")
		if !found || mod == "" {
			continue
		}
		mod = normalizeName(mod)
		idx.insert(mod, mod, 0)
		if key == "alias" {
			if norm, err := aliasNormalize(value); err == nil {
				idx.insert(norm, mod, 0)
			}
		}
	}
	return idx.bytes(), true, nil
}

// aliasNormalize is kmod's alias_normalize: '-' becomes '_' except inside a [...] range.
func aliasNormalize(a string) (string, error) {
	var b strings.Builder
	for i := 0; i < len(a); i++ {
		switch c := a[i]; c {
		case '-':
			b.WriteByte('_')
		case ']':
			return "", errors.New("unmatched ']'")
		case '[':
			j := strings.IndexByte(a[i:], ']')
			if j < 0 {
				return "", errors.New("unmatched '['")
			}
			b.WriteString(a[i : i+j+1])
			i += j
		default:
			b.WriteByte(c)
		}
	}
	return b.String(), nil
}

// kmodIndex builds libkmod's binary index (libkmod-index.c): a trie mapping ASCII keys to
// priority-sorted string values, stored big-endian with path-compressed nodes.
type kmodIndex struct {
	root *kmodNode
	bad  int // keys refused for non-ASCII characters
}

type kmodNode struct {
	children map[byte]*kmodNode
	values   []kmodValue
}

type kmodValue struct {
	prio  uint32
	value string
}

const (
	kmodIndexMagic   = 0xB007F457
	kmodIndexVersion = 0x00020001
	kmodNodePrefix   = 0x80000000
	kmodNodeValues   = 0x40000000
	kmodNodeChilds   = 0x20000000
	kmodNodeMask     = 0x0FFFFFFF
	kmodChildMax     = 128
)

func newKmodIndex() *kmodIndex { return &kmodIndex{root: &kmodNode{}} }

// insert adds value under key; an identical value is not added twice.
func (x *kmodIndex) insert(key, value string, prio uint32) {
	for i := 0; i < len(key); i++ {
		if key[i] == 0 || key[i] >= kmodChildMax {
			x.bad++
			return
		}
	}
	n := x.root
	for i := 0; i < len(key); i++ {
		if n.children == nil {
			n.children = map[byte]*kmodNode{}
		}
		c := n.children[key[i]]
		if c == nil {
			c = &kmodNode{}
			n.children[key[i]] = c
		}
		n = c
	}
	for _, v := range n.values {
		if v.value == value {
			return
		}
	}
	n.values = append(n.values, kmodValue{prio, value})
}

// bytes serialises the index: header, then nodes children first, each node's prefix being
// the chain of single-child, value-less nodes below it.
func (x *kmodIndex) bytes() []byte {
	var b bytes.Buffer
	var hdr [12]byte
	binary.BigEndian.PutUint32(hdr[0:], kmodIndexMagic)
	binary.BigEndian.PutUint32(hdr[4:], kmodIndexVersion)
	b.Write(hdr[:])
	root := writeKmodNode(&b, x.root)
	out := b.Bytes()
	binary.BigEndian.PutUint32(out[8:], root)
	return out
}

func writeKmodNode(b *bytes.Buffer, n *kmodNode) uint32 {
	var prefix []byte
	for len(n.values) == 0 && len(n.children) == 1 {
		for c, child := range n.children {
			prefix = append(prefix, c)
			n = child
		}
	}
	var first, last byte
	var offs []uint32
	if len(n.children) > 0 {
		keys := make([]byte, 0, len(n.children))
		for c := range n.children {
			keys = append(keys, c)
		}
		sort.Slice(keys, func(i, j int) bool { return keys[i] < keys[j] })
		first, last = keys[0], keys[len(keys)-1]
		offs = make([]uint32, int(last-first)+1)
		for _, c := range keys {
			offs[c-first] = writeKmodNode(b, n.children[c])
		}
	}
	off := uint32(b.Len())
	if off > kmodNodeMask {
		panic("kmod index larger than 256 MiB") // module indexes are a few MiB
	}
	var u [4]byte
	if len(prefix) > 0 {
		b.Write(prefix)
		b.WriteByte(0)
		off |= kmodNodePrefix
	}
	if len(offs) > 0 {
		b.WriteByte(first)
		b.WriteByte(last)
		for _, o := range offs {
			binary.BigEndian.PutUint32(u[:], o)
			b.Write(u[:])
		}
		off |= kmodNodeChilds
	}
	if len(n.values) > 0 {
		vals := append([]kmodValue(nil), n.values...)
		sort.SliceStable(vals, func(i, j int) bool { return vals[i].prio < vals[j].prio })
		binary.BigEndian.PutUint32(u[:], uint32(len(vals)))
		b.Write(u[:])
		for _, v := range vals {
			binary.BigEndian.PutUint32(u[:], v.prio)
			b.Write(u[:])
			b.WriteString(v.value)
			b.WriteByte(0)
		}
		off |= kmodNodeValues
	}
	return off
}
