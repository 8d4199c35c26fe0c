package release_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/banger-vm/banger/internal/release"
	"github.com/banger-vm/banger/internal/update"
	"github.com/banger-vm/banger/internal/update/updatetest"
)

// run runs the banger-release command line in-process.
func run(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var out, errb bytes.Buffer
	code = release.Execute(context.Background(), args, &out, &errb)
	return out.String(), errb.String(), code
}

func mustRun(t *testing.T, args ...string) string {
	t.Helper()
	out, errs, code := run(t, args...)
	if code != 0 {
		t.Fatalf("banger-release %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), code, out, errs)
	}
	return out
}

// keygen makes a key pair with `banger-release keygen` and returns its files and public key.
func keygen(t *testing.T) (priv string, pub ed25519.PublicKey) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "keys")
	out := mustRun(t, "keygen", "--out", dir)
	data, err := os.ReadFile(filepath.Join(dir, release.PublicKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	b, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(data)))
	if err != nil || len(b) != ed25519.PublicKeySize {
		t.Fatalf("%s is not a base64 ed25519 public key: %q", release.PublicKeyFile, data)
	}
	pub = b
	if !strings.Contains(out, release.EncodePublicKey(pub)) || !strings.Contains(out, update.KeyID(pub)) || !strings.Contains(out, "buildinfo.updateKeys=") {
		t.Errorf("keygen output lacks the public key, its id or how to link it in:\n%s", out)
	}
	return filepath.Join(dir, release.PrivateKeyFile), pub
}

func TestKeygen(t *testing.T) {
	priv, pub := keygen(t)
	st, err := os.Stat(priv)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("private key mode %#o, want 0600", st.Mode().Perm())
	}
	k, err := release.ReadPrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	if !k.Public().(ed25519.PublicKey).Equal(pub) {
		t.Fatal("release.pub is not the public half of release.key")
	}
	// The private key is never printed: neither its PEM nor its seed.
	seed := base64.StdEncoding.EncodeToString(k.Seed())
	pemData, _ := os.ReadFile(priv)
	for _, args := range [][]string{{"pubkey", "--key", priv}, {"pubkey", "--key", priv, "--id"}} {
		out := mustRun(t, args...)
		if !strings.HasPrefix(out, release.EncodePublicKey(pub)) {
			t.Errorf("%v printed %q", args, out)
		}
		if strings.Contains(out, seed) || strings.Contains(out, "PRIVATE") {
			t.Errorf("%v printed the private key", args)
		}
	}
	if _, errs, code := run(t, "keygen", "--out", filepath.Dir(priv)); code == 0 || !strings.Contains(errs, "not overwriting") {
		t.Errorf("keygen over an existing key: exit %d %s", code, errs)
	}
	if again, _ := os.ReadFile(priv); !bytes.Equal(again, pemData) {
		t.Error("a refused keygen changed the private key")
	}
	os.Chmod(priv, 0o644)
	if _, err := release.ReadPrivateKey(priv); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Errorf("a world-readable key was accepted: %v", err)
	}
}

func TestCheckVersion(t *testing.T) {
	for _, v := range []string{"v1.2.3", "1.2.3", "v1.2.3-rc.1", "v1.2.3-4-gabc1234", "v1.2.3+build.5"} {
		if _, err := release.CheckVersion(v, false); err != nil {
			t.Errorf("%s refused: %v", v, err)
		}
	}
	for v, want := range map[string]string{
		"dev":              "could not order",
		"abc1234":          "could not order",
		"v1.2":             "could not order",
		"v1.2.3-dirty":     "modified tree",
		"v1.2.3+../../etc": "characters",
		" v1.2.3":          "characters",
	} {
		if _, err := release.CheckVersion(v, false); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("CheckVersion(%q) = %v, want an error mentioning %q", v, err, want)
		}
	}
	if _, err := release.CheckVersion("v1.2.3-dirty", true); err != nil {
		t.Errorf("dirty with allowDirty: %v", err)
	}
}

