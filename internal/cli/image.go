package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/banger-vm/banger/client"
	"github.com/banger-vm/banger/internal/api"
	"github.com/banger-vm/banger/internal/termutil"
	"github.com/banger-vm/banger/internal/units"
)

func (a *app) imageCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "image",
		Short: "Pull, import, list, inspect and remove images (root filesystems) and their kernels",
		Long: `An image is a root filesystem (rootfs.ext4) that VMs boot read-only, with a work
seed (work-seed.ext4, built from the image's /root, which seeds each VM's work disk)
and a package manifest (packages.json: the dpkg, xbps or apk package list).

Images come from:
  debian-bookworm (default), debian-trixie   built from the Debian archive with
                                             mmdebstrap, signatures verified
  void (experimental)                        a rootfs tarball, checksum verified
  any OCI reference                          docker.io/library/ubuntu:24.04, by tag
                                             or @sha256 digest; credentials from
                                             ~/.docker/config.json
  banger image import FILE --name NAME       a local tar (.tar, .tar.gz/.xz/.zst)
                                             or ext4 file
Add names with images.extra in the config file.

Kernels are their own artifacts, shared by images: every pull makes sure one is
present (Debian's linux-image-cloud-amd64 from the archive, verified and unpacked
in Go, with the ELF vmlinux extracted for Firecracker) unless --no-kernel or
images.kernel = "none". Manage them with 'banger image kernel ls|pull|rm'.

Every image is registered atomically: an interrupted pull leaves nothing behind.`,
	}
	cmd.AddCommand(a.imagePullCommand(), a.imageImportCommand(), a.imageBuildCommand(), a.imageListCommand(), a.imageInspectCommand(), a.imageWarmCommand(),
		a.imageRemoveCommand(), a.imageCatalogCommand(), a.kernelCommand())
	return cmd
}

func (a *app) imagePullCommand() *cobra.Command {
	var req api.ImagePullRequest
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "pull [NAME|OCI-REFERENCE]",
		Short: "Pull or build an image (default: debian-bookworm) and register it",
		Long: `Pull an image by catalog name (see 'banger image catalog') or OCI reference and
register it, replacing an image of the same name atomically. Progress goes to stderr
when it is a terminal. Ctrl-C aborts the pull and leaves nothing registered.

  banger image pull                                   # debian-bookworm
  banger image pull debian-trixie --baseline          # + git, curl, build-essential, vim, ...
  banger image pull docker.io/library/ubuntu:24.04 --name ubuntu`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 1 {
				req.Ref = args[0]
			}
			img, err := interruptibleCall(a, cmd, func(ctx context.Context, c *client.Client) (api.Image, error) {
				p := a.newProgress(asJSON)
				defer p.done()
				img, err := c.PullImage(ctx, req, p.update)
				if err != nil && ctx.Err() != nil {
					return img, fmt.Errorf("pull interrupted: nothing was registered")
				}
				return img, err
			})
			if err != nil {
				return err
			}
			return a.printImageResult(img, asJSON, "pulled")
		},
	}
	cmd.Flags().StringVar(&req.Name, "name", "", "register under this name (default: the catalog name or reference)")
	cmd.Flags().BoolVar(&req.Baseline, "baseline", false, "Debian images: add a developer baseline (git, curl, build-essential, vim, ...)")
	cmd.Flags().BoolVar(&req.NoKernel, "no-kernel", false, "do not fetch a kernel with the image")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the image as JSON (no progress)")
	return cmd
}

