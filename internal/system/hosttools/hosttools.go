// Package hosttools finds the host programs banger uses (and their versions), and drives
// mmdebstrap and systemctl.
package hosttools

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// HostTool describes a host binary banger depends on, as found on this machine.
type HostTool struct {
	Name    string
	Path    string // "" when not found
	Version string // first version-looking token of its version output, "" if unknown
	Output  string // first line of its version output
}

// LookupTool finds name on searchPath (PATH when empty), or uses explicit when set, and asks
// it for its version with versionArgs. A missing tool is not an error: Path is empty. A tool
// that is found but cannot report a version is an error, since it is probably broken.
func LookupTool(ctx context.Context, name, explicit, searchPath string, versionArgs ...string) (HostTool, error) {
	t := HostTool{Name: name}
	path := explicit
	if path == "" {
		path = LookPathIn(name, searchPath)
		if path == "" {
			return t, nil
		}
	}
	t.Path = path
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	// Version output goes to stdout for most tools but to stderr for e2fsprogs.
	out, err := exec.CommandContext(ctx, path, versionArgs...).CombinedOutput()
	line := firstLine(out)
	t.Output = line
	t.Version = versionPattern.FindString(line)
	if err != nil {
		var ee *exec.ExitError
		// Some tools exit non-zero after printing a version (mke2fs -V did in old releases).
		if errors.As(err, &ee) && t.Version != "" {
			return t, nil
		}
		if errors.Is(err, os.ErrNotExist) {
			return t, fmt.Errorf("%s does not exist", path)
		}
		return t, fmt.Errorf("run %s %s: %w (output: %q)", path, strings.Join(versionArgs, " "), err, line)
	}
	return t, nil
}

var versionPattern = regexp.MustCompile(`\d+\.\d+(\.\d+)?`)

func firstLine(b []byte) string {
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if l := strings.TrimSpace(sc.Text()); l != "" {
			return l
		}
	}
	return ""
}

// VersionAtLeast compares dotted numeric versions ("1.10.2" >= "1.8").
func VersionAtLeast(have, want string) bool {
	h, w := strings.Split(have, "."), strings.Split(want, ".")
	for i := 0; i < len(h) || i < len(w); i++ {
		var hv, wv int
		if i < len(h) {
			hv, _ = strconv.Atoi(h[i])
		}
		if i < len(w) {
			wv, _ = strconv.Atoi(w[i])
		}
		if hv != wv {
			return hv > wv
		}
	}
	return true
}

// DefaultSearchPath is $PATH plus the sbin directories: e2fsprogs lives in /usr/sbin on
// Debian, which is not on an unprivileged user's PATH.
func DefaultSearchPath() string {
	return os.Getenv("PATH") + ":/usr/sbin:/sbin:/usr/local/sbin"
}

// LookPathIn finds an executable named name in the colon-separated dirs of searchPath, or of
// defaultSearchPath when searchPath is empty; it returns "" when there is none.
func LookPathIn(name, searchPath string) string {
	if searchPath == "" {
		searchPath = DefaultSearchPath()
	}
	for _, dir := range filepath.SplitList(searchPath) {
		if dir == "" {
			continue
		}
		p := filepath.Join(dir, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0 {
			return p
		}
	}
	return ""
}
