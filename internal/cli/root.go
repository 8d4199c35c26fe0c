// Package cli is banger's command line: thin cobra commands that parse flags, call the
// daemon API (or a local package), and print for humans or, with --json, for scripts.
package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/banger-vm/banger/client"
	"github.com/banger-vm/banger/internal/api"
	"github.com/banger-vm/banger/internal/buildinfo"
	"github.com/banger-vm/banger/internal/config"
	"github.com/banger-vm/banger/internal/paths"
	"github.com/banger-vm/banger/internal/termutil"
)

// Env is everything the CLI takes from its process, passed in so tests can run commands
// in-process with their own directories and streams.
type Env struct {
	Paths  paths.Env
	Stdin  io.Reader // nil reads as empty
	Stdout io.Writer
	Stderr io.Writer
	// Getenv reads other variables (BANGER_CONFIG, NOTIFY_SOCKET).
	Getenv func(string) string
	// Executable is the banger binary, used to start a detached daemon.
	Executable string
}

// EnvFromOS builds Env from the real process.
func EnvFromOS() Env {
	exe, _ := os.Executable()
	return Env{Paths: paths.EnvFromOS(), Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr, Getenv: os.Getenv, Executable: exe}
}

// ExitError carries a specific exit status without an extra error message (doctor's FAIL).
type ExitError struct{ Code int }

func (e *ExitError) Error() string { return fmt.Sprintf("exit status %d", e.Code) }

// app is the state shared by the commands of one invocation.
type app struct {
	// env's Stdout and Stderr strip terminal controls when they are terminals: guest
	// consoles, guest errors and image metadata are hostile (see termutil.Writer).
	env Env
	// rawOut and rawErr are the streams as given, for the user's own sessions (vm exec, vm
	// ssh, vm run's command) and vm logs --raw.
	rawOut, rawErr io.Writer
	flush          []func() error
	configFlag     string
	hostFlag       string
	forceLocal     bool // daemon proxy: always this machine's daemon
	version        string
	// remoteClients are the clients of a remote daemon this invocation made: each kept-alive
	// connection is an ssh process, closed at exit.
	remoteClients []*client.Client

	loaded bool
	cfg    config.Config
	layout paths.Layout
}

// NewRootCommand builds the command tree.
func NewRootCommand(env Env) *cobra.Command {
	root, _ := newRoot(env)
	return root
}

func newRoot(env Env) (*cobra.Command, *app) {
	a := &app{env: env, rawOut: env.Stdout, rawErr: env.Stderr, version: buildinfo.Version()}
	var flushOut, flushErr func() error
	a.env.Stdout, flushOut = termutil.ForTerminal(env.Stdout)
	a.env.Stderr, flushErr = termutil.ForTerminal(env.Stderr)
	a.flush = []func() error{flushOut, flushErr}
	env = a.env
	root := &cobra.Command{
		Use:   "banger",
		Short: "Fast, real Linux microVMs on your own Linux box",
		Long: `banger gives you a real Linux machine in about a second: a Firecracker (or QEMU)
microVM with its own kernel, a root filesystem from an image, and a persistent
work disk at /root, reachable by SSH with no prompts.

The CLI talks to an owner daemon that runs as you (banger daemon); a small root
helper does only the networking. Start with:

  banger daemon start     # start the owner daemon in the background
  banger doctor           # check this host: KVM, VMMs, disk tools, space

BANGER_HOST=ssh://USER@HOST (or --host) uses the daemon of another machine instead,
through ssh (README: "A daemon on another host").`,
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       a.version,
	}
	root.SetOut(env.Stdout)
	root.SetErr(env.Stderr)
	root.SetVersionTemplate("banger {{.Version}}\n")
	root.PersistentFlags().StringVar(&a.configFlag, "config", "", "config file (default $BANGER_CONFIG or $XDG_CONFIG_HOME/banger/config.toml)")
	root.PersistentFlags().StringVar(&a.hostFlag, "host", "", "use the daemon of another machine, `ssh://[USER@]HOST[:PORT]` (default $BANGER_HOST; see `banger daemon --help`)")
	root.PersistentPreRunE = func(cmd *cobra.Command, _ []string) error { return a.checkRemote(cmd) }
	root.AddCommand(
		a.versionCommand(),
		a.configCommand(),
		a.daemonCommand(),
		a.doctorCommand(),
		a.imageCommand(),
		a.vmCommand(),
		a.snapshotCommand(),
		a.helperCommand(),
		a.updateCommand(),
		a.mcpCommand(),
	)
	root.AddCommand(a.benchCommand())
	// cobra adds `completion` only when it executes; add it now so it is checked too.
	root.InitDefaultCompletionCmd()
	strictGroups(root)
	return root, a
}

