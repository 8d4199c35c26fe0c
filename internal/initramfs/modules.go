package initramfs

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
)

// DefaultModules are the modules every banger guest needs when the kernel
// builds them as modules: the virtio transports (mmio for Firecracker and QEMU
// microvm, pci for full QEMU machines), disk, network, virtio-serial (the agent
// channel when there is no vsock), the vsock transport for the agent, an
// entropy source so early userspace does not block on getrandom, and the
// filesystems used to assemble the root.
//
// It is a function so callers cannot mutate a shared package-level slice.
func DefaultModules() []string {
	return []string{
		"virtio_mmio",
		"virtio_pci",
		"virtio_blk",
		"virtio_net",
		"virtio_console",
		"vmw_vsock_virtio_transport", // pulls vsock and vmw_vsock_virtio_transport_common
		"virtio_rng",
		"overlay",
		"ext4",
	}
}

// Dependency sources recorded in the manifest.
const (
	DepSourceModulesDep = "modules.dep"
	DepSourceModinfo    = "modinfo"
)

// moduleSubdirs are searched, in this priority order, when there is no
// modules.dep. It is depmod's default ("search updates built-in"; other
// directories such as extra/ rank after those).
var moduleSubdirs = []string{"updates", "kernel", "extra"}

// compressedSuffixes are the module compressions the kernel's build can
// produce (CONFIG_MODULE_COMPRESS_*). Plain ".ko" is handled separately.
var compressedSuffixes = []string{".ko.xz", ".ko.zst", ".ko.gz"}

// normalizeName maps a module name to the form the kernel uses internally:
// kbuild turns '-' into '_' (virtio-rng.ko registers as virtio_rng), and
// modprobe treats the two as the same, so users may type either.
func normalizeName(name string) string {
	return strings.ReplaceAll(strings.TrimSpace(name), "-", "_")
}

// moduleNameFromPath returns the normalized module name of a .ko path (any
// compression), and whether the path names a module at all.
func moduleNameFromPath(p string) (string, bool) {
	base := filepath.Base(p)
	for _, suf := range append([]string{".ko"}, compressedSuffixes...) {
		if stem, ok := strings.CutSuffix(base, suf); ok && stem != "" {
			return normalizeName(stem), true
		}
	}
	return "", false
}

// plainPath strips a compression suffix: the initramfs always carries plain
// .ko files so the guest can hand them to finit_module without a decompressor
// (and without relying on CONFIG_MODULE_DECOMPRESS, which Debian 6.1 lacks).
func plainPath(rel string) string {
	for _, suf := range compressedSuffixes {
		if stem, ok := strings.CutSuffix(rel, suf); ok {
			return stem + ".ko"
		}
	}
	return rel
}

// modinfo is what the resolver needs from a module's .modinfo section.
type modinfo struct {
	name    string
	depends []string // hard dependencies (modules that must be loaded first)
	softPre []string // softdep "pre:" names
}

// parseModinfo reads the .modinfo ELF section of an uncompressed module: a
// sequence of NUL-terminated "key=value" strings. It is how dependencies are
// found when the kernel tree has no modules.dep (Debian's kernel .deb does not
// ship one: depmod writes it at install time, and banger never installs).
func parseModinfo(ko []byte) (modinfo, error) {
	f, err := elf.NewFile(bytes.NewReader(ko))
	if err != nil {
		return modinfo{}, fmt.Errorf("not an ELF kernel module: %w", err)
	}
	defer f.Close()
	sec := f.Section(".modinfo")
	if sec == nil {
		return modinfo{}, errors.New("no .modinfo section: not a kernel module")
	}
	data, err := sec.Data()
	if err != nil {
		return modinfo{}, fmt.Errorf("read .modinfo: %w", err)
	}
	var mi modinfo
	for _, field := range bytes.Split(data, []byte{0}) {
		key, value, ok := strings.Cut(string(field), "=")
		if !ok {
			continue // padding between entries
		}
		switch key {
		case "name":
			mi.name = normalizeName(value)
		case "depends":
			for _, d := range strings.Split(value, ",") {
				if d = normalizeName(d); d != "" {
					mi.depends = append(mi.depends, d)
				}
			}
		case "softdep":
			pre, _ := parseSoftdep(strings.Fields(value))
			mi.softPre = append(mi.softPre, pre...)
		}
	}
	return mi, nil
}

