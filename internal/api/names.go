package api

import (
	"regexp"
	"strings"
)

var vmNameRE = regexp.MustCompile(`^[a-z][a-z0-9-]{0,31}$`)

// ValidVMName checks a VM (or snapshot) name the way the daemon does: it becomes a
// directory name, a hostname and part of device labels, so clients (the MCP server) can
// refuse a bad one before any request with the daemon's own message.
func ValidVMName(name string) error {
	if !vmNameRE.MatchString(name) || strings.HasSuffix(name, "-") || strings.Contains(name, "--") {
		return Errorf(CodeBadRequest, "use 1-32 lowercase letters, digits and single '-', starting with a letter and not ending with '-'",
			"invalid VM name %q", name)
	}
	return nil
}
