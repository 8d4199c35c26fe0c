package client

import (
	"context"
	"io"
)

// VMs lists the VMs.
func (c *Client) VMs(ctx context.Context) ([]VM, error) { return c.api.VMs(ctx) }

// InspectVM returns one VM by name or ID; a missing one is a CodeNotFound error.
func (c *Client) InspectVM(ctx context.Context, name string) (VM, error) {
	return c.api.InspectVM(ctx, name)
}

// CreateVM creates a VM (its disks) and, with req.Start, boots it and waits until its
// agent answers (and its sshd, unless req.SkipSSHWait). With req.From it clones a
// snapshot. progress, if not nil, gets each finished stage. A failed create leaves nothing
// behind; cancelling ctx cancels it.
func (c *Client) CreateVM(ctx context.Context, req VMCreateRequest, progress func(Progress)) (VM, error) {
	return c.api.CreateVM(ctx, req, progress)
}

// StartVM boots a stopped (or paused) VM and waits until its agent answers.
func (c *Client) StartVM(ctx context.Context, name string, progress func(Progress)) (VM, error) {
	return c.api.StartVM(ctx, name, progress)
}

// StopVM shuts a VM down: the agent powers it off, then ACPI, then the VMM is killed once
// req.TimeoutSeconds (default 30) pass; req.Force kills it at once. Stopping a paused VM
// discards its saved state and needs Force.
func (c *Client) StopVM(ctx context.Context, req VMStopRequest) (VM, error) {
	return c.api.StopVM(ctx, req)
}

// RestartVM stops a VM (if running) and boots it again; disks and addresses are kept.
func (c *Client) RestartVM(ctx context.Context, req VMStopRequest, progress func(Progress)) (VM, error) {
	return c.api.RestartVM(ctx, req, progress)
}

// PauseVM saves a running VM's whole state (memory, processes) in its directory and ends
// its VMM; ResumeVM (or StartVM) brings it back as it was.
func (c *Client) PauseVM(ctx context.Context, name string, progress func(Progress)) (VM, error) {
	return c.api.PauseVM(ctx, name, progress)
}

// ResumeVM restores a paused VM with its processes as they were.
func (c *Client) ResumeVM(ctx context.Context, name string, progress func(Progress)) (VM, error) {
	return c.api.ResumeVM(ctx, name, progress)
}

// RemoveVM deletes a VM and its disks. A running VM is refused (CodeConflict) unless
// req.Force, which stops it first (and discards a paused VM's saved state).
func (c *Client) RemoveVM(ctx context.Context, req VMRemoveRequest) error {
	return c.api.RemoveVM(ctx, req)
}

// ResizeVM grows a VM's work disk (/root), offline or online, and returns the VM.
func (c *Client) ResizeVM(ctx context.Context, req VMResizeRequest) (VM, error) {
	return c.api.ResizeVM(ctx, req)
}

// VMHealth asks the VM's agent whether it is healthy; an unhealthy VM is not an error
// (VMHealth.Agent is false and Detail says why).
func (c *Client) VMHealth(ctx context.Context, name string) (VMHealth, error) {
	return c.api.VMHealth(ctx, name)
}

// VMLogs returns the VM's serial console log; with follow it keeps streaming until ctx
// ends or the VM stops. The caller closes the reader. The bytes are the guest's: strip
// terminal controls before showing them on a terminal.
func (c *Client) VMLogs(ctx context.Context, name string, follow bool) (io.ReadCloser, error) {
	return c.api.VMLogs(ctx, name, follow)
}

// Forward connects to TCP port on the VM's loopback through its agent (no guest network
// needed) and returns the connection.
func (c *Client) Forward(ctx context.Context, name string, port int) (io.ReadWriteCloser, error) {
	return c.api.Forward(ctx, name, port)
}

// ChangePorts adds and removes a VM's port forwards in one call and returns the VM (its
// Ports show the result). See AddPorts and RemovePorts.
func (c *Client) ChangePorts(ctx context.Context, req VMPortsRequest) (VM, error) {
	return c.api.ChangePorts(ctx, req)
}

// Ports lists a VM's port forwards.
func (c *Client) Ports(ctx context.Context, name string) ([]VMPort, error) {
	vm, err := c.api.InspectVM(ctx, name)
	return vm.Ports, err
}

// AddPorts adds port forwards to a VM, each [HOSTIP:]HOSTPORT:GUESTPORT[/tcp] or GUESTPORT
// (a free host port is picked and kept); they listen on 127.0.0.1 unless HOSTIP says
// otherwise, while the VM runs. It returns all the VM's forwards.
func (c *Client) AddPorts(ctx context.Context, name string, specs ...string) ([]VMPort, error) {
	vm, err := c.api.ChangePorts(ctx, VMPortsRequest{Name: name, Add: specs})
	return vm.Ports, err
}

// RemovePorts removes port forwards from a VM, each named by its host side (HOSTPORT or
// HOSTIP:HOSTPORT). It returns the forwards left.
func (c *Client) RemovePorts(ctx context.Context, name string, hostPorts ...string) ([]VMPort, error) {
	vm, err := c.api.ChangePorts(ctx, VMPortsRequest{Name: name, Remove: hostPorts})
	return vm.Ports, err
}
