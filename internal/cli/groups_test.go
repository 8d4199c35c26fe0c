package cli

// Issue 15: an unknown subcommand of a group command (`banger vm pause x`) printed the
// help and exited 0, so a typo in a script passed silently.

import (
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

// groupPaths lists every command of the tree that has subcommands, as argument paths.
func groupPaths(root *cobra.Command) [][]string {
	var out [][]string
	var walk func(c *cobra.Command, path []string)
	walk = func(c *cobra.Command, path []string) {
		if !c.HasSubCommands() {
			return
		}
		out = append(out, path)
		for _, sub := range c.Commands() {
			walk(sub, append(append([]string{}, path...), sub.Name()))
		}
	}
	walk(root, nil)
	return out
}

func TestEveryGroupRejectsUnknownSubcommand(t *testing.T) {
	w := newCLIWorld(t)
	root := NewRootCommand(w.env)
	root.InitDefaultCompletionCmd() // cobra adds `completion` at Execute: include it
	groups := groupPaths(root)
	if len(groups) < 5 {
		t.Fatalf("only %d group commands found: %v", len(groups), groups)
	}
	for _, path := range groups {
		group, _, err := root.Find(path)
		if err != nil {
			t.Fatal(err)
		}
		var first string
		for _, sub := range group.Commands() {
			if sub.IsAvailableCommand() {
				first = sub.Name()
				break
			}
		}
		for _, bogus := range []string{"pasue", first + "x"} {
			name := strings.Join(append([]string{"banger"}, path...), " ") + " " + bogus
			t.Run(name, func(t *testing.T) {
				w := newCLIWorld(t)
				code := w.run(append(append([]string{}, path...), bogus, "arg")...)
				want := `unknown command "` + bogus + `" for "` + group.CommandPath() + `"`
				if code == 0 || !strings.Contains(w.stderr.String(), want) {
					t.Fatalf("exit %d, stderr %q; want non-zero and %q", code, w.stderr, want)
				}
				if bogus != "pasue" && !strings.Contains(w.stderr.String(), "Did you mean this?\n\t"+first) {
					t.Errorf("no suggestion of %q: %q", first, w.stderr)
				}
				if w.stdout.Len() != 0 {
					t.Errorf("printed to stdout (the help?): %q", w.stdout)
				}
			})
		}
	}
}

// A group alone still shows its help and succeeds.
func TestGroupAloneShowsHelp(t *testing.T) {
	w := newCLIWorld(t)
	if code := w.run("vm"); code != 0 || !strings.Contains(w.stdout.String(), "Available Commands") {
		t.Fatalf("exit %d, stdout %q, stderr %q", code, w.stdout, w.stderr)
	}
}
