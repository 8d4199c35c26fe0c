package image

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"

	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/ProtonMail/go-crypto/openpgp/clearsign"
)

// DefaultMirror is the Debian mirror used unless images.debian_mirror says otherwise.
const DefaultMirror = "http://deb.debian.org/debian"

// DefaultKeyring holds the Debian archive's signing keys (package debian-archive-keyring).
const DefaultKeyring = "/usr/share/keyrings/debian-archive-keyring.gpg"

// maxPackagesIndex bounds a decompressed Packages index.
const maxPackagesIndex = 1 << 30

// archive reads a Debian archive over HTTP with every index verified: InRelease by its
// OpenPGP signature against the keyring, Packages by the SHA256 InRelease lists, .debs by
// the SHA256 Packages lists.
type archive struct {
	mirror  string
	keyring string
	client  *http.Client
}

// packagesIndex fetches and verifies dists/SUITE/main/binary-amd64/Packages.xz.
func (a *archive) packagesIndex(ctx context.Context, suite string) ([]map[string]string, error) {
	relURL := fmt.Sprintf("%s/dists/%s/InRelease", a.mirror, suite)
	signed, err := a.get(ctx, relURL, 1<<24)
	if err != nil {
		return nil, err
	}
	release, err := a.verifyInRelease(signed)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", relURL, err)
	}
	const idx = "main/binary-amd64/Packages.xz"
	wantSum, wantSize, err := releaseChecksum(release, idx)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", relURL, err)
	}
	u := fmt.Sprintf("%s/dists/%s/%s", a.mirror, suite, idx)
	data, err := a.get(ctx, u, 1<<28)
	if err != nil {
		return nil, err
	}
	if err := checkSum(data, wantSum, wantSize); err != nil {
		return nil, fmt.Errorf("%s: %w (the mirror is inconsistent or tampered with; retry or use another images.debian_mirror)", u, err)
	}
	plain, _, closeDec, err := decompressed(bytes.NewReader(data))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", u, err)
	}
	defer closeDec()
	// Signed, but bounded anyway: bookworm's main index is ~100 MiB uncompressed.
	text, err := io.ReadAll(io.LimitReader(plain, maxPackagesIndex+1))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", u, err)
	}
	if len(text) > maxPackagesIndex {
		return nil, fmt.Errorf("%s: decompresses to more than %d MiB: refused", u, maxPackagesIndex>>20)
	}
	return parseDeb822(text), nil
}

// verifyInRelease checks the clearsigned InRelease against the keyring and returns the
// signed text (never unsigned text around it).
func (a *archive) verifyInRelease(signed []byte) ([]byte, error) {
	kf, err := os.Open(a.keyring)
	if err != nil {
		return nil, fmt.Errorf("open Debian archive keyring: %w (install it: apt-get install debian-archive-keyring, or set images.debian_keyring)", err)
	}
	defer kf.Close()
	keys, err := openpgp.ReadKeyRing(kf)
	if err != nil {
		return nil, fmt.Errorf("read keyring %s: %w", a.keyring, err)
	}
	block, _ := clearsign.Decode(signed)
	if block == nil {
		return nil, fmt.Errorf("InRelease is not a clearsigned document: refusing an unsigned index")
	}
	if _, err := openpgp.CheckDetachedSignature(keys, bytes.NewReader(block.Bytes), block.ArmoredSignature.Body, nil); err != nil {
		return nil, fmt.Errorf("InRelease signature does not verify against %s: %w", a.keyring, err)
	}
	return block.Plaintext, nil
}

// releaseChecksum finds path in the SHA256 section of a Release file.
func releaseChecksum(release []byte, path string) (string, int64, error) {
	for _, s := range parseDeb822(release) {
		for _, line := range strings.Split(s["SHA256"], "\n") {
			f := strings.Fields(line)
			if len(f) == 3 && f[2] == path {
				n, err := strconv.ParseInt(f[1], 10, 64)
				if err != nil {
					return "", 0, fmt.Errorf("bad size for %s in Release", path)
				}
				return f[0], n, nil
			}
		}
	}
	return "", 0, fmt.Errorf("the Release file lists no SHA256 for %s", path)
}

func checkSum(data []byte, wantHex string, wantSize int64) error {
	if wantSize >= 0 && int64(len(data)) != wantSize {
		return fmt.Errorf("size %d, expected %d", len(data), wantSize)
	}
	sum := sha256.Sum256(data)
	if got := hex.EncodeToString(sum[:]); !strings.EqualFold(got, wantHex) {
		return fmt.Errorf("SHA256 %s, expected %s", got, wantHex)
	}
	return nil
}

func (a *archive) get(ctx context.Context, u string, limit int64) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	resp, err := a.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("download %s: %w (check images.debian_mirror and your network)", u, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("download %s: %s", u, resp.Status)
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	if err != nil {
		return nil, fmt.Errorf("download %s: %w", u, err)
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("download %s: larger than %d bytes", u, limit)
	}
	return data, nil
}

// resolvePackage finds name in the index, following a meta package (no files of its own,
// such as linux-image-cloud-amd64) to the versioned linux-image-* package it depends on.
func resolvePackage(index []map[string]string, pkg string) (map[string]string, error) {
	byName := map[string]map[string]string{}
	for _, s := range index {
		n := s["Package"]
		if old, ok := byName[n]; !ok || compareDebVersions(s["Version"], old["Version"]) > 0 {
			byName[n] = s
		}
	}
	s, ok := byName[pkg]
	if !ok {
		return nil, fmt.Errorf("package %s is not in the archive index", pkg)
	}
	for _, dep := range strings.Split(s["Depends"], ",") {
		d := strings.TrimSpace(dep)
		n := strings.Fields(strings.Split(d, "|")[0])
		if len(n) > 0 && strings.HasPrefix(n[0], "linux-image-") && n[0] != pkg {
			if t, ok := byName[n[0]]; ok {
				return t, nil
			}
		}
	}
	return s, nil
}

// compareDebVersions is a coarse ordering (enough to pick the newest of duplicate stanzas).
func compareDebVersions(a, b string) int { return strings.Compare(a, b) }
