// Package release makes banger releases: it packs banger, banger-init and banger-agent
// into the artifact `banger update` installs, signs its manifest, and lays out a release
// channel directory that any static HTTP server can serve:
//
//	CHANNEL/latest.json                              signed manifest of the newest release
//	CHANNEL/<version>/manifest.json                  signed manifest of the release
//	CHANNEL/<version>/banger-<version>-<os>-<arch>.tar.gz
//
// The formats are internal/update's (update.WriteArtifact, update.Sign, update.Manifest):
// every manifest written here is read back with update.Verify before it is published.
// cmd/banger-release is its command line; internal/update/updatetest makes the test
// releases with it too.
package release

import (
	"compress/gzip"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"debug/buildinfo"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/banger-vm/banger/internal/system"
	"github.com/banger-vm/banger/internal/system/proc"
	"github.com/banger-vm/banger/internal/update"
)

// versionChars are what a release version may hold: it names a directory and a URL path
// segment.
var versionChars = regexp.MustCompile(`^[0-9A-Za-z.+-]+$`)

// CheckVersion refuses a version `banger update` cannot place in the release order ("dev",
// a bare commit hash), one that is not safe as a directory name, and, unless allowDirty,
// one built from a modified tree.
func CheckVersion(version string, allowDirty bool) (update.Version, error) {
	v, err := update.ParseVersion(version)
	if err != nil {
		return update.Version{}, fmt.Errorf("%w: banger update could not order it against other releases; tag the commit (git tag v1.2.3) and build from the tag", err)
	}
	if !versionChars.MatchString(version) || strings.TrimSpace(version) != version {
		return update.Version{}, fmt.Errorf("version %q holds characters other than letters, digits, '.', '-' and '+'", version)
	}
	if v.Dirty && !allowDirty {
		return update.Version{}, fmt.Errorf("version %s was built from a modified tree: commit first (or pass --allow-dirty)", version)
	}
	return v, nil
}

// CheckBinaries checks that dir holds banger, banger-init and banger-agent of version,
// built for platform (e.g. "linux-amd64") as static binaries from one source tree. When
// platform is this machine's, each is run and must report version: banger with `version
// --json`, banger-agent with --version, and banger-init, guest PID 1, with what it prints
// when it is started outside a VM (it refuses to do anything else there).
func CheckBinaries(ctx context.Context, dir, version, platform string) error {
	for _, name := range update.Binaries() {
		p := filepath.Join(dir, name)
		st, err := os.Stat(p)
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("%s is missing: a release holds %s (scripts/release.sh builds them)", p, strings.Join(update.Binaries(), ", "))
		}
		if err != nil {
			return err
		}
		if !st.Mode().IsRegular() || st.Mode().Perm()&0o111 == 0 {
			return fmt.Errorf("%s is not an executable file", p)
		}
	}
	if platform == update.Platform() {
		bin := filepath.Join(dir, "banger")
		got, err := update.BinaryVersion(ctx, bin)
		if err != nil {
			return fmt.Errorf("%s %w", bin, err)
		}
		if got != version {
			return fmt.Errorf("%s reports version %s, not %s: build it with -X github.com/banger-vm/banger/internal/buildinfo.version=%s", bin, got, version, version)
		}
		for _, g := range []struct{ name, arg string }{{"banger-agent", "--version"}, {"banger-init", ""}} {
			if err := checkGuestVersion(ctx, filepath.Join(dir, g.name), g.arg, version); err != nil {
				return err
			}
		}
	}
	var tree, treeOf string
	for _, name := range update.Binaries() {
		p := filepath.Join(dir, name)
		t, err := checkBuildInfo(p, platform)
		if err != nil {
			return err
		}
		if t != "" && tree != "" && t != tree {
			return fmt.Errorf("%s and %s were built from different source trees (%s, %s): build all three at once", treeOf, p, tree, t)
		}
		if t != "" {
			tree, treeOf = t, p
		}
	}
	return nil
}

// checkGuestVersion runs a guest binary (with arg, "" for none) and checks that version is
// a word of what it prints. banger-init exits 2 outside a VM after naming its version.
func checkGuestVersion(ctx context.Context, bin, arg, version string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var args []string
	if arg != "" {
		args = []string{arg}
	}
	out, stderr, err := proc.RunBinary(ctx, bin, args, nil)
	if err != nil && (arg != "" || proc.ExitCode(err) < 0) {
		return fmt.Errorf("%s %s: %v: %s", bin, arg, err, strings.TrimSpace(string(stderr)))
	}
	text := strings.TrimSpace(string(out) + " " + string(stderr))
	for _, w := range strings.Fields(text) {
		if strings.TrimRight(w, ":,;") == version {
			return nil
		}
	}
	return fmt.Errorf("%s does not report version %s: it printed %q", bin, version, firstLine(text))
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	return s
}

