// Command banger-init is PID 1 of the initramfs banger boots every VM with.
package main

import (
	"github.com/banger-vm/banger/internal/buildinfo"
	"github.com/banger-vm/banger/internal/guestinit"
)

func main() {
	guestinit.Main(buildinfo.Version())
}
