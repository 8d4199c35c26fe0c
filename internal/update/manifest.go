// Package update is banger's self-update: a release manifest signed with ed25519, a
// verified download of the release artifact, an atomic swap of the installed binaries that
// keeps the previous ones, and the journal that lets an interrupted update be repaired.
//
// A release channel is a URL prefix serving
//
//	<channel>/latest.json              signed manifest of the newest release
//	<channel>/<version>/manifest.json  signed manifest of each release
//
// The artifact named in a manifest is a gzip-compressed tar holding exactly the three
// binaries installed side by side: banger, banger-init and banger-agent. Its URL is
// resolved against the manifest's own URL, so a release directory copied anywhere (or onto
// a USB stick, for `banger update --from`) stays valid.
package update

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"time"

	"github.com/banger-vm/banger/internal/buildinfo"
)

// ManifestSchema is the manifest format this banger reads.
const ManifestSchema = 1

// signingContext is prepended to the payload before signing, so a signature made for a
// banger manifest can never be replayed as a signature over anything else.
const signingContext = "banger release manifest v1\n"

// Manifest describes one release.
type Manifest struct {
	Schema   int       `json:"schema"`
	Product  string    `json:"product"`
	Version  string    `json:"version"`
	Released time.Time `json:"released,omitzero"`
	// Artifacts maps "GOOS-GOARCH" (e.g. "linux-amd64") to the release tarball.
	Artifacts map[string]Artifact `json:"artifacts"`
}

