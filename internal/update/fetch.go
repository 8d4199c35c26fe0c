package update

import (
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// maxManifestSize bounds what we read as a manifest: it is a few hundred bytes.
const maxManifestSize = 1 << 20

// Progress receives download progress; total is the expected size.
type Progress func(done, total int64)

// Source is where a release comes from: a channel URL or a local directory/file.
type Source struct {
	HTTP *http.Client
}

// ManifestURL is where the manifest of version (or of the latest release when version is
// "") lives on channel.
func ManifestURL(channel, version string) (string, error) {
	if channel == "" {
		return "", errors.New("no release channel configured: set update.channel_url in the config, or install an offline release with `banger update --from FILE`")
	}
	u, err := url.Parse(channel)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http" && u.Scheme != "file") {
		return "", fmt.Errorf("update.channel_url %q is not an http(s) or file URL", channel)
	}
	if !strings.HasSuffix(u.Path, "/") {
		u.Path += "/"
	}
	rel := "latest.json"
	if version != "" {
		rel = url.PathEscape(version) + "/manifest.json"
	}
	return u.ResolveReference(&url.URL{Path: rel}).String(), nil
}

// FetchManifest reads the signed manifest at loc (a URL or a local path) and verifies it.
func (s Source) FetchManifest(ctx context.Context, loc string, trusted []ed25519.PublicKey) (Manifest, []byte, error) {
	rc, _, err := s.open(ctx, loc)
	if err != nil {
		return Manifest{}, nil, fmt.Errorf("fetch manifest: %w", err)
	}
	defer rc.Close()
	data, err := io.ReadAll(io.LimitReader(rc, maxManifestSize+1))
	if err != nil {
		return Manifest{}, nil, fmt.Errorf("read manifest %s: %w", loc, err)
	}
	if len(data) > maxManifestSize {
		return Manifest{}, nil, fmt.Errorf("manifest %s is larger than %d bytes: not a banger manifest", loc, maxManifestSize)
	}
	m, err := Verify(data, trusted)
	if err != nil {
		return Manifest{}, nil, fmt.Errorf("manifest %s: %w", loc, err)
	}
	return m, data, nil
}

// ResolveArtifact turns an artifact URL relative to the manifest at base into an absolute
// URL or path.
func ResolveArtifact(base, ref string) (string, error) {
	if isURL(base) {
		b, err := url.Parse(base)
		if err != nil {
			return "", err
		}
		r, err := url.Parse(ref)
		if err != nil {
			return "", fmt.Errorf("artifact url %q: %w", ref, err)
		}
		return b.ResolveReference(r).String(), nil
	}
	if isURL(ref) {
		return ref, nil
	}
	if filepath.IsAbs(ref) {
		return ref, nil
	}
	return filepath.Join(filepath.Dir(base), filepath.FromSlash(ref)), nil
}

func isURL(s string) bool {
	return strings.HasPrefix(s, "http://") || strings.HasPrefix(s, "https://") || strings.HasPrefix(s, "file://")
}

// Download copies the artifact at loc into dst, checking its size and SHA-256 as it goes.
// dst is written as dst+".part" and renamed only once it verified, so a file named dst is
// always a complete, verified artifact.
func (s Source) Download(ctx context.Context, loc string, a Artifact, dst string, progress Progress) error {
	rc, length, err := s.open(ctx, loc)
	if err != nil {
		return fmt.Errorf("download %s: %w", loc, err)
	}
	defer rc.Close()
	if length >= 0 && length != a.Size {
		return fmt.Errorf("download %s: the server announces %d bytes, the manifest %d: wrong or damaged file on the channel", loc, length, a.Size)
	}
	part := dst + ".part"
	f, err := os.OpenFile(part, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("download: %w", err)
	}
	ok := false
	defer func() {
		f.Close()
		if !ok {
			os.Remove(part)
		}
	}()
	h := sha256.New()
	// One byte more than promised: a longer file is an error, not a silent truncation.
	src := &progressReader{r: io.LimitReader(rc, a.Size+1), total: a.Size, report: progress}
	n, err := io.Copy(io.MultiWriter(f, h), src)
	src.flush()
	if err != nil {
		return fmt.Errorf("download %s: %w after %d of %d bytes; retry `banger update`", loc, err, n, a.Size)
	}
	if n != a.Size {
		return fmt.Errorf("download %s: got %d bytes, the manifest says %d: the download was cut short or the file on the channel is wrong; retry, and if it persists report it", loc, n, a.Size)
	}
	if got := hex.EncodeToString(h.Sum(nil)); !strings.EqualFold(got, a.SHA256) {
		return fmt.Errorf("download %s: SHA-256 %s does not match the signed manifest's %s: the file was altered or damaged; it was not installed", loc, got, a.SHA256)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("download: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("download: %w", err)
	}
	if err := os.Rename(part, dst); err != nil {
		return fmt.Errorf("download: %w", err)
	}
	ok = true
	return nil
}

// open returns a reader for loc and its length (-1 when unknown).
func (s Source) open(ctx context.Context, loc string) (io.ReadCloser, int64, error) {
	if strings.HasPrefix(loc, "file://") {
		u, err := url.Parse(loc)
		if err != nil {
			return nil, 0, err
		}
		loc = u.Path
	}
	if !isURL(loc) {
		f, err := os.Open(loc)
		if err != nil {
			return nil, 0, err
		}
		st, err := f.Stat()
		if err != nil {
			f.Close()
			return nil, 0, err
		}
		return f, st.Size(), nil
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, loc, nil)
	if err != nil {
		return nil, 0, err
	}
	c := s.HTTP
	if c == nil {
		c = &http.Client{Timeout: 30 * time.Minute}
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, 0, fmt.Errorf("%w (is the channel reachable? check update.channel_url)", err)
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		return nil, 0, fmt.Errorf("GET %s: %s", loc, resp.Status)
	}
	return resp.Body, resp.ContentLength, nil
}

// progressReader reports progress at most every 100 ms.
type progressReader struct {
	r      io.Reader
	n      int64
	total  int64
	last   time.Time
	report Progress
}

func (p *progressReader) Read(b []byte) (int, error) {
	n, err := p.r.Read(b)
	p.n += int64(n)
	if p.report != nil && time.Since(p.last) >= 100*time.Millisecond {
		p.last = time.Now()
		p.report(p.n, p.total)
	}
	return n, err
}

func (p *progressReader) flush() {
	if p.report != nil {
		p.report(p.n, p.total)
	}
}