// parseSoftdep splits softdep tokens ("pre: a b post: c") the way kmod does:
// names before any "pre:"/"post:" marker are ignored (old MODULE_SOFTDEP("x")
// strings, as in cifs, mean nothing to modprobe either).
func parseSoftdep(tokens []string) (pre, post []string) {
	mode := ""
	for _, t := range tokens {
		switch t {
		case "pre:":
			mode = "pre"
		case "post:":
			mode = "post"
		default:
			switch mode {
			case "pre":
				pre = append(pre, normalizeName(t))
			case "post":
				post = append(post, normalizeName(t))
			}
		}
	}
	return pre, post
}

// moduleData is a module's bytes, read once: raw is the file as stored (for
// the cache key), plain the decompressed ELF (for modinfo and the archive).
type moduleData struct {
	raw   []byte
	sum   string // sha256 of raw
	plain []byte
}

// index is what is known about one kernel's modules directory.
type index struct {
	dir   string            // .../lib/modules/<kver>
	files map[string]string // normalized name -> path relative to dir, as stored

	// From modules.dep / modules.softdep when present (hasDepFile); otherwise
	// dependencies come from each module's .modinfo, read on demand.
	hasDepFile bool
	depFile    map[string][]string
	softFile   map[string][]string

	hasBuiltin bool
	builtin    map[string]bool

	data map[string]*moduleData // memoized reads
}

// loadIndex indexes the modules under dir. With modules.dep the file list and
// dependencies come from it; without it the tree is walked and .modinfo
// sections are read lazily, only for modules that are actually wanted.
func loadIndex(ctx context.Context, dir string) (*index, error) {
	st, err := os.Stat(dir)
	if err != nil {
		return nil, fmt.Errorf("kernel modules directory: %w", err)
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("kernel modules directory %s is not a directory", dir)
	}
	ix := &index{dir: dir, files: map[string]string{}, data: map[string]*moduleData{}}

	if lines, err := readLines(filepath.Join(dir, "modules.builtin")); err == nil {
		ix.hasBuiltin = true
		ix.builtin = map[string]bool{}
		for _, l := range lines {
			if name, ok := moduleNameFromPath(l); ok {
				ix.builtin[name] = true
			}
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}

	lines, err := readLines(filepath.Join(dir, "modules.dep"))
	switch {
	case err == nil:
		ix.hasDepFile = true
		ix.depFile, err = parseModulesDep(lines, ix.files)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", filepath.Join(dir, "modules.dep"), err)
		}
		ix.softFile = map[string][]string{}
		if sl, err := readLines(filepath.Join(dir, "modules.softdep")); err == nil {
			parseModulesSoftdep(sl, ix.softFile)
		} else if !errors.Is(err, fs.ErrNotExist) {
			return nil, err
		}
		return ix, nil
	case !errors.Is(err, fs.ErrNotExist):
		return nil, err
	}

	for _, sub := range moduleSubdirs {
		root := filepath.Join(dir, sub)
		err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				if p == root && errors.Is(err, fs.ErrNotExist) {
					return fs.SkipDir
				}
				return err
			}
			if err := ctx.Err(); err != nil {
				return err
			}
			if d.IsDir() {
				return nil
			}
			name, ok := moduleNameFromPath(p)
			if !ok {
				return nil
			}
			// First one wins: subdirs are walked in priority order and WalkDir is
			// lexical, so the choice is deterministic.
			if _, seen := ix.files[name]; !seen {
				rel, err := filepath.Rel(dir, p)
				if err != nil {
					return err
				}
				ix.files[name] = filepath.ToSlash(rel)
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("index kernel modules: %w", err)
		}
	}
	return ix, nil
}

