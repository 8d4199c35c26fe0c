package initramfs

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/banger-vm/banger/internal/system"
)

// Cache keeps built initramfs archives in Dir, one file per content key.
type Cache struct {
	Dir string
	// Memo, if set, remembers within this process which archive a spec resolved to, so a
	// repeated Ensure with unchanged inputs costs a few stats instead of reading and
	// hashing every input.
	Memo *Memo
}

// Memo maps the identity of a spec's inputs to the archive Ensure found or built for
// them. An input's identity is its device, inode, size and modification time: the
// binaries are replaced (not rewritten in place) when banger is upgraded, and kernel
// directories are unpacked into staging and renamed, so a changed input has a new
// identity. Safe for concurrent use.
type Memo struct {
	mu sync.Mutex
	m  map[memoKey]Result
}

// NewMemo returns an empty Memo.
func NewMemo() *Memo { return &Memo{m: map[memoKey]Result{}} }

type memoKey struct {
	spec                          string // the spec's own fields
	initBin, agentBin, mods, deps string // system.FileVersion of each
}

func statID(p string) (string, error) {
	if p == "" {
		return "", nil
	}
	return system.FileVersion(p)
}

// key is spec's memo key; ok is false when an input cannot be identified (Ensure then
// does the full work, which reports the problem).
func (m *Memo) key(spec Spec) (memoKey, bool) {
	k := memoKey{spec: strings.Join(append([]string{spec.InitBinary, spec.AgentBinary, spec.KernelRelease,
		spec.ModulesDir, spec.BangerVersion}, spec.ExtraModules...), "\x00")}
	var err error
	if k.initBin, err = statID(spec.InitBinary); err != nil {
		return k, false
	}
	if k.agentBin, err = statID(spec.AgentBinary); err != nil {
		return k, false
	}
	if spec.ModulesDir != "" {
		if k.mods, err = statID(spec.ModulesDir); err != nil {
			return k, false
		}
		// The module index changes with the tree (depmod); a missing one is not an error
		// here, the full path decides.
		k.deps, _ = statID(filepath.Join(spec.ModulesDir, "modules.dep"))
	}
	return k, true
}

func (m *Memo) get(k memoKey) (Result, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	r, ok := m.m[k]
	return r, ok
}

func (m *Memo) put(k memoKey, r Result) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.m[k] = r
}

// Result is what Ensure found or built.
type Result struct {
	Path     string   // the archive, complete (never a partial write)
	Manifest Manifest // what it holds
	Key      string   // hex sha256 over every input; part of the file name
	Hit      bool     // true when the archive already existed
}

const (
	cacheLockName = ".lock"
	tmpPrefix     = ".initramfs-"
	tmpSuffix     = ".tmp"
)

// Ensure returns the cached archive for spec, building it on a miss.
//
// The key covers the kernel release, banger version, the exact bytes of the
// init and agent binaries and of every module source, the resolved module
// list, and the archive format, so rebuilding banger-init or unpacking a
// different build of the same kernel release yields a new archive, while an
// unchanged spec is a hit that only costs reading and hashing the inputs.
//
// The archive is written to a temp file in Dir and renamed into place after
// fsync, so a crash never leaves a file under the final name that looks
// complete but is not. Builders take an flock on Dir/.lock, so concurrent
// Ensure calls (goroutines or processes) build once and the others find the
// result; the bytes are reproducible anyway, so even a racing rename would
// install identical content.
func (c Cache) Ensure(ctx context.Context, spec Spec) (Result, error) {
	if c.Dir == "" {
		return Result{}, errors.New("initramfs cache: no directory configured")
	}
	var mk memoKey
	memoOK := false
	if c.Memo != nil {
		if mk, memoOK = c.Memo.key(spec); memoOK {
			if r, ok := c.Memo.get(mk); ok {
				// The archive may have been pruned or removed by hand since.
				if present, err := present(r.Path); err == nil && present {
					r.Hit = true
					return r, nil
				}
			}
		}
	}
	res, err := c.ensure(ctx, spec)
	if err == nil && memoOK {
		c.Memo.put(mk, res)
	}
	return res, err
}

