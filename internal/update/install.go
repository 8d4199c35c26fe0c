package update

import (
	"archive/tar"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/banger-vm/banger/internal/paths"
	"github.com/banger-vm/banger/internal/system"
)

// Binaries lists the names a release artifact must contain; they are installed side by side
// and updated together. The order is the swap order: banger goes last, so until its rename
// the installed banger is the old one, which pairs with the old guest binaries its rollback
// restores.
func Binaries() []string { return []string{"banger-init", "banger-agent", "banger"} }

// PreviousSuffix names the kept previous binaries (banger.previous, ...).
const PreviousSuffix = ".previous"

// maxBinarySize bounds one extracted binary, against a decompression bomb.
const maxBinarySize = 512 << 20

// Install is where banger is installed and where an update of it is staged.
type Install struct {
	Dir string // the directory holding banger, banger-init and banger-agent
	// Staging is on Dir's filesystem, so staged binaries can be renamed into place.
	Staging string
	// System is true for an install outside the user's home (e.g. /usr/local/bin).
	System bool
}

// Path returns the installed path of binary name.
func (in Install) Path(name string) string { return filepath.Join(in.Dir, name) }

// Locate finds the install of the running banger (exe, symlinks resolved) and picks its
// staging directory: /var/cache/banger/update for a system install, the XDG cache for a
// user's, or <dir>/.banger-update when that is on another filesystem (a rename across
// filesystems is a copy, not atomic).
func Locate(exe string, env paths.Env) (Install, error) {
	real, err := filepath.EvalSymlinks(exe)
	if err != nil {
		return Install{}, fmt.Errorf("find the installed banger %s: %w", exe, err)
	}
	in := Install{Dir: filepath.Dir(real)}
	in.System = env.Home == "" || !isUnder(in.Dir, env.Home)
	for _, cand := range stagingCandidates(in, env) {
		if err := os.MkdirAll(cand, 0o700); err != nil {
			continue
		}
		if sameFS(cand, in.Dir) {
			in.Staging = cand
			return in, nil
		}
	}
	return Install{}, fmt.Errorf("no staging directory on the filesystem of %s is writable (tried %s): run `banger update` as the user that owns %s (sudo for a system install)",
		in.Dir, strings.Join(stagingCandidates(in, env), ", "), in.Dir)
}

// Existing returns the install of exe once per staging directory that already exists, to
// look for an interrupted update without creating anything (doctor).
func Existing(exe string, env paths.Env) ([]Install, error) {
	real, err := filepath.EvalSymlinks(exe)
	if err != nil {
		return nil, fmt.Errorf("find the installed banger %s: %w", exe, err)
	}
	in := Install{Dir: filepath.Dir(real)}
	in.System = env.Home == "" || !isUnder(in.Dir, env.Home)
	var out []Install
	for _, cand := range stagingCandidates(in, env) {
		if st, err := os.Stat(cand); err == nil && st.IsDir() {
			c := in
			c.Staging = cand
			out = append(out, c)
		}
	}
	return out, nil
}

// stagingCandidates lists where an update of in may be staged, preferred first; the last
// one (next to the binary) is always on the right filesystem.
func stagingCandidates(in Install, env paths.Env) []string {
	var out []string
	if in.System {
		out = append(out, "/var/cache/banger/update")
	} else if l, err := paths.Resolve(env); err == nil {
		out = append(out, filepath.Join(l.CacheDir, "update"))
	}
	return append(out, filepath.Join(in.Dir, ".banger-update"))
}

func isUnder(p, dir string) bool {
	rel, err := filepath.Rel(dir, p)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, "../")
}

func sameFS(a, b string) bool {
	var sa, sb unix.Stat_t
	if unix.Stat(a, &sa) != nil || unix.Stat(b, &sb) != nil {
		return false
	}
	return sa.Dev == sb.Dev
}

// Lock is the exclusive update lock of one install.
type Lock struct{ f *os.File }