// parseModulesDep reads depmod's "kernel/a.ko: kernel/b.ko kernel/c.ko"
// lines, filling files (name -> path) and returning name -> dependency names.
func parseModulesDep(lines []string, files map[string]string) (map[string][]string, error) {
	deps := map[string][]string{}
	for i, l := range lines {
		l = strings.TrimSpace(l)
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		mod, rest, ok := strings.Cut(l, ":")
		if !ok {
			return nil, fmt.Errorf("line %d: %q has no ':'", i+1, l)
		}
		name, ok := moduleNameFromPath(mod)
		if !ok || !validRel(mod) {
			return nil, fmt.Errorf("line %d: %q is not a relative .ko path", i+1, mod)
		}
		if _, dup := files[name]; !dup {
			files[name] = mod
		}
		var ds []string
		for _, d := range strings.Fields(rest) {
			dn, ok := moduleNameFromPath(d)
			if !ok || !validRel(d) {
				return nil, fmt.Errorf("line %d: dependency %q is not a relative .ko path", i+1, d)
			}
			ds = append(ds, dn)
			if _, seen := files[dn]; !seen {
				files[dn] = d
			}
		}
		deps[name] = ds
	}
	return deps, nil
}

// validRel accepts the relative, clean paths depmod writes. Anything else
// (absolute, "..") could place a file outside lib/modules/<kver>/ in the
// archive, so it is refused rather than cleaned.
func validRel(p string) bool {
	return p != "" && !path.IsAbs(p) && path.Clean(p) == p && !strings.HasPrefix(p, "../")
}

// parseModulesSoftdep reads depmod's "softdep NAME pre: a b post: c" lines.
func parseModulesSoftdep(lines []string, soft map[string][]string) {
	for _, l := range lines {
		f := strings.Fields(l)
		if len(f) < 2 || f[0] != "softdep" {
			continue
		}
		pre, _ := parseSoftdep(f[2:])
		name := normalizeName(f[1])
		soft[name] = append(soft[name], pre...)
	}
}

func readLines(path string) ([]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var out []string
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 0, 64*1024), 16*1024*1024)
	for sc.Scan() {
		if l := strings.TrimSpace(sc.Text()); l != "" {
			out = append(out, l)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	return out, nil
}

// load reads (and memoizes) a module's bytes, decompressing them if needed.
func (ix *index) load(name string) (*moduleData, error) {
	if d, ok := ix.data[name]; ok {
		return d, nil
	}
	rel := ix.files[name]
	file := filepath.Join(ix.dir, filepath.FromSlash(rel))
	raw, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("module %s: %w", name, err)
	}
	plain, err := decompressModule(rel, raw)
	if err != nil {
		return nil, fmt.Errorf("module %s (%s): %w", name, file, err)
	}
	if !bytes.HasPrefix(plain, []byte(elf.ELFMAG)) {
		return nil, fmt.Errorf("module %s (%s): not an ELF file after decompression", name, file)
	}
	sum := sha256.Sum256(raw)
	d := &moduleData{raw: raw, sum: hex.EncodeToString(sum[:]), plain: plain}
	ix.data[name] = d
	return d, nil
}

// deps returns the hard and soft-pre dependencies of a module.
func (ix *index) deps(name string) (hard, softPre []string, err error) {
	if ix.hasDepFile {
		return ix.depFile[name], ix.softFile[name], nil
	}
	d, err := ix.load(name)
	if err != nil {
		return nil, nil, err
	}
	mi, err := parseModinfo(d.plain)
	if err != nil {
		return nil, nil, fmt.Errorf("module %s (%s): %w", name, ix.files[name], err)
	}
	return mi.depends, mi.softPre, nil
}

