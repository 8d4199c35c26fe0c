package client

// Files in and out of a VM, through the agent's exec: the guest's own cat, sh and tar
// (busybox's do) read and write them. Paths travel as arguments, never as shell text.
// What comes back from a guest is bounded (ReadFile) or extracted by internal/tarcopy,
// which keeps it inside the destination.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"github.com/banger-vm/banger/internal/tarcopy"
	"github.com/banger-vm/banger/internal/termutil"
)

// MaxReadFile bounds what ReadFile reads: a guest may send without end. Copy a larger file
// with CopyOut, or Exec `cat` with your own Stdout.
const MaxReadFile = 64 << 20

// maxGuestStderr bounds the guest's error output kept for a message.
const maxGuestStderr = 8 << 10

// errCopyEnded ends a packer whose reader went away (the guest's tar exited).
var errCopyEnded = errors.New("the guest's tar stopped reading")

// errTooLarge stops a ReadFile whose file outgrew MaxReadFile.
var errTooLarge = errors.New("file too large")

// ReadFile returns the contents of file p (an absolute path) in VM name, at most
// MaxReadFile bytes (a larger file is an error). The bytes are the guest's.
func (c *Client) ReadFile(ctx context.Context, name, p string) ([]byte, error) {
	if !path.IsAbs(p) {
		return nil, fmt.Errorf("read %s:%s: give an absolute path in the VM, like /root/file", name, p)
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	out := &cappedBuffer{max: MaxReadFile, full: func() { cancel(errTooLarge) }}
	code, guestErr, err := c.guestRun(ctx, name, []string{"sh", "-c", guestTools + `tool cat < "$1"`, "sh", p}, nil, out)
	switch {
	case context.Cause(ctx) == errTooLarge:
		return nil, fmt.Errorf("read %s:%s: it is larger than %d bytes: copy it with CopyOut (banger vm cp)", name, p, MaxReadFile)
	case err != nil:
		return nil, fmt.Errorf("read %s:%s: %w", name, p, err)
	case code != 0:
		return nil, fmt.Errorf("read %s:%s: %s (exit %d)", name, p, guestErr, code)
	}
	return out.Bytes(), nil
}

// WriteFile writes data to file p (an absolute path) in VM name, creating or truncating
// it, and sets its mode to perm (the permission bits). Its directory must exist. The file
// belongs to root.
func (c *Client) WriteFile(ctx context.Context, name, p string, data []byte, perm fs.FileMode) error {
	if !path.IsAbs(p) || strings.HasSuffix(p, "/") {
		return fmt.Errorf("write %s:%s: give an absolute file path in the VM, like /root/file", name, p)
	}
	// umask keeps the file private until chmod gives it its mode.
	script := guestTools + `umask 077 && tool cat > "$1" && tool chmod "$2" "$1"`
	mode := strconv.FormatUint(uint64(perm.Perm()), 8)
	code, guestErr, err := c.guestRun(ctx, name, []string{"sh", "-c", script, "sh", p, mode}, bytes.NewReader(data), io.Discard)
	switch {
	case err != nil:
		return fmt.Errorf("write %s:%s: %w", name, p, err)
	case code != 0:
		return fmt.Errorf("write %s:%s: %s (exit %d)", name, p, guestErr, code)
	}
	return nil
}

// CopyInOptions tunes CopyIn.
type CopyInOptions struct {
	// Recursive copies directories (like cp -r); without it a directory is refused.
	Recursive bool
	// Tar, when set, is a tar stream to unpack into the directory dst in place of host
	// paths (CopyIn's srcs must then be empty).
	Tar io.Reader
	// Progress, when set, is written every byte sent (to count them).
	Progress io.Writer
}

// CopyIn copies host files and directories srcs into VM name at dst (an absolute guest
// path) as a tar stream that the guest's tar unpacks: modes, mtimes and symlinks are
// kept; the files belong to root. dst may be an existing directory (the copies go in it)
// or, for one source, a new name in an existing directory.
func (c *Client) CopyIn(ctx context.Context, name string, srcs []string, dst string, opt CopyInOptions) error {
	if dst == "" || !path.IsAbs(dst) {
		return fmt.Errorf("%s:%s: give the VM side as an absolute path, like %s:/root/", name, dst, name)
	}
	stdinTar := opt.Tar != nil
	switch {
	case stdinTar && len(srcs) > 0:
		return errors.New("copy in: give either host paths or a tar stream, not both")
	case !stdinTar && len(srcs) == 0:
		return errors.New("copy in: no files to copy")
	}
	for _, s := range srcs {
		fi, err := os.Lstat(s)
		if err != nil {
			return fmt.Errorf("%s: no such file or directory", s)
		}
		if fi.IsDir() && !opt.Recursive {
			return fmt.Errorf("%s is a directory: pass -r (Recursive) to copy it", s)
		}
	}
	isDir, err := c.guestTest(ctx, name, "-d", dst)
	if err != nil {
		return err
	}
	dir, rename := dst, ""
	switch {
	case isDir:
	case stdinTar || len(srcs) > 1 || strings.HasSuffix(dst, "/"):
		return fmt.Errorf("%s:%s is not a directory in the VM", name, dst)
	default:
		dir, rename = path.Dir(dst), path.Base(dst)
		if ok, err := c.guestTest(ctx, name, "-d", dir); err != nil {
			return err
		} else if !ok {
			return fmt.Errorf("%s:%s: no such directory in the VM", name, dir)
		}
	}
	in := opt.Tar
	var packErr error
	var wg sync.WaitGroup
	var pr *io.PipeReader
	if !stdinTar {
		var pw *io.PipeWriter
		pr, pw = io.Pipe()
		wg.Add(1)
		go func() {
			defer wg.Done()
			packErr = tarcopy.Pack(pw, srcs, rename, opt.Recursive)
			pw.CloseWithError(packErr)
		}()
		in = pr
	}
	if opt.Progress != nil {
		in = io.TeeReader(in, opt.Progress)
	}
	code, guestErr, err := c.guestRun(ctx, name, guestTar("-x", "-f", "-", "-C", dir), in, io.Discard)
	if pr != nil {
		// A tar may stop reading at the archive's end marker, before the stream's padding:
		// the packer's last writes must not wait for it.
		pr.CloseWithError(errCopyEnded)
		wg.Wait()
		if errors.Is(packErr, errCopyEnded) && code == 0 && err == nil {
			packErr = nil
		}
	}
	switch {
	case err != nil:
		return fmt.Errorf("copy into %s: %w", name, err)
	case code != 0:
		return fmt.Errorf("copy into %s:%s failed: the guest's tar exited %d: %s", name, dst, code, guestErr)
	case packErr != nil:
		return fmt.Errorf("read the files to copy: %w", packErr)
	}
	return nil
}

// CopyOutOptions tunes CopyOut.
type CopyOutOptions struct {
	// Recursive copies a directory (like cp -r); without it a directory is refused.
	Recursive bool
	// Tar, when set, receives src as a tar stream instead of it being extracted on the
	// host (CopyOut's dst is then ignored). The stream is the guest's: unpack it with
	// care.
	Tar io.Writer
	// Progress, when set, is written every byte received (to count them).
	Progress io.Writer
	// Skipped, when set, is told about each entry the extraction refused (a path that
	// would leave dst, a device) and why; the copy goes on without it.
	Skipped func(name, why string)
}

// CopyOut copies src (an absolute guest path) out of VM name to host path dst: into dst
// when it is an existing directory, else as the new name dst in an existing directory.
// Modes, mtimes and symlinks are kept; nothing the guest sends lands outside dst.
func (c *Client) CopyOut(ctx context.Context, name, src, dst string, opt CopyOutOptions) error {
	if src == "" || !path.IsAbs(src) || path.Clean(src) == "/" {
		return fmt.Errorf("%s:%s: give the VM side as an absolute path below /, like %s:/root/file", name, src, name)
	}
	src = path.Clean(src)
	exists, err := c.guestTest(ctx, name, "-e", src)
	if err != nil {
		return err
	}
	if link, _ := c.guestTest(ctx, name, "-L", src); !exists && !link {
		return fmt.Errorf("%s:%s: no such file or directory in the VM", name, src)
	}
	if isDir, _ := c.guestTest(ctx, name, "-d", src); isDir && !opt.Recursive {
		return fmt.Errorf("%s:%s is a directory: pass -r (Recursive) to copy it", name, src)
	}
	argv := guestTar("-c", "-f", "-", "-C", path.Dir(src), path.Base(src))
	if opt.Tar != nil {
		out := opt.Tar
		if opt.Progress != nil {
			out = io.MultiWriter(out, opt.Progress)
		}
		code, guestErr, err := c.guestRun(ctx, name, argv, nil, out)
		return copyOutcome(name, src, code, guestErr, err)
	}
	into, rename := dst, ""
	if fi, err := os.Stat(dst); err != nil || !fi.IsDir() {
		if strings.HasSuffix(dst, string(filepath.Separator)) {
			return fmt.Errorf("%s: no such directory", dst)
		}
		into, rename = filepath.Dir(dst), filepath.Base(dst)
		if fi, err := os.Stat(into); err != nil || !fi.IsDir() {
			return fmt.Errorf("%s: no such directory", into)
		}
	}
	pr, pw := io.Pipe()
	var extractErr error
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		skipped := opt.Skipped
		if skipped == nil {
			skipped = func(string, string) {}
		}
		extractErr = tarcopy.Extract(pr, into, tarcopy.Options{Rename: rename, Skipped: skipped})
		// Drain what the guest still sends, so its tar ends.
		_, _ = io.Copy(io.Discard, pr)
		pr.Close()
	}()
	var out io.Writer = pw
	if opt.Progress != nil {
		out = io.MultiWriter(pw, opt.Progress)
	}
	code, guestErr, err := c.guestRun(ctx, name, argv, nil, out)
	pw.Close()
	wg.Wait()
	if extractErr != nil {
		return fmt.Errorf("write the copy into %s: %w", into, extractErr)
	}
	return copyOutcome(name, src, code, guestErr, err)
}