// TestPublishLayout: the manifests Publish writes verify, name the artifact so banger
// update resolves it from either manifest, and latest.json never moves to an older release.
func TestPublishLayout(t *testing.T) {
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	dir := t.TempDir()
	put := func(version string) []byte {
		data := []byte("artifact of " + version)
		p := filepath.Join(dir, version, update.ArtifactName(version, update.Platform()))
		os.MkdirAll(filepath.Dir(p), 0o755)
		os.WriteFile(p, data, 0o644)
		return data
	}
	const channel = "https://example.org/banger/stable/"
	check := func(file, wantVersion, wantArtifact string, data []byte) {
		t.Helper()
		raw, err := os.ReadFile(filepath.Join(dir, file))
		if err != nil {
			t.Fatal(err)
		}
		m, err := update.Verify(raw, []ed25519.PublicKey{pub})
		if err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		a, err := m.Artifact(update.Platform())
		if err != nil {
			t.Fatal(err)
		}
		loc, _ := update.ResolveArtifact(channel+file, a.URL)
		if m.Version != wantVersion || loc != wantArtifact || a.Size != int64(len(data)) {
			t.Errorf("%s: version %s, artifact %s (%d bytes); want %s, %s (%d bytes)", file, m.Version, loc, a.Size, wantVersion, wantArtifact, len(data))
		}
	}
	publish := func(version string, moved bool, latest string) {
		t.Helper()
		res, err := release.Publish(release.PublishOptions{ChannelDir: dir, Version: version, Keys: []ed25519.PrivateKey{priv}})
		if err != nil {
			t.Fatal(err)
		}
		if res.LatestMoved != moved || res.Latest != latest {
			t.Errorf("publish %s: latest %s (moved %v), want %s (moved %v)", version, res.Latest, res.LatestMoved, latest, moved)
		}
	}
	art := func(v string) string { return channel + v + "/" + update.ArtifactName(v, update.Platform()) }

	d110 := put("v1.1.0")
	publish("v1.1.0", true, "v1.1.0")
	check("v1.1.0/manifest.json", "v1.1.0", art("v1.1.0"), d110)
	check("latest.json", "v1.1.0", art("v1.1.0"), d110)

	d105 := put("v1.0.5") // a fix of an older line: latest stays
	publish("v1.0.5", false, "v1.1.0")
	check("v1.0.5/manifest.json", "v1.0.5", art("v1.0.5"), d105)
	check("latest.json", "v1.1.0", art("v1.1.0"), d110)

	d120 := put("v1.2.0-rc.1")
	publish("v1.2.0-rc.1", true, "v1.2.0-rc.1")
	check("latest.json", "v1.2.0-rc.1", art("v1.2.0-rc.1"), d120)

	// With a base URL the artifact is named absolutely, wherever the manifest is read from.
	put("v1.3.0")
	if _, err := release.Publish(release.PublishOptions{ChannelDir: dir, Version: "v1.3.0", Keys: []ed25519.PrivateKey{priv},
		BaseURL: "https://cdn.example.net/b"}); err != nil {
		t.Fatal(err)
	}
	check("latest.json", "v1.3.0", "https://cdn.example.net/b/v1.3.0/"+update.ArtifactName("v1.3.0", update.Platform()), []byte("artifact of v1.3.0"))
	if _, err := release.Publish(release.PublishOptions{ChannelDir: dir, Version: "v1.3.0", Keys: []ed25519.PrivateKey{priv}, BaseURL: "cdn/b"}); err == nil {
		t.Error("a relative --base-url was accepted")
	}
	if _, err := release.Publish(release.PublishOptions{ChannelDir: dir, Version: "v9.0.0", Keys: []ed25519.PrivateKey{priv}}); err == nil {
		t.Error("published a release without its artifact")
	}
}

// builds are the two releases the end-to-end test makes, built once for the package.
type builds struct {
	priv     string // private key file
	old, new updatetest.Build
}

var (
	shared updatetest.Shared
	built  builds
)

func buildReleases(t *testing.T) builds {
	t.Helper()
	shared.Do(t, func(dir string) error {
		kp, err := release.Keygen(filepath.Join(dir, "key"), rand.Reader)
		if err != nil {
			return err
		}
		built.priv = kp.PrivatePath
		pub, _ := base64.StdEncoding.DecodeString(kp.Public)
		b, err := updatetest.BuildReleases(dir, []updatetest.Spec{{Sub: "old", Version: "v1.0.0"}, {Sub: "new", Version: "v1.1.0"}},
			ed25519.PublicKey(pub))
		built.old, built.new = b[0], b[1]
		return err
	})
	return built
}

func TestMain(m *testing.M) {
	code := m.Run()
	shared.Remove()
	os.Exit(code)
}

