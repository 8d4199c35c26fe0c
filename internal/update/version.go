package update

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
)

// Version is a parsed release version. banger versions come from `git describe --tags
// --dirty` and look like
//
//	v1.2.3                 a release
//	v1.2.3-rc.1            a pre-release: older than v1.2.3 (semver rules)
//	v1.2.3-4-gabc1234      4 commits after v1.2.3: newer than v1.2.3, older than v1.2.4
//	v1.2.3-rc.1-4-gabc1234 4 commits after v1.2.3-rc.1
//	...-dirty              built from a modified tree: ordered as without -dirty
//
// The leading "v" is optional and "+build" metadata is ignored. Anything else ("dev", a
// bare commit hash from a tree without tags) does not parse: such a build cannot be placed
// in the release order.
type Version struct {
	Major, Minor, Patch int
	Pre                 []string // pre-release identifiers, empty for a release
	Commits             int      // commits after the tag (git describe), 0 for the tag itself
	Hash                string   // abbreviated commit of a git-describe version
	Dirty               bool
	raw                 string
}

var (
	coreRe     = regexp.MustCompile(`^v?(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)(?:-([0-9A-Za-z.-]+))?$`)
	describeRe = regexp.MustCompile(`^(.*)-([0-9]+)-g([0-9a-f]{4,40})$`)
	preIDRe    = regexp.MustCompile(`^[0-9A-Za-z-]+$`)
)

// ParseVersion parses s as described on Version.
func ParseVersion(s string) (Version, error) {
	v := Version{raw: s}
	rest := strings.TrimSpace(s)
	if i := strings.IndexByte(rest, '+'); i >= 0 {
		rest = rest[:i]
	}
	if r, ok := strings.CutSuffix(rest, "-dirty"); ok {
		rest, v.Dirty = r, true
	}
	if m := describeRe.FindStringSubmatch(rest); m != nil {
		n, err := strconv.Atoi(m[2])
		if err == nil {
			rest, v.Commits, v.Hash = m[1], n, m[3]
		}
	}
	m := coreRe.FindStringSubmatch(rest)
	if m == nil {
		return Version{}, fmt.Errorf("version %q is not of the form v1.2.3[-pre][-N-gHASH][-dirty]", s)
	}
	v.Major, _ = strconv.Atoi(m[1])
	v.Minor, _ = strconv.Atoi(m[2])
	v.Patch, _ = strconv.Atoi(m[3])
	if m[4] != "" {
		v.Pre = strings.Split(m[4], ".")
		for _, id := range v.Pre {
			if !preIDRe.MatchString(id) {
				return Version{}, fmt.Errorf("version %q has an empty pre-release identifier", s)
			}
		}
	}
	return v, nil
}

func (v Version) String() string { return v.raw }

// Compare returns -1, 0 or +1 as v is older than, the same position as, or newer than w.
// Two builds the same number of commits after the same tag compare equal even when their
// hashes differ: nothing orders them.
func (v Version) Compare(w Version) int {
	for _, d := range [][2]int{{v.Major, w.Major}, {v.Minor, w.Minor}, {v.Patch, w.Patch}} {
		if c := cmpInt(d[0], d[1]); c != 0 {
			return c
		}
	}
	if c := comparePre(v.Pre, w.Pre); c != 0 {
		return c
	}
	return cmpInt(v.Commits, w.Commits)
}

func cmpInt(a, b int) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// comparePre orders pre-release identifiers by semver 2.0.0 §11: no pre-release is newer;
// numeric identifiers compare numerically and sort before alphanumeric ones; a longer list
// wins when one is a prefix of the other.
func comparePre(a, b []string) int {
	switch {
	case len(a) == 0 && len(b) == 0:
		return 0
	case len(a) == 0:
		return 1
	case len(b) == 0:
		return -1
	}
	for i := 0; i < len(a) && i < len(b); i++ {
		an, aerr := strconv.Atoi(a[i])
		bn, berr := strconv.Atoi(b[i])
		switch {
		case aerr == nil && berr == nil:
			if c := cmpInt(an, bn); c != 0 {
				return c
			}
		case aerr == nil:
			return -1
		case berr == nil:
			return 1
		default:
			if c := strings.Compare(a[i], b[i]); c != 0 {
				return c
			}
		}
	}
	return cmpInt(len(a), len(b))
}
