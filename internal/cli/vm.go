package cli

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/banger-vm/banger/client"
	"github.com/banger-vm/banger/internal/api"
	"github.com/banger-vm/banger/internal/termutil"
	"github.com/banger-vm/banger/internal/units"
)

func (a *app) vmCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "vm",
		Short: "Create, run, inspect and remove microVMs",
		Long: `Create, start, stop, remove and use microVMs.

  banger vm run -- make test        # throwaway VM: run a command, print its output, exit with its code
  banger vm create dev && banger vm start dev
  banger vm exec dev -- uname -a

  banger vm ssh dev                 # a root shell over SSH, no prompts

'vm exec' runs commands through the guest agent (no network or sshd needed); 'vm ssh' uses
the VM's sshd with banger's own key and the VM's pinned host key.`,
	}
	cmd.AddCommand(a.vmCreateCommand(), a.vmStartCommand(), a.vmStopCommand(), a.vmRemoveCommand(),
		a.vmListCommand(), a.vmInspectCommand(), a.vmExecCommand(), a.vmLogsCommand(), a.vmHealthCommand(),
		a.vmRunCommand(), a.vmSSHCommand(), a.vmSSHProxyCommand(), a.vmSSHConfigCommand(), a.vmPortCommand(), a.vmPortForwardCommand(), a.vmResizeCommand(), a.vmCpCommand(), a.vmSSHKnownHostsCommand(), a.vmRestartCommand(),
		a.vmPauseCommand(), a.vmResumeCommand(), a.vmSnapshotCommand(), a.vmForkCommand())
	return cmd
}

// stageProgress prints one line per finished start stage on stderr.
func (a *app) stageProgress(quiet bool) func(api.Progress) {
	return func(p api.Progress) {
		if quiet || p.Message == "" {
			return
		}
		fmt.Fprintf(a.env.Stderr, "  %-26s %s\n", p.Stage, p.Message)
	}
}

type createFlags struct {
	req api.VMCreateRequest
}

func (f *createFlags) add(cmd *cobra.Command) {
	addBootFlags(cmd, &f.req.Image, &f.req.Kernel, &f.req.CPUs, &f.req.Memory)
	cmd.Flags().StringVar(&f.req.DiskSize, "disk-size", "", "size of the work disk at /root, like 8G (default 8G, sparse)")
	cmd.Flags().BoolVar(&f.req.Cold, "cold", false, "boot the kernel even when a warm-start template of the image and shape exists")
	cmd.Flags().StringVar(&f.req.From, "from", "", "clone this snapshot (`banger snapshot ls`): its processes and files, its image and shape")
	cmd.Flags().StringArrayVarP(&f.req.Ports, "publish", "p", nil,
		"forward a host port to the VM, `[HOSTIP:]HOSTPORT:GUESTPORT[/tcp|/udp]` or GUESTPORT[/udp] (a free host port, printed); repeatable; listens on 127.0.0.1 unless HOSTIP says otherwise; UDP is relayed per client address (see `banger vm port --help`)")
	cmd.Flags().BoolVar(&f.req.PublishAll, "publish-all", false,
		"forward every TCP port the guest listens on (1024 and up, on 127.0.0.1 or a wildcard address) from the same port on the host's 127.0.0.1, following them as they come and go (checked every 2 s)")
	cmd.Flags().StringArrayVar(&f.req.Mounts, "mount", nil,
		"share a host folder with the VM, `SRC:DST[:ro]` (like .:/root/src, or ~/data:/mnt/data:ro); repeatable; mounted whenever the VM runs")
}

// resolve makes the request's host paths absolute: the daemon does not know the CLI's
// working directory.
func (f *createFlags) resolve() error {
	for i, m := range f.req.Mounts {
		src, rest, ok := strings.Cut(m, ":")
		if !ok || src == "" {
			return fmt.Errorf("--mount %q: want SRC:DST[:ro], like .:/root/src", m)
		}
		if strings.HasPrefix(src, "~/") {
			if home, err := os.UserHomeDir(); err == nil {
				src = filepath.Join(home, src[2:])
			}
		}
		abs, err := filepath.Abs(src)
		if err != nil {
			return fmt.Errorf("--mount %q: %w", m, err)
		}
		f.req.Mounts[i] = abs + ":" + rest
	}
	return nil
}