// ErrLocked means another update (or a repair) holds the lock.
var ErrLocked = errors.New("another banger update is running")

// TryLock takes the update lock without waiting. The lock is an flock, so a killed holder
// releases it with its last file descriptor.
func (in Install) TryLock() (*Lock, error) {
	p := filepath.Join(in.Staging, "update.lock")
	f, err := os.OpenFile(p, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("update lock: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			holder, _ := os.ReadFile(p)
			return nil, fmt.Errorf("%w (pid %s holds %s): wait for it to finish", ErrLocked, strings.TrimSpace(string(holder)), p)
		}
		return nil, fmt.Errorf("update lock %s: %w", p, err)
	}
	_ = f.Truncate(0)
	_, _ = f.WriteAt([]byte(fmt.Sprintf("%d\n", os.Getpid())), 0)
	return &Lock{f: f}, nil
}

// Unlock releases the lock.
func (l *Lock) Unlock() {
	if l != nil && l.f != nil {
		l.f.Close()
		l.f = nil
	}
}

// Journal records an update in progress so an interrupted one can be repaired.
type Journal struct {
	From    string        `json:"from"`
	To      string        `json:"to"`
	Dir     string        `json:"dir"`
	Phase   string        `json:"phase"`
	PID     int           `json:"pid"`
	Started time.Time     `json:"started"`
	Files   []JournalFile `json:"files"`
}

// JournalFile is one binary's content before and after the update (SHA-256, hex; Old is
// "" when the binary was not installed before).
type JournalFile struct {
	Name string `json:"name"`
	Old  string `json:"old,omitempty"`
	New  string `json:"new"`
}

// Journal phases.
const (
	PhaseSwapping    = "swapping"     // binaries are being renamed into place
	PhaseVerifying   = "verifying"    // all swapped; restart and doctor pending
	PhaseRollingBack = "rolling-back" // putting the previous binaries back
)

func (in Install) journalPath() string { return filepath.Join(in.Staging, "journal.json") }

// WriteJournal stores j durably (temp file, fsync, rename, fsync dir).
func (in Install) WriteJournal(j Journal) error {
	data, err := json.MarshalIndent(j, "", "  ")
	if err != nil {
		return err
	}
	return system.WriteFileAtomic(in.journalPath(), data, 0o600)
}

// ReadJournal returns the journal, or ok=false when none exists.
func (in Install) ReadJournal() (j Journal, ok bool, err error) {
	data, err := os.ReadFile(in.journalPath())
	if errors.Is(err, fs.ErrNotExist) {
		return Journal{}, false, nil
	}
	if err != nil {
		return Journal{}, false, err
	}
	if err := json.Unmarshal(data, &j); err != nil {
		return Journal{}, true, fmt.Errorf("update journal %s is damaged (%v)", in.journalPath(), err)
	}
	return j, true, nil
}

// RemoveJournal ends an update.
func (in Install) RemoveJournal() error {
	if err := os.Remove(in.journalPath()); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return system.SyncDir(in.Staging)
}

// FileSHA256 returns the hex SHA-256 of path, or "" when it does not exist.
func FileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// Extract unpacks the release tarball into dir, which must be on the install's filesystem.
// Exactly the three binaries must be in it, as regular files; anything else is refused
// (a path like ../x could otherwise write outside dir).
func Extract(tarball, dir string) error {
	f, err := os.Open(tarball)
	if err != nil {
		return err
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		return fmt.Errorf("artifact %s is not gzip-compressed: %w", tarball, err)
	}
	tr := tar.NewReader(zr)
	want := map[string]bool{}
	for _, b := range Binaries() {
		want[b] = true
	}
	got := map[string]bool{}
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("artifact %s: %w", tarball, err)
		}
		name := strings.TrimPrefix(h.Name, "./")
		if h.Typeflag == tar.TypeDir && (name == "" || name == ".") {
			continue
		}
		if !want[name] || h.Typeflag != tar.TypeReg {
			return fmt.Errorf("artifact %s holds %q: a banger artifact holds only the regular files %s", tarball, h.Name, strings.Join(Binaries(), ", "))
		}
		if got[name] {
			return fmt.Errorf("artifact %s holds %s twice", tarball, name)
		}
		if h.Size > maxBinarySize {
			return fmt.Errorf("artifact %s: %s is %d bytes, more than a banger binary can be", tarball, name, h.Size)
		}
		if err := writeExecutable(filepath.Join(dir, name), io.LimitReader(tr, maxBinarySize)); err != nil {
			return fmt.Errorf("extract %s: %w", name, err)
		}
		got[name] = true
	}
	for _, b := range Binaries() {
		if !got[b] {
			return fmt.Errorf("artifact %s lacks %s: a banger artifact holds %s", tarball, b, strings.Join(Binaries(), ", "))
		}
	}
	return system.SyncDir(dir)
}