// resolution is the outcome of resolving a wanted list against a kernel.
type resolution struct {
	order          []string // module names, every dependency before its dependents
	builtin        []string // wanted, listed in modules.builtin
	assumedBuiltin []string // wanted, not a module, and no modules.builtin to confirm
}

// resolve computes the load order for wanted (names in any '-'/'_' spelling).
//
// Wanted modules that are built into the kernel are skipped: they need no
// loading. When the tree has no modules.builtin, a name that is not found as a
// module is assumed built in (reported, not an error), because that is the
// only thing the tree can tell us. Hard-dependency cycles are errors; a
// soft ("pre:") dependency that would close a cycle is dropped, as it is only
// a hint for ordering.
func (ix *index) resolve(ctx context.Context, wanted []string) (resolution, error) {
	var res resolution
	seen := map[string]bool{}
	var roots, missing []string
	for _, w := range wanted {
		n := normalizeName(w)
		if n == "" || strings.ContainsAny(n, "/ \t") {
			return res, fmt.Errorf("invalid module name %q", w)
		}
		if seen[n] {
			continue
		}
		seen[n] = true
		switch _, isMod := ix.files[n]; {
		case isMod:
			roots = append(roots, n)
		case ix.builtin[n]:
			res.builtin = append(res.builtin, n)
		case !ix.hasBuiltin:
			res.assumedBuiltin = append(res.assumedBuiltin, n)
		default:
			missing = append(missing, n)
		}
	}
	if len(missing) > 0 {
		sort.Strings(missing)
		return res, fmt.Errorf("kernel module(s) %s not found in %s (looked in %s and modules.builtin; wanted: %s): check the names or the kernel configuration",
			strings.Join(missing, ", "), ix.dir, ix.where(), strings.Join(wanted, ", "))
	}
	// Canonical order: the archive must not change when callers list the same
	// modules in another order.
	sort.Strings(roots)
	sort.Strings(res.builtin)
	sort.Strings(res.assumedBuiltin)

	const (
		visiting = 1
		done     = 2
	)
	state := map[string]int{}
	var stack []string
	var visit func(name string) error
	visit = func(name string) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		state[name] = visiting
		stack = append(stack, name)
		hard, soft, err := ix.deps(name)
		if err != nil {
			return err
		}
		hard = sortedUnique(hard)
		for _, d := range hard {
			if _, ok := ix.files[d]; !ok {
				return fmt.Errorf("module %s depends on %s, which is not a module in %s (looked in %s)", name, d, ix.dir, ix.where())
			}
			switch state[d] {
			case visiting:
				return fmt.Errorf("kernel module dependency cycle: %s", cyclePath(stack, d))
			case 0:
				if err := visit(d); err != nil {
					return err
				}
			}
		}
		for _, d := range sortedUnique(soft) {
			if _, ok := ix.files[d]; !ok || state[d] != 0 {
				continue // not a module here (built in or absent), already placed, or a cycle
			}
			if err := visit(d); err != nil {
				return err
			}
		}
		stack = stack[:len(stack)-1]
		state[name] = done
		res.order = append(res.order, name)
		return nil
	}
	for _, r := range roots {
		if state[r] == 0 {
			if err := visit(r); err != nil {
				return res, err
			}
		}
	}
	return res, nil
}

func (ix *index) where() string {
	if ix.hasDepFile {
		return "modules.dep"
	}
	return strings.Join(moduleSubdirs, "/, ") + "/"
}

func cyclePath(stack []string, back string) string {
	for i, s := range stack {
		if s == back {
			return strings.Join(append(append([]string{}, stack[i:]...), back), " -> ")
		}
	}
	return strings.Join(append(append([]string{}, stack...), back), " -> ")
}

func sortedUnique(in []string) []string {
	out := append([]string(nil), in...)
	sort.Strings(out)
	w := 0
	for i, s := range out {
		if i > 0 && s == out[w-1] {
			continue
		}
		out[w] = s
		w++
	}
	return out[:w]
}