// addBootFlags adds the flags that say what a VM boots and with how much: --image,
// --kernel, --cpus and --memory (vm create and run, bench create).
func addBootFlags(cmd *cobra.Command, image, kernel *string, cpus *int, memory *string) {
	cmd.Flags().StringVar(image, "image", "", "image to boot (default: config images.default)")
	cmd.Flags().StringVar(kernel, "kernel", "", "kernel id (default: the image's, else the newest installed)")
	cmd.Flags().IntVar(cpus, "cpus", 0, "vCPUs (default 2)")
	cmd.Flags().StringVar(memory, "memory", "", "memory, like 512M or 2G (default 1G)")
}

func (a *app) vmCreateCommand() *cobra.Command {
	var f createFlags
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "create [NAME]",
		Short: "Create a VM (its disks); --start boots it too",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 1 {
				f.req.Name = args[0]
			}
			if err := f.resolve(); err != nil {
				return err
			}
			vm, err := interruptibleCall(a, cmd, func(ctx context.Context, c *client.Client) (api.VM, error) {
				return c.CreateVM(ctx, f.req, a.stageProgress(asJSON))
			})
			if err != nil {
				return err
			}
			return a.printVM(vm, asJSON, "created")
		},
	}
	f.add(cmd)
	cmd.Flags().BoolVar(&f.req.Start, "start", false, "boot the VM and wait for its agent")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the VM as JSON")
	return cmd
}

func (a *app) vmStartCommand() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "start NAME",
		Short: "Boot a VM and wait until its agent answers",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			vm, err := interruptibleCall(a, cmd, func(ctx context.Context, c *client.Client) (api.VM, error) {
				return c.StartVM(ctx, args[0], a.stageProgress(asJSON))
			})
			if err != nil {
				return err
			}
			return a.printVM(vm, asJSON, "started")
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the VM as JSON")
	return cmd
}

// stopFlags are the shutdown flags of vm stop and vm restart.
type stopFlags struct {
	timeout time.Duration
	force   bool
}

func (f *stopFlags) add(cmd *cobra.Command, forceHelp string) {
	cmd.Flags().DurationVar(&f.timeout, "timeout", 30*time.Second, "how long the guest may take to power off before it is killed")
	cmd.Flags().BoolVar(&f.force, "force", false, forceHelp)
}

func (f *stopFlags) request(name string) (api.VMStopRequest, error) {
	if f.timeout < 0 {
		return api.VMStopRequest{}, fmt.Errorf("--timeout %s: must not be negative", f.timeout)
	}
	return api.VMStopRequest{Name: name, TimeoutSeconds: f.timeout.Seconds(), Force: f.force}, nil
}

func (a *app) vmStopCommand() *cobra.Command {
	var f stopFlags
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "stop NAME",
		Short: "Shut a VM down (agent power off, then ACPI, then kill after --timeout)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			req, err := f.request(args[0])
			if err != nil {
				return err
			}
			c, err := a.ensureDaemon(cmd.Context(), false)
			if err != nil {
				return err
			}
			if req.Force, err = a.confirmDiscard(cmdContext(cmd), c, args[0], "stopping it", req.Force); err != nil {
				return err
			}
			vm, err := c.StopVM(cmdContext(cmd), req)
			if err != nil {
				return err
			}
			return a.printVM(vm, asJSON, "stopped")
		},
	}
	f.add(cmd, "kill the VMM at once; of a paused VM, discard its saved state without asking")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the VM as JSON")
	return cmd
}

func (a *app) vmRestartCommand() *cobra.Command {
	var f stopFlags
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "restart NAME",
		Short: "Stop a VM (if running) and boot it again; disks and addresses are kept",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			req, err := f.request(args[0])
			if err != nil {
				return err
			}
			vm, err := interruptibleCall(a, cmd, func(ctx context.Context, c *client.Client) (api.VM, error) {
				return c.RestartVM(ctx, req, a.stageProgress(asJSON))
			})
			if err != nil {
				return err
			}
			return a.printVM(vm, asJSON, "restarted")
		},
	}
	f.add(cmd, "kill the VMM at once instead of shutting down")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the VM as JSON")
	return cmd
}

func cmdContext(cmd *cobra.Command) context.Context {
	if ctx := cmd.Context(); ctx != nil {
		return ctx
	}
	return context.Background()
}

