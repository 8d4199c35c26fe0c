package hosttools

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/user"
	"strings"
)

// DebootstrapSpec describes a Debian root filesystem built by mmdebstrap.
type DebootstrapSpec struct {
	Suite   string   // bookworm, trixie, ...
	Mirror  string   // e.g. http://deb.debian.org/debian
	Variant string   // mmdebstrap variant; "" = apt
	Include []string // extra packages
	Keyring string   // "" = the keyring mmdebstrap/apt default to
	// CustomizeHooks are shell commands run on the finished tree ("$1" is its root).
	CustomizeHooks []string
	// Path is the mmdebstrap binary; "" looks it up on PATH.
	Path string
}

// Debootstrap runs mmdebstrap for spec and hands its tar output (stdout) to consume as it is
// produced. mmdebstrap verifies the archive's Release signatures with the keyring and every
// package's checksum, as apt does. As root it runs with --mode=root; otherwise with
// --mode=unshare, which needs user namespaces and a subordinate id range for the user in
// /etc/subuid and /etc/subgid (checked first, with a fix in the error).
//
// Why a host tool: building a Debian root means running maintainer scripts inside it, which
// a pure-Go fetcher cannot do without root or a VM; mmdebstrap does it sudolessly.
func Debootstrap(ctx context.Context, spec DebootstrapSpec, consume func(io.Reader) error) error {
	bin := spec.Path
	if bin == "" {
		bin = LookPathIn("mmdebstrap", DefaultSearchPath())
	}
	if bin == "" {
		return errors.New("mmdebstrap not found: install it (apt-get install mmdebstrap debian-archive-keyring) to build Debian images")
	}
	mode := "root"
	if os.Geteuid() != 0 {
		mode = "unshare"
		if err := checkUnshare(); err != nil {
			return err
		}
	}
	variant := spec.Variant
	if variant == "" {
		variant = "apt"
	}
	args := []string{"--quiet", "--mode=" + mode, "--format=tar", "--variant=" + variant}
	if len(spec.Include) > 0 {
		args = append(args, "--include="+strings.Join(spec.Include, ","))
	}
	if spec.Keyring != "" {
		args = append(args, "--keyring="+spec.Keyring)
	}
	for _, h := range spec.CustomizeHooks {
		args = append(args, "--customize-hook="+h)
	}
	args = append(args, spec.Suite, "-", spec.Mirror)
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	cmd := exec.CommandContext(cctx, bin, args...)
	cmd.Env = append(os.Environ(), "LC_ALL=C.UTF-8")
	var stderr tailBuffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start mmdebstrap: %w", err)
	}
	cerr := consume(out)
	if cerr != nil {
		cancel() // stop mmdebstrap; its tar is no longer wanted
	}
	_, _ = io.Copy(io.Discard, out)
	werr := cmd.Wait()
	switch {
	case ctx.Err() != nil:
		return ctx.Err()
	case werr != nil:
		return fmt.Errorf("mmdebstrap %s from %s failed: %v: %s", spec.Suite, spec.Mirror, werr, stderr.String())
	case cerr != nil:
		return cerr
	}
	return nil
}

func checkUnshare() error {
	u, err := user.Current()
	if err != nil {
		return err
	}
	for _, f := range []string{"/etc/subuid", "/etc/subgid"} {
		data, err := os.ReadFile(f)
		if err != nil || !hasSubIDs(data, u.Username, u.Uid) {
			return fmt.Errorf("building Debian images as a non-root user uses mmdebstrap --mode=unshare, which needs a subordinate id range for %s in %s: run `sudo usermod --add-subuids 100000-165535 --add-subgids 100000-165535 %s`", u.Username, f, u.Username)
		}
	}
	if data, err := os.ReadFile("/proc/sys/kernel/unprivileged_userns_clone"); err == nil && strings.TrimSpace(string(data)) == "0" {
		return errors.New("unprivileged user namespaces are disabled (kernel.unprivileged_userns_clone=0): enable them with `sudo sysctl kernel.unprivileged_userns_clone=1` to build Debian images without root")
	}
	return nil
}

func hasSubIDs(data []byte, name, uid string) bool {
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		f := strings.Split(sc.Text(), ":")
		if len(f) == 3 && (f[0] == name || f[0] == uid) {
			return true
		}
	}
	return false
}

// tailBuffer keeps the last 4 KiB written, for error messages.
type tailBuffer struct{ b []byte }

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.b = append(t.b, p...)
	if len(t.b) > 4096 {
		t.b = t.b[len(t.b)-4096:]
	}
	return len(p), nil
}

func (t *tailBuffer) String() string { return strings.TrimSpace(string(t.b)) }
