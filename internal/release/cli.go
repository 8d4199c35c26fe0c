package release

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"github.com/banger-vm/banger/internal/update"
)

// Execute runs the banger-release command line with args and returns the exit status.
func Execute(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	root := NewCommand(stdout, stderr)
	root.SetArgs(args)
	if err := root.ExecuteContext(ctx); err != nil {
		fmt.Fprintf(stderr, "banger-release: %v\n", err)
		return 1
	}
	return 0
}

// NewCommand builds the banger-release command tree.
func NewCommand(stdout, stderr io.Writer) *cobra.Command {
	root := &cobra.Command{
		Use:   "banger-release",
		Short: "Make signed banger releases for `banger update`",
		Long: `banger-release makes the signing key of banger's releases and the releases
themselves: the artifact, its signed manifest, and the channel directory layout
that 'banger update' reads (serve the directory over HTTP(S) and point
update.channel_url at it). scripts/release.sh builds and releases in one go.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.CompletionOptions.DisableDefaultCmd = true
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.AddCommand(keygenCommand(stdout), pubkeyCommand(stdout), makeCommand(stdout))
	return root
}

func keygenCommand(stdout io.Writer) *cobra.Command {
	var out string
	cmd := &cobra.Command{
		Use:   "keygen --out DIR",
		Short: "Make a release-signing key pair",
		Long: `Write a new ed25519 release-signing key pair into DIR: ` + PrivateKeyFile + ` (the private key,
mode 0600, never printed) and ` + PublicKeyFile + ` (the base64 public key). Keep the
private key offline; banger builds must trust the public key to accept releases
signed with it.`,
		Args: cobra.NoArgs,
		RunE: func(_ *cobra.Command, _ []string) error {
			kp, err := Keygen(out, rand.Reader)
			if err != nil {
				return err
			}
			fmt.Fprintf(stdout, `wrote the private key %s (mode 0600): keep it secret and offline
wrote the public key  %s
key id:     %s
public key: %s

A banger accepts releases signed with this key once it trusts the public key. Either
  - add it to releaseKeys() in internal/update/manifest.go (every build then trusts it;
    keep the old key there too while rotating), or
  - link it into a build: -ldflags "-X github.com/banger-vm/banger/internal/buildinfo.updateKeys=%s"
    (comma-separated for several; scripts/release.sh does this for the key it signs with).
Users can only update to releases signed with a key their installed banger trusts.
`, kp.PrivatePath, kp.PublicPath, kp.ID, kp.Public, kp.Public)
			return nil
		},
	}
	cmd.Flags().StringVar(&out, "out", "", "directory to write the key pair into (created 0700)")
	_ = cmd.MarkFlagRequired("out")
	return cmd
}

func pubkeyCommand(stdout io.Writer) *cobra.Command {
	var key string
	var withID bool
	cmd := &cobra.Command{
		Use:   "pubkey --key PRIVATE",
		Short: "Print the base64 public key of a private release key",
		Args:  cobra.NoArgs,
		RunE: func(_ *cobra.Command, _ []string) error {
			priv, err := ReadPrivateKey(key)
			if err != nil {
				return err
			}
			pub := priv.Public().(ed25519.PublicKey)
			if withID {
				fmt.Fprintf(stdout, "%s %s\n", EncodePublicKey(pub), update.KeyID(pub))
				return nil
			}
			fmt.Fprintln(stdout, EncodePublicKey(pub))
			return nil
		},
	}
	cmd.Flags().StringVar(&key, "key", "", "the private key file (from keygen)")
	cmd.Flags().BoolVar(&withID, "id", false, "print the key id after the key")
	_ = cmd.MarkFlagRequired("key")
	return cmd
}

func makeCommand(stdout io.Writer) *cobra.Command {
	var o MakeOptions
	var keys []string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "make --key PRIVATE --version vX.Y.Z --bin DIR --out CHANNELDIR",
		Short: "Pack, sign and publish a release into a channel directory",
		Long: `Check that DIR holds banger, banger-init and banger-agent of --version (static,
built for this platform, without test hooks; banger and banger-agent are run and
must report --version), pack them into CHANNELDIR/VERSION/banger-VERSION-OS-ARCH.tar.gz,
write the signed CHANNELDIR/VERSION/manifest.json and point CHANNELDIR/latest.json at
the release unless the channel already has a newer one. Serving CHANNELDIR over
HTTP(S) makes it a release channel: set update.channel_url to its URL.

--key may be repeated to sign with several keys (key rotation). A version already
in the channel is not replaced without --force: clients may be downloading it.`,
		Example: `  banger-release make --key ~/keys/release.key --version v1.4.0 --bin bin --out /srv/banger/stable
  banger-release make --key old.key --key new.key --version v1.5.0 --bin bin --out ./stable \
      --base-url https://downloads.example.org/banger/stable/`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.GzipLevel < 1 || o.GzipLevel > 9 {
				return fmt.Errorf("--gzip-level %d is not between 1 and 9", o.GzipLevel)
			}
			for _, k := range keys {
				priv, err := ReadPrivateKey(k)
				if err != nil {
					return err
				}
				o.Keys = append(o.Keys, priv)
			}
			if len(o.Keys) == 0 {
				return errors.New("no signing key: pass --key")
			}
			res, err := Make(cmd.Context(), o)
			if err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(res)
			}
			a := res.Manifest.Artifacts[update.Platform()]
			fmt.Fprintf(stdout, "released banger %s for %s, signed by %s\n", o.Version, update.Platform(), strings.Join(res.KeyIDs, ", "))
			fmt.Fprintf(stdout, "  artifact: %s (%d bytes, sha256 %s)\n", res.Artifact, a.Size, a.SHA256)
			fmt.Fprintf(stdout, "  manifest: %s\n", res.ManifestPath)
			if res.LatestMoved {
				fmt.Fprintf(stdout, "  latest:   %s now names %s\n", res.LatestPath, o.Version)
			} else {
				fmt.Fprintf(stdout, "  latest:   %s still names the newer %s; `banger update --version %s` installs this one\n", res.LatestPath, res.Latest, o.Version)
			}
			fmt.Fprintf(stdout, "Serve %s over HTTP(S) and set update.channel_url to its URL.\n", o.ChannelDir)
			return nil
		},
	}
	fl := cmd.Flags()
	fl.StringArrayVar(&keys, "key", nil, "private key file to sign with (repeatable)")
	fl.StringVar(&o.Version, "version", "", "the release version, as the binaries report it (vX.Y.Z)")
	fl.StringVar(&o.BinDir, "bin", "", "directory holding banger, banger-init and banger-agent")
	fl.StringVar(&o.ChannelDir, "out", "", "the channel directory to publish into (created if missing)")
	fl.StringVar(&o.BaseURL, "base-url", "", "absolute URL the channel's files are downloaded from (default: relative to the manifests)")
	fl.IntVar(&o.GzipLevel, "gzip-level", 6, "gzip level of the artifact, 1 (fastest) to 9 (smallest)")
	fl.BoolVar(&o.AllowDirty, "allow-dirty", false, "allow a version built from a modified tree (...-dirty)")
	fl.BoolVar(&o.Force, "force", false, "replace a release of the same version already in the channel")
	fl.BoolVar(&asJSON, "json", false, "print what was written as JSON")
	for _, f := range []string{"key", "version", "bin", "out"} {
		_ = cmd.MarkFlagRequired(f)
	}
	return cmd
}
