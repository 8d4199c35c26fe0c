package cli

import (
	"context"
	"io"
	"log/slog"
	"sync"

	"github.com/modelcontextprotocol/go-sdk/mcp"
	"github.com/spf13/cobra"

	"github.com/banger-vm/banger/client"
	"github.com/banger-vm/banger/internal/mcpserver"
)

func (a *app) mcpCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "mcp",
		Short: "Serve banger's VMs to a coding agent as a Model Context Protocol server (stdio)",
		Long: `Serve the Model Context Protocol on stdin/stdout, for a coding agent (Claude Desktop or
Code, Cursor, ...) to run commands in throwaway VMs and manage VMs through the daemon.
Add it to the client's MCP configuration:

  {"mcpServers": {"banger": {"command": "banger", "args": ["mcp"]}}}

Tools: vm_run (a command in a throwaway VM: create, start, run, remove), vm_create,
vm_exec, vm_read_file, vm_write_file, vm_ls, vm_rm, vm_fork. Outputs are cut at 64 KiB per
stream; commands are killed at their timeout_seconds (default 60, at most 1800). Logs go
to stderr; the daemon is reached (or started, with daemon.autostart) on the first call.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := interruptible(cmd.Context())
			defer stop()
			var mu sync.Mutex
			var daemon *client.Client
			connect := func(ctx context.Context) (mcpserver.Daemon, error) {
				mu.Lock()
				defer mu.Unlock()
				if daemon != nil {
					return daemon, nil
				}
				c, err := a.ensureDaemon(ctx, false)
				if err != nil {
					return nil, err
				}
				daemon = c
				return c, nil
			}
			// The protocol owns stdout: the raw streams, never the terminal filter.
			in := a.env.Stdin
			if in == nil {
				in = eofReader{}
			}
			logger := slog.New(slog.NewTextHandler(a.rawErr, &slog.HandlerOptions{Level: slog.LevelWarn}))
			return mcpserver.Serve(ctx, mcpserver.Options{Connect: connect, Version: a.version, Logger: logger},
				&mcp.IOTransport{Reader: io.NopCloser(in), Writer: nopWriteCloser{a.rawOut}})
		},
	}
}

type eofReader struct{}

func (eofReader) Read([]byte) (int, error) { return 0, io.EOF }

type nopWriteCloser struct{ io.Writer }

func (nopWriteCloser) Close() error { return nil }