// Artifact is one downloadable release tarball.
type Artifact struct {
	URL    string `json:"url"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

// Signed is the envelope served on the channel: the manifest's exact bytes and signatures
// over them. Keeping the bytes (base64) avoids any canonical-JSON question.
type Signed struct {
	Payload    string      `json:"payload"`
	Signatures []Signature `json:"signatures"`
}

// Signature is one ed25519 signature; KeyID names the key that made it.
type Signature struct {
	KeyID     string `json:"key_id"`
	Signature string `json:"signature"`
}

// Platform is this binary's artifact key.
func Platform() string { return runtime.GOOS + "-" + runtime.GOARCH }

// KeyID is a short stable name of a public key: the first 8 bytes of its SHA-256, in hex.
func KeyID(pub ed25519.PublicKey) string {
	sum := sha256.Sum256(pub)
	return hex.EncodeToString(sum[:8])
}

// Sign wraps m in an envelope signed by each of keys (release tooling and tests use it).
func Sign(m Manifest, keys ...ed25519.PrivateKey) ([]byte, error) {
	payload, err := json.Marshal(m)
	if err != nil {
		return nil, err
	}
	env := Signed{Payload: base64.StdEncoding.EncodeToString(payload)}
	for _, k := range keys {
		sig := ed25519.Sign(k, append([]byte(signingContext), payload...))
		env.Signatures = append(env.Signatures, Signature{
			KeyID: KeyID(k.Public().(ed25519.PublicKey)), Signature: base64.StdEncoding.EncodeToString(sig)})
	}
	return json.MarshalIndent(env, "", "  ")
}

// Errors a caller (and a test) can tell apart.
var (
	ErrUnknownKey   = errors.New("manifest is not signed by any key this banger trusts")
	ErrBadSignature = errors.New("manifest signature does not verify")
)

// Verify checks that data is an envelope signed by at least one of trusted and returns the
// manifest in it. A signature by a trusted key that does not verify is an error even when
// another signature is fine: it means the payload was tampered with or the key misused.
func Verify(data []byte, trusted []ed25519.PublicKey) (Manifest, error) {
	var env Signed
	if err := json.Unmarshal(data, &env); err != nil {
		return Manifest{}, fmt.Errorf("manifest is not a signed banger manifest (JSON with payload and signatures): %w", err)
	}
	payload, err := base64.StdEncoding.DecodeString(env.Payload)
	if err != nil || len(payload) == 0 {
		return Manifest{}, errors.New("manifest payload is missing or not base64")
	}
	byID := map[string]ed25519.PublicKey{}
	for _, k := range trusted {
		byID[KeyID(k)] = k
	}
	verified := false
	var seen []string
	for _, s := range env.Signatures {
		seen = append(seen, s.KeyID)
		k, ok := byID[s.KeyID]
		if !ok {
			continue
		}
		sig, err := base64.StdEncoding.DecodeString(s.Signature)
		if err != nil || !ed25519.Verify(k, append([]byte(signingContext), payload...), sig) {
			return Manifest{}, fmt.Errorf("%w (key %s): the manifest or its signature was altered; do not install it", ErrBadSignature, s.KeyID)
		}
		verified = true
	}
	if !verified {
		if len(trusted) == 0 {
			return Manifest{}, fmt.Errorf("%w: this build trusts no release key (it was built without one); install banger from your distribution or rebuild it", ErrUnknownKey)
		}
		return Manifest{}, fmt.Errorf("%w: signed by [%s], trusted are [%s]; the release may use a newer key: install a release that carries it by hand",
			ErrUnknownKey, strings.Join(seen, ", "), strings.Join(keyIDs(trusted), ", "))
	}
	var m Manifest
	dec := json.NewDecoder(strings.NewReader(string(payload)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&m); err != nil {
		return Manifest{}, fmt.Errorf("signed manifest does not parse: %w", err)
	}
	if err := m.validate(); err != nil {
		return Manifest{}, err
	}
	return m, nil
}

func (m Manifest) validate() error {
	if m.Schema != ManifestSchema {
		return fmt.Errorf("manifest schema %d is not %d: this banger is too old to read it; install the new release by hand", m.Schema, ManifestSchema)
	}
	if m.Product != "banger" {
		return fmt.Errorf("manifest is for %q, not banger", m.Product)
	}
	if _, err := ParseVersion(m.Version); err != nil {
		return fmt.Errorf("manifest: %w", err)
	}
	for p, a := range m.Artifacts {
		if a.URL == "" || a.Size <= 0 {
			return fmt.Errorf("manifest artifact %s: empty url or size", p)
		}
		if b, err := hex.DecodeString(a.SHA256); err != nil || len(b) != sha256.Size {
			return fmt.Errorf("manifest artifact %s: sha256 %q is not 64 hex digits", p, a.SHA256)
		}
	}
	return nil
}

// Artifact returns the artifact for platform or says which platforms the release has.
func (m Manifest) Artifact(platform string) (Artifact, error) {
	a, ok := m.Artifacts[platform]
	if !ok {
		var have []string
		for p := range m.Artifacts {
			have = append(have, p)
		}
		return Artifact{}, fmt.Errorf("release %s has no artifact for %s (it has: %s)", m.Version, platform, strings.Join(have, ", "))
	}
	return a, nil
}

func keyIDs(keys []ed25519.PublicKey) []string {
	out := make([]string, len(keys))
	for i, k := range keys {
		out[i] = KeyID(k)
	}
	return out
}

// releaseKeys are the project's release-signing public keys (base64). It is a list so a
// key can be rotated: a release signed by both the old and the new key ships with both
// here; a later one drops the old key. The project's first signed release adds its key here;
// until then builds trust only keys added with -ldflags -X .../buildinfo.updateKeys.
func releaseKeys() []string { return []string{} }

// TrustedKeys returns the compiled-in keys plus those added at link time.
func TrustedKeys() ([]ed25519.PublicKey, error) {
	var out []ed25519.PublicKey
	for _, s := range append(releaseKeys(), buildinfo.UpdateKeys()...) {
		b, err := base64.StdEncoding.DecodeString(s)
		if err != nil || len(b) != ed25519.PublicKeySize {
			return nil, fmt.Errorf("compiled-in release key %q is not a base64 ed25519 public key: the build is broken", s)
		}
		out = append(out, ed25519.PublicKey(b))
	}
	return out, nil
}
