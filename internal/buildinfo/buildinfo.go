// Package buildinfo carries the version and other values stamped into the binary at link
// time.
package buildinfo

import (
	"runtime/debug"
	"strings"
)

// version is set with -ldflags "-X github.com/banger-vm/banger/internal/buildinfo.version=v1.2.3".
var version = ""

// updateKeys adds accepted release-signing keys (comma-separated base64 ed25519 public
// keys) to the ones compiled into internal/update. Release builds can roll in a new key
// with it; tests use it to trust a key they generated.
var updateKeys = ""

// testHooks lists test-only behaviours compiled in: "doctor-fail" makes doctor register a
// check that always FAILs, "crash" makes `banger update` honour BANGER_UPDATE_CRASH_AT. Only
// test builds set it ("-X ...buildinfo.testHooks=doctor-fail,crash"); release builds never do.
var testHooks = ""

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

// UpdateKeys returns the release keys added at link time (base64 ed25519 public keys).
func UpdateKeys() []string {
	var out []string
	for _, k := range strings.Split(updateKeys, ",") {
		if k = strings.TrimSpace(k); k != "" {
			out = append(out, k)
		}
	}
	return out
}

// TestHook reports whether the named test hook was compiled in ("doctor-fail", "crash").
// It is always false in release builds.
func TestHook(name string) bool {
	for _, h := range strings.Split(testHooks, ",") {
		if strings.TrimSpace(h) == name {
			return true
		}
	}
	return false
}