func (a *app) vmRemoveCommand() *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:     "rm NAME...",
		Aliases: []string{"remove", "delete"},
		Short:   "Remove VMs and their disks (--force stops running ones first)",
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.ensureDaemon(cmdContext(cmd), false)
			if err != nil {
				return err
			}
			for _, n := range args {
				force, err := a.confirmDiscard(cmdContext(cmd), c, n, "removing it", force)
				if err != nil {
					return err
				}
				if err := c.RemoveVM(cmdContext(cmd), api.VMRemoveRequest{Name: n, Force: force}); err != nil {
					return err
				}
				fmt.Fprintf(a.env.Stdout, "removed %s\n", n)
			}
			return nil
		},
	}
	cmd.Flags().BoolVarP(&force, "force", "f", false, "stop running VMs first, and discard paused VMs' saved state")
	return cmd
}

func (a *app) vmListCommand() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List VMs",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := a.ensureDaemon(cmdContext(cmd), false)
			if err != nil {
				return err
			}
			vms, err := c.VMs(cmdContext(cmd))
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(a.env.Stdout, vms)
			}
			rows := [][]string{{"NAME", "STATE", "IMAGE", "CPUS", "MEMORY", "IP", "DRIVER"}}
			for _, vm := range vms {
				rows = append(rows, []string{vm.Name, vm.State, vm.Image, strconv.Itoa(vm.CPUs), fmt.Sprintf("%dM", vm.MemoryMiB),
					orDash(vm.Network.IP), vm.Driver})
			}
			table(a.env.Stdout, rows)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func (a *app) vmInspectCommand() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "inspect NAME",
		Short: "Show a VM: driver and why, addresses, disks, stage timings",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.ensureDaemon(cmdContext(cmd), false)
			if err != nil {
				return err
			}
			vm, err := c.InspectVM(cmdContext(cmd), args[0])
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(a.env.Stdout, vm)
			}
			w := a.env.Stdout
			fmt.Fprintf(w, "name:      %s (%s)\nstate:     %s\nimage:     %s\nkernel:    %s\n", vm.Name, vm.ID, vm.State, vm.Image, vm.Kernel)
			fmt.Fprintf(w, "driver:    %s %s (%s)\n", vm.Driver, vm.Accel, vm.DriverReason)
			fmt.Fprintf(w, "resources: %d vCPUs, %d MiB\n", vm.CPUs, vm.MemoryMiB)
			if vm.Boot != nil {
				fmt.Fprintf(w, "boot:      %s (%s)\n", vm.Boot.Mode, vm.Boot.Reason)
			}
			if vm.Network.IP != "" {
				fmt.Fprintf(w, "network:   %s via %s (tap %s, mac %s)\n", vm.Network.IP, vm.Network.Gateway, orDash(vm.Network.TAP), vm.Network.MAC)
			} else {
				fmt.Fprintf(w, "network:   %s\n", orDash(vm.Network.Note))
			}
			switch {
			case vm.SSH.Ready:
				fmt.Fprintf(w, "ssh:       ready (`banger vm ssh %s`; host key pinned as %s)\n", vm.Name, vm.SSH.HostKeyAlias)
			case vm.SSH.Note != "":
				fmt.Fprintf(w, "ssh:       %s\n", vm.SSH.Note)
			}
			if vm.PID > 0 {
				fmt.Fprintf(w, "pid:       %d\n", vm.PID)
			}
			if vm.PublishAll {
				fmt.Fprintf(w, "publish:   every TCP port the guest listens on, 1024 and up (--publish-all)\n")
			}
			for i, p := range vm.Ports {
				fmt.Fprintf(w, "%s %s\n", listLabel("ports:", i), portLine(p))
			}
			for i, m := range vm.Mounts {
				fmt.Fprintf(w, "%s %s\n", listLabel("mounts:", i), mountLine(m))
			}
			if p := vm.Paused; p != nil {
				fmt.Fprintf(w, "paused:    since %s, %s on disk in %s (`banger vm resume %s`)\n",
					p.At.Local().Format("2006-01-02 15:04:05"), units.FormatSize(p.SizeBytes), p.StateFile, vm.Name)
			}
			for _, d := range vm.Disks {
				ro := ""
				if d.ReadOnly {
					ro = " (read-only)"
				}
				fmt.Fprintf(w, "disk:      %-5s %s%s\n", d.Role, d.Path, ro)
			}
			if vm.ConsoleLog != "" {
				fmt.Fprintf(w, "console:   %s\n", vm.ConsoleLog)
			}
			if vm.LastExit != "" {
				fmt.Fprintf(w, "last exit: %s\n", vm.LastExit)
			}
			for _, s := range vm.Stages {
				fmt.Fprintf(w, "stage:     %-26s %8.1f ms %s\n", s.Name, s.DurationMS, s.Error)
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func (a *app) vmLogsCommand() *cobra.Command {
	var follow, raw bool
	cmd := &cobra.Command{
		Use:   "logs NAME",
		Short: "Print a VM's serial console (-f keeps following while it runs)",
		Long: `Print a VM's serial console (-f keeps following while it runs).

On a terminal, control sequences from the guest are removed (a guest could otherwise set
the window title, write the clipboard or redraw the screen); --raw prints its bytes as
they are. Into a pipe or a file the bytes always pass unchanged.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, stop := interruptible(cmd.Context())
			defer stop()
			c, err := a.ensureDaemon(ctx, false)
			if err != nil {
				return err
			}
			rc, err := c.VMLogs(ctx, args[0], follow)
			if err != nil {
				return err
			}
			defer rc.Close()
			out := a.env.Stdout
			if raw {
				out = a.rawOut
			}
			_, err = io.Copy(out, rc)
			if ctx.Err() != nil {
				return nil
			}
			return err
		},
	}
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing new output while the VM runs")
	cmd.Flags().BoolVar(&raw, "raw", false, "print the guest's bytes unchanged, control sequences included, even on a terminal")
	return cmd
}

func (a *app) vmHealthCommand() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "health NAME",
		Short: "Ask a VM's agent whether it is healthy (exit 1 when not)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.ensureDaemon(cmdContext(cmd), false)
			if err != nil {
				return err
			}
			h, err := c.VMHealth(cmdContext(cmd), args[0])
			if err != nil {
				return err
			}
			if asJSON {
				if err := printJSON(a.env.Stdout, h); err != nil {
					return err
				}
			} else if h.Agent {
				fmt.Fprintf(a.env.Stdout, "%s: %s, agent healthy (%.1f ms), network %s\n", h.Name, h.State, h.RTTMS, orDash(h.Network))
			} else {
				fmt.Fprintf(a.env.Stdout, "%s: %s: %s\n", h.Name, h.State, h.Detail)
			}
			if !h.Agent {
				return &ExitError{Code: 1}
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func (a *app) vmRunCommand() *cobra.Command {
	var f createFlags
	var keep, quiet bool
	cmd := &cobra.Command{
		Use:   "run [NAME] [flags] [-- CMD [ARGS...]]",
		Short: "Create and boot a VM, then open a shell in it, or run a command and remove the VM",
		Long: `Create and boot a VM and wait until it is ready.

Without a command: open an interactive SSH shell as root (through the agent's terminal when
the image has no sshd). The VM keeps running afterwards; banger says how to stop it.

With a command after --: run it through the agent, print its output, exit with its code,
and remove the VM (unless --keep).

  banger vm run                       # a fresh VM and a shell in it
  banger vm run -- make -C /root test # throwaway VM for one command
  banger vm run dev --image debian-bookworm --memory 2G --keep -- ./setup.sh`,
		RunE: func(cmd *cobra.Command, args []string) (err error) {
			dash := cmd.ArgsLenAtDash()
			var argv []string
			if dash >= 0 {
				args, argv = args[:dash], args[dash:]
			}
			if len(args) > 1 {
				return fmt.Errorf("vm run takes at most one NAME before --, got %q (put the command after --)", strings.Join(args, " "))
			}
			if len(args) == 1 {
				f.req.Name = args[0]
			}
			if err := f.resolve(); err != nil {
				return err
			}
			f.req.Start = true
			// A command runs through the agent: no need to wait for sshd.
			f.req.SkipSSHWait = len(argv) > 0
			ctx, stop := interruptible(cmd.Context())
			defer stop()
			c, err := a.ensureDaemon(ctx, false)
			if err != nil {
				if sig, ok := interruptedBy(ctx); ok {
					return &interruptedError{sig, "interrupted while reaching the banger daemon: no VM was created"}
				}
				return err
			}
			what := "a new VM"
			if f.req.Name != "" {
				what = fmt.Sprintf("VM %q", f.req.Name)
			}
			var stage string
			progress := a.stageProgress(quiet)
			vm, err := c.CreateVM(ctx, f.req, func(p api.Progress) { stage = p.Stage; progress(p) })
			if err != nil {
				if sig, ok := interruptedBy(ctx); ok {
					at := ""
					if stage != "" {
						at = " (at stage " + stage + ")"
					}
					// Hanging up cancels the daemon's request, and a create that fails undoes
					// itself: VMM killed, network lease released, disks and record deleted.
					return &interruptedError{sig, fmt.Sprintf("interrupted while creating %s%s: the daemon removes what it made for it "+
						"(VMM, network lease, disks, record); `banger vm ls` shows what is left", what, at)}
				}
				return err
			}
			if len(argv) == 0 {
				// The session owns the terminal and its signals from here.
				stop()
				return a.interactive(cmdContext(cmd), c, vm)
			}
			runErr := a.exec(ctx, c, api.VMExecRequest{Name: vm.ID, Argv: argv}, a.env.Stdin)
			sig, interrupted := interruptedBy(ctx)
			killed := fmt.Sprintf("interrupted: %s in VM %s was killed", commandLine(argv), vm.Name)
			if keep {
				if interrupted {
					return &interruptedError{sig, fmt.Sprintf("%s; VM %s is kept (--keep): `banger vm rm --force %s` removes it", killed, vm.Name, vm.Name)}
				}
				return runErr
			}
			rerr := a.removeThrowaway(c, vm)
			if interrupted {
				cleaned := fmt.Sprintf("VM %s was removed", vm.Name)
				if rerr != nil {
					cleaned = fmt.Sprintf("VM %s could not be removed (%v): `banger vm rm --force %s`", vm.Name, errorMessage(rerr), vm.Name)
				}
				return &interruptedError{sig, killed + "; " + cleaned}
			}
			if rerr != nil {
				fmt.Fprintf(a.env.Stderr, "banger: could not remove VM %s: %v\n", vm.Name, errorMessage(rerr))
			}
			return runErr
		},
	}
	f.add(cmd)
	cmd.Flags().BoolVar(&keep, "keep", false, "keep the VM after the command")
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "do not print the start stages")
	return cmd
}

// removeThrowaway removes the VM of `vm run -- CMD`, even after an interrupt.
func (a *app) removeThrowaway(c *client.Client, vm api.VM) error {
	rctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// Its disks are deleted next: no need for a clean shutdown first.
	_, _ = c.StopVM(rctx, api.VMStopRequest{Name: vm.ID, Force: true})
	return c.RemoveVM(rctx, api.VMRemoveRequest{Name: vm.ID, Force: true})
}

// commandLine shows argv in a message, shortened.
func commandLine(argv []string) string {
	s := strings.Join(argv, " ")
	if len(s) > 60 {
		s = s[:57] + "..."
	}
	return strconv.Quote(s)
}

// interactive opens a shell in a freshly started VM (SSH when it has sshd, else the agent's
// terminal), then reminds the user the VM is still running.
func (a *app) interactive(ctx context.Context, c *client.Client, vm api.VM) error {
	defer a.remindRunning(ctx, c, vm.Name)
	tty := termutil.IsTerminal(a.env.Stdin)
	if vm.SSH.Ready {
		return a.ssh(ctx, c, vm, nil, tty, "")
	}
	fmt.Fprintf(a.env.Stderr, "no SSH in %s (%s): opening a shell through the agent\n", vm.Name, orDash(vm.SSH.Note))
	return a.exec(ctx, c, api.VMExecRequest{Name: vm.ID, Argv: []string{"/bin/sh", "-c", "if command -v bash >/dev/null; then exec bash -l; else exec sh -l; fi"}, TTY: tty}, a.env.Stdin)
}

func (a *app) printVM(vm api.VM, asJSON bool, verb string) error {
	if asJSON {
		return printJSON(a.env.Stdout, vm)
	}
	extra := ""
	if vm.Network.IP != "" {
		extra = ", ip " + vm.Network.IP
	} else if vm.State == "running" && vm.Network.Note != "" {
		extra = " (" + vm.Network.Note + ")"
	}
	fmt.Fprintf(a.env.Stdout, "%s %s: %s, %s %s%s\n", verb, vm.Name, vm.State, vm.Driver, vm.Accel, extra)
	for _, p := range vm.Ports {
		fmt.Fprintf(a.env.Stdout, "  %s\n", portLine(p))
	}
	for _, m := range vm.Mounts {
		fmt.Fprintf(a.env.Stdout, "  %s\n", mountLine(m))
	}
	return nil
}

// listLabel is an inspect field's label on a list's first line, blank on the others.
func listLabel(label string, i int) string {
	if i > 0 {
		label = ""
	}
	return fmt.Sprintf("%-10s", label)
}

// mountLine describes one host folder and whether it is mounted.
func mountLine(m api.VMMount) string {
	s := termutil.SanitizeString(m.Source) + " -> " + termutil.SanitizeString(m.Target)
	if m.ReadOnly {
		s += " (read-only)"
	}
	switch {
	case m.Error != "":
		s += " (not mounted: " + termutil.SanitizeString(m.Error) + ")"
	case !m.Mounted:
		s += " (mounted while the VM runs)"
	}
	return s
}

// portLine describes one forward: where to connect, where it goes, and whether it listens.
func portLine(p api.VMPort) string {
	s := fmt.Sprintf("%s -> guest port %d/%s", net.JoinHostPort(p.HostIP, strconv.Itoa(p.HostPort)), p.GuestPort, p.Proto)
	if p.Auto {
		s += " (published: the guest listens on it)"
	}
	switch {
	case p.Error != "":
		s += " (not listening: " + termutil.SanitizeString(p.Error) + ")"
	case !p.Listening:
		s += " (listens while the VM runs)"
	}
	return s
}

func (a *app) vmPauseCommand() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "pause NAME",
		Short: "Save a running VM's whole state to disk and end its VMM; resume brings it back",
		Long: `Save a running VM's whole state (memory, devices, every process, open file, tmpfs
and listener) into its directory, and end its VMM: a paused VM uses disk, no RAM or CPU.
The guest's filesystems are synced first.

  banger vm pause dev
  banger vm resume dev      # (or vm start) everything as it was; the clock is set again

A paused VM stays paused across daemon restarts, banger update and host reboots.
'vm stop' of a paused VM discards the saved state (it asks, or takes --force).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			vm, err := interruptibleCall(a, cmd, func(ctx context.Context, c *client.Client) (api.VM, error) {
				return c.PauseVM(ctx, args[0], a.stageProgress(asJSON))
			})
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(a.env.Stdout, vm)
			}
			size := ""
			if vm.Paused != nil {
				size = fmt.Sprintf(" (%s saved)", units.FormatSize(vm.Paused.SizeBytes))
			}
			fmt.Fprintf(a.env.Stdout, "paused %s%s: resume it with `banger vm resume %s`\n", vm.Name, size, vm.Name)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the VM as JSON")
	return cmd
}