func (a *app) imageImportCommand() *cobra.Command {
	var req api.ImageImportRequest
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "import FILE --name NAME",
		Short: "Register a local root filesystem tar (optionally compressed) or ext4 file as an image",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			abs, err := filepath.Abs(args[0])
			if err != nil {
				return err
			}
			req.Path = abs
			if req.Name == "" {
				req.Name = strings.TrimSuffix(filepath.Base(abs), filepath.Ext(abs))
				req.Name = strings.TrimSuffix(req.Name, ".tar")
			}
			img, err := interruptibleCall(a, cmd, func(ctx context.Context, c *client.Client) (api.Image, error) {
				p := a.newProgress(asJSON)
				defer p.done()
				return c.ImportImage(ctx, req, p.update)
			})
			if err != nil {
				return err
			}
			return a.printImageResult(img, asJSON, "imported")
		},
	}
	cmd.Flags().StringVar(&req.Name, "name", "", "image name (default: the file name without extensions)")
	cmd.Flags().BoolVar(&req.NoKernel, "no-kernel", false, "do not fetch a kernel with the image")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the image as JSON (no progress)")
	return cmd
}

type imageMeta struct {
	RootfsBytes   int64   `json:"rootfs_bytes"`
	RootfsUsed    int64   `json:"rootfs_used"`
	WorkSeedBytes int64   `json:"work_seed_bytes"`
	PackageFormat string  `json:"package_format"`
	PackageCount  int     `json:"package_count"`
	PullSeconds   float64 `json:"pull_seconds"`
	Baseline      bool    `json:"baseline"`
	Warnings      []string
}

func metaOf(img api.Image) imageMeta {
	var m imageMeta
	_ = json.Unmarshal(img.Metadata, &m)
	return m
}

func (a *app) printImageResult(img api.Image, asJSON bool, verb string) error {
	if asJSON {
		return printJSON(a.env.Stdout, img)
	}
	m := metaOf(img)
	pk := fmt.Sprintf("%d %s packages", m.PackageCount, m.PackageFormat)
	if m.PackageFormat == "none" {
		pk = "no package database"
	}
	fmt.Fprintf(a.env.Stdout, "%s %s in %.2fs: %s on disk (%s apparent), %s, kernel %s\n", verb, img.Name, m.PullSeconds,
		units.FormatSize(m.RootfsUsed), units.FormatSize(m.RootfsBytes), pk, orDash(img.Kernel))
	for _, w := range m.Warnings {
		fmt.Fprintf(a.env.Stderr, "warning: %s\n", w)
	}
	return nil
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func (a *app) imageListCommand() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List the registered images",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := a.ensureDaemon(cmd.Context(), false)
			if err != nil {
				return err
			}
			imgs, err := c.Images(cmd.Context())
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(a.env.Stdout, api.ImagesResponse{Images: imgs})
			}
			if len(imgs) == 0 {
				fmt.Fprintln(a.env.Stdout, "no images: pull one with `banger image pull`")
				return nil
			}
			rows := [][]string{{"NAME", "SOURCE", "SIZE", "PACKAGES", "KERNEL", "CREATED"}}
			for _, img := range imgs {
				m := metaOf(img)
				rows = append(rows, []string{img.Name, img.Source, units.FormatSize(img.SizeBytes),
					fmt.Sprintf("%d %s", m.PackageCount, m.PackageFormat), orDash(img.Kernel), img.CreatedAt.Local().Format("2006-01-02 15:04")})
			}
			table(a.env.Stdout, rows)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print as JSON")
	return cmd
}

