package cli

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/BurntSushi/toml"
	"github.com/spf13/cobra"

	"github.com/banger-vm/banger/client"
	"github.com/banger-vm/banger/internal/api"
)

// buildRecipe is the TOML recipe of `image build --recipe`; relative paths are relative to
// the recipe file.
type buildRecipe struct {
	From     string   `toml:"from"`
	Size     string   `toml:"size"`
	Memory   string   `toml:"memory"`
	CPUs     int      `toml:"cpus"`
	Packages []string `toml:"packages"`
	Copy     []string `toml:"copy"`
	Run      []string `toml:"run"`
}

func (a *app) imageBuildCommand() *cobra.Command {
	var recipePath string
	var flags buildRecipe
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "build NEW --from BASE [--package PKG]... [--copy SRC:DST]... [--run SCRIPT]...",
		Short: "Build an image by provisioning a copy of another in a temporary VM",
		Long: `Build a new image from BASE: its root filesystem is copied (reflinked where the
filesystem can), grown to --size if asked, booted read-write in a temporary builder VM and
provisioned over SSH as root: files copied in, packages installed with the image's own
package manager (apt-get, or xbps on Void), scripts run from /root, each step's output
shown as it runs. Then the VM shuts down, the work seed is rebuilt from the new /root (so
files copied under /root appear in every VM's work disk), the package manifest recorded,
and the image registered. A failing step shows its output and leaves nothing: no image, no
builder VM, TAP or lease. No root is needed on the host.

A package is a name (fetched by the guest: needs a guest network, i.e. the root helper)
or the path of a local .deb, installed from the file without any network.

  banger image build dev --from debian-bookworm --package git --package ./tool_1.0_amd64.deb \
      --copy ~/.gitconfig:/root/ --copy ./dotfiles:/root/.config --run ./setup.sh
  banger image build dev --recipe dev.toml

A recipe (TOML) holds the same; flags add to it:

  from = "debian-bookworm"
  size = "4G"
  packages = ["git", "build-essential", "./vendor/tool_1.0_amd64.deb"]
  copy = ["dotfiles:/root/", "motd:/etc/motd"]
  run = ["setup.sh"]`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			req, err := buildRequest(args[0], recipePath, flags)
			if err != nil {
				return err
			}
			img, err := interruptibleCall(a, cmd, func(ctx context.Context, c *client.Client) (api.Image, error) {
				return c.BuildImage(ctx, req, a.buildProgress(asJSON))
			})
			if err != nil {
				return err
			}
			return a.printImageResult(img, asJSON, "built")
		},
	}
	f := cmd.Flags()
	f.StringVar(&recipePath, "recipe", "", "TOML recipe file (see above)")
	f.StringVar(&flags.From, "from", "", "base image (default: the recipe's from)")
	f.StringVar(&flags.Size, "size", "", "grow the root filesystem to this size, like 4G")
	f.StringVar(&flags.Memory, "memory", "", "builder VM memory (default 1G)")
	f.IntVar(&flags.CPUs, "cpus", 0, "builder VM vCPUs (default 2)")
	f.StringArrayVarP(&flags.Packages, "package", "p", nil, "package to install: a name or a local .deb path (repeatable)")
	f.StringArrayVar(&flags.Copy, "copy", nil, "SRC:DST: copy a host file or directory into the image; DST ending in / is a directory (repeatable)")
	f.StringArrayVar(&flags.Run, "run", nil, "script to run as root in the builder VM, in order (repeatable)")
	f.BoolVar(&asJSON, "json", false, "print the image as JSON (no progress)")
	return cmd
}

// buildRequest merges the recipe and the flags into a request with absolute paths.
func buildRequest(name, recipePath string, flags buildRecipe) (api.ImageBuildRequest, error) {
	req := api.ImageBuildRequest{Name: name}
	cwd, err := os.Getwd()
	if err != nil {
		return req, err
	}
	add := func(r buildRecipe, dir string) error {
		abs := func(p string) string {
			if strings.HasPrefix(p, "~/") {
				if home, err := os.UserHomeDir(); err == nil {
					p = filepath.Join(home, p[2:])
				}
			}
			if filepath.IsAbs(p) {
				return p
			}
			return filepath.Join(dir, p)
		}
		if r.From != "" {
			req.From = r.From
		}
		if r.Size != "" {
			req.Size = r.Size
		}
		if r.Memory != "" {
			req.Memory = r.Memory
		}
		if r.CPUs != 0 {
			req.CPUs = r.CPUs
		}
		for _, p := range r.Packages {
			if strings.HasSuffix(p, ".deb") || strings.ContainsRune(p, '/') {
				p = abs(p)
			}
			req.Packages = append(req.Packages, p)
		}
		for _, c := range r.Copy {
			src, dst, ok := strings.Cut(c, ":")
			if !ok || src == "" || !strings.HasPrefix(dst, "/") {
				return fmt.Errorf("copy %q: use SRC:DST with DST an absolute path in the image, like ./motd:/etc/motd", c)
			}
			req.Copies = append(req.Copies, api.BuildCopy{Src: abs(src), Dst: dst})
		}
		for _, s := range r.Run {
			req.Scripts = append(req.Scripts, abs(s))
		}
		return nil
	}
	if recipePath != "" {
		var r buildRecipe
		md, err := toml.DecodeFile(recipePath, &r)
		if err != nil {
			return req, fmt.Errorf("recipe %s: %w", recipePath, err)
		}
		if und := md.Undecoded(); len(und) > 0 {
			return req, fmt.Errorf("recipe %s: unknown key %q (known: from, size, memory, cpus, packages, copy, run)", recipePath, und[0].String())
		}
		dir, _ := filepath.Abs(filepath.Dir(recipePath))
		if err := add(r, dir); err != nil {
			return req, err
		}
	}
	if err := add(flags, cwd); err != nil {
		return req, err
	}
	if req.From == "" {
		return req, fmt.Errorf("say which image to start from: --from BASE (see `banger image ls`), or from = \"...\" in the recipe")
	}
	return req, nil
}

// buildProgress prints each step once and its output indented as it comes.
func (a *app) buildProgress(quiet bool) func(api.Progress) {
	last := ""
	return func(p api.Progress) {
		if quiet {
			return
		}
		if p.Stage != last {
			fmt.Fprintf(a.env.Stderr, "==> %s\n", p.Stage)
			last = p.Stage
		}
		if p.Message != "" {
			fmt.Fprintf(a.env.Stderr, "    %s\n", p.Message)
		}
	}
}