// checkBuildInfo checks what the Go toolchain recorded in the binary at path and returns
// its source tree (VCS revision, "" when not recorded).
func checkBuildInfo(path, platform string) (tree string, err error) {
	bi, err := buildinfo.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("%s is not a Go binary with build information: %v", path, err)
	}
	set := map[string]string{}
	for _, s := range bi.Settings {
		set[s.Key] = s.Value
	}
	if got := set["GOOS"] + "-" + set["GOARCH"]; got != platform {
		return "", fmt.Errorf("%s is built for %s, not %s", path, got, platform)
	}
	if set["CGO_ENABLED"] != "0" {
		return "", fmt.Errorf("%s is not static (built without CGO_ENABLED=0): banger-init and banger-agent run in guests without a C library", path)
	}
	if r := set["vcs.revision"]; r != "" {
		tree = r
		if set["vcs.modified"] == "true" {
			tree += "+modified"
		}
	}
	return tree, nil
}

// NewManifest describes version with its artifacts (platform -> artifact).
func NewManifest(version string, released time.Time, artifacts map[string]update.Artifact) update.Manifest {
	return update.Manifest{Schema: update.ManifestSchema, Product: "banger", Version: version,
		Released: released.UTC().Truncate(time.Second), Artifacts: artifacts}
}

// DescribeArtifact returns the size and SHA-256 of the artifact read from r, at url.
func DescribeArtifact(r io.Reader, url string) (update.Artifact, error) {
	h := sha256.New()
	n, err := io.Copy(h, r)
	if err != nil {
		return update.Artifact{}, err
	}
	return update.Artifact{URL: url, Size: n, SHA256: hex.EncodeToString(h.Sum(nil))}, nil
}

// PublishOptions say which release to publish where.
type PublishOptions struct {
	ChannelDir string
	Version    string
	// Platform is the artifact's "GOOS-GOARCH"; "" is this machine's.
	Platform string
	// BaseURL, when set, is where CHANNEL's files are downloaded from (e.g. a CDN): the
	// manifests then name the artifact by absolute URL. "" names it relative to the
	// manifest, which keeps the channel directory relocatable.
	BaseURL string
	Keys    []ed25519.PrivateKey
	// Released is the release time; zero means now.
	Released time.Time
}

// Published says what Publish wrote.
type Published struct {
	Manifest     update.Manifest `json:"manifest"`
	Artifact     string          `json:"artifact"`
	ManifestPath string          `json:"manifest_path"`
	LatestPath   string          `json:"latest_path"`
	// Latest is the version latest.json names afterwards; LatestMoved says whether it now
	// names this release (it does not when the channel already has a newer one).
	Latest      string   `json:"latest"`
	LatestMoved bool     `json:"latest_moved"`
	KeyIDs      []string `json:"key_ids"`
}

// Publish signs and writes the manifests of the release whose artifact is already at
// CHANNEL/<version>/<update.ArtifactName>: <version>/manifest.json, then latest.json
// unless the channel's latest release is newer. latest.json goes last, so a client never
// sees a latest release whose files are not all in place.
func Publish(o PublishOptions) (Published, error) {
	if o.Platform == "" {
		o.Platform = update.Platform()
	}
	v, err := CheckVersion(o.Version, true)
	if err != nil {
		return Published{}, err
	}
	if len(o.Keys) == 0 {
		return Published{}, errors.New("no signing key: pass --key")
	}
	if o.Released.IsZero() {
		o.Released = time.Now()
	}
	var pubs []ed25519.PublicKey
	res := Published{}
	for _, k := range o.Keys {
		pub := k.Public().(ed25519.PublicKey)
		pubs = append(pubs, pub)
		res.KeyIDs = append(res.KeyIDs, update.KeyID(pub))
	}
	name := update.ArtifactName(o.Version, o.Platform)
	res.Artifact = filepath.Join(o.ChannelDir, o.Version, name)
	f, err := os.Open(res.Artifact)
	if err != nil {
		return Published{}, fmt.Errorf("the release artifact: %w", err)
	}
	art, err := DescribeArtifact(f, "")
	f.Close()
	if err != nil {
		return Published{}, fmt.Errorf("read %s: %w", res.Artifact, err)
	}
	// The version manifest names the artifact beside it; latest.json, one level up, names it
	// under the version's directory. With a base URL both name it absolutely.
	inVersion := (&url.URL{Path: o.Version + "/" + name}).String()
	ownURL, latestURL := (&url.URL{Path: name}).String(), inVersion
	if o.BaseURL != "" {
		base, err := url.Parse(o.BaseURL)
		if err != nil || (base.Scheme != "https" && base.Scheme != "http") || base.Host == "" {
			return Published{}, fmt.Errorf("--base-url %q is not an absolute http(s) URL", o.BaseURL)
		}
		if !strings.HasSuffix(base.Path, "/") {
			base.Path += "/"
		}
		ownURL = base.ResolveReference(&url.URL{Path: o.Version + "/" + name}).String()
		latestURL = ownURL
	}

	art.URL = ownURL
	res.Manifest = NewManifest(o.Version, o.Released, map[string]update.Artifact{o.Platform: art})
	own, err := signChecked(res.Manifest, o.Keys, pubs)
	if err != nil {
		return Published{}, err
	}
	res.ManifestPath = filepath.Join(o.ChannelDir, o.Version, "manifest.json")
	if err := writeAtomic(res.ManifestPath, own); err != nil {
		return Published{}, err
	}

	res.LatestPath = filepath.Join(o.ChannelDir, "latest.json")
	cur, err := readLatest(res.LatestPath)
	if err != nil {
		return res, err
	}
	if cur != nil && cur.Compare(v) > 0 {
		res.Latest = cur.String()
		return res, nil
	}
	latest := res.Manifest
	art.URL = latestURL
	latest.Artifacts = map[string]update.Artifact{o.Platform: art}
	data, err := signChecked(latest, o.Keys, pubs)
	if err != nil {
		return res, err
	}
	if err := writeAtomic(res.LatestPath, data); err != nil {
		return res, err
	}
	res.Latest, res.LatestMoved = o.Version, true
	return res, nil
}

