package cli

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/banger-vm/banger/client"
	"github.com/banger-vm/banger/internal/api"
	"github.com/banger-vm/banger/internal/termutil"
	"github.com/banger-vm/banger/internal/units"
)

func (a *app) snapshotCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "snapshot",
		Aliases: []string{"snapshots"},
		Short:   "List, inspect and remove VM snapshots",
		Long: `A snapshot is a running VM's whole state (memory, processes, open files) and its disks,
taken with 'banger vm snapshot NAME SNAP' while the VM keeps running. New VMs clone it:

  banger vm snapshot dev ready            # dev pauses briefly and runs on
  banger vm create a1 --from ready --start
  banger vm run --from ready -- ./task.sh
  banger vm fork dev a1 a2 a3             # snapshot and clone in one step

Clones carry the snapshot's processes and files, with their own hostname, machine-id,
address, SSH host key and random state. A snapshot cannot be removed while a VM restored
from it runs.`,
	}
	cmd.AddCommand(a.snapshotListCommand(), a.snapshotInspectCommand(), a.snapshotRemoveCommand())
	return cmd
}

func (a *app) vmSnapshotCommand() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "snapshot NAME SNAP",
		Short: "Save a running VM's state and disks as snapshot SNAP; the VM runs on",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := interruptibleCall(a, cmd, func(ctx context.Context, c *client.Client) (api.Snapshot, error) {
				return c.CreateSnapshot(ctx, api.SnapshotCreateRequest{VM: args[0], Snapshot: args[1]}, a.stageProgress(asJSON))
			})
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(a.env.Stdout, s)
			}
			fmt.Fprintf(a.env.Stdout, "snapshot %s of %s: %s on disk; clone it with `banger vm create NEW --from %s --start`\n",
				s.Name, termutil.SanitizeString(s.ParentVM), units.FormatSize(s.SizeBytes), s.Name)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the snapshot as JSON")
	return cmd
}

func (a *app) snapshotListCommand() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List snapshots",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := a.ensureDaemon(cmdContext(cmd), false)
			if err != nil {
				return err
			}
			snaps, err := c.Snapshots(cmdContext(cmd))
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(a.env.Stdout, snaps)
			}
			rows := [][]string{{"NAME", "PARENT VM", "IMAGE", "CPUS", "MEMORY", "SIZE", "IN USE BY", "CREATED"}}
			for _, s := range snaps {
				if s.Error != "" {
					rows = append(rows, []string{s.Name, "-", "-", "-", "-", "-", "-", "broken: " + termutil.SanitizeString(s.Error)})
					continue
				}
				// snapshot.json is a file on disk: its strings reach a terminal only cleaned.
				rows = append(rows, []string{s.Name, termutil.SanitizeString(s.ParentVM), termutil.SanitizeString(s.Image), strconv.Itoa(s.CPUs), fmt.Sprintf("%dM", s.MemoryMiB),
					units.FormatSize(s.SizeBytes), orDash(strings.Join(s.UsedBy, ",")), s.CreatedAt.Local().Format("2006-01-02 15:04")})
			}
			table(a.env.Stdout, rows)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func (a *app) snapshotInspectCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "inspect SNAP",
		Short: "Show a snapshot as JSON: size on disk, parent VM and image, shape, users",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.ensureDaemon(cmdContext(cmd), false)
			if err != nil {
				return err
			}
			s, err := c.InspectSnapshot(cmdContext(cmd), args[0])
			if err != nil {
				return err
			}
			return printJSON(a.env.Stdout, s)
		},
	}
	cmd.Flags().Bool("json", true, "print JSON (the only format)")
	return cmd
}

func (a *app) snapshotRemoveCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "rm SNAP...",
		Aliases: []string{"remove", "delete"},
		Short:   "Remove snapshots (refused while a VM restored from one runs)",
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.ensureDaemon(cmdContext(cmd), false)
			if err != nil {
				return err
			}
			for _, n := range args {
				if err := c.RemoveSnapshot(cmdContext(cmd), n); err != nil {
					return err
				}
				fmt.Fprintf(a.env.Stdout, "removed snapshot %s\n", n)
			}
			return nil
		},
	}
	return cmd
}

func (a *app) vmForkCommand() *cobra.Command {
	var asJSON bool
	var snapName string
	cmd := &cobra.Command{
		Use:   "fork NAME NEW...",
		Short: "Snapshot a running VM and start clones of it, each with the VM's processes and files",
		Long: `Snapshot a running VM (it pauses briefly and runs on) and start one clone per NEW name from
that snapshot, all at once. Each clone has the parent's processes and files and its own
identity (hostname, machine-id, address, SSH host key, random state).

  banger vm fork dev agent-1 agent-2 agent-3

The snapshot is kept (named fork-NAME-<random>, or --snapshot) for more clones later;
remove it with 'banger snapshot rm' once its clones are gone.`,
		Args: cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			parent, news := args[0], args[1:]
			if snapName == "" {
				snapName = "fork-" + parent
				if len(snapName) > 27 {
					snapName = strings.TrimRight(snapName[:27], "-")
				}
				snapName += "-" + strconv.FormatInt(time.Now().UnixNano()&0xffff, 16)
			}
			ctx, stop := interruptible(cmd.Context())
			defer stop()
			c, err := a.ensureDaemon(ctx, false)
			if err != nil {
				return err
			}
			res, failed, err := forkClones(ctx, c, parent, snapName, news, a.stageProgress(true))
			if err != nil {
				return err
			}
			if asJSON {
				if err := printJSON(a.env.Stdout, res); err != nil {
					return err
				}
			} else {
				for _, vm := range res.VMs {
					fmt.Fprintf(a.env.Stdout, "forked %s from %s: %s, %s %s\n", vm.Name, parent, vm.State, vm.Driver, vm.Accel)
				}
				fmt.Fprintf(a.env.Stderr, "snapshot %s kept (%s); %d clones in %.1f s\n", res.Snapshot.Name, units.FormatSize(res.Snapshot.SizeBytes), len(res.VMs), res.Seconds)
			}
			if len(failed) > 0 {
				return fmt.Errorf("%d of %d clones failed:\n  %s", len(failed), len(news), strings.Join(failed, "\n  "))
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&snapName, "snapshot", "", "name of the snapshot to take (default fork-NAME-<random>)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the snapshot and the clones as JSON")
	return cmd
}

// forkClones snapshots parent as snapName and starts one clone of it per name in news, all
// at once (the SDK's Fork). failed lists the clones that did not start, with why; err is
// the snapshot's.
func forkClones(ctx context.Context, c *client.Client, parent, snapName string, news []string, progress func(api.Progress)) (api.ForkResult, []string, error) {
	res, err := c.Fork(ctx, parent, snapName, news, progress)
	var fe *client.ForkError
	if !errors.As(err, &fe) {
		return res, nil, err
	}
	failed := make([]string, len(fe.Names))
	for i, n := range fe.Names {
		failed[i] = fmt.Sprintf("%s: %v", n, errorMessage(fe.Failed[n]))
	}
	return res, failed, nil
}
