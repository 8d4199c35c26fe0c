package hosttools

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestVersionAtLeast(t *testing.T) {
	cases := []struct {
		have, want string
		ok         bool
	}{
		{"1.8", "1.8", true}, {"1.10.1", "1.8", true}, {"1.7.9", "1.8", false},
		{"2.0", "1.8", true}, {"1.8.0", "1.8", true}, {"0.25", "1.8", false}, {"", "1.8", false},
	}
	for _, c := range cases {
		if got := VersionAtLeast(c.have, c.want); got != c.ok {
			t.Errorf("VersionAtLeast(%q, %q) = %v", c.have, c.want, got)
		}
	}
}

func TestLookupTool(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	script := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
			t.Fatal(err)
		}
		return p
	}
	script("tool-a", "echo; echo 'Tool A v3.4.5 (build 99)'")
	tool, err := LookupTool(ctx, "tool-a", "", dir, "--version")
	if err != nil || tool.Path != filepath.Join(dir, "tool-a") || tool.Version != "3.4.5" || tool.Output != "Tool A v3.4.5 (build 99)" {
		t.Fatalf("found tool: %+v, %v", tool, err)
	}
	// Missing is not an error; a broken tool is.
	if tool, err := LookupTool(ctx, "tool-none", "", dir, "-V"); err != nil || tool.Path != "" {
		t.Fatalf("missing tool: %+v, %v", tool, err)
	}
	broken := script("tool-broken", "echo 'segfault' >&2; exit 3")
	if _, err := LookupTool(ctx, "tool-broken", broken, "", "-V"); err == nil || !strings.Contains(err.Error(), "segfault") {
		t.Fatalf("broken tool: %v", err)
	}
	// Some tools print a version and exit non-zero: that still counts.
	odd := script("tool-odd", "echo 'odd 1.2'; exit 1")
	if tool, err := LookupTool(ctx, "tool-odd", odd, "", "-V"); err != nil || tool.Version != "1.2" {
		t.Fatalf("odd tool: %+v, %v", tool, err)
	}
	if _, err := LookupTool(ctx, "x", filepath.Join(dir, "gone"), "", "-V"); err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Fatalf("configured path missing: %v", err)
	}
	// Not executable is not found.
	if err := os.WriteFile(filepath.Join(dir, "plain"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if p := LookPathIn("plain", dir); p != "" {
		t.Fatalf("non-executable found: %s", p)
	}
}
