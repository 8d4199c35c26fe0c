package update

import "testing"

func TestVersionOrder(t *testing.T) {
	// Each version is older than the next.
	order := []string{
		"v0.9.9", "v1.0.0-alpha", "v1.0.0-alpha.1", "v1.0.0-alpha.beta", "v1.0.0-beta.2", "v1.0.0-beta.11",
		"v1.0.0-rc.1", "v1.0.0-rc.1-3-gdeadbee", "v1.0.0", "1.0.0-1-gabcdef0", "v1.0.0-12-gabcdef0-dirty",
		"v1.0.1", "v1.2.0", "v1.10.0", "v2.0.0",
	}
	for i := range order {
		for j := range order {
			a, err := ParseVersion(order[i])
			if err != nil {
				t.Fatal(err)
			}
			b, err := ParseVersion(order[j])
			if err != nil {
				t.Fatal(err)
			}
			want := cmpInt(i, j)
			if got := a.Compare(b); got != want {
				t.Errorf("Compare(%s, %s) = %d, want %d", order[i], order[j], got, want)
			}
		}
	}
}

func TestVersionEquivalents(t *testing.T) {
	for _, p := range [][2]string{
		{"v1.2.3", "1.2.3"}, {"v1.2.3", "v1.2.3-dirty"}, {"v1.2.3", "v1.2.3+build.7"},
		{"v1.2.3-4-gaaaaaaa", "v1.2.3-4-gbbbbbbb"}, // same distance from the tag: unordered
	} {
		a, _ := ParseVersion(p[0])
		b, _ := ParseVersion(p[1])
		if a.Compare(b) != 0 {
			t.Errorf("%s and %s should compare equal", p[0], p[1])
		}
	}
}

func TestVersionRejects(t *testing.T) {
	for _, s := range []string{"dev", "", "abc1234", "v1.2", "v01.2.3", "v1.2.3-", "v1.2.3-rc..1", "latest"} {
		if _, err := ParseVersion(s); err == nil {
			t.Errorf("ParseVersion(%q) accepted", s)
		}
	}
}

func TestCompareCurrent(t *testing.T) {
	if c, note := compare("dev", "v1.0.0"); c != -1 || note == "" {
		t.Errorf("dev vs v1.0.0: %d %q; want older with a note", c, note)
	}
	if c, _ := compare("v1.1.0", "v1.0.0"); c != 1 {
		t.Errorf("v1.1.0 vs v1.0.0 = %d, want a downgrade (1)", c)
	}
	if c, _ := compare("v1.0.0-3-gabcdef0", "v1.0.0"); c != 1 {
		t.Errorf("a build after the tag vs the tag = %d, want 1", c)
	}
}
