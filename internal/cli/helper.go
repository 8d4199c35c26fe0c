package cli

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"strconv"
	"syscall"

	"github.com/spf13/cobra"
	"github.com/vishvananda/netns"

	"github.com/banger-vm/banger/internal/config"
	"github.com/banger-vm/banger/internal/helper"
)

// helperConfigFile is where the root helper reads [network] when no --config is given: a
// system path, because the helper runs as root and must not trust a user's files.
const helperConfigFile = "/etc/banger/config.toml"

type helperFlags struct {
	ownerUID int
	socket   string
	bridge   string
	subnet   string
	isolate  bool
}

func (a *app) helperCommand() *cobra.Command {
	var f helperFlags
	cmd := &cobra.Command{
		Use:   "helper",
		Short: "Run the root network helper in the foreground (as root)",
		Long: `The helper is banger's only privileged process. It runs as root and does only the
network work for one user's daemon: the bridge (default banger0) with the gateway
address, TAP devices owned by that user, the NAT table "inet banger" and IPv4
forwarding. Every request is validated (banger's own device names, addresses in
the configured subnet) and only the owner uid may connect (socket mode and
SO_PEERCRED).

Settings come from the [network] section of ` + helperConfigFile + ` (or --config)
and these flags. At start it refuses a subnet that overlaps an existing route.
A systemd unit is in contrib/systemd/banger-helper.service.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := a.helperConfig(cmd, &f, true)
			if err != nil {
				return err
			}
			return a.runHelper(cmd.Context(), cfg, f.socket)
		},
	}
	fl := cmd.PersistentFlags()
	fl.IntVar(&f.ownerUID, "owner-uid", -1, "uid of the banger daemon's user, the only one served (default $SUDO_UID)")
	fl.StringVar(&f.socket, "socket", "", "socket path (default [network] helper_socket, "+helper.DefaultSocket+")")
	fl.StringVar(&f.bridge, "bridge", "", "bridge name (default [network] bridge, banger0)")
	fl.StringVar(&f.subnet, "subnet", "", "guest subnet (default [network] subnet, "+config.DefaultSubnet+")")
	fl.BoolVar(&f.isolate, "isolate-vms", true, "block VM-to-VM traffic with bridge port isolation (default [network] isolate_vms)")
	cmd.AddCommand(&cobra.Command{
		Use:   "teardown",
		Short: "Remove every banger TAP, the bridge and the NAT table (VMs lose their network)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			// Teardown removes devices whoever owns them: no owner uid needed.
			cfg, err := a.helperConfig(cmd, &f, false)
			if err != nil {
				return err
			}
			ops, err := helper.NewOps(cfg, netns.None())
			if err != nil {
				return err
			}
			defer ops.Close()
			if err := ops.Teardown(); err != nil {
				return err
			}
			fmt.Fprintf(a.env.Stdout, "removed banger's TAPs, bridge %s and table inet %s\n", cfg.Bridge, helper.NATTableFor(cfg.Bridge))
			return nil
		},
	})
	return cmd
}

func (a *app) helperConfig(cmd *cobra.Command, f *helperFlags, needOwner bool) (helper.NetConfig, error) {
	if os.Geteuid() != 0 {
		return helper.NetConfig{}, errors.New("the banger helper must run as root: `sudo banger helper --owner-uid=$(id -u)` or `sudo systemctl start banger-helper`")
	}
	file := a.configFlag
	if file == "" {
		file = helperConfigFile
	}
	c, err := config.Load(file)
	if err != nil {
		return helper.NetConfig{}, err
	}
	for _, w := range c.Warnings {
		fmt.Fprintf(a.env.Stderr, "warning: %s\n", w)
	}
	flags := cmd.Flags()
	if f.socket == "" {
		f.socket = c.Network.HelperSocket
	}
	if f.bridge == "" {
		f.bridge = c.Network.Bridge
	}
	if f.subnet == "" {
		f.subnet = c.Network.Subnet
	}
	if !flags.Changed("isolate-vms") {
		f.isolate = c.Network.IsolateVMs
	}
	if f.ownerUID < 0 {
		if s := a.env.Getenv("SUDO_UID"); s != "" {
			f.ownerUID, _ = strconv.Atoi(s)
		}
	}
	if !needOwner && f.ownerUID < 0 {
		f.ownerUID = 0
	} else if f.ownerUID <= 0 {
		return helper.NetConfig{}, errors.New("say which user the helper serves: --owner-uid=<uid of the user running `banger daemon`> (root is never served)")
	}
	subnet, err := netip.ParsePrefix(f.subnet)
	if err != nil {
		return helper.NetConfig{}, fmt.Errorf("subnet %q: %v: use an IPv4 prefix like %s", f.subnet, err, config.DefaultSubnet)
	}
	cfg := helper.NetConfig{OwnerUID: f.ownerUID, Bridge: f.bridge, Subnet: subnet, IsolateVMs: f.isolate}
	return cfg, cfg.Validate()
}

func (a *app) runHelper(ctx context.Context, cfg helper.NetConfig, socket string) error {
	log := slog.New(slog.NewTextHandler(a.env.Stderr, nil))
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	ops, err := helper.NewOps(cfg, netns.None())
	if err != nil {
		return err
	}
	defer ops.Close()
	// Set the network up before listening, so a bad subnet stops the helper with a clear
	// error instead of failing every later request.
	if err := ops.EnsureBridge(); err != nil {
		return fmt.Errorf("bridge %s: %w", cfg.Bridge, err)
	}
	if err := ops.EnsureNAT(); err != nil {
		return fmt.Errorf("NAT: %w", err)
	}
	srv, err := helper.Listen(socket, ops, log)
	if err != nil {
		return err
	}
	log.Info("banger helper ready", "socket", socket, "owner_uid", cfg.OwnerUID, "bridge", cfg.Bridge,
		"subnet", cfg.Subnet, "gateway", helper.Gateway(cfg.Subnet), "isolate_vms", cfg.IsolateVMs)
	err = srv.Serve(ctx)
	log.Info("banger helper stopped; the bridge, TAPs and NAT stay for running VMs (`banger helper teardown` removes them)")
	return err
}
