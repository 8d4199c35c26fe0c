package ext4

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/banger-vm/banger/internal/system"
)

// BuildWorkSeed builds seedPath (conventionally work-seed.ext4) from the
// /root directory of rootfsImage, without mounting. Regular files,
// directories and symlinks are kept with owners and modes; special files are
// skipped with a warning. A rootfs without /root gives an empty seed and a
// warning. seedPath is replaced atomically, so a failed build keeps the old
// seed.
func (e *Toolkit) BuildWorkSeed(ctx context.Context, rootfsImage, seedPath string) (warnings []string, err error) {
	for _, t := range []string{toolMkfs, toolDebugfs} {
		if _, err := e.tool(t); err != nil {
			return nil, fmt.Errorf("build work seed: %w", err)
		}
	}
	if err := checkExt4Image(rootfsImage); err != nil {
		return nil, fmt.Errorf("build work seed: %w", err)
	}
	// List first: staging goes to tmpfs only when what is listed fits there.
	var tree *imageTree
	st, err := e.StatExt4(ctx, rootfsImage, "/root")
	switch {
	case errors.Is(err, fs.ErrNotExist):
		warnings = append(warnings, fmt.Sprintf("%s has no /root: the work seed is empty", rootfsImage))
	case err != nil:
		return nil, fmt.Errorf("build work seed: %w", err)
	case !st.Mode.IsDir():
		warnings = append(warnings, fmt.Sprintf("/root in %s is not a directory (%v): the work seed is empty", rootfsImage, st.Mode.Type()))
	default:
		if tree, err = e.listTree(ctx, rootfsImage, "/root"); err != nil {
			return nil, fmt.Errorf("build work seed: %w", err)
		}
	}
	need := int64(1 << 20)
	if tree != nil {
		need += tree.stageNeed()
	}
	work, err := e.newStaging(seedPath, "seed", need)
	if err != nil {
		return nil, fmt.Errorf("build work seed: %w", err)
	}
	defer work.remove()
	t, w, err := e.stageWork(ctx, tree, work)
	warnings = append(warnings, w...)
	if err != nil {
		return warnings, fmt.Errorf("build work seed: %w", err)
	}
	// Build beside seedPath so the final rename is atomic.
	f, err := os.CreateTemp(filepath.Dir(seedPath), "."+filepath.Base(seedPath)+".tmp-")
	if err != nil {
		return warnings, fmt.Errorf("build work seed: %w", err)
	}
	tmpImage := f.Name()
	f.Close()
	os.Remove(tmpImage)
	defer os.Remove(tmpImage) // no-op after a successful rename
	if err := e.buildImage(ctx, tmpImage, 0, t, work.scratch); err != nil {
		return warnings, fmt.Errorf("build work seed: %w", err)
	}
	if err := os.Rename(tmpImage, seedPath); err != nil {
		return warnings, fmt.Errorf("build work seed: install %s: %w", seedPath, err)
	}
	return warnings, system.SyncDir(filepath.Dir(seedPath))
}
