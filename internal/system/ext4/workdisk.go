package ext4

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
)

// DefaultWorkDiskSize is the work disk size when none is asked for (sparse,
// so it costs only what the guest writes).
const DefaultWorkDiskSize int64 = 8 << 30

// InjectedFile is a file placed on a new work disk.
type InjectedFile struct {
	// Path inside the work disk. The disk is mounted at /root in the guest,
	// so the guest's /root/.ssh/authorized_keys is ".ssh/authorized_keys".
	Path     string
	Data     []byte
	Mode     fs.FileMode // permission bits (incl. setuid/setgid/sticky)
	UID, GID uint32
	// DirMode is used for parent directories that do not exist yet
	// (owned UID:GID); 0 means 0700.
	DirMode fs.FileMode
}

// WorkDiskSpec describes a work disk to create.
type WorkDiskSpec struct {
	Path      string // must not exist
	SizeBytes int64  // 0 = DefaultWorkDiskSize
	SeedPath  string // work-seed.ext4; "" or missing = empty disk
	Inject    []InjectedFile
}

// BuildWorkDisk creates a fresh sparse ext4 work disk, root-owned root
// directory, filled from the seed's contents plus the injected files, modes
// and owners preserved. The seed file is never copied and no e2fsck or
// resize2fs runs: mkfs.ext4 -d builds the disk at its final size in one pass.
// A missing seed gives an empty, valid disk and a warning. On error nothing
// is left behind.
func (e *Toolkit) BuildWorkDisk(ctx context.Context, spec WorkDiskSpec) (warnings []string, err error) {
	if spec.Path == "" {
		return nil, errors.New("build work disk: no path given")
	}
	size := spec.SizeBytes
	if size == 0 {
		size = DefaultWorkDiskSize
	}
	for _, t := range []string{toolMkfs, toolDebugfs} {
		if _, err := e.tool(t); err != nil {
			return nil, fmt.Errorf("build work disk %s: %w", spec.Path, err)
		}
	}
	if _, err := os.Lstat(spec.Path); err == nil {
		return nil, fmt.Errorf("build work disk %s: already exists (delete the old disk first)", spec.Path)
	}
	// The seed is listed before staging, so staging goes to tmpfs only when it fits.
	var tree *imageTree
	need := int64(1 << 20)
	if spec.SeedPath != "" {
		if _, err := os.Stat(spec.SeedPath); errors.Is(err, fs.ErrNotExist) {
			warnings = append(warnings, fmt.Sprintf("work seed %s not found: the work disk starts empty (rebuild the image to regenerate its seed)", spec.SeedPath))
		} else if err := checkExt4Image(spec.SeedPath); err != nil {
			return warnings, fmt.Errorf("build work disk %s: work seed: %w", spec.Path, err)
		} else if tree, err = e.listTree(ctx, spec.SeedPath, "/"); err != nil {
			return warnings, fmt.Errorf("build work disk %s: work seed: %w", spec.Path, err)
		} else {
			need += tree.stageNeed()
		}
	}
	for _, f := range spec.Inject {
		need += int64(len(f.Data)) + 4096
	}
	work, err := e.newStaging(spec.Path, "disk", need)
	if err != nil {
		return nil, fmt.Errorf("build work disk %s: %w", spec.Path, err)
	}
	defer work.remove()
	t, w, err := e.stageWork(ctx, tree, work)
	warnings = append(warnings, w...)
	if err != nil {
		return warnings, fmt.Errorf("build work disk %s: %w", spec.Path, err)
	}
	for _, f := range spec.Inject {
		if err := injectIntoStage(t, f); err != nil {
			return warnings, fmt.Errorf("build work disk %s: %w", spec.Path, err)
		}
	}
	// Root-owned root directory whatever the seed says.
	t.meta[""].uid, t.meta[""].gid = 0, 0
	if err := e.buildImage(ctx, spec.Path, size, t, work.scratch); err != nil {
		return warnings, fmt.Errorf("build work disk: %w", err)
	}
	return warnings, nil
}

func injectIntoStage(t *stagedTree, f InjectedFile) error {
	c := path.Clean("/" + f.Path)
	if c == "/" || strings.Contains(f.Path, "..") {
		return fmt.Errorf("inject %q: path must name a file inside the disk, without '..'", f.Path)
	}
	k := strings.TrimPrefix(c, "/")
	dirMode := f.DirMode
	if dirMode == 0 {
		dirMode = 0o700
	}
	parts := strings.Split(k, "/")
	for i := 1; i < len(parts); i++ {
		p := strings.Join(parts[:i], "/")
		host := filepath.Join(t.dir, filepath.FromSlash(p))
		if m, ok := t.meta[p]; ok {
			if m.mode&0o170000 != 0o040000 {
				return fmt.Errorf("inject %s: %s exists and is not a directory", c, p)
			}
			continue
		}
		if err := os.Mkdir(host, 0o700); err != nil {
			return fmt.Errorf("inject %s: %w", c, err)
		}
		t.meta[p] = &nodeMeta{mode: fileModeToUnix(dirMode.Perm() | fs.ModeDir), uid: f.UID, gid: f.GID}
	}
	host := filepath.Join(t.dir, filepath.FromSlash(k))
	if m, ok := t.meta[k]; ok {
		if m.mode&0o170000 == 0o040000 {
			return fmt.Errorf("inject %s: a directory is in the way", c)
		}
		if err := os.Remove(host); err != nil {
			return fmt.Errorf("inject %s: %w", c, err)
		}
	}
	if err := os.WriteFile(host, f.Data, 0o600); err != nil {
		return fmt.Errorf("inject %s: %w", c, err)
	}
	t.meta[k] = &nodeMeta{mode: fileModeToUnix(f.Mode &^ fs.ModeType), uid: f.UID, gid: f.GID}
	return nil
}
