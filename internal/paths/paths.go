// Package paths resolves banger's on-disk layout from the XDG base directories.
//
//	$XDG_CONFIG_HOME/banger/config.toml
//	$XDG_DATA_HOME/banger/{images,vms,state.db}
//	$XDG_STATE_HOME/banger/{daemon.log}
//	$XDG_CACHE_HOME/banger/
//	$XDG_RUNTIME_DIR/banger/{banger.sock,daemon.lock}
package paths

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
)

// Env is the slice of the process environment the layout depends on; passing it explicitly
// keeps tests hermetic and avoids reading globals deep inside the code.
type Env struct {
	Home          string
	XDGConfigHome string
	XDGDataHome   string
	XDGStateHome  string
	XDGCacheHome  string
	XDGRuntimeDir string
	UID           int
	TempDir       string
}

// EnvFromOS reads Env from the current process.
func EnvFromOS() Env {
	home, _ := os.UserHomeDir()
	return Env{
		Home:          home,
		XDGConfigHome: os.Getenv("XDG_CONFIG_HOME"),
		XDGDataHome:   os.Getenv("XDG_DATA_HOME"),
		XDGStateHome:  os.Getenv("XDG_STATE_HOME"),
		XDGCacheHome:  os.Getenv("XDG_CACHE_HOME"),
		XDGRuntimeDir: os.Getenv("XDG_RUNTIME_DIR"),
		UID:           os.Getuid(),
		TempDir:       os.TempDir(),
	}
}

// Layout is every directory and file banger uses.
type Layout struct {
	ConfigDir  string
	ConfigFile string
	DataDir    string
	ImagesDir  string
	VMsDir     string
	SSHDir     string // banger's SSH user key and known_hosts
	StateDB    string
	StateDir   string
	LogDir     string
	DaemonLog  string
	CacheDir   string
	RuntimeDir string
	Socket     string
	LockFile   string
}

// Resolve computes the layout. XDG variables that are unset or relative are ignored, as the
// XDG spec requires. Without XDG_RUNTIME_DIR (e.g. under su or cron) the runtime directory
// falls back to a per-user directory in the temp dir, which EnsureRuntimeDir verifies is ours.
func Resolve(env Env) (Layout, error) {
	base := func(xdg, fallback string) (string, error) {
		if filepath.IsAbs(xdg) {
			return filepath.Join(xdg, "banger"), nil
		}
		if env.Home == "" || !filepath.IsAbs(env.Home) {
			return "", errors.New("cannot find the home directory: set HOME or the XDG_*_HOME variables")
		}
		return filepath.Join(env.Home, fallback, "banger"), nil
	}
	var l Layout
	var err error
	if l.ConfigDir, err = base(env.XDGConfigHome, ".config"); err != nil {
		return Layout{}, err
	}
	if l.DataDir, err = base(env.XDGDataHome, ".local/share"); err != nil {
		return Layout{}, err
	}
	if l.StateDir, err = base(env.XDGStateHome, ".local/state"); err != nil {
		return Layout{}, err
	}
	if l.CacheDir, err = base(env.XDGCacheHome, ".cache"); err != nil {
		return Layout{}, err
	}
	if filepath.IsAbs(env.XDGRuntimeDir) {
		l.RuntimeDir = filepath.Join(env.XDGRuntimeDir, "banger")
	} else {
		tmp := env.TempDir
		if tmp == "" {
			tmp = "/tmp"
		}
		l.RuntimeDir = filepath.Join(tmp, "banger-"+strconv.Itoa(env.UID))
	}
	l.ConfigFile = filepath.Join(l.ConfigDir, "config.toml")
	l.ImagesDir = filepath.Join(l.DataDir, "images")
	l.VMsDir = filepath.Join(l.DataDir, "vms")
	l.SSHDir = filepath.Join(l.DataDir, "ssh")
	l.StateDB = filepath.Join(l.DataDir, "state.db")
	l.LogDir = l.StateDir
	l.DaemonLog = filepath.Join(l.LogDir, "daemon.log")
	l.Socket = filepath.Join(l.RuntimeDir, "banger.sock")
	l.LockFile = filepath.Join(l.RuntimeDir, "daemon.lock")
	return l, nil
}