func (a *app) imageInspectCommand() *cobra.Command {
	var asJSON, packages bool
	cmd := &cobra.Command{
		Use:   "inspect NAME",
		Short: "Show an image's files, sizes, kernel and packages",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.ensureDaemon(cmd.Context(), false)
			if err != nil {
				return err
			}
			in, err := c.InspectImage(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(a.env.Stdout, in)
			}
			img, m := in.Image, metaOf(in.Image)
			w := a.env.Stdout
			fmt.Fprintf(w, "name:       %s\nid:         %s\nsource:     %s\n", img.Name, img.ID, img.Source)
			if img.Digest != "" {
				fmt.Fprintf(w, "digest:     %s\n", img.Digest)
			}
			fmt.Fprintf(w, "rootfs:     %s (%s on disk, %s apparent)\n", img.RootfsPath, units.FormatSize(m.RootfsUsed), units.FormatSize(m.RootfsBytes))
			fmt.Fprintf(w, "work seed:  %s (%s)\n", orDash(img.WorkSeedPath), units.FormatSize(m.WorkSeedBytes))
			fmt.Fprintf(w, "kernel:     %s\n", orDash(img.Kernel))
			fmt.Fprintf(w, "created:    %s\n", img.CreatedAt.Local().Format(time.RFC3339))
			fmt.Fprintf(w, "packages:   %d (%s)\n", len(in.Packages), in.PackageFormat)
			if packages {
				for _, p := range in.Packages {
					fmt.Fprintf(w, "  %s %s\n", p.Name, p.Version)
				}
			}
			for _, t := range in.Templates {
				fmt.Fprintf(w, "template:   %s %s\n", t.Key, templateLine(t))
			}
			if len(in.Templates) == 0 {
				fmt.Fprintf(w, "template:   none (built in the background, or with `banger image warm %s`)\n", img.Name)
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print as JSON (includes the package list)")
	cmd.Flags().BoolVar(&packages, "packages", false, "list the packages")
	return cmd
}

// templateLine describes a warm-start template in one line.
func templateLine(t api.Template) string {
	s := fmt.Sprintf("%d vCPUs, %d MiB, %s disk, %s %s", t.CPUs, t.MemoryMiB, units.FormatSize(t.DiskBytes), t.Driver, t.Accel)
	if !t.Network {
		s += ", no network"
	}
	s += fmt.Sprintf(", %s on disk, built in %.1f s", units.FormatSize(t.SizeBytes), t.BuildMS/1000)
	if !t.Current {
		s += " (stale: removed when its clones stop)"
	}
	if len(t.Clones) > 0 {
		s += fmt.Sprintf(", %d running clone(s)", len(t.Clones))
	}
	return s
}

func (a *app) imageWarmCommand() *cobra.Command {
	var req api.ImageWarmRequest
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "warm NAME",
		Short: "Build the image's warm-start template, so new VMs restore it instead of booting",
		Long: `Boot a fresh VM of the image with its RAM in a file, wait for its agent and sshd, and
save it paused as a template. New VMs of the same image, kernel and shape (vCPUs, memory,
disk size) then start as clones of it in a fraction of a cold boot. banger builds the
default shape's template in the background after a pull or import, and any other shape's
on its first use; this builds one now, with its progress. See "Warm start" in the README.

  banger image warm debian-bookworm
  banger image warm debian-bookworm --cpus 4 --memory 2G
  banger image warm debian-bookworm --rebuild`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			req.Name = args[0]
			t, err := interruptibleCall(a, cmd, func(ctx context.Context, c *client.Client) (api.Template, error) {
				p := a.newProgress(asJSON)
				defer p.done()
				t, err := c.WarmImage(ctx, req, p.update)
				if err != nil && ctx.Err() != nil {
					return t, fmt.Errorf("interrupted: no template was registered")
				}
				return t, err
			})
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(a.env.Stdout, t)
			}
			fmt.Fprintf(a.env.Stdout, "template %s of %s: %s\n", t.Key, t.Image, templateLine(t))
			return nil
		},
	}
	cmd.Flags().IntVar(&req.CPUs, "cpus", 0, "vCPUs of the VMs it is for (default 2)")
	cmd.Flags().StringVar(&req.Memory, "memory", "", "memory of the VMs it is for, like 512M or 2G (default 1G)")
	cmd.Flags().StringVar(&req.DiskSize, "disk-size", "", "work disk size of the VMs it is for (default 8G)")
	cmd.Flags().BoolVar(&req.Rebuild, "rebuild", false, "replace an existing template")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the template as JSON (no progress)")
	return cmd
}