func copyOutcome(vm, src string, code int, guestErr string, err error) error {
	switch {
	case err != nil:
		return fmt.Errorf("copy out of %s: %w", vm, err)
	case code != 0:
		return fmt.Errorf("copy of %s:%s failed: the guest's tar exited %d: %s", vm, src, code, guestErr)
	}
	return nil
}

// guestRun runs argv in the VM with the given streams and returns its exit code and what
// it wrote to stderr: bounded, trimmed and stripped of terminal controls, ready for a
// message.
func (c *Client) guestRun(ctx context.Context, vm string, argv []string, stdin io.Reader, stdout io.Writer) (int, string, error) {
	errb := &cappedBuffer{max: maxGuestStderr}
	st, err := c.Exec(ctx, vm, Command{Argv: argv, Stdin: stdin, Stdout: stdout, Stderr: errb})
	msg := termutil.SanitizeString(strings.TrimSpace(errb.String()))
	if err != nil && st.Code < 0 {
		return -1, msg, err
	}
	return st.Code, msg, err
}

// guestTest runs `test FLAG PATH` in the guest.
func (c *Client) guestTest(ctx context.Context, vm, flag, p string) (bool, error) {
	code, _, err := c.guestRun(ctx, vm, []string{"sh", "-c", `test ` + flag + ` "$1"`, "sh", p}, nil, io.Discard)
	if err != nil {
		return false, err
	}
	return code == 0, nil
}

// guestTools defines `tool CMD ARGS...` for a guest script: CMD when the guest has it,
// else busybox's applet (minimal images install busybox without every link).
const guestTools = `tool() { if command -v "$1" >/dev/null 2>&1; then "$@"; else busybox "$@"; fi; }; `

// guestTar runs the guest's tar with args, falling back to busybox's applet on minimal
// images that install busybox without a tar link.
func guestTar(args ...string) []string {
	script := `if command -v tar >/dev/null 2>&1; then exec tar "$@"; fi; exec busybox tar "$@"`
	return append([]string{"sh", "-c", script, "tar"}, args...)
}

// cappedBuffer keeps the first max bytes written to it; past that it drops the rest and,
// once, calls full (if set).
type cappedBuffer struct {
	bytes.Buffer
	max      int
	full     func()
	overflow bool
}

func (b *cappedBuffer) Write(p []byte) (int, error) {
	room := b.max - b.Len()
	if len(p) > room && !b.overflow {
		b.overflow = true
		if b.full != nil {
			b.full()
		}
	}
	if room > 0 {
		b.Buffer.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}
