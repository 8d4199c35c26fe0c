// Command sdk is an example program of banger's Go SDK (package client): it boots a VM,
// writes a file into it, reads it back, runs a command with stdin and checks its output
// and exit code, then removes the VM. It exits non-zero when anything differs.
//
//	go run ./examples/sdk -image debian-bookworm
//
// It talks to the current user's daemon (`banger daemon start`), or the one on -socket.
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/banger-vm/banger/client"
)

func main() {
	log.SetFlags(0)
	log.SetPrefix("sdk example: ")
	image := flag.String("image", "", "image to boot (default: the daemon's images.default)")
	memory := flag.String("memory", "512M", "memory of the VM")
	socket := flag.String("socket", "", "daemon socket (default: the current user's)")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *socket, *image, *memory); err != nil {
		log.Fatal(err)
	}
}

func run(ctx context.Context, socket, image, memory string) (err error) {
	var opts []client.Option
	if socket != "" {
		opts = append(opts, client.WithSocket(socket))
	}
	c, err := client.New(opts...)
	if err != nil {
		return err
	}
	// The VM only needs its agent: no need to wait for an sshd.
	vm, err := c.CreateVM(ctx, client.VMCreateRequest{Image: image, Memory: memory, Start: true, SkipSSHWait: true}, nil)
	if err != nil {
		if client.IsNotFound(err) {
			return fmt.Errorf("%w: pull or import the image first (banger image ls)", err)
		}
		return err
	}
	fmt.Printf("created VM %s: %s\n", vm.Name, vm.State)
	defer func() {
		// Remove it even when ctx was cancelled.
		rctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		rerr := c.RemoveVM(rctx, client.VMRemoveRequest{Name: vm.Name, Force: true})
		if rerr == nil {
			fmt.Printf("removed VM %s\n", vm.Name)
		}
		err = errors.Join(err, rerr)
	}()

	const path = "/root/hello.txt"
	want := []byte("hello from the banger SDK\nline two, bytes \x00\xff kept\n")
	if err := c.WriteFile(ctx, vm.Name, path, want, 0o640); err != nil {
		return err
	}
	fmt.Printf("wrote %s: %d bytes\n", path, len(want))
	got, err := c.ReadFile(ctx, vm.Name, path)
	if err != nil {
		return err
	}
	if !bytes.Equal(got, want) {
		return fmt.Errorf("read back %q, want %q", got, want)
	}
	fmt.Printf("read back %s: %d bytes, identical\n", path, len(got))

	// A command with stdin, separate stdout and stderr, and an exit code of its own.
	var out, errOut bytes.Buffer
	st, err := c.Exec(ctx, vm.Name, client.Command{
		Argv:   []string{"sh", "-c", `stat -c %a "$1"; head -n 1 "$1"; cat; echo to-stderr >&2; exit 7`, "sh", path},
		Stdin:  strings.NewReader("from stdin\n"),
		Stdout: &out,
		Stderr: &errOut,
	})
	if err != nil {
		return err
	}
	if wantOut := "640\nhello from the banger SDK\nfrom stdin\n"; out.String() != wantOut || errOut.String() != "to-stderr\n" || st.Code != 7 {
		return fmt.Errorf("exec: exit %d, stdout %q, stderr %q; want exit 7, stdout %q, stderr \"to-stderr\\n\"", st.Code, out.String(), errOut.String(), wantOut)
	}
	fmt.Printf("exec: exit code %d, stdout %q, stderr %q\n", st.Code, out.String(), errOut.String())
	return nil
}
