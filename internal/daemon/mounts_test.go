package daemon

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseMounts(t *testing.T) {
	dir := t.TempDir()
	colon := filepath.Join(dir, "a:b")
	must(0, os.Mkdir(colon, 0o755))
	file := filepath.Join(dir, "f")
	must(0, os.WriteFile(file, nil, 0o644))
	got, err := parseMounts([]string{dir + ":/mnt/x", colon + ":/root/src:ro", dir + "/:/mnt/y:rw"})
	if err != nil {
		t.Fatal(err)
	}
	want := []hostMountSpec{{dir, "/mnt/x", false}, {colon, "/root/src", true}, {dir, "/mnt/y", false}}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("mount %d: %+v, want %+v", i, got[i], want[i])
		}
	}
	for _, bad := range []struct{ text, want string }{
		{dir, "no guest path"},
		{dir + ":ro", "absolute"},
		{"relative:/mnt/x", "absolute path"},
		{dir + ":/", "below /"},
		{dir + ":/mnt/../etc", "clean"},
		{dir + ":/etc/cron.d", "belongs to the guest's system"},
		{dir + ":/proc", "belongs to the guest's system"},
		{dir + ":/mnt/x\n", "clean"},
		{file + ":/mnt/x", "not a directory"},
		{filepath.Join(dir, "missing") + ":/mnt/x", "no such file"},
	} {
		if _, err := parseMounts([]string{bad.text}); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("parseMounts(%q) = %v, want an error saying %q", bad.text, err, bad.want)
		}
	}
	if _, err := parseMounts([]string{dir + ":/mnt/x", dir + ":/mnt/x:ro"}); err == nil {
		t.Error("two mounts at one guest path were accepted")
	}
	many := make([]string, maxMountsPerVM+1)
	for i := range many {
		many[i] = dir + ":/mnt/m" + string(rune('a'+i))
	}
	if _, err := parseMounts(many); err == nil {
		t.Error("more than the mount limit was accepted")
	}
}
