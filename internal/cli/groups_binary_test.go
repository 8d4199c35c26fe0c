package cli_test

import (
	"strings"
	"testing"
)

// The built binary, as a script would run it: a typo in a group's subcommand fails.
func TestBinaryUnknownSubcommandFails(t *testing.T) {
	s := newSandbox(t)
	for _, args := range [][]string{{"vm", "hibernate", "x"}, {"image", "kernel", "lss"}, {"daemon", "stat"}} {
		out, errs, code := s.run(args...)
		if code == 0 || !strings.Contains(errs, "unknown command") || out != "" {
			t.Errorf("banger %s: exit %d, stdout %q, stderr %q", strings.Join(args, " "), code, out, errs)
		}
	}
}
