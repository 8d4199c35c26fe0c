package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestAddInclude: the Include goes at the top (before any Host block) once; the rest of the
// user's config, its mode and a symlinked config's link are kept; what is not a regular
// file, or is too large to be a config, is refused untouched.
func TestAddInclude(t *testing.T) {
	dir := t.TempDir()
	inc, err := includeLine("/cfg dir/banger/ssh_config")
	if err != nil || inc != `Include "/cfg dir/banger/ssh_config"` {
		t.Fatalf("include %q %v", inc, err)
	}
	if _, err := includeLine("/cfg\nHost *"); err == nil {
		t.Fatal("a path with a newline was accepted")
	}

	fresh := filepath.Join(dir, "a", ".ssh", "config")
	if changed, err := addInclude(fresh, inc); err != nil || !changed {
		t.Fatalf("fresh: %v %v", changed, err)
	}
	if fi, err := os.Stat(fresh); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("fresh config: %v %v", fi, err)
	}

	user := filepath.Join(dir, "b", "config")
	check(t, os.MkdirAll(filepath.Dir(user), 0o700))
	mine := "Host work\n  User me\n"
	check(t, os.WriteFile(user, []byte(mine), 0o644))
	link := filepath.Join(dir, "b", "config-link")
	check(t, os.Symlink(user, link))
	if changed, err := addInclude(link, inc); err != nil || !changed {
		t.Fatalf("existing: %v %v", changed, err)
	}
	got, _ := os.ReadFile(user)
	if i, j := strings.Index(string(got), inc), strings.Index(string(got), "Host work"); i < 0 || j < i || !strings.HasSuffix(string(got), mine) {
		t.Fatalf("config after install:\n%s", got)
	}
	if fi, _ := os.Lstat(link); fi.Mode()&os.ModeSymlink == 0 {
		t.Fatal("the symlinked config was replaced by a file")
	}
	if fi, _ := os.Stat(user); fi.Mode().Perm() != 0o644 {
		t.Fatalf("mode %v not kept", fi.Mode())
	}
	if changed, err := addInclude(link, inc); err != nil || changed {
		t.Fatalf("second install: %v %v", changed, err)
	}
	if again, _ := os.ReadFile(user); string(again) != string(got) {
		t.Fatalf("second install changed the file:\n%s", again)
	}

	notFile := filepath.Join(dir, "c", "config")
	check(t, os.MkdirAll(notFile, 0o700))
	if _, err := addInclude(notFile, inc); err == nil {
		t.Fatal("a directory named config was written")
	}
	big := filepath.Join(dir, "d", "config")
	check(t, os.MkdirAll(filepath.Dir(big), 0o700))
	check(t, os.WriteFile(big, []byte(strings.Repeat("#\n", maxUserSSHConfig)), 0o600))
	if _, err := addInclude(big, inc); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Fatalf("a %d-byte config: %v", 2*maxUserSSHConfig, err)
	}
}

func check(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
