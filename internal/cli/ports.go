package cli

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/banger-vm/banger/internal/api"
	"github.com/banger-vm/banger/internal/portfwd"
)

func (a *app) vmPortCommand() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "port NAME [ls | add SPEC... | rm HOSTPORT[/PROTO]...]",
		Short: "List, add or remove a VM's port forwards",
		Long: `A port forward makes a TCP or UDP port on the VM's loopback reachable on the host. It
goes through the VM's agent, so it works with or without a guest network; it listens on
127.0.0.1 unless SPEC names another host address, while the VM runs (start, resume and a
daemon restart bring it back).

SPEC is [HOSTIP:]HOSTPORT:GUESTPORT[/tcp|/udp], or GUESTPORT[/udp] for a free host port.
UDP is forwarded per client address: each host client (source IP and port) gets its own
guest socket, and the guest's answers to it go back to that client only. That suits
request/response protocols (DNS, NTP, game or service pings). A client's flow ends after
60 s without a datagram either way; a forward keeps at most 256 flows (the least recently
active goes first) and drops datagrams, as UDP does, when the guest end lags.

vm create --publish-all forwards every TCP port the guest listens on (1024 and up) from
the same host port, as the guest opens and closes them; ls shows those as published.

  banger vm port dev add 8080                  # a free host port, printed
  banger vm port dev add 18080:8080 0.0.0.0:2222:22
  banger vm port dev add 5353:53/udp           # a DNS server in the VM
  banger vm port dev ls
  banger vm port dev rm 18080                  # by its host port (or HOSTIP:HOSTPORT), both protocols
  banger vm port dev rm 5353/udp               # only the UDP forward

vm create and vm run take the same SPECs with -p. These forwards are the daemon's: with
a daemon on another host (BANGER_HOST) they would listen there, so 'add' is refused;
'banger vm port-forward' listens on this machine instead.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name, action, rest := args[0], "ls", args[1:]
			if len(rest) > 0 {
				action, rest = rest[0], rest[1:]
			}
			var req api.VMPortsRequest
			switch action {
			case "ls", "list":
				if len(rest) > 0 {
					return fmt.Errorf("ls takes no arguments")
				}
			case "add":
				req.Add = rest
			case "rm", "remove":
				req.Remove = rest
			default:
				return fmt.Errorf("unknown action %q: use ls, add SPEC... or rm HOSTPORT...", action)
			}
			if action != "ls" && action != "list" && len(rest) == 0 {
				return fmt.Errorf("%s needs at least one port", action)
			}
			if len(req.Add) > 0 {
				if t, err := a.remote(); err != nil || t != nil {
					if err != nil {
						return err
					}
					return &api.Error{Code: api.CodeBadRequest,
						Message: fmt.Sprintf("a forward added to VM %s would listen on the daemon's machine, %s (BANGER_HOST or --host)", name, t.Host),
						Hint:    fmt.Sprintf("forward to this machine with `banger vm port-forward %s %s` (it runs until Ctrl-C)", name, strings.Join(req.Add, " "))}
				}
			}
			c, err := a.ensureDaemon(cmdContext(cmd), false)
			if err != nil {
				return err
			}
			var vm api.VM
			if len(req.Add)+len(req.Remove) == 0 {
				vm, err = c.InspectVM(cmdContext(cmd), name)
			} else {
				req.Name = name
				vm, err = c.ChangePorts(cmdContext(cmd), req)
			}
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(a.env.Stdout, vm.Ports)
			}
			if len(vm.Ports) == 0 {
				fmt.Fprintf(a.env.Stdout, "VM %s forwards no ports; add one with `banger vm port %s add GUESTPORT`\n", vm.Name, vm.Name)
				return nil
			}
			lines := make([]string, len(vm.Ports))
			for i, p := range vm.Ports {
				lines[i] = portLine(p)
			}
			fmt.Fprintln(a.env.Stdout, strings.Join(lines, "\n"))
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the VM's forwards as JSON")
	return cmd
}

func (a *app) vmPortForwardCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "port-forward NAME SPEC...",
		Short: "Forward ports of this machine to a VM until Ctrl-C (works with a remote daemon)",
		Long: `Listen on this machine and relay every connection to a port in the VM, through the
daemon and the VM's agent, until Ctrl-C. SPEC is [LOCALIP:]LOCALPORT:GUESTPORT or GUESTPORT
(a free local port, printed); it listens on 127.0.0.1 unless LOCALIP says otherwise.

Unlike 'vm port add', whose forwards the daemon keeps on its own machine, this one lives
in this command on this machine: with BANGER_HOST=ssh://... it forwards a port of your
laptop to a VM on the remote host.

  banger vm port-forward dev 8080
  BANGER_HOST=ssh://me@box banger vm port-forward dev 18080:8080 2222:22`,
		Args: cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			specs := make([]portfwd.Spec, 0, len(args)-1)
			for _, text := range args[1:] {
				s, err := portfwd.Parse(text)
				if err != nil {
					return err
				}
				if s.Proto != "tcp" {
					return fmt.Errorf("port %q: vm port-forward relays TCP only; for UDP use `banger vm port %s add %s` on the daemon's machine", text, name, text)
				}
				if s, err = portfwd.Resolve(s); err != nil {
					return err
				}
				specs = append(specs, s)
			}
			ctx, stop := interruptible(cmd.Context())
			defer stop()
			c, err := a.ensureDaemon(ctx, false)
			if err != nil {
				return err
			}
			vm, err := c.InspectVM(ctx, name) // a typo fails now, not at the first connection
			if err != nil {
				return err
			}
			logger := slog.New(slog.NewTextHandler(a.env.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
			dial := func(ctx context.Context, guestPort int) (io.ReadWriteCloser, error) {
				conn, err := c.Forward(ctx, vm.ID, guestPort)
				if err != nil {
					fmt.Fprintf(a.env.Stderr, "forward to %s port %d: %s\n", vm.Name, guestPort, errorMessage(err))
				}
				return conn, err
			}
			var fwds []*portfwd.Forwarder
			defer func() {
				for _, f := range fwds {
					f.Close()
				}
			}()
			for _, s := range specs {
				f, err := portfwd.Listen(s, portfwd.Options{TCP: dial, Log: logger})
				if err != nil {
					return err
				}
				fwds = append(fwds, f)
				fmt.Fprintf(a.env.Stdout, "%s -> VM %s port %d\n", net.JoinHostPort(s.HostIP, strconv.Itoa(s.HostPort)), vm.Name, s.GuestPort)
			}
			fmt.Fprintln(a.env.Stderr, "forwarding until Ctrl-C")
			<-ctx.Done()
			return nil
		},
	}
}
