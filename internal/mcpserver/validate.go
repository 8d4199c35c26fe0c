package mcpserver

import (
	"errors"
	"fmt"
	"path"
	"strconv"
	"strings"
	"time"

	"github.com/banger-vm/banger/internal/api"
)

// Checks of tool inputs. A bad input is the tool's error (the model reads it and fixes
// the call), never a protocol failure. Names and paths reach the daemon and the guest as
// data: a name must be one the daemon would accept, a guest path absolute and free of NULs.

// checkName checks a VM name with the daemon's own rule.
func checkName(field, name string) error {
	if name == "" {
		return fmt.Errorf("%s is required: the VM's name (vm_ls lists them)", field)
	}
	if err := api.ValidVMName(name); err != nil {
		return fmt.Errorf("%s: %w", field, err)
	}
	return nil
}

// checkGuestPath checks an absolute guest path and returns it cleaned.
func checkGuestPath(p string) (string, error) {
	switch {
	case p == "":
		return "", errors.New("path is required: an absolute path in the VM, like /root/notes.txt")
	case len(p) > 4096:
		return "", fmt.Errorf("path is %d bytes: at most 4096", len(p))
	case strings.IndexByte(p, 0) >= 0:
		return "", errors.New("path contains a NUL byte")
	case !path.IsAbs(p):
		return "", fmt.Errorf("path %q is relative: give an absolute path in the VM, like /root/%s", p, path.Base(p))
	}
	clean := path.Clean(p)
	if clean == "/" {
		return "", errors.New(`path "/" is the root directory, not a file`)
	}
	return clean, nil
}

// checkArgv builds the command: argv as given, or shell run by sh -c.
func checkArgv(argv []string, shell string) ([]string, error) {
	switch {
	case len(argv) > 0 && shell != "":
		return nil, errors.New(`give either argv (a command and its arguments) or shell (a sh -c script), not both`)
	case shell != "":
		argv = []string{"sh", "-c", shell}
	case len(argv) == 0:
		return nil, errors.New(`argv is required: the command and its arguments as an array, like ["uname", "-a"] (or a sh -c script in shell)`)
	}
	if len(argv) > MaxArgv {
		return nil, fmt.Errorf("argv has %d elements: at most %d", len(argv), MaxArgv)
	}
	if argv[0] == "" {
		return nil, errors.New("argv[0] is empty: it names the program to run")
	}
	total := 0
	for i, a := range argv {
		if strings.IndexByte(a, 0) >= 0 {
			return nil, fmt.Errorf("argv[%d] contains a NUL byte", i)
		}
		total += len(a)
	}
	if total > MaxArgvBytes {
		return nil, fmt.Errorf("the command line is %d bytes: at most %d (pass data on stdin or with vm_write_file)", total, MaxArgvBytes)
	}
	return argv, nil
}

// checkTimeout turns timeout_seconds into a duration: 0 is the default.
func checkTimeout(seconds float64) (time.Duration, error) {
	switch {
	case seconds == 0:
		return DefaultTimeout, nil
	case seconds < 0 || seconds > MaxTimeout.Seconds():
		return 0, fmt.Errorf("timeout_seconds %v: give 1 to %.0f (default %.0f)", seconds, MaxTimeout.Seconds(), DefaultTimeout.Seconds())
	}
	return time.Duration(seconds * float64(time.Second)), nil
}

func checkStdin(stdin string) error {
	if len(stdin) > MaxStdinBytes {
		return fmt.Errorf("stdin is %d bytes: at most %d (copy larger data with vm_write_file in parts)", len(stdin), MaxStdinBytes)
	}
	return nil
}

// checkWorkdir checks an optional working directory.
func checkWorkdir(dir string) (string, error) {
	if dir == "" {
		return "", nil
	}
	if !path.IsAbs(dir) || strings.IndexByte(dir, 0) >= 0 || len(dir) > 4096 {
		return "", fmt.Errorf("workdir %q: give an absolute directory in the VM, like /root", dir)
	}
	return path.Clean(dir), nil
}

// checkShape checks the optional image, cpus and memory of a new VM. The daemon checks
// them again (it knows the images); this only bounds what is sent.
func checkShape(image string, cpus int, memory string) error {
	if len(image) > 128 || strings.IndexByte(image, 0) >= 0 {
		return fmt.Errorf("image %q is not an image name (banger image ls lists them)", image)
	}
	if cpus < 0 || cpus > 64 {
		return fmt.Errorf("cpus %d: give 1 to 64 (0: the default)", cpus)
	}
	if len(memory) > 16 {
		return fmt.Errorf("memory %q: give a size like 512M or 2G", memory)
	}
	return nil
}

// parseMode reads a file mode in octal, like "0644" or "755".
func parseMode(s string) (uint32, error) {
	if s == "" {
		return 0o644, nil
	}
	m, err := strconv.ParseUint(s, 8, 32)
	if err != nil || len(s) > 5 || m > 0o7777 {
		return 0, fmt.Errorf("mode %q: give octal permissions like \"0644\" or \"0755\"", s)
	}
	return uint32(m), nil
}
