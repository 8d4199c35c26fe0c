package system

import (
	"fmt"
	"os"
	"syscall"
)

// FileVersion identifies one version of a file by its device, inode, size and modification
// time: a file replaced by rename (how banger installs binaries, kernels and seeds) has a
// new version, so a cache keyed by it never serves a stale result.
func FileVersion(p string) (string, error) {
	fi, err := os.Stat(p)
	if err != nil {
		return "", err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return "", fmt.Errorf("no inode for %s", p)
	}
	return fmt.Sprintf("%d:%d:%d:%d", st.Dev, st.Ino, fi.Size(), fi.ModTime().UnixNano()), nil
}
