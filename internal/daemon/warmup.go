package daemon

// Warm-up: the one-time work a first VM would otherwise pay for on its cold path (the VMM
// driver's probes of the host and its binary, the writable layer's template, the images'
// work disk templates), done once, in the background, when the daemon starts, and for an
// image as the last step of adding it.

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/banger-vm/banger/internal/api"
	"github.com/banger-vm/banger/internal/image"
	"github.com/banger-vm/banger/internal/lifecycle"
	"github.com/banger-vm/banger/internal/store"
	"github.com/banger-vm/banger/internal/system/ext4"
	"github.com/banger-vm/banger/internal/vmm"
)

// warmUpDeadline bounds the daemon start's warm-up; what it did not finish, the first VM
// does.
const warmUpDeadline = 2 * time.Minute

// startWarmUp warms the driver and the disk templates in the background; stopWarmUp ends it.
func (d *Daemon) startWarmUp() {
	ctx, cancel := context.WithTimeout(context.Background(), warmUpDeadline)
	done := make(chan struct{})
	d.warm = warmUp{cancel: cancel, done: done}
	go func() {
		defer close(done)
		defer cancel()
		start := time.Now()
		err := d.warmUp(ctx)
		if err != nil && !errors.Is(err, context.Canceled) {
			d.log.Warn("warm-up did not finish: the first VM start does the rest", "err", err)
			return
		}
		d.log.Debug("warm-up done", "took", time.Since(start).Round(time.Microsecond))
	}()
}

// warmUp is a daemon's background warm-up in flight.
type warmUp struct {
	cancel context.CancelFunc
	done   <-chan struct{}
}

// stopWarmUp cancels the warm-up and waits for it (it writes in the cache and reads the
// store, which Shutdown is about to close).
func (d *Daemon) stopWarmUp() {
	if d.vms != nil && d.vms.tpl != nil {
		d.vms.tpl.stop()
	}
	if d.warm.cancel == nil {
		return
	}
	d.warm.cancel()
	<-d.warm.done
}

// waitWarmUp waits for the start's warm-up to end, or for ctx.
func (d *Daemon) waitWarmUp(ctx context.Context) error {
	if d.warm.done == nil {
		return nil
	}
	select {
	case <-d.warm.done:
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

func (d *Daemon) warmUp(ctx context.Context) error {
	var errs []error
	if choice, err := d.chooseVMM(); err == nil {
		if drv, err := d.driver(choice.Driver, choice.Accel); err != nil {
			errs = append(errs, err)
		} else if w, ok := drv.(vmm.Warmer); ok {
			errs = append(errs, w.Warm(ctx))
		}
	}
	errs = append(errs, d.vms.disks.warmLayer(ctx))
	images, err := d.store.ListImages(ctx)
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	for _, img := range images {
		if ctx.Err() != nil {
			break
		}
		errs = append(errs, d.warmImage(ctx, img))
	}
	return errors.Join(errs...)
}

// imageAdded is the last step of adding img (pull, import, build): its work disk template,
// so its first VM only copies it. It reports the step to p; a failure is only logged (that
// first VM builds the template itself). It returns img for the API.
func (d *Daemon) imageAdded(ctx context.Context, img store.Image, p image.ProgressFunc) api.Image {
	const stage = "preparing the work disk template"
	if p != nil {
		p(image.Progress{Stage: stage})
	}
	start := time.Now()
	if err := d.warmImage(ctx, img); err != nil {
		d.log.Warn("could not build the image's work disk template: its first VM builds it", "image", img.Name, "err", err)
	} else if p != nil {
		p(image.Progress{Stage: stage, Message: fmt.Sprintf("%.1f ms", lifecycle.Millis(time.Since(start)))})
	}
	// The template boots a VM: built in the background, it does not hold up the add.
	d.warmImageTemplate(ctx, img)
	return imageToAPI(img)
}

// warmImage builds img's work disk template at the default size, so its first VM copies it.
func (d *Daemon) warmImage(ctx context.Context, img store.Image) error {
	userKey, err := d.vms.keys.EnsureUserKey()
	if err != nil {
		return err
	}
	return d.vms.disks.warmWorkDisk(ctx, img.ID, img.WorkSeedPath, ext4.DefaultWorkDiskSize, userKey)
}
