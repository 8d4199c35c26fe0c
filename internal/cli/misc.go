package cli

import (
	"context"
	"fmt"
	"runtime"
	"time"

	"github.com/spf13/cobra"

	"github.com/banger-vm/banger/internal/config"
)

func (a *app) versionCommand() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "version",
		Short: "Print the CLI version and, if one runs, the daemon's",
		Long: `Print banger's version. When a daemon is running, its version is printed too:
the CLI and daemon should match; after an upgrade, restart the daemon with
'banger daemon restart'.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			type out struct {
				Version       string `json:"version"`
				GoVersion     string `json:"go_version"`
				Platform      string `json:"platform"`
				DaemonVersion string `json:"daemon_version,omitempty"`
				DaemonPID     int    `json:"daemon_pid,omitempty"`
				DaemonError   string `json:"daemon_error,omitempty"`
			}
			o := out{Version: a.version, GoVersion: runtime.Version(), Platform: runtime.GOOS + "/" + runtime.GOARCH}
			if c, err := a.client(); err == nil {
				ctx, cancel := context.WithTimeout(cmd.Context(), 3*time.Second)
				defer cancel()
				if st, err := c.Status(ctx); err == nil {
					o.DaemonVersion, o.DaemonPID = st.Version, st.PID
				} else {
					o.DaemonError = errorMessage(err)
				}
			}
			if asJSON {
				return printJSON(a.env.Stdout, o)
			}
			fmt.Fprintf(a.env.Stdout, "banger %s (%s, %s)\n", o.Version, o.GoVersion, o.Platform)
			switch {
			case o.DaemonVersion != "":
				fmt.Fprintf(a.env.Stdout, "daemon %s (pid %d)\n", o.DaemonVersion, o.DaemonPID)
			case o.DaemonError != "":
				fmt.Fprintf(a.env.Stdout, "daemon: %s\n", o.DaemonError)
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print as JSON")
	return cmd
}

func (a *app) configCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "config",
		Short: "Show banger's configuration and where it lives",
		Long: `banger reads an optional TOML file, by default $XDG_CONFIG_HOME/banger/config.toml
(~/.config/banger/config.toml). Every key is optional. Example:

  log_level = "debug"

  [vmm]
  driver = "qemu"              # auto | firecracker | qemu

  [runtime]
  firecracker_path = "/opt/firecracker/firecracker"

Unknown keys are warned about; a bad value is an error naming the key.`,
		Args: cobra.NoArgs,
	}
	var asJSON bool
	show := &cobra.Command{
		Use:   "show",
		Short: "Print every key's effective value and where it came from",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			cfg, layout, err := a.load()
			if err != nil {
				return err
			}
			entries := cfg.Entries()
			if asJSON {
				return printJSON(a.env.Stdout, struct {
					File     string         `json:"file"`
					Exists   bool           `json:"exists"`
					Keys     []config.Entry `json:"keys"`
					Warnings []string       `json:"warnings"`
				}{layout.ConfigFile, cfg.File != "", entries, nonNil(cfg.Warnings)})
			}
			note := "(not present: all defaults)"
			if cfg.File != "" {
				note = ""
			}
			fmt.Fprintf(a.env.Stdout, "# config file: %s %s\n", layout.ConfigFile, note)
			rows := [][]string{{"KEY", "VALUE", "SOURCE"}}
			for _, e := range entries {
				v := e.Value
				if v == "" {
					v = `""`
				}
				rows = append(rows, []string{e.Key, v, e.Source.String()})
			}
			table(a.env.Stdout, rows)
			return nil
		},
	}
	show.Flags().BoolVar(&asJSON, "json", false, "print as JSON")
	path := &cobra.Command{
		Use:   "path",
		Short: "Print the config file path",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			_, layout, err := a.load()
			if err != nil {
				return err
			}
			fmt.Fprintln(a.env.Stdout, layout.ConfigFile)
			return nil
		},
	}
	cmd.AddCommand(show, path)
	return cmd
}

func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}
