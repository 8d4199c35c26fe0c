package daemon

import (
	"context"
	"os"
	"slices"
	"testing"

	"github.com/banger-vm/banger/internal/api"
)

// TestFakeResize: a running VM's work disk grows online (file, VMM, guest agent); a
// stopped one's offline with e2fsprogs, leaving a clean filesystem; shrinking, a paused VM
// and bad sizes are refused.
func TestFakeResize(t *testing.T) {
	e := newFakeEnv(t)
	ctx := context.Background()
	must(e.create("rz", true))
	resize := func(size string) (api.VM, error) {
		return e.d.resizeVM(ctx, api.VMResizeRequest{Name: "rz", Disk: size})
	}
	for _, bad := range []string{"lots", "-1G", "99999T"} {
		_, err := resize(bad)
		wantCode(t, err, api.CodeBadRequest, "disk size")
	}
	_, err := resize("128M")
	wantCode(t, err, api.CodeBadRequest, "shrinking is not supported")
	_, err = e.d.resizeVM(ctx, api.VMResizeRequest{Name: "nosuch", Disk: "1G"})
	wantCode(t, err, api.CodeNotFound, "not found")

	if _, err := resize("512M"); err != nil {
		t.Fatal(err)
	}
	vm, rec := e.record("rz")
	if fi, err := os.Stat(rec.workDisk()); err != nil || fi.Size() != 512<<20 || rec.DiskBytes != 512<<20 {
		t.Fatalf("online: file %v %v, record %d", fi, err, rec.DiskBytes)
	}
	if m := e.d.machine(vm.ID).(*fakeMachine); !slices.Equal(m.resized, []string{"work=536870912"}) {
		t.Fatalf("the VMM was told %v", m.resized)
	}

	must(e.d.pauseVM(ctx, "rz", noProgress))
	_, err = resize("1G")
	wantCode(t, err, api.CodeConflict, "paused")
	must(e.d.startVM(ctx, "rz", noProgress))

	must(e.d.stopVM(ctx, api.VMStopRequest{Name: "rz", Force: true}))
	if _, err := resize("1G"); err != nil {
		t.Fatal(err)
	}
	_, rec = e.record("rz")
	if fi, err := os.Stat(rec.workDisk()); err != nil || fi.Size() != 1<<30 {
		t.Fatalf("offline: %v %v", fi, err)
	}
	if err := e.d.images.Ext4.FsckExt4(ctx, rec.workDisk()); err != nil {
		t.Fatalf("the grown disk: %v", err)
	}
}
