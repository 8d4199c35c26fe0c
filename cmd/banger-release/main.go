// Command banger-release makes signed banger releases: the signing key (keygen) and the
// release channel directory `banger update` reads (make). See internal/release.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/banger-vm/banger/internal/release"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := release.Execute(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