func (c Cache) ensure(ctx context.Context, spec Spec) (Result, error) {
	p, err := makePlan(ctx, spec)
	if err != nil {
		return Result{}, err
	}
	key, err := p.key()
	if err != nil {
		return Result{}, fmt.Errorf("initramfs cache: %w", err)
	}
	res := Result{
		Path:     filepath.Join(c.Dir, cacheFileName(p.manifest.KernelRelease, key)),
		Manifest: p.manifest,
		Key:      key,
	}
	if ok, err := present(res.Path); err != nil || ok {
		res.Hit = ok
		return res, err
	}

	if err := os.MkdirAll(c.Dir, 0o755); err != nil {
		return Result{}, fmt.Errorf("initramfs cache: %w", err)
	}
	unlock, err := lockFile(ctx, filepath.Join(c.Dir, cacheLockName))
	if err != nil {
		return Result{}, fmt.Errorf("initramfs cache: %w", err)
	}
	defer unlock()
	// Someone else may have built it while we waited for the lock.
	if ok, err := present(res.Path); err != nil || ok {
		res.Hit = ok
		return res, err
	}
	// Holding the lock, no other builder is writing: temp files still here
	// were left by a builder that crashed.
	removeStaleTemps(c.Dir)

	if err := c.writeAtomic(ctx, p, res.Path); err != nil {
		return Result{}, err
	}
	return res, nil
}

func (c Cache) writeAtomic(ctx context.Context, p *plan, dst string) (err error) {
	f, err := os.CreateTemp(c.Dir, tmpPrefix+"*"+tmpSuffix)
	if err != nil {
		return fmt.Errorf("initramfs cache: %w", err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			_ = f.Close()
			_ = os.Remove(tmp)
		}
	}()
	if err = p.write(ctx, f); err != nil {
		return err
	}
	// Data must be on disk before the rename makes the name visible, or a
	// power loss could leave a complete-looking name with missing blocks.
	if err = f.Sync(); err != nil {
		return fmt.Errorf("initramfs cache: sync %s: %w", tmp, err)
	}
	if err = f.Chmod(0o644); err != nil {
		return fmt.Errorf("initramfs cache: %w", err)
	}
	if err = f.Close(); err != nil {
		return fmt.Errorf("initramfs cache: close %s: %w", tmp, err)
	}
	if err = os.Rename(tmp, dst); err != nil {
		return fmt.Errorf("initramfs cache: install %s: %w", dst, err)
	}
	// Persist the rename itself; failure here is not fatal to this run (the
	// file is in place), but report it since the next boot may lose it.
	if d, derr := os.Open(c.Dir); derr == nil {
		serr := d.Sync()
		_ = d.Close()
		if serr != nil {
			return fmt.Errorf("initramfs cache: sync %s: %w", c.Dir, serr)
		}
	}
	return nil
}

// cacheFileName is readable for humans (kernel release first) and unique by
// key. 24 hex digits (96 bits) are plenty to avoid accidental collisions.
func cacheFileName(kver, key string) string {
	if kver == "" {
		kver = "nokernel"
	}
	safe := strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '.', r == '_', r == '-', r == '+':
			return r
		}
		return '_'
	}, kver)
	return "initramfs-" + safe + "-" + key[:24] + ".cpio.gz"
}

// present reports whether a finished archive is at p. Only complete
// archives ever get their final name (see writeAtomic), so existence is
// enough; an empty file can only be outside tampering and is rebuilt.
func present(p string) (bool, error) {
	st, err := os.Stat(p)
	switch {
	case err == nil:
		return st.Mode().IsRegular() && st.Size() > 0, nil
	case errors.Is(err, fs.ErrNotExist):
		return false, nil
	default:
		return false, fmt.Errorf("initramfs cache: %w", err)
	}
}

func removeStaleTemps(dir string) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range ents {
		if n := e.Name(); strings.HasPrefix(n, tmpPrefix) && strings.HasSuffix(n, tmpSuffix) {
			_ = os.Remove(filepath.Join(dir, n))
		}
	}
}

// Prune removes cached archives whose paths are not in keep (e.g. the ones
// that current VMs boot from) and returns what it removed. It takes the
// builders' lock so it never races an archive being installed. A removed
// archive is simply rebuilt by the next Ensure that needs it.
func (c Cache) Prune(ctx context.Context, keep ...string) ([]string, error) {
	if c.Dir == "" {
		return nil, errors.New("initramfs cache: no directory configured")
	}
	if _, err := os.Stat(c.Dir); errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	unlock, err := lockFile(ctx, filepath.Join(c.Dir, cacheLockName))
	if err != nil {
		return nil, fmt.Errorf("initramfs cache: %w", err)
	}
	defer unlock()
	kept := map[string]bool{}
	for _, k := range keep {
		kept[filepath.Clean(k)] = true
	}
	ents, err := os.ReadDir(c.Dir)
	if err != nil {
		return nil, fmt.Errorf("initramfs cache: %w", err)
	}
	var removed []string
	for _, e := range ents {
		n := e.Name()
		p := filepath.Join(c.Dir, n)
		if !strings.HasPrefix(n, "initramfs-") || !strings.HasSuffix(n, ".cpio.gz") || kept[p] {
			continue
		}
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return removed, fmt.Errorf("initramfs cache: %w", err)
		}
		removed = append(removed, p)
	}
	return removed, nil
}
