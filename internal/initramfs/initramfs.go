// Package initramfs builds the archive banger boots every guest with: its own
// PID 1 (banger-init), the guest agent, the few device nodes and mount points
// PID 1 needs before devtmpfs is up, and the kernel modules the guest needs
// (decompressed, with a dependency-ordered load list).
//
// It is pure Go and needs no root and no host tools: device nodes are only
// cpio header metadata, module dependencies come from modules.dep or, when the
// kernel was unpacked from a .deb without running depmod, from each module's
// .modinfo section. The output is byte-for-byte reproducible, so a content
// hash of the inputs is a sound cache key (see Cache).
package initramfs

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"sort"
	"strings"

	"github.com/klauspost/compress/gzip"
)

// FormatVersion changes whenever the same inputs would produce different
// archive bytes (layout, compression, manifest shape). It is part of the
// cache key, so old cached archives are never returned by a newer banger.
const FormatVersion = 1

// gzipLevel is fixed because the level changes the bytes. Measured on the
// Debian 6.1 module set with a 2 MB static binary as init and agent:
// level 1 2.74 MB in 36 ms, 6 2.49 MB in 65 ms, 9 2.43 MB in 380 ms. 6 keeps
// cold builds fast; 9 would save 2% for six times the time.
const gzipLevel = 6

// Paths inside the archive (relative, as the kernel's unpacker takes them).
const (
	InitPath     = "init"
	AgentPath    = "banger-agent"
	ManifestPath = "banger/initramfs.json"
	// LoadOrderName is the load list's file name inside lib/modules/<kver>/.
	LoadOrderName = "banger.load"
)

// mountPoints are created empty so PID 1 can mount onto them before anything
// else exists. /tmp is 0755 like the rest: only PID 1 (root) uses it before
// switch_root, and it is usually a tmpfs mount point.
var mountPoints = []string{"dev", "proc", "sys", "run", "newroot", "tmp"}

// Spec says what goes into an initramfs.
type Spec struct {
	// InitBinary and AgentBinary are host paths of the static guest binaries;
	// they become /init and /banger-agent (mode 0755).
	InitBinary  string
	AgentBinary string
	// KernelRelease is the kernel's uname -r (e.g. 6.1.0-56-cloud-amd64). It
	// defaults to the base name of ModulesDir.
	KernelRelease string
	// ModulesDir is the kernel's .../lib/modules/<kver> directory. Empty means
	// the kernel has no loadable modules (a monolithic vmlinux): every wanted
	// module is then reported as assumed built in.
	ModulesDir string
	// ExtraModules are wanted in addition to DefaultModules ('-' or '_').
	ExtraModules []string
	// BangerVersion is recorded in the manifest and is part of the cache key.
	BangerVersion string
}

// Manifest describes an initramfs; it is also stored inside it at
// /banger/initramfs.json so the guest (and a human with cpio -t) can tell what
// it was built from.
type Manifest struct {
	Format        int    `json:"format"`
	KernelRelease string `json:"kernel_release"`
	BangerVersion string `json:"banger_version"`
	InitSHA256    string `json:"init_sha256"`
	AgentSHA256   string `json:"agent_sha256"`
	// DependencySource is "modules.dep" or "modinfo"; empty without modules.
	DependencySource string `json:"dependency_source,omitempty"`
	// Modules are in load order: every dependency before its dependents.
	Modules []Module `json:"modules"`
	// LoadOrderFile is the archive path of the load list; empty when the
	// archive has no modules directory (no kernel release known).
	LoadOrderFile string `json:"load_order_file,omitempty"`
	// Builtin are wanted modules that modules.builtin lists as built in.
	Builtin []string `json:"builtin,omitempty"`
	// AssumedBuiltin are wanted modules that are not modules of this kernel
	// when there is no modules.builtin to confirm they are built in (or no
	// modules directory at all). Worth a log line: a typo looks the same.
	AssumedBuiltin []string `json:"assumed_builtin,omitempty"`
}

// Module is one module in the archive.
type Module struct {
	Name string `json:"name"`
	// Path is relative to lib/modules/<kver>/ and always ends in plain ".ko".
	Path string `json:"path"`
	// Source is the path it came from in the kernel tree (maybe compressed).
	Source       string   `json:"source"`
	SourceSHA256 string   `json:"source_sha256"`
	Depends      []string `json:"depends,omitempty"`
	SoftPre      []string `json:"softdep_pre,omitempty"`
}

