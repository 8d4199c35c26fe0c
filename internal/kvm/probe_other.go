//go:build !(linux && amd64)

package kvm

import (
	"context"
	"runtime"
)

// Probe reports KVM as unusable on platforms the probe does not implement:
// banger's KVM guests are x86_64 Linux guests on a Linux host.
func Probe(ctx context.Context, device string) ProbeResult {
	if device == "" {
		device = DefaultDevice
	}
	return ProbeResult{
		Status: StatusUnusable,
		Device: device,
		Detail: "KVM probe is implemented only for linux/amd64, not " + runtime.GOOS + "/" + runtime.GOARCH,
		Hint:   hintTCG,
	}
}
