package daemon

// Disk templates: each image's fresh work disk (its seed applied, banger's user key
// authorized, at one size) and a fresh writable layer are built once and copied for every
// new VM (a reflink where the filesystem has them, a sparse copy otherwise). A create then
// costs two copies and one small write of the VM's own host key, instead of two mkfs runs,
// a walk of the seed and several debugfs batches.

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/banger-vm/banger/internal/system"
	"github.com/banger-vm/banger/internal/system/ext4"
)

// templateTmpSuffix marks a template being built: a leftover of a killed daemon is removed
// by the next build of the same template.
const templateTmpSuffix = ".building"

// diskTemplates is the per-daemon template cache in dir.
type diskTemplates struct {
	dir  string
	ext4 *ext4.Toolkit

	mu    sync.Mutex
	locks map[string]*sync.Mutex // one build at a time per template
}

func newDiskTemplates(dir string, e *ext4.Toolkit) *diskTemplates {
	return &diskTemplates{dir: dir, ext4: e, locks: map[string]*sync.Mutex{}}
}

// templateName is a template's file name: its kind (and image), then a hash of the inputs
// that make it.
func templateName(kind string, parts ...string) string {
	h := sha256.Sum256([]byte(strings.Join(parts, "\x00")))
	return kind + "-" + hex.EncodeToString(h[:12]) + ".ext4"
}

// copyOf copies the template named name to dst, building the template first with build
// (into a temporary path it is given) when it is missing.
func (t *diskTemplates) copyOf(ctx context.Context, name, dst string, build func(ctx context.Context, tmp string) error) error {
	tpl, err := t.ensure(ctx, name, build)
	if err != nil {
		return err
	}
	if _, err := system.CloneFile(ctx, tpl, dst); err != nil {
		return fmt.Errorf("copy disk template %s: %w", name, err)
	}
	return nil
}

// ensure returns the path of the template named name, building it with build first when it
// is missing.
func (t *diskTemplates) ensure(ctx context.Context, name string, build func(ctx context.Context, tmp string) error) (string, error) {
	tpl := filepath.Join(t.dir, name)
	if _, err := os.Stat(tpl); err == nil {
		return tpl, nil
	}
	return tpl, t.build(ctx, tpl, build)
}

func (t *diskTemplates) build(ctx context.Context, tpl string, build func(ctx context.Context, tmp string) error) error {
	t.mu.Lock()
	l := t.locks[tpl]
	if l == nil {
		l = &sync.Mutex{}
		t.locks[tpl] = l
	}
	t.mu.Unlock()
	l.Lock()
	defer l.Unlock()
	if _, err := os.Stat(tpl); err == nil {
		return nil // built while we waited
	}
	if err := os.MkdirAll(t.dir, 0o700); err != nil {
		return fmt.Errorf("disk templates: %w", err)
	}
	tmp := tpl + templateTmpSuffix
	_ = os.Remove(tmp) // a killed build's leftover
	if err := build(ctx, tmp); err != nil {
		_ = os.Remove(tmp)
		return err
	}
	if err := os.Rename(tmp, tpl); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("disk templates: %w", err)
	}
	return system.SyncDir(t.dir)
}

// workDisk gives dst a fresh work disk of size bytes from the image's seed (none: empty),
// with userKey authorized for root.
func (t *diskTemplates) workDisk(ctx context.Context, imageID, seed string, size int64, userKey []byte, dst string) error {
	name, build := t.workTemplate(imageID, seed, size, userKey)
	return t.copyOf(ctx, name, dst, build)
}

// warmWorkDisk builds the image's work disk template of size bytes now, so the image's first
// VM only copies it.
func (t *diskTemplates) warmWorkDisk(ctx context.Context, imageID, seed string, size int64, userKey []byte) error {
	name, build := t.workTemplate(imageID, seed, size, userKey)
	_, err := t.ensure(ctx, name, build)
	return err
}

// workTemplate names the work disk template for its inputs and says how to build it.
func (t *diskTemplates) workTemplate(imageID, seed string, size int64, userKey []byte) (string, func(ctx context.Context, tmp string) error) {
	seedStamp := "none"
	if seed != "" {
		if s, err := system.FileVersion(seed); err == nil {
			seedStamp = s
		}
	}
	name := templateName("work-"+imageID, seed, seedStamp, fmt.Sprint(size), string(userKey))
	return name, func(ctx context.Context, tmp string) error {
		if _, err := t.ext4.BuildWorkDisk(ctx, ext4.WorkDiskSpec{Path: tmp, SizeBytes: size, SeedPath: seed}); err != nil {
			return err
		}
		return authorizeKey(ctx, t.ext4, tmp, userKey)
	}
}

// layer gives dst a fresh writable layer holding the sshd drop-in that makes sshd serve
// the VM's own host key (which the caller adds).
func (t *diskTemplates) layer(ctx context.Context, dst string) error {
	return t.copyOf(ctx, layerTemplateName, dst, t.buildLayer)
}

// warmLayer builds the writable layer template now.
func (t *diskTemplates) warmLayer(ctx context.Context) error {
	_, err := t.ensure(ctx, layerTemplateName, t.buildLayer)
	return err
}

var layerTemplateName = templateName("layer", fmt.Sprint(layerDiskBytes), "banger-layer", sshdDropIn)

func (t *diskTemplates) buildLayer(ctx context.Context, tmp string) error {
	if err := t.ext4.CreateExt4(ctx, tmp, layerDiskBytes, ext4.CreateOptions{Label: "banger-layer"}); err != nil {
		return err
	}
	return t.ext4.WriteExt4Files(ctx, tmp, []ext4.Ext4Entry{sshdDropInEntry("/upper")})
}

// forgetImage removes the work disk templates of an image (when it is removed).
func (t *diskTemplates) forgetImage(imageID string) {
	matches, _ := filepath.Glob(filepath.Join(t.dir, "work-"+imageID+"-*"))
	for _, m := range matches {
		_ = os.Remove(m)
	}
}
