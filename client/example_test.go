package client_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log"
	"net"
	"os"
	"strings"

	"github.com/banger-vm/banger/client"
)

// Connect to the current user's daemon (as the banger CLI does) and ask for its status.
func ExampleDefault() {
	c, err := client.Default()
	if err != nil {
		log.Fatal(err)
	}
	st, err := c.Status(context.Background())
	if err != nil {
		log.Fatal(err) // with no daemon running: client.IsDaemonNotRunning(err)
	}
	fmt.Println("daemon API", st.APIVersion)
	// Output: daemon API v1
}

// Branch on the daemon's error codes.
func ExampleIsNotFound() {
	c, err := client.Default()
	if err != nil {
		log.Fatal(err)
	}
	_, err = c.InspectVM(context.Background(), "no-such-vm")
	fmt.Println("not found:", client.IsNotFound(err))
	var e *client.Error
	if errors.As(err, &e) {
		fmt.Println("code:", e.Code)
	}
	// Output:
	// not found: true
	// code: not_found
}

// List the VMs and the snapshots.
func ExampleClient_VMs() {
	c, err := client.Default()
	if err != nil {
		log.Fatal(err)
	}
	ctx := context.Background()
	vms, err := c.VMs(ctx)
	if err != nil {
		log.Fatal(err)
	}
	for _, vm := range vms {
		fmt.Println(vm.Name, vm.State, vm.Network.IP)
	}
	snaps, err := c.Snapshots(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%d VMs, %d snapshots\n", len(vms), len(snaps))
	// Output: 0 VMs, 0 snapshots
}

// Reach the daemon through a transport of your own: here the local socket, dialed by
// hand; a socket forwarded over SSH works the same way.
func ExampleWithDialer() {
	sock, err := client.DefaultSocket()
	if err != nil {
		log.Fatal(err)
	}
	c, err := client.New(client.WithTarget("unix:"+sock), client.WithDialer(func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}))
	if err != nil {
		log.Fatal(err)
	}
	st, err := c.Status(context.Background())
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("daemon API", st.APIVersion, "through", strings.HasPrefix(c.Target(), "unix:/"))
	// Output: daemon API v1 through true
}

// Boot a VM, run a command in it and remove it. (Not run by go test: it needs a host that
// boots VMs; test/e2e runs examples/sdk, which does the same.)
func ExampleClient_CreateVM() {
	c, err := client.Default()
	if err != nil {
		log.Fatal(err)
	}
	ctx := context.Background()
	vm, err := c.CreateVM(ctx, client.VMCreateRequest{Image: "debian-bookworm", Memory: "1G", Start: true},
		func(p client.Progress) { log.Printf("%s %s", p.Stage, p.Message) })
	if err != nil {
		log.Fatal(err)
	}
	defer c.RemoveVM(ctx, client.VMRemoveRequest{Name: vm.Name, Force: true})
	st, err := c.Exec(ctx, vm.Name, client.Command{Argv: []string{"uname", "-r"}, Stdout: os.Stdout, Stderr: os.Stderr})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("exit code", st.Code)
}

// Run a command with stdin, and capture its output and exit code.
func ExampleClient_Exec() {
	c, err := client.Default()
	if err != nil {
		log.Fatal(err)
	}
	var out, errOut bytes.Buffer
	st, err := c.Exec(context.Background(), "dev", client.Command{
		Argv:   []string{"sh", "-c", "tr a-z A-Z; echo done >&2; exit 3"},
		Stdin:  strings.NewReader("hello\n"),
		Stdout: &out,
		Stderr: &errOut,
	})
	if err != nil {
		log.Fatal(err) // the VM is not running, its agent does not answer, ...
	}
	fmt.Printf("stdout %q, stderr %q, exit code %d\n", out.String(), errOut.String(), st.Code)
	// stdout "HELLO\n", stderr "done\n", exit code 3
}

// Write a file into a VM and read it back.
func ExampleClient_WriteFile() {
	c, err := client.Default()
	if err != nil {
		log.Fatal(err)
	}
	ctx := context.Background()
	if err := c.WriteFile(ctx, "dev", "/root/notes.txt", []byte("remember the milk\n"), 0o644); err != nil {
		log.Fatal(err)
	}
	data, err := c.ReadFile(ctx, "dev", "/root/notes.txt")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Print(string(data))
}

// Copy a directory tree into a VM and a result back out (like banger vm cp -r).
func ExampleClient_CopyIn() {
	c, err := client.Default()
	if err != nil {
		log.Fatal(err)
	}
	ctx := context.Background()
	if err := c.CopyIn(ctx, "dev", []string{"./src"}, "/root/", client.CopyInOptions{Recursive: true}); err != nil {
		log.Fatal(err)
	}
	if err := c.CopyOut(ctx, "dev", "/root/src/report.txt", ".", client.CopyOutOptions{}); err != nil {
		log.Fatal(err)
	}
}

// Forward a host port to a port in the VM.
func ExampleClient_AddPorts() {
	c, err := client.Default()
	if err != nil {
		log.Fatal(err)
	}
	ports, err := c.AddPorts(context.Background(), "dev", "8080") // a free host port
	if err != nil {
		log.Fatal(err)
	}
	for _, p := range ports {
		fmt.Printf("%s:%d -> guest port %d\n", p.HostIP, p.HostPort, p.GuestPort)
	}
}

// Snapshot a running VM and start three clones of it.
func ExampleClient_Fork() {
	c, err := client.Default()
	if err != nil {
		log.Fatal(err)
	}
	ctx := context.Background()
	res, err := c.Fork(ctx, "dev", "dev-ready", []string{"agent-1", "agent-2", "agent-3"}, nil)
	var fe *client.ForkError
	if errors.As(err, &fe) {
		log.Printf("some clones failed: %v", fe)
	} else if err != nil {
		log.Fatal(err)
	}
	for _, vm := range res.VMs {
		fmt.Println("started", vm.Name, "from", res.Snapshot.Name)
	}
	// A new VM from the same snapshot later:
	if _, err := c.CreateVM(ctx, client.VMCreateRequest{Name: "agent-4", From: "dev-ready", Start: true}, nil); err != nil {
		log.Fatal(err)
	}
}