func writeExecutable(path string, r io.Reader) error {
	_ = os.Remove(path)
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, r); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// Swap renames the staged binaries in staged over the installed ones (banger last),
// keeping each previous one as NAME.previous. atPoint, when set, is called at named points
// ("before-final-rename:NAME", "swapped:NAME") so tests can kill the process there.
func (in Install) Swap(staged string, atPoint func(string)) error {
	hook := func(p string) {
		if atPoint != nil {
			atPoint(p)
		}
	}
	for _, name := range Binaries() {
		err := system.AtomicReplaceHooked(filepath.Join(staged, name), in.Path(name), PreviousSuffix,
			func() { hook("before-final-rename:" + name) })
		if err != nil {
			return err
		}
		hook("swapped:" + name)
	}
	return nil
}

// Restore puts back the binaries the journal says were installed before: every binary
// whose content is the new one is rolled back to NAME.previous (banger first, so the
// installed banger is the old one as early as possible). It is safe to repeat and to run
// after an interruption at any point, because it looks at what is on disk, not at how far
// the update got. It returns what it did.
func (in Install) Restore(j Journal) (actions []string, err error) {
	for i := len(j.Files) - 1; i >= 0; i-- {
		jf := j.Files[i]
		dst := in.Path(jf.Name)
		cur, err := FileSHA256(dst)
		if err != nil {
			return actions, err
		}
		switch {
		case cur == jf.Old:
			continue // never swapped, or already restored
		case cur == jf.New:
			prev, err := FileSHA256(dst + PreviousSuffix)
			if err != nil {
				return actions, err
			}
			if prev != jf.Old {
				return actions, fmt.Errorf("%s is the new %s but %s%s is not the previous one: reinstall banger %s by hand", dst, j.To, dst, PreviousSuffix, j.From)
			}
			if err := system.AtomicReplaceRollback(dst, PreviousSuffix); err != nil {
				return actions, err
			}
			actions = append(actions, fmt.Sprintf("restored %s (%s)", dst, j.From))
		default:
			return actions, fmt.Errorf("%s is neither banger %s nor %s (changed by hand during the update?): reinstall banger by hand", dst, j.From, j.To)
		}
	}
	return actions, nil
}

// Cleanup removes staged downloads and temporary names a killed AtomicReplace may leave
// (NAME.previous.PID.tmp); it keeps the lock file, the journal and NAME.previous.
func (in Install) Cleanup() (removed []string) {
	ents, _ := os.ReadDir(in.Staging)
	for _, e := range ents {
		if n := e.Name(); n != "update.lock" && n != "journal.json" {
			p := filepath.Join(in.Staging, n)
			if os.RemoveAll(p) == nil {
				removed = append(removed, p)
			}
		}
	}
	for _, name := range Binaries() {
		tmps, _ := filepath.Glob(in.Path(name) + PreviousSuffix + ".*.tmp")
		for _, t := range tmps {
			if os.Remove(t) == nil {
				removed = append(removed, t)
			}
		}
	}
	return removed
}
