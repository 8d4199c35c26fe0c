package cli

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/banger-vm/banger/internal/api"
	"github.com/banger-vm/banger/internal/units"
)

func (a *app) vmResizeCommand() *cobra.Command {
	var req api.VMResizeRequest
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "resize NAME --disk SIZE",
		Short: "Grow a VM's work disk (/root), stopped or running",
		Long: `Grow the VM's work disk, mounted at /root, to SIZE (like 40G). A stopped VM's disk and
filesystem grow on the host; a running VM's disk grows, its VMM tells the guest, and the
guest's agent grows the mounted filesystem: df /root shows the new size at once, with no
restart. Shrinking is refused; so is a paused VM (resume it first).

  banger vm resize dev --disk 40G`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if req.Disk == "" {
				return fmt.Errorf("pass --disk SIZE, like --disk 40G")
			}
			req.Name = args[0]
			c, err := a.ensureDaemon(cmdContext(cmd), false)
			if err != nil {
				return err
			}
			vm, err := c.ResizeVM(cmdContext(cmd), req)
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(a.env.Stdout, vm)
			}
			for _, d := range vm.Disks {
				if d.Role == "work" {
					fmt.Fprintf(a.env.Stdout, "VM %s: work disk (/root) is %s\n", vm.Name, units.FormatSize(d.SizeBytes))
				}
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&req.Disk, "disk", "", "the work disk's new size, like 40G (at least its current size)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the VM as JSON")
	return cmd
}