// WithDataDir moves every data path under dir (the data_dir config key).
func (l Layout) WithDataDir(dir string) Layout {
	l.DataDir = dir
	l.ImagesDir = filepath.Join(dir, "images")
	l.VMsDir = filepath.Join(dir, "vms")
	l.SSHDir = filepath.Join(dir, "ssh")
	l.StateDB = filepath.Join(dir, "state.db")
	return l
}

// EnsureDaemonDirs creates the directories the daemon writes to, private to the user.
func (l Layout) EnsureDaemonDirs() error {
	for _, d := range []string{l.DataDir, l.ImagesDir, l.VMsDir, l.StateDir, l.LogDir, l.CacheDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return fmt.Errorf("create %s: %w", d, err)
		}
	}
	return l.EnsureRuntimeDir()
}

// EnsureRuntimeDir creates the socket directory 0700 and refuses one that another user owns
// or that is a symlink: in a shared /tmp an attacker could otherwise pre-create it and
// intercept the daemon's socket.
func (l Layout) EnsureRuntimeDir() error {
	if err := os.MkdirAll(filepath.Dir(l.RuntimeDir), 0o700); err != nil {
		return fmt.Errorf("create %s: %w", filepath.Dir(l.RuntimeDir), err)
	}
	if err := os.Mkdir(l.RuntimeDir, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("create runtime dir %s: %w", l.RuntimeDir, err)
	}
	fi, err := os.Lstat(l.RuntimeDir)
	if err != nil {
		return fmt.Errorf("runtime dir %s: %w", l.RuntimeDir, err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("runtime dir %s is not a directory (symlink?): remove it and retry", l.RuntimeDir)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && int(st.Uid) != os.Getuid() {
		return fmt.Errorf("runtime dir %s is owned by uid %d, not you (uid %d): remove it or set XDG_RUNTIME_DIR", l.RuntimeDir, st.Uid, os.Getuid())
	}
	if fi.Mode().Perm() != 0o700 {
		if err := os.Chmod(l.RuntimeDir, 0o700); err != nil {
			return fmt.Errorf("restrict runtime dir %s to 0700: %w", l.RuntimeDir, err)
		}
	}
	return nil
}

// UnsafeDirError says why a directory is not private to its user, and what to do.
type UnsafeDirError struct {
	Dir    string
	Reason string
	Fix    string
}

func (e *UnsafeDirError) Error() string {
	return fmt.Sprintf("%s %s: %s", e.Dir, e.Reason, e.Fix)
}

// CheckPrivateDir verifies that dir is a real directory (not a symlink) owned by uid with
// no group or other permission bits: then nobody else can have put a socket in it. The
// error for a missing dir wraps fs.ErrNotExist. The CLI calls this before every connect
// to the daemon's socket: in a shared /tmp another user could have created it first.
func CheckPrivateDir(dir string, uid int) error {
	fi, err := os.Lstat(dir)
	if err != nil {
		return err
	}
	fix := "remove it (the daemon recreates it private) or set XDG_RUNTIME_DIR"
	if fi.Mode()&os.ModeSymlink != 0 {
		return &UnsafeDirError{Dir: dir, Reason: "is a symlink, not a directory of yours", Fix: fix}
	}
	if !fi.IsDir() {
		return &UnsafeDirError{Dir: dir, Reason: "is not a directory", Fix: fix}
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return &UnsafeDirError{Dir: dir, Reason: "has no owner information", Fix: fix}
	}
	if int(st.Uid) != uid {
		return &UnsafeDirError{Dir: dir, Reason: fmt.Sprintf("is owned by uid %d, not you (uid %d)", st.Uid, uid),
			Fix: "another user may be impersonating your daemon; " + fix}
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return &UnsafeDirError{Dir: dir, Reason: fmt.Sprintf("has mode %04o: others may use it", perm),
			Fix: fmt.Sprintf("if it is yours, make it private: `chmod 0700 %s`", dir)}
	}
	return nil
}