func (a *app) imageRemoveCommand() *cobra.Command {
	return &cobra.Command{
		Use:     "rm NAME...",
		Aliases: []string{"remove"},
		Short:   "Remove images (refused while a VM uses one)",
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.ensureDaemon(cmd.Context(), false)
			if err != nil {
				return err
			}
			for _, n := range args {
				if err := c.RemoveImage(cmd.Context(), n); err != nil {
					return err
				}
				fmt.Fprintf(a.env.Stdout, "removed %s\n", n)
			}
			return nil
		},
	}
}

func (a *app) imageCatalogCommand() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "catalog",
		Short: "List the images banger knows by name (built in plus images.extra)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := a.ensureDaemon(cmd.Context(), false)
			if err != nil {
				return err
			}
			entries, err := c.Catalog(cmd.Context())
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(a.env.Stdout, api.CatalogResponse{Entries: entries})
			}
			rows := [][]string{{"NAME", "KIND", "SOURCE", "DESCRIPTION"}}
			for _, raw := range entries {
				var e struct{ Name, Kind, Suite, Ref, Description string }
				_ = json.Unmarshal(raw, &e)
				src := e.Ref
				if e.Suite != "" {
					src = "debian:" + e.Suite
				}
				rows = append(rows, []string{e.Name, e.Kind, src, e.Description})
			}
			table(a.env.Stdout, rows)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print as JSON")
	return cmd
}

