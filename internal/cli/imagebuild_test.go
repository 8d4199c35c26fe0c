package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestBuildRequestMergesRecipeAndFlags(t *testing.T) {
	dir := t.TempDir()
	recipe := filepath.Join(dir, "r.toml")
	if err := os.WriteFile(recipe, []byte(`from = "debian-bookworm"
size = "4G"
packages = ["git", "vendor/tool_1.0_amd64.deb"]
copy = ["dotfiles:/root/", "/etc/hostname:/etc/motd"]
run = ["setup.sh"]
`), 0o644); err != nil {
		t.Fatal(err)
	}
	req, err := buildRequest("dev", recipe, buildRecipe{Packages: []string{"curl"}, Run: []string{"/abs/more.sh"}, Memory: "2G"})
	if err != nil {
		t.Fatal(err)
	}
	if req.Name != "dev" || req.From != "debian-bookworm" || req.Size != "4G" || req.Memory != "2G" {
		t.Fatalf("scalars: %+v", req)
	}
	wantPkgs := []string{"git", filepath.Join(dir, "vendor/tool_1.0_amd64.deb"), "curl"}
	if strings.Join(req.Packages, ",") != strings.Join(wantPkgs, ",") {
		t.Errorf("packages %q, want %q", req.Packages, wantPkgs)
	}
	if len(req.Copies) != 2 || req.Copies[0].Src != filepath.Join(dir, "dotfiles") || req.Copies[0].Dst != "/root/" || req.Copies[1].Src != "/etc/hostname" {
		t.Errorf("copies %+v", req.Copies)
	}
	if len(req.Scripts) != 2 || req.Scripts[0] != filepath.Join(dir, "setup.sh") || req.Scripts[1] != "/abs/more.sh" {
		t.Errorf("scripts %q", req.Scripts)
	}

	for _, bad := range []struct {
		recipe string
		flags  buildRecipe
		want   string
	}{
		{"", buildRecipe{}, "--from BASE"},
		{"frm = \"x\"\n", buildRecipe{}, `unknown key "frm"`},
		{"", buildRecipe{From: "x", Copy: []string{"nodst"}}, "SRC:DST"},
		{"", buildRecipe{From: "x", Copy: []string{"a:relative"}}, "absolute"},
	} {
		path := ""
		if bad.recipe != "" {
			path = filepath.Join(dir, "bad.toml")
			if err := os.WriteFile(path, []byte(bad.recipe), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := buildRequest("dev", path, bad.flags); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("recipe %q flags %+v: %v, want %q", bad.recipe, bad.flags, err, bad.want)
		}
	}
}