// strictGroups makes every command that has subcommands refuse an unknown one (and any
// stray argument) with cobra's "unknown command" error and suggestions. By default cobra
// checks that only at the root: `banger vm pause` printed the help and exited 0, so a typo
// in a script passed silently.
func strictGroups(c *cobra.Command) {
	if !c.HasSubCommands() {
		return
	}
	for _, sub := range c.Commands() {
		strictGroups(sub)
	}
	own := c.Args
	c.Args = func(cmd *cobra.Command, args []string) error {
		if len(args) > 0 {
			return unknownCommand(cmd, args[0])
		}
		if own != nil {
			return own(cmd, args)
		}
		return nil
	}
	if !c.Runnable() {
		// cobra skips argument checks for a command that cannot run: give the group a
		// run that shows its help, as before.
		c.RunE = func(cmd *cobra.Command, _ []string) error { return cmd.Help() }
	}
}

// unknownCommand is cobra's own message for an unknown subcommand of the root.
func unknownCommand(cmd *cobra.Command, arg string) error {
	if cmd.SuggestionsMinimumDistance <= 0 {
		cmd.SuggestionsMinimumDistance = 2
	}
	var b strings.Builder
	if s := cmd.SuggestionsFor(arg); len(s) > 0 && !cmd.DisableSuggestions {
		b.WriteString("\n\nDid you mean this?\n")
		for _, name := range s {
			fmt.Fprintf(&b, "\t%v\n", name)
		}
	}
	return fmt.Errorf("unknown command %q for %q%s", arg, cmd.CommandPath(), b.String())
}

// Execute runs the CLI and returns the process exit status.
func Execute(env Env, args []string) int {
	root, a := newRoot(env)
	defer func() {
		for _, c := range a.remoteClients {
			c.CloseIdleConnections()
		}
		for _, f := range a.flush {
			_ = f()
		}
	}()
	root.SetArgs(args)
	err := root.Execute()
	if err == nil {
		return 0
	}
	var exit *ExitError
	if errors.As(err, &exit) {
		return exit.Code
	}
	// An error may quote a guest's console or a guest's words: a.env.Stderr strips
	// terminal controls when it is a terminal.
	stderr := a.env.Stderr
	fmt.Fprintf(stderr, "banger: %v\n", errorMessage(err))
	var ae *api.Error
	if errors.As(err, &ae) && ae.Hint != "" {
		fmt.Fprintf(stderr, "hint: %s\n", ae.Hint)
	}
	var ie *interruptedError
	if errors.As(err, &ie) {
		return ie.exitCode()
	}
	return 1
}

func errorMessage(err error) string {
	var ae *api.Error
	if errors.As(err, &ae) {
		return ae.Message
	}
	return err.Error()
}

// load reads the config once per invocation and prints its warnings.
func (a *app) load() (config.Config, paths.Layout, error) {
	if a.loaded {
		return a.cfg, a.layout, nil
	}
	layout, err := paths.Resolve(a.env.Paths)
	if err != nil {
		return config.Config{}, paths.Layout{}, err
	}
	file := a.configFile(layout)
	cfg, err := config.Load(file)
	if err != nil {
		return config.Config{}, paths.Layout{}, err
	}
	for _, w := range cfg.Warnings {
		fmt.Fprintf(a.env.Stderr, "warning: %s\n", w)
	}
	if cfg.DataDir != "" {
		layout = layout.WithDataDir(cfg.DataDir)
	}
	layout.ConfigFile = file
	a.cfg, a.layout, a.loaded = cfg, layout, true
	return cfg, layout, nil
}

func (a *app) configFile(layout paths.Layout) string {
	if a.configFlag != "" {
		return a.configFlag
	}
	if v := a.env.Getenv("BANGER_CONFIG"); v != "" {
		return v
	}
	return layout.ConfigFile
}

func (a *app) client() (*client.Client, error) {
	_, layout, err := a.load()
	if err != nil {
		return nil, err
	}
	if t, err := a.remote(); err != nil || t != nil {
		if err != nil {
			return nil, err
		}
		return a.remoteClient(*t), nil
	}
	return a.newClient(layout), nil
}

// newClient is the SDK client of the daemon at layout's socket, announcing the CLI's
// version.
func (a *app) newClient(layout paths.Layout) *client.Client {
	// New fails only when it must find the default socket; it is given one.
	c, _ := client.New(client.WithSocket(layout.Socket), client.WithClientVersion(a.version))
	return c
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	return enc.Encode(v)
}

// table prints aligned columns without pulling in a table library.
func table(w io.Writer, rows [][]string) {
	if len(rows) == 0 {
		return
	}
	widths := make([]int, len(rows[0]))
	for _, r := range rows {
		for i, c := range r {
			if i < len(widths) && len(c) > widths[i] {
				widths[i] = len(c)
			}
		}
	}
	for _, r := range rows {
		var b strings.Builder
		for i, c := range r {
			if i == len(r)-1 {
				b.WriteString(c)
				break
			}
			fmt.Fprintf(&b, "%-*s  ", widths[i], c)
		}
		fmt.Fprintln(w, strings.TrimRight(b.String(), " "))
	}
}
