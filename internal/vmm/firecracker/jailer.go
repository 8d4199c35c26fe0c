package firecracker

import (
	"fmt"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
)

// JailerConfig runs Firecracker under its jailer (docs/jailer.md upstream): a chroot, a
// dropped uid/gid, cgroups and optionally a network namespace. The jailer itself must run as
// root. banger does not use --daemonize or --new-pid-ns, so the jailer execs Firecracker
// in place and the process banger started is the VMM it tracks.
type JailerConfig struct {
	Binary string // the jailer binary
	UID    int
	GID    int
	// ChrootBase is --chroot-base-dir (jailer default /srv/jailer). The VM's chroot is
	// <ChrootBase>/<firecracker binary name>/<id>/root; the kernel, initrd and drives are
	// hard-linked into it, so they must be on the same filesystem.
	ChrootBase string
	// CgroupVersion is 1 or 2 (0: the jailer's default, 1).
	CgroupVersion int
	ParentCgroup  string
	// Cgroups are --cgroup <file>=<value> settings, e.g. "cpu.max=50000 100000".
	Cgroups []string
	// NetNS is the path of a network namespace to join, e.g. /var/run/netns/banger.
	NetNS          string
	ResourceLimits []string // --resource-limit <resource>=<value>, e.g. "no-file=1024"
}

// defaultChrootBase is the jailer's own default.
const defaultChrootBase = "/srv/jailer"

var jailerIDRe = regexp.MustCompile(`^[a-zA-Z0-9-]{1,64}$`)

// chrootBase returns the chroot base in effect.
func (j JailerConfig) chrootBase() string {
	if j.ChrootBase == "" {
		return defaultChrootBase
	}
	return j.ChrootBase
}

// chrootDir is the jail of VM id: what the jailer creates and banger removes afterwards.
func (j JailerConfig) chrootDir(firecrackerBin, id string) string {
	return filepath.Join(j.chrootBase(), filepath.Base(firecrackerBin), id)
}

// chrootRoot is the directory Firecracker sees as /.
func (j JailerConfig) chrootRoot(firecrackerBin, id string) string {
	return filepath.Join(j.chrootDir(firecrackerBin, id), "root")
}

// jailerArgv builds the jailer command line that runs firecrackerBin for VM id, passing
// fcArgs to Firecracker after "--". It is a pure function so its output can be tested
// against the documented usage:
//
//	jailer --id <id> --exec-file <exec_file> --uid <uid> --gid <gid>
//	       [--parent-cgroup <path>] [--cgroup-version <1|2>] [--cgroup <file=value>]...
//	       [--chroot-base-dir <dir>] [--netns <path>] [--resource-limit <res=val>]...
//	       [-- <firecracker args>]
func jailerArgv(j JailerConfig, id, firecrackerBin string, fcArgs []string) ([]string, error) {
	switch {
	case j.Binary == "":
		return nil, fmt.Errorf("jailer: no jailer binary configured")
	case !jailerIDRe.MatchString(id):
		return nil, fmt.Errorf("jailer: id %q: use 1-64 letters, digits and '-'", id)
	case !filepath.IsAbs(firecrackerBin):
		return nil, fmt.Errorf("jailer: the firecracker binary %q must be an absolute path", firecrackerBin)
	case !strings.Contains(filepath.Base(firecrackerBin), "firecracker"):
		// The jailer refuses exec files whose name lacks "firecracker".
		return nil, fmt.Errorf("jailer: the exec file name %q must contain \"firecracker\"", filepath.Base(firecrackerBin))
	case j.UID < 0 || j.GID < 0:
		return nil, fmt.Errorf("jailer: uid %d / gid %d: set the unprivileged user to run Firecracker as", j.UID, j.GID)
	case j.CgroupVersion != 0 && j.CgroupVersion != 1 && j.CgroupVersion != 2:
		return nil, fmt.Errorf("jailer: cgroup version %d: want 1 or 2", j.CgroupVersion)
	case j.NetNS != "" && !filepath.IsAbs(j.NetNS):
		return nil, fmt.Errorf("jailer: netns %q must be an absolute path", j.NetNS)
	}
	argv := []string{j.Binary,
		"--id", id,
		"--exec-file", firecrackerBin,
		"--uid", strconv.Itoa(j.UID),
		"--gid", strconv.Itoa(j.GID),
	}
	if j.ParentCgroup != "" {
		argv = append(argv, "--parent-cgroup", j.ParentCgroup)
	}
	if j.CgroupVersion != 0 {
		argv = append(argv, "--cgroup-version", strconv.Itoa(j.CgroupVersion))
	}
	for _, c := range j.Cgroups {
		if !strings.Contains(c, "=") {
			return nil, fmt.Errorf("jailer: cgroup setting %q: want <file>=<value>", c)
		}
		argv = append(argv, "--cgroup", c)
	}
	if j.ChrootBase != "" {
		argv = append(argv, "--chroot-base-dir", j.ChrootBase)
	}
	if j.NetNS != "" {
		argv = append(argv, "--netns", j.NetNS)
	}
	for _, r := range j.ResourceLimits {
		if !strings.Contains(r, "=") {
			return nil, fmt.Errorf("jailer: resource limit %q: want <resource>=<value>", r)
		}
		argv = append(argv, "--resource-limit", r)
	}
	if len(fcArgs) > 0 {
		argv = append(argv, "--")
		argv = append(argv, fcArgs...)
	}
	return argv, nil
}

// jailerID derives a jailer id from the VM name: the jailer allows only [a-zA-Z0-9-].
func jailerID(name, runDir string) string {
	var b strings.Builder
	for _, r := range name {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-':
			b.WriteRune(r)
		default:
			b.WriteByte('-')
		}
	}
	id := strings.Trim(b.String(), "-")
	if id == "" {
		id = "vm-" + filepath.Base(runDir)
		return jailerID(id, "")
	}
	return "banger-" + id[:min(len(id), 56)]
}
