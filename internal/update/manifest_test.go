package update

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

func testKey(t *testing.T) (ed25519.PublicKey, ed25519.PrivateKey) {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return pub, priv
}

func testManifest() Manifest {
	return Manifest{Schema: ManifestSchema, Product: "banger", Version: "v1.2.3",
		Artifacts: map[string]Artifact{"linux-amd64": {URL: "a.tar.gz", Size: 10, SHA256: strings.Repeat("ab", 32)}}}
}

func TestVerify(t *testing.T) {
	pub, priv := testKey(t)
	otherPub, otherPriv := testKey(t)
	good, err := Sign(testManifest(), priv)
	if err != nil {
		t.Fatal(err)
	}
	m, err := Verify(good, []ed25519.PublicKey{pub})
	if err != nil || m.Version != "v1.2.3" {
		t.Fatalf("good manifest: %v %+v", err, m)
	}
	// Rotation: a manifest signed by the old and the new key verifies with either.
	both, _ := Sign(testManifest(), otherPriv, priv)
	for _, keys := range [][]ed25519.PublicKey{{pub}, {otherPub}, {pub, otherPub}} {
		if _, err := Verify(both, keys); err != nil {
			t.Errorf("doubly signed manifest with %d keys: %v", len(keys), err)
		}
	}

	var env Signed
	_ = json.Unmarshal(good, &env)
	payload, _ := base64.StdEncoding.DecodeString(env.Payload)
	tampered := env
	tampered.Payload = base64.StdEncoding.EncodeToString([]byte(strings.Replace(string(payload), "v1.2.3", "v9.9.9", 1)))
	tamperedData, _ := json.Marshal(tampered)
	badSig := env
	badSig.Signatures = []Signature{{KeyID: env.Signatures[0].KeyID, Signature: base64.StdEncoding.EncodeToString(make([]byte, ed25519.SignatureSize))}}
	badSigData, _ := json.Marshal(badSig)

	for name, tc := range map[string]struct {
		data    []byte
		keys    []ed25519.PublicKey
		wantErr error
	}{
		"tampered payload": {tamperedData, []ed25519.PublicKey{pub}, ErrBadSignature},
		"zero signature":   {badSigData, []ed25519.PublicKey{pub}, ErrBadSignature},
		"unknown key":      {good, []ed25519.PublicKey{otherPub}, ErrUnknownKey},
		"no trusted keys":  {good, nil, ErrUnknownKey},
	} {
		if _, err := Verify(tc.data, tc.keys); !errors.Is(err, tc.wantErr) {
			t.Errorf("%s: err %v, want %v", name, err, tc.wantErr)
		}
	}
	for name, data := range map[string]string{"not json": "nope", "no payload": `{"signatures":[]}`} {
		if _, err := Verify([]byte(data), []ed25519.PublicKey{pub}); err == nil {
			t.Errorf("%s accepted", name)
		}
	}
}

func TestVerifyRejectsBadManifests(t *testing.T) {
	pub, priv := testKey(t)
	for name, mut := range map[string]func(*Manifest){
		"schema":    func(m *Manifest) { m.Schema = 2 },
		"product":   func(m *Manifest) { m.Product = "other" },
		"version":   func(m *Manifest) { m.Version = "latest" },
		"sha256":    func(m *Manifest) { m.Artifacts["linux-amd64"] = Artifact{URL: "a", Size: 1, SHA256: "xyz"} },
		"zero size": func(m *Manifest) { m.Artifacts["linux-amd64"] = Artifact{URL: "a", SHA256: strings.Repeat("ab", 32)} },
	} {
		m := testManifest()
		mut(&m)
		data, _ := Sign(m, priv)
		if _, err := Verify(data, []ed25519.PublicKey{pub}); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	m := testManifest()
	if _, err := m.Artifact("linux-riscv64"); err == nil || !strings.Contains(err.Error(), "linux-amd64") {
		t.Errorf("missing platform: %v", err)
	}
}

func TestTrustedKeysIncludeLinkTimeKeys(t *testing.T) {
	// In a test binary nothing is stamped: the list is the compiled-in one and parses.
	if _, err := TrustedKeys(); err != nil {
		t.Fatal(err)
	}
}