func (a *app) kernelCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "kernel",
		Short: "List, pull or remove kernels (shared by images)",
	}
	var asJSON bool
	ls := &cobra.Command{
		Use:   "ls",
		Short: "List kernels",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := a.ensureDaemon(cmd.Context(), false)
			if err != nil {
				return err
			}
			ks, err := c.Kernels(cmd.Context())
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(a.env.Stdout, api.KernelsResponse{Kernels: ks})
			}
			rows := [][]string{{"ID", "RELEASE", "SUITE", "SIZE", "VMLINUX"}}
			for _, raw := range ks {
				var k struct {
					ID, Release, Suite, Vmlinux string
					SizeBytes                   int64 `json:"size_bytes"`
				}
				_ = json.Unmarshal(raw, &k)
				rows = append(rows, []string{k.ID, k.Release, k.Suite, units.FormatSize(k.SizeBytes), k.Vmlinux})
			}
			table(a.env.Stdout, rows)
			return nil
		},
	}
	ls.Flags().BoolVar(&asJSON, "json", false, "print as JSON")
	var suite string
	var pullJSON bool
	pull := &cobra.Command{
		Use:   "pull",
		Short: "Fetch the newest linux-image-cloud-amd64 of a Debian suite (verified) and extract its vmlinux",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			k, err := interruptibleCall(a, cmd, func(ctx context.Context, c *client.Client) (json.RawMessage, error) {
				p := a.newProgress(pullJSON)
				defer p.done()
				return c.PullKernel(ctx, api.KernelPullRequest{Suite: suite}, p.update)
			})
			if err != nil {
				return err
			}
			if pullJSON {
				_, err := a.env.Stdout.Write(append(k, '\n'))
				return err
			}
			var kk struct{ ID, Vmlinux string }
			_ = json.Unmarshal(k, &kk)
			fmt.Fprintf(a.env.Stdout, "kernel %s ready: %s\n", kk.ID, kk.Vmlinux)
			return nil
		},
	}
	pull.Flags().StringVar(&suite, "suite", "bookworm", "Debian suite")
	pull.Flags().BoolVar(&pullJSON, "json", false, "print as JSON (no progress)")
	rm := &cobra.Command{
		Use:   "rm ID",
		Short: "Remove a kernel no image uses",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.ensureDaemon(cmd.Context(), false)
			if err != nil {
				return err
			}
			if err := c.RemoveKernel(cmd.Context(), args[0]); err != nil {
				return err
			}
			fmt.Fprintf(a.env.Stdout, "removed kernel %s\n", args[0])
			return nil
		},
	}
	var kSuite string
	imp := &cobra.Command{
		Use:   "import DIR",
		Short: "Register an unpacked kernel package (boot/vmlinuz-*, lib/modules/<release>) as a kernel",
		Long: `Register an unpacked kernel package as a kernel, without network access:

  dpkg-deb -x linux-image-6.1.0-*-cloud-amd64_*.deb /tmp/k && banger image kernel import /tmp/k

Images of --suite (default bookworm) pulled or imported afterwards use it.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			abs, err := filepath.Abs(args[0])
			if err != nil {
				return err
			}
			c, err := a.ensureDaemon(cmd.Context(), false)
			if err != nil {
				return err
			}
			raw, err := c.ImportKernel(cmd.Context(), api.KernelImportRequest{Path: abs, Suite: kSuite})
			if err != nil {
				return err
			}
			var k struct {
				ID      string `json:"id"`
				BzImage string `json:"bzimage"`
			}
			_ = json.Unmarshal(raw, &k)
			fmt.Fprintf(a.env.Stdout, "kernel %s ready: %s\n", k.ID, k.BzImage)
			return nil
		},
	}
	imp.Flags().StringVar(&kSuite, "suite", "bookworm", "Debian suite the kernel belongs to")
	cmd.AddCommand(ls, pull, rm, imp)
	return cmd
}

// progress draws one status line on a terminal: the stage, and for downloads the bytes,
// percentage and rate. It stays silent when stderr is not a terminal or with --json.
type progress struct {
	w       io.Writer
	on      bool
	stage   string
	started time.Time
	lastN   int64
	lastAt  time.Time
	rate    float64
	width   int
}

func (a *app) newProgress(asJSON bool) *progress {
	return &progress{w: a.env.Stderr, on: !asJSON && isTerminal(a.env.Stderr)}
}

// isTerminal also sees through the control-stripping writer in front of a terminal.
func isTerminal(w io.Writer) bool { return termutil.IsTerminal(w) }

func (p *progress) update(ev api.Progress) {
	if !p.on {
		return
	}
	now := time.Now()
	if ev.Stage != p.stage {
		if p.stage != "" {
			p.line(fmt.Sprintf("%s (%.1fs)", p.stage, now.Sub(p.started).Seconds()))
			fmt.Fprintln(p.w)
		}
		p.stage, p.started, p.lastN, p.lastAt, p.rate = ev.Stage, now, 0, now, 0
	}
	text := ev.Stage
	if ev.Unit == "bytes" && ev.Current > 0 {
		if dt := now.Sub(p.lastAt).Seconds(); dt >= 0.5 {
			r := float64(ev.Current-p.lastN) / dt
			if p.rate == 0 {
				p.rate = r
			} else {
				p.rate = 0.7*p.rate + 0.3*r
			}
			p.lastN, p.lastAt = ev.Current, now
		}
		text += ": " + units.FormatSize(ev.Current)
		if ev.Total > 0 {
			text += fmt.Sprintf(" / %s (%d%%)", units.FormatSize(ev.Total), ev.Current*100/ev.Total)
		}
		if p.rate > 0 {
			text += fmt.Sprintf(" %s/s", units.FormatSize(int64(p.rate)))
		}
	}
	p.line(text)
}

func (p *progress) line(s string) {
	pad := ""
	if n := p.width - len(s); n > 0 {
		pad = strings.Repeat(" ", n)
	}
	fmt.Fprintf(p.w, "\r%s%s", s, pad)
	p.width = len(s)
}

func (p *progress) done() {
	if p.on && p.stage != "" {
		p.line(fmt.Sprintf("%s (%.1fs)", p.stage, time.Since(p.started).Seconds()))
		fmt.Fprintln(p.w)
		p.stage = ""
	}
}
