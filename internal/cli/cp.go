package cli

// `banger vm cp`: files and directory trees in and out of a VM, as a tar stream through the
// agent's exec (the guest's own tar unpacks or packs it). What comes back from a guest is
// extracted by internal/tarcopy, which keeps it inside the destination.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/banger-vm/banger/internal/agent/agentclient"
	"github.com/banger-vm/banger/internal/api"
	"github.com/banger-vm/banger/internal/tarcopy"
	"github.com/banger-vm/banger/internal/termutil"
	"github.com/banger-vm/banger/internal/units"
)

// errCopyEnded ends a packer whose reader went away (the guest's tar exited).
var errCopyEnded = errors.New("the guest's tar stopped reading")

// maxGuestStderr bounds the guest tar's error output kept for a message.
const maxGuestStderr = 8 << 10

func (a *app) vmCpCommand() *cobra.Command {
	var recursive bool
	cmd := &cobra.Command{
		Use:   "cp [-r] SRC... NAME:DST | cp [-r] NAME:SRC DST",
		Short: "Copy files and directories into or out of a VM (modes, mtimes and symlinks kept)",
		Long: `Copy into a VM (SRC... NAME:DST) or out of one (NAME:SRC DST), through its agent, as a
tar stream: modes, mtimes and symlinks are kept; files copied in belong to root. -r copies
directories. DST may be an existing directory (the copies go in it) or, for one SRC, a new
name. "-" reads a tar stream from stdin (cp - NAME:DIR) or writes one to stdout
(cp NAME:SRC -), like docker cp. The guest needs a tar (busybox's or GNU's).

  banger vm cp -r ./src dev:/root/
  banger vm cp dev:/root/report.txt .
  banger vm cp dev:/var/log - | tar t`,
		Args: cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			srcs, dst := args[:len(args)-1], args[len(args)-1]
			ctx, stop := interruptible(cmd.Context())
			defer stop()
			vmName, guestDst, toGuest := splitRemote(dst)
			if toGuest {
				for _, s := range srcs {
					if _, _, remote := splitRemote(s); remote {
						return errors.New("copy between VMs is not supported: copy to the host first")
					}
				}
				c, err := a.ensureDaemon(ctx, false)
				if err != nil {
					return err
				}
				return a.copyIn(ctx, c, srcs, vmName, guestDst, recursive)
			}
			if len(srcs) != 1 {
				return errors.New("copy out of a VM takes one NAME:SRC and a DST")
			}
			vmName, guestSrc, fromGuest := splitRemote(srcs[0])
			if !fromGuest {
				return errors.New("name the VM side as NAME:PATH (SRC... NAME:DST, or NAME:SRC DST)")
			}
			c, err := a.ensureDaemon(ctx, false)
			if err != nil {
				return err
			}
			return a.copyOut(ctx, c, vmName, guestSrc, dst, recursive)
		},
	}
	cmd.Flags().BoolVarP(&recursive, "recursive", "r", false, "copy directories")
	return cmd
}

// splitRemote reads NAME:PATH; a local path with a ':' can be written ./a:b.
func splitRemote(arg string) (vm, p string, ok bool) {
	i := strings.IndexByte(arg, ':')
	if i <= 0 || strings.ContainsRune(arg[:i], '/') {
		return "", "", false
	}
	return arg[:i], arg[i+1:], true
}

// guestRun runs argv in the VM with the given streams and returns its exit code and what
// it wrote to stderr (bounded).
func guestRun(ctx context.Context, c *api.Client, vm string, argv []string, stdin io.Reader, stdout io.Writer) (int, string, error) {
	conn, err := c.ExecStream(ctx, api.VMExecRequest{Name: vm, Argv: argv})
	if err != nil {
		return -1, "", err
	}
	var errb limitedBuffer
	errb.max = maxGuestStderr
	s := agentclient.AttachExec(ctx, conn, stdin, stdout, &errb)
	defer s.Close()
	st, err := s.Wait()
	if err != nil && st.Code < 0 {
		return -1, errb.String(), err
	}
	return st.Code, errb.String(), err
}

// guestTest runs `test FLAG PATH` in the guest.
func guestTest(ctx context.Context, c *api.Client, vm, flag, p string) (bool, error) {
	code, _, err := guestRun(ctx, c, vm, []string{"sh", "-c", `test ` + flag + ` "$1"`, "sh", p}, nil, io.Discard)
	if err != nil {
		return false, err
	}
	return code == 0, nil
}

// guestTar runs the guest's tar with args, falling back to busybox's applet on minimal
// images that install busybox without a tar link. Paths travel as arguments, never as
// shell text.
func guestTar(args ...string) []string {
	script := `if command -v tar >/dev/null 2>&1; then exec tar "$@"; fi; exec busybox tar "$@"`
	return append([]string{"sh", "-c", script, "tar"}, args...)
}

