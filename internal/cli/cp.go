package cli

// `banger vm cp`: files and directory trees in and out of a VM, as a tar stream through the
// agent's exec (the guest's own tar unpacks or packs it), by the SDK's CopyIn and CopyOut.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/banger-vm/banger/client"
	"github.com/banger-vm/banger/internal/termutil"
	"github.com/banger-vm/banger/internal/units"
)

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

func (a *app) copyIn(ctx context.Context, c *client.Client, srcs []string, vm, dst string, recursive bool) error {
	opt := client.CopyInOptions{Recursive: recursive}
	if len(srcs) == 1 && srcs[0] == "-" {
		opt.Tar, srcs = a.env.Stdin, nil
		if opt.Tar == nil {
			opt.Tar = strings.NewReader("")
		}
	}
	for _, s := range srcs {
		if s == "-" {
			return errors.New(`"-" (a tar stream on stdin) is the only SRC when given`)
		}
	}
	meter := a.newMeter("copied")
	opt.Progress = meter
	err := c.CopyIn(ctx, vm, srcs, dst, opt)
	meter.done()
	return err
}

func (a *app) copyOut(ctx context.Context, c *client.Client, vm, src, dst string, recursive bool) error {
	opt := client.CopyOutOptions{Recursive: recursive, Skipped: func(name, why string) {
		fmt.Fprintf(a.env.Stderr, "banger: skipped %s: %s\n", termutil.SanitizeString(name), why)
	}}
	if dst == "-" {
		opt.Tar = a.rawOut
		return c.CopyOut(ctx, vm, src, "", opt)
	}
	meter := a.newMeter("copied")
	opt.Progress = meter
	err := c.CopyOut(ctx, vm, src, dst, opt)
	meter.done()
	return err
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
