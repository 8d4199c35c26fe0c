package image

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/banger-vm/banger/internal/store"
	"github.com/banger-vm/banger/internal/system"
)

// KindBuild marks an image made by `banger image build`.
const KindBuild Kind = "build"

// BuildOptions describe an image build: a copy of Base's root filesystem, grown to
// SizeBytes if larger, changed by Provision (which boots it in a builder VM), then
// registered as Name with a work seed from its new /root and a fresh package manifest.
type BuildOptions struct {
	Name      string
	Base      store.Image
	SizeBytes int64 // 0 keeps the base's size
	// Provision changes the root filesystem image at rootfs; an error aborts the build.
	Provision func(ctx context.Context, rootfs string, progress ProgressFunc) error
	Progress  ProgressFunc
}

// Build builds and registers an image as described by o. On any error, or if ctx is
// cancelled, nothing is registered and the half-built files are removed.
func (m *Manager) Build(ctx context.Context, o BuildOptions) (store.Image, error) {
	o.Progress = serialised(o.Progress)
	if o.Name == "" || strings.ContainsAny(o.Name, "\n\x00/") {
		return store.Image{}, errors.New("image build: give the new image a name")
	}
	if o.SizeBytes > m.limits().MaxBytes {
		return store.Image{}, fmt.Errorf("image build: %w", m.limits().tooBig("--size", o.SizeBytes))
	}
	b, end, err := m.startBuild(o.Name, o.Progress)
	if err != nil {
		return store.Image{}, err
	}
	defer end()
	b.meta.Kind, b.meta.Ref = KindBuild, o.Base.Name
	b.prog.report(Progress{Stage: "copying " + o.Base.Name + "'s root filesystem"})
	if _, err := system.CloneFile(ctx, o.Base.RootfsPath, b.rootfs()); err != nil {
		return store.Image{}, fmt.Errorf("copy the base image: %w", err)
	}
	if o.SizeBytes > 0 {
		apparent, _ := fileSizes(b.rootfs())
		switch {
		case o.SizeBytes < apparent:
			return store.Image{}, fmt.Errorf("size %d MiB is smaller than %s's root filesystem (%d MiB): images only grow", o.SizeBytes>>20, o.Base.Name, apparent>>20)
		case o.SizeBytes > apparent:
			b.prog.report(Progress{Stage: fmt.Sprintf("growing the root filesystem to %d MiB", o.SizeBytes>>20)})
			if err := m.Ext4.GrowExt4(ctx, b.rootfs(), o.SizeBytes); err != nil {
				return store.Image{}, err
			}
		}
	}
	if err := o.Provision(ctx, b.rootfs(), b.prog); err != nil {
		return store.Image{}, err
	}
	var k *Kernel
	if o.Base.KernelRef != "" {
		if kk, err := m.Kernel(o.Base.KernelRef); err == nil {
			k = &kk
		}
	}
	return b.finish(ctx, o.Name, "build:"+o.Base.Name, "", k)
}