// plan is everything that determines the archive bytes, read once: the cache
// key is computed from it and the archive is written from it, so a binary
// replaced between the two steps cannot produce an archive that does not
// match its key.
type plan struct {
	manifest Manifest
	init     []byte
	agent    []byte
	modules  [][]byte // plain ELF bytes, parallel to manifest.Modules
}

// key is the content hash naming the cached archive. The manifest already
// holds the hashes of every input (binaries, module sources) and every
// choice (kernel release, banger version, module list), and FormatVersion
// covers the code that turns them into bytes.
func (p *plan) key() (string, error) {
	mj, err := json.Marshal(p.manifest)
	if err != nil {
		return "", err
	}
	h := sha256.New()
	fmt.Fprintf(h, "banger-initramfs\x00%d\x00%d\x00", FormatVersion, gzipLevel)
	h.Write(mj)
	return hex.EncodeToString(h.Sum(nil)), nil
}

func sha256Hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// makePlan reads the binaries and resolves the modules.
func makePlan(ctx context.Context, spec Spec) (*plan, error) {
	if spec.InitBinary == "" || spec.AgentBinary == "" {
		return nil, errors.New("initramfs: both the init and the agent binary are required")
	}
	kver := spec.KernelRelease
	if kver == "" && spec.ModulesDir != "" {
		kver = path.Base(strings.TrimRight(spec.ModulesDir, "/"))
	}
	if strings.ContainsAny(kver, "/\x00") || kver == "." || kver == ".." {
		return nil, fmt.Errorf("initramfs: invalid kernel release %q", kver)
	}
	p := &plan{}
	var err error
	if p.init, err = readBinary("init", spec.InitBinary); err != nil {
		return nil, err
	}
	if p.agent, err = readBinary("agent", spec.AgentBinary); err != nil {
		return nil, err
	}
	m := Manifest{
		Format:        FormatVersion,
		KernelRelease: kver,
		BangerVersion: spec.BangerVersion,
		InitSHA256:    sha256Hex(p.init),
		AgentSHA256:   sha256Hex(p.agent),
		Modules:       []Module{},
	}
	wanted := append(DefaultModules(), spec.ExtraModules...)
	if spec.ModulesDir == "" {
		seen := map[string]bool{}
		for _, w := range wanted {
			if n := normalizeName(w); n != "" && !seen[n] {
				seen[n] = true
				m.AssumedBuiltin = append(m.AssumedBuiltin, n)
			}
		}
		sort.Strings(m.AssumedBuiltin)
	} else {
		ix, err := loadIndex(ctx, spec.ModulesDir)
		if err != nil {
			return nil, fmt.Errorf("initramfs: %w", err)
		}
		res, err := ix.resolve(ctx, wanted)
		if err != nil {
			return nil, fmt.Errorf("initramfs: %w", err)
		}
		m.DependencySource = DepSourceModinfo
		if ix.hasDepFile {
			m.DependencySource = DepSourceModulesDep
		}
		m.Builtin, m.AssumedBuiltin = res.builtin, res.assumedBuiltin
		for _, name := range res.order {
			d, err := ix.load(name)
			if err != nil {
				return nil, fmt.Errorf("initramfs: %w", err)
			}
			hard, soft, err := ix.deps(name)
			if err != nil {
				return nil, fmt.Errorf("initramfs: %w", err)
			}
			src := ix.files[name]
			m.Modules = append(m.Modules, Module{
				Name:         name,
				Path:         plainPath(src),
				Source:       src,
				SourceSHA256: d.sum,
				Depends:      sortedUnique(hard),
				SoftPre:      presentOnly(sortedUnique(soft), ix.files),
			})
			p.modules = append(p.modules, d.plain)
		}
	}
	if kver != "" {
		m.LoadOrderFile = path.Join("lib/modules", kver, LoadOrderName)
	} else if len(m.Modules) > 0 {
		return nil, errors.New("initramfs: kernel release unknown: set KernelRelease or ModulesDir")
	}
	p.manifest = m
	return p, nil
}