func (a *app) vmResumeCommand() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "resume NAME",
		Short: "Bring a paused VM back with its processes as they were",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			vm, err := interruptibleCall(a, cmd, func(ctx context.Context, c *client.Client) (api.VM, error) {
				return c.ResumeVM(ctx, args[0], a.stageProgress(asJSON))
			})
			if err != nil {
				return err
			}
			return a.printVM(vm, asJSON, "resumed")
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the VM as JSON")
	return cmd
}

// confirmDiscard asks, on a terminal, before an operation discards a paused VM's saved
// state; it returns the force to send. Off a terminal the daemon refuses without --force.
func (a *app) confirmDiscard(ctx context.Context, c *client.Client, name, what string, force bool) (bool, error) {
	if force || !termutil.IsTerminal(a.env.Stdin) {
		return force, nil
	}
	vm, err := c.InspectVM(ctx, name)
	if err != nil || vm.State != "paused" {
		return force, nil // the daemon says what is wrong
	}
	fmt.Fprintf(a.env.Stderr, "%s is paused: %s discards its saved processes and memory. Discard them? [y/N] ", termutil.SanitizeString(vm.Name), what)
	line, _ := bufio.NewReader(a.env.Stdin).ReadString('\n')
	if ans := strings.ToLower(strings.TrimSpace(line)); ans != "y" && ans != "yes" {
		return false, fmt.Errorf("kept %s paused", vm.Name)
	}
	return true, nil
}
