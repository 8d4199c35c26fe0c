package cli

import (
	"bytes"
	"strings"
	"testing"
)

func TestProcessState(t *testing.T) {
	for stat, want := range map[string]string{
		"123 (banger) S 1 123":          "S",
		"123 (a) b (c)) Z 1 123":        "Z",
		"123 (banger daemon) R 1 2 3 4": "R",
		"garbage":                       "",
	} {
		if got := processState(stat); got != want {
			t.Errorf("processState(%q) = %q, want %q", stat, got, want)
		}
	}
}

func TestUpdateFlagsValidated(t *testing.T) {
	var out, errb bytes.Buffer
	env := Env{Stdout: &out, Stderr: &errb, Getenv: func(string) string { return "" }, Executable: "/nonexistent/banger"}
	env.Paths.Home = t.TempDir()
	if code := Execute(env, []string{"update", "--manifest", "m.json"}); code == 0 || !strings.Contains(errb.String(), "--manifest goes with --from") {
		t.Fatalf("exit %d, stderr %q", code, errb.String())
	}
	errb.Reset()
	// No channel configured: --check says how to get one.
	if code := Execute(env, []string{"update", "--check"}); code == 0 || !strings.Contains(errb.String(), "update.channel_url") {
		t.Fatalf("exit %d, stderr %q", code, errb.String())
	}
}
