package qemu

import (
	"context"
	"testing"
)

// BenchmarkStart times Driver.Start with the real QEMU and the boot fixture, from the call
// to its return: the driver's part of a VM's "starting the vmm" stage. The sandbox probe is
// done before the clock starts (the daemon's warm-up does it); disks are made and each VM is
// killed with the clock stopped. Run with -benchtime 10x.
func BenchmarkStart(b *testing.B) {
	f, qemu := getFixture(b)
	d := testDriver(qemu, f)
	ctx := context.Background()
	if _, err := d.useSandbox(ctx, qemu); err != nil {
		b.Fatal(err)
	}
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		_, spec := newVM(b, f)
		b.StartTimer()
		m, err := d.Start(ctx, spec)
		b.StopTimer()
		if err != nil {
			b.Fatal(err)
		}
		_ = m.Kill()
		_ = m.Close()
		b.StartTimer()
	}
}