// presentOnly keeps the soft dependencies that are modules of this kernel,
// the ones the resolver actually placed before their dependent.
func presentOnly(names []string, files map[string]string) []string {
	var out []string
	for _, n := range names {
		if _, ok := files[n]; ok {
			out = append(out, n)
		}
	}
	return out
}

func readBinary(what, p string) ([]byte, error) {
	st, err := os.Stat(p)
	if err != nil {
		return nil, fmt.Errorf("initramfs: %s binary: %w", what, err)
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("initramfs: %s binary %s is not a regular file", what, p)
	}
	b, err := os.ReadFile(p)
	if err != nil {
		return nil, fmt.Errorf("initramfs: %s binary: %w", what, err)
	}
	if len(b) == 0 {
		return nil, fmt.Errorf("initramfs: %s binary %s is empty", what, p)
	}
	return b, nil
}

// Build writes the gzip-compressed newc cpio initramfs for spec to w and
// returns its manifest. Same inputs give byte-identical output.
func Build(ctx context.Context, spec Spec, w io.Writer) (Manifest, error) {
	p, err := makePlan(ctx, spec)
	if err != nil {
		return Manifest{}, err
	}
	if err := p.write(ctx, w); err != nil {
		return Manifest{}, err
	}
	return p.manifest, nil
}

// entries lists every archive member, parents included, sorted by name so
// that the order (and thus the inode numbers) depends only on the content,
// and every directory comes before what it contains.
func (p *plan) entries() ([]cpioEntry, error) {
	files := map[string]cpioEntry{}
	add := func(e cpioEntry) {
		files[e.name] = e
		for dir := path.Dir(e.name); dir != "."; dir = path.Dir(dir) {
			if _, ok := files[dir]; !ok {
				files[dir] = cpioEntry{name: dir, mode: modeDir | 0o755}
			}
		}
	}
	for _, d := range mountPoints {
		add(cpioEntry{name: d, mode: modeDir | 0o755})
	}
	// PID 1 starts with fds 0/1/2 on /dev/console; without the node the kernel
	// prints "Warning: unable to open an initial console" and init's output is
	// lost until devtmpfs is mounted.
	add(cpioEntry{name: "dev/console", mode: modeChar | 0o600, rdevMajor: 5, rdevMinor: 1})
	add(cpioEntry{name: "dev/null", mode: modeChar | 0o666, rdevMajor: 1, rdevMinor: 3})
	add(cpioEntry{name: InitPath, mode: modeReg | 0o755, data: p.init})
	add(cpioEntry{name: AgentPath, mode: modeReg | 0o755, data: p.agent})

	m := p.manifest
	if m.LoadOrderFile != "" {
		var load strings.Builder
		for i, mod := range m.Modules {
			add(cpioEntry{name: path.Join("lib/modules", m.KernelRelease, mod.Path), mode: modeReg | 0o644, data: p.modules[i]})
			load.WriteString(mod.Path + "\n")
		}
		add(cpioEntry{name: m.LoadOrderFile, mode: modeReg | 0o644, data: []byte(load.String())})
	}
	mj, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, err
	}
	add(cpioEntry{name: ManifestPath, mode: modeReg | 0o644, data: append(mj, '\n')})

	out := make([]cpioEntry, 0, len(files))
	for _, e := range files {
		out = append(out, e)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out, nil
}

// write streams the archive: cpio through a fixed-level gzip whose header
// carries no name and no mtime (gzip's mtime would otherwise be the only
// time-dependent bytes).
func (p *plan) write(ctx context.Context, w io.Writer) error {
	entries, err := p.entries()
	if err != nil {
		return err
	}
	bw := bufio.NewWriterSize(w, 1<<20)
	zw, err := gzip.NewWriterLevel(bw, gzipLevel)
	if err != nil {
		return err
	}
	cw := &newcWriter{w: zw}
	for i, e := range entries {
		if err := ctx.Err(); err != nil {
			return err
		}
		// Inodes 1..n in name order: unique, and a pure function of the content.
		if err := cw.writeEntry(e, uint32(i+1)); err != nil {
			return fmt.Errorf("initramfs: write %s: %w", e.name, err)
		}
	}
	if err := cw.close(); err != nil {
		return fmt.Errorf("initramfs: write trailer: %w", err)
	}
	if err := zw.Close(); err != nil {
		return fmt.Errorf("initramfs: compress: %w", err)
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("initramfs: write: %w", err)
	}
	return nil
}