// copyBuild copies b's binaries into a new directory, leaving out skip.
func copyBuild(t *testing.T, b updatetest.Build, skip string) string {
	t.Helper()
	dir := t.TempDir()
	for _, n := range update.Binaries() {
		if n == skip {
			continue
		}
		data, err := os.ReadFile(b.Path(n))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, n), data, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// TestMakeRefuses: make refuses what `banger update` could not order or would refuse, and
// writes nothing into the channel when it does.
func TestMakeRefuses(t *testing.T) {
	r := buildReleases(t)
	oldInit := copyBuild(t, r.new, "banger-init")
	if data, err := os.ReadFile(r.old.Path("banger-init")); err != nil {
		t.Fatal(err)
	} else if err := os.WriteFile(filepath.Join(oldInit, "banger-init"), data, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, version, bin, want string
	}{
		{"unorderable version", "dev", r.new.Dir, "could not order"},
		{"bare commit", "1a2b3c4", r.new.Dir, "could not order"},
		{"missing binary", "v1.1.0", copyBuild(t, r.new, "banger-agent"), "banger-agent is missing"},
		{"banger reports another version", "v1.2.0", r.new.Dir, "reports version v1.1.0, not v1.2.0"},
		{"banger-init of another version", "v1.1.0", oldInit, "banger-init does not report version v1.1.0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ch := t.TempDir()
			_, errs, code := run(t, "make", "--key", r.priv, "--version", tc.version, "--bin", tc.bin, "--out", ch, "--gzip-level", "1")
			if code == 0 || !strings.Contains(errs, tc.want) {
				t.Fatalf("exit %d, stderr %q; want a refusal mentioning %q", code, errs, tc.want)
			}
			t.Logf("refused: %s", strings.TrimSpace(errs))
			if ents, _ := os.ReadDir(ch); len(ents) > 0 {
				t.Errorf("a refused make left %d entries in the channel (%s...)", len(ents), ents[0].Name())
			}
		})
	}
}

// TestReleaseEndToEnd makes a release of v1.1.0 with banger-release into a directory served
// over HTTP, and updates an installed v1.0.0, with its daemon running, from it.
func TestReleaseEndToEnd(t *testing.T) {
	r := buildReleases(t)
	chDir := filepath.Join(t.TempDir(), "stable")
	srv := httptest.NewServer(http.FileServer(http.Dir(chDir)))
	defer srv.Close()

	start := time.Now()
	out := mustRun(t, "make", "--key", r.priv, "--version", "v1.1.0", "--bin", r.new.Dir, "--out", chDir, "--gzip-level", "1")
	t.Logf("banger-release make took %s:\n%s", time.Since(start).Round(time.Millisecond), out)
	if !strings.Contains(out, "now names v1.1.0") {
		t.Errorf("make does not say latest.json names v1.1.0:\n%s", out)
	}
	for _, p := range []string{"latest.json", "v1.1.0/manifest.json", "v1.1.0/" + updatetest.ArtifactName("v1.1.0")} {
		if st, err := os.Stat(filepath.Join(chDir, p)); err != nil || st.Mode().Perm()&0o044 != 0o044 {
			t.Errorf("channel file %s: %v (must exist and be world-readable to be served)", p, err)
		}
	}
	// A published version is not replaced by accident.
	if _, errs, code := run(t, "make", "--key", r.priv, "--version", "v1.1.0", "--bin", r.new.Dir, "--out", chDir); code == 0 || !strings.Contains(errs, "already in") {
		t.Errorf("second make of v1.1.0: exit %d %s", code, errs)
	}

	s := updatetest.NewSandbox(t, r.old, srv.URL+"/", "")
	s.Must("daemon", "start")
	before := s.Status()
	var check update.CheckResult
	if err := json.Unmarshal([]byte(s.Must("update", "--check", "--json").Stdout), &check); err != nil {
		t.Fatal(err)
	}
	if !check.UpdateAvailable || check.Current != "v1.0.0" || check.Latest != "v1.1.0" {
		t.Fatalf("update --check against the made channel: %+v", check)
	}
	upd := s.Must("update", "--json")
	var res update.Result
	if err := json.Unmarshal([]byte(upd.Stdout), &res); err != nil {
		t.Fatalf("update --json printed %q: %v", upd.Stdout, err)
	}
	if res.Status != "updated" || res.From != "v1.0.0" || res.To != "v1.1.0" {
		t.Fatalf("update result: %+v\nstderr: %s", res, upd.Stderr)
	}
	s.InstalledIs(r.new)
	if after := s.Status(); after.Version != "v1.1.0" || after.PID == before.PID {
		t.Errorf("daemon after the update: version %s pid %d (before: pid %d)", after.Version, after.PID, before.PID)
	}
	t.Logf("update from the made release: %.0f ms %+v", res.TotalMS, res.Stages)
}