func (a *app) copyIn(ctx context.Context, c *api.Client, srcs []string, vm, dst string, recursive bool) error {
	if dst == "" || !path.IsAbs(dst) {
		return fmt.Errorf("%s:%s: give the VM side as an absolute path, like %s:/root/", vm, dst, vm)
	}
	stdinTar := len(srcs) == 1 && srcs[0] == "-"
	for _, s := range srcs {
		if s == "-" && !stdinTar {
			return errors.New(`"-" (a tar stream on stdin) is the only SRC when given`)
		}
		if s == "-" {
			continue
		}
		fi, err := os.Lstat(s)
		if err != nil {
			return fmt.Errorf("%s: no such file or directory", s)
		}
		if fi.IsDir() && !recursive {
			return fmt.Errorf("%s is a directory: pass -r to copy it", s)
		}
	}
	isDir, err := guestTest(ctx, c, vm, "-d", dst)
	if err != nil {
		return err
	}
	dir, rename := dst, ""
	switch {
	case isDir:
	case stdinTar || len(srcs) > 1 || strings.HasSuffix(dst, "/"):
		return fmt.Errorf("%s:%s is not a directory in the VM", vm, dst)
	default:
		dir, rename = path.Dir(dst), path.Base(dst)
		if ok, err := guestTest(ctx, c, vm, "-d", dir); err != nil {
			return err
		} else if !ok {
			return fmt.Errorf("%s:%s: no such directory in the VM", vm, dir)
		}
	}
	var in io.Reader = a.env.Stdin
	var packErr error
	var wg sync.WaitGroup
	var pr *io.PipeReader
	if !stdinTar {
		var pw *io.PipeWriter
		pr, pw = io.Pipe()
		wg.Add(1)
		go func() {
			defer wg.Done()
			packErr = tarcopy.Pack(pw, srcs, rename, recursive)
			pw.CloseWithError(packErr)
		}()
		in = pr
	}
	meter := a.newMeter("copied")
	code, guestErr, err := guestRun(ctx, c, vm, guestTar("-x", "-f", "-", "-C", dir), io.TeeReader(in, meter), io.Discard)
	meter.done()
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
		return fmt.Errorf("copy into %s: %w", vm, err)
	case code != 0:
		return fmt.Errorf("copy into %s:%s failed: the guest's tar exited %d: %s", vm, dst, code, termutil.SanitizeString(strings.TrimSpace(guestErr)))
	case packErr != nil:
		return fmt.Errorf("read the files to copy: %w", packErr)
	}
	return nil
}

func (a *app) copyOut(ctx context.Context, c *api.Client, vm, src, dst string, recursive bool) error {
	if src == "" || !path.IsAbs(src) || path.Clean(src) == "/" {
		return fmt.Errorf("%s:%s: give the VM side as an absolute path below /, like %s:/root/file", vm, src, vm)
	}
	src = path.Clean(src)
	exists, err := guestTest(ctx, c, vm, "-e", src)
	if err != nil {
		return err
	}
	if link, _ := guestTest(ctx, c, vm, "-L", src); !exists && !link {
		return fmt.Errorf("%s:%s: no such file or directory in the VM", vm, src)
	}
	if isDir, _ := guestTest(ctx, c, vm, "-d", src); isDir && !recursive {
		return fmt.Errorf("%s:%s is a directory: pass -r to copy it", vm, src)
	}
	argv := guestTar("-c", "-f", "-", "-C", path.Dir(src), path.Base(src))
	if dst == "-" {
		code, guestErr, err := guestRun(ctx, c, vm, argv, nil, a.rawOut)
		return copyOutcome(vm, src, code, guestErr, err)
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
		extractErr = tarcopy.Extract(pr, into, tarcopy.Options{Rename: rename, Skipped: func(name, why string) {
			fmt.Fprintf(a.env.Stderr, "banger: skipped %s: %s\n", termutil.SanitizeString(name), why)
		}})
		// Drain what the guest still sends, so its tar ends.
		_, _ = io.Copy(io.Discard, pr)
		pr.Close()
	}()
	meter := a.newMeter("copied")
	code, guestErr, err := guestRun(ctx, c, vm, argv, nil, io.MultiWriter(pw, meter))
	pw.Close()
	wg.Wait()
	meter.done()
	if extractErr != nil {
		return fmt.Errorf("write the copy into %s: %w", into, extractErr)
	}
	return copyOutcome(vm, src, code, guestErr, err)
}

func copyOutcome(vm, src string, code int, guestErr string, err error) error {
	switch {
	case err != nil:
		return fmt.Errorf("copy out of %s: %w", vm, err)
	case code != 0:
		return fmt.Errorf("copy of %s:%s failed: the guest's tar exited %d: %s", vm, src, code, termutil.SanitizeString(strings.TrimSpace(guestErr)))
	}
	return nil
}

// limitedBuffer keeps the first max bytes written to it.
type limitedBuffer struct {
	bytes.Buffer
	max int
}

func (b *limitedBuffer) Write(p []byte) (int, error) {
	if room := b.max - b.Len(); room > 0 {
		b.Buffer.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}

// meter counts bytes and, on a terminal, shows the count on stderr as they go.
type meter struct {
	mu    sync.Mutex
	n     int64
	last  time.Time
	shown bool
	tty   bool
	verb  string
	out   io.Writer
}

func (a *app) newMeter(verb string) *meter {
	return &meter{tty: termutil.IsTerminal(a.env.Stderr), verb: verb, out: a.env.Stderr}
}

func (m *meter) Write(p []byte) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.n += int64(len(p))
	if m.tty && time.Since(m.last) > 200*time.Millisecond {
		m.last, m.shown = time.Now(), true
		fmt.Fprintf(m.out, "\r  %s %s", m.verb, units.FormatSize(m.n))
	}
	return len(p), nil
}

func (m *meter) done() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.shown {
		fmt.Fprintf(m.out, "\r  %s %s\n", m.verb, units.FormatSize(m.n))
	}
}