// signChecked signs m and reads the envelope back as banger update will.
func signChecked(m update.Manifest, keys []ed25519.PrivateKey, pubs []ed25519.PublicKey) ([]byte, error) {
	data, err := update.Sign(m, keys...)
	if err != nil {
		return nil, err
	}
	if _, err := update.Verify(data, pubs); err != nil {
		return nil, fmt.Errorf("the signed manifest does not verify: %w", err)
	}
	return append(data, '\n'), nil
}

// readLatest returns the version latest.json names, nil when there is none. The signature
// is not checked: the channel directory is the maintainer's own, and the file may be
// signed by a key being rotated out.
func readLatest(path string) (*update.Version, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var env update.Signed
	var m update.Manifest
	payload, perr := []byte(nil), json.Unmarshal(data, &env)
	if perr == nil {
		payload, perr = base64.StdEncoding.DecodeString(env.Payload)
	}
	if perr == nil {
		perr = json.Unmarshal(payload, &m)
	}
	if perr != nil {
		return nil, fmt.Errorf("%s is not a signed banger manifest (%v): fix or remove it", path, perr)
	}
	v, err := update.ParseVersion(m.Version)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &v, nil
}

// writeAtomic writes data to path (0644: a channel is public) through a temporary file, so
// a server never serves half a manifest.
func writeAtomic(path string, data []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return system.WriteFileAtomic(path, data, 0o644)
}

// MakeOptions configure Make.
type MakeOptions struct {
	PublishOptions
	// BinDir holds banger, banger-init and banger-agent.
	BinDir string
	// GzipLevel compresses the artifact (1 fastest .. 9 smallest); 0 means the default.
	GzipLevel  int
	AllowDirty bool
	// Force replaces a release of the same version already in the channel.
	Force bool
}

// Make checks the binaries in BinDir, packs them into CHANNEL/<version>/, and publishes
// the release (see Publish).
func Make(ctx context.Context, o MakeOptions) (Published, error) {
	if o.Platform == "" {
		o.Platform = update.Platform()
	}
	if _, err := CheckVersion(o.Version, o.AllowDirty); err != nil {
		return Published{}, err
	}
	if len(o.Keys) == 0 {
		return Published{}, errors.New("no signing key: pass --key")
	}
	if o.GzipLevel == 0 {
		o.GzipLevel = gzip.DefaultCompression
	}
	verDir := filepath.Join(o.ChannelDir, o.Version)
	if _, err := os.Stat(filepath.Join(verDir, "manifest.json")); err == nil && !o.Force {
		return Published{}, fmt.Errorf("release %s is already in %s: clients may be downloading it; publish a new version (or pass --force to replace it)", o.Version, o.ChannelDir)
	}
	if err := CheckBinaries(ctx, o.BinDir, o.Version, o.Platform); err != nil {
		return Published{}, err
	}
	if err := os.MkdirAll(verDir, 0o755); err != nil {
		return Published{}, err
	}
	dst := filepath.Join(verDir, update.ArtifactName(o.Version, o.Platform))
	if err := system.WriteAtomic(dst, 0o644, func(w io.Writer) error {
		if err := update.WriteArtifact(w, o.BinDir, o.GzipLevel); err != nil {
			return fmt.Errorf("pack %s: %w", o.BinDir, err)
		}
		return nil
	}); err != nil {
		return Published{}, err
	}
	return Publish(o.PublishOptions)
}
