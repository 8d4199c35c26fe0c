package release

import (
	"crypto/ed25519"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/banger-vm/banger/internal/update"
)

// Key file names that Keygen writes into its directory.
const (
	PrivateKeyFile = "release.key" // PKCS#8 PEM, mode 0600
	PublicKeyFile  = "release.pub" // one line: the base64 public key
)

// KeyPair describes a key written by Keygen.
type KeyPair struct {
	PrivatePath string `json:"private_key_file"`
	PublicPath  string `json:"public_key_file"`
	// Public is the base64 public key: the form of releaseKeys() in internal/update and of
	// -X github.com/banger-vm/banger/internal/buildinfo.updateKeys=...
	Public string `json:"public_key"`
	ID     string `json:"key_id"`
}

// EncodePublicKey is pub in the base64 form banger's key lists use.
func EncodePublicKey(pub ed25519.PublicKey) string { return base64.StdEncoding.EncodeToString(pub) }

// Keygen writes a new signing key pair into dir (created 0700 if missing). It never
// overwrites a key: losing a release key means a key rotation.
func Keygen(dir string, random io.Reader) (KeyPair, error) {
	pub, priv, err := ed25519.GenerateKey(random)
	if err != nil {
		return KeyPair{}, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return KeyPair{}, err
	}
	kp := KeyPair{PrivatePath: filepath.Join(dir, PrivateKeyFile), PublicPath: filepath.Join(dir, PublicKeyFile),
		Public: EncodePublicKey(pub), ID: update.KeyID(pub)}
	for _, p := range []string{kp.PrivatePath, kp.PublicPath} {
		if _, err := os.Lstat(p); err == nil {
			return KeyPair{}, fmt.Errorf("%s already exists: not overwriting a release key (use another --out directory)", p)
		}
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return KeyPair{}, err
	}
	if err := writeNew(kp.PrivatePath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		return KeyPair{}, err
	}
	if err := writeNew(kp.PublicPath, []byte(kp.Public+"\n"), 0o644); err != nil {
		os.Remove(kp.PrivatePath)
		return KeyPair{}, err
	}
	return kp, nil
}

// writeNew creates path with exactly perm (no umask surprise) and data, durably; it fails
// when path exists.
func writeNew(path string, data []byte, perm os.FileMode) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, perm)
	if err != nil {
		return err
	}
	if err := f.Chmod(perm); err != nil {
		f.Close()
		os.Remove(path)
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		os.Remove(path)
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		os.Remove(path)
		return err
	}
	return f.Close()
}

// ReadPrivateKey reads a key written by Keygen. Like ssh, it refuses a key file that others
// can read: a leaked release key lets anyone push binaries to every banger.
func ReadPrivateKey(path string) (ed25519.PrivateKey, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("release key %s is accessible by others (mode %#o): chmod 600 it (and consider the key leaked if others could read it)", path, st.Mode().Perm())
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "PRIVATE KEY" {
		return nil, fmt.Errorf("%s is not a PEM private key (made by `banger-release keygen`)", path)
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	priv, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("%s holds a %T, not an ed25519 key", path, k)
	}
	return priv, nil
}
