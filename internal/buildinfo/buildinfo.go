// Package buildinfo carries the version stamped into the binary at link time.
package buildinfo

import "runtime/debug"

// version is set with -ldflags "-X github.com/banger-vm/banger/internal/buildinfo.version=v1.2.3".
var version = ""

// Version returns the stamped version, falling back to the module version or "dev".
func Version() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "dev"
}
