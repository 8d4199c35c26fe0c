// Command banger is the CLI, the owner daemon (banger daemon) and, later, the root helper.
package main

import (
	"os"

	"github.com/banger-vm/banger/internal/cli"
)

func main() {
	os.Exit(cli.Execute(cli.EnvFromOS(), os.Args[1:]))
}
