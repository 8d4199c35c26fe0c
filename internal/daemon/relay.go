package daemon

// Interactive streams between the CLI and a guest: exec (stdin, terminal, signals) and TCP
// forwards (sshd). The CLI cannot reach a virtio-serial agent itself (one connection owns
// the port), so the daemon opens the stream to the agent and relays bytes unchanged: the
// CLI speaks the agent's own frame protocol end to end.

import (
	"context"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/banger-vm/banger/internal/agent"
	"github.com/banger-vm/banger/internal/api"
	"github.com/banger-vm/banger/internal/store"
	"github.com/banger-vm/banger/internal/vmm"
)

// runningMachine finds a running VM's machine or says how to start it.
func (d *Daemon) runningMachine(ctx context.Context, name string) (store.VM, vmm.Machine, error) {
	vm, err := d.vmLookup(ctx, name)
	if err != nil {
		return vm, nil, err
	}
	m := d.machine(vm.ID)
	if m == nil {
		return vm, nil, api.Errorf(api.CodeConflict, "start it with `banger vm start "+vm.Name+"`", "VM %q is not running", vm.Name)
	}
	return vm, m, nil
}

// handleVMExec starts a command in the guest and relays its exec stream.
func (d *Daemon) handleVMExec(w http.ResponseWriter, r *http.Request) error {
	if !agent.IsUpgrade(r, agent.ExecUpgradeProtocol) {
		return api.Errorf(api.CodeBadRequest, "send Connection: Upgrade and Upgrade: "+agent.ExecUpgradeProtocol+" (the CLI does)", "exec needs an upgraded connection")
	}
	var req api.VMExecRequest
	if err := decodeBody(r, &req); err != nil {
		return err
	}
	if len(req.Argv) == 0 {
		return api.Errorf(api.CodeBadRequest, "banger vm exec NAME -- CMD [ARGS...]", "no command given")
	}
	vm, m, err := d.runningMachine(r.Context(), req.Name)
	if err != nil {
		return err
	}
	guest, err := m.Agent().ExecConn(r.Context(), agent.ExecRequest{Argv: req.Argv, Env: req.Env, Cwd: req.Cwd, TTY: req.TTY, Rows: req.Rows, Cols: req.Cols})
	if err != nil {
		if agent.ErrorCode(err) == agent.CodeBadRequest {
			return api.Errorf(api.CodeBadRequest, "", "exec in %q: %v", vm.Name, err)
		}
		return api.Errorf(api.CodeUnavailable, "check `banger vm health "+vm.Name+"`", "exec in %q: %v", vm.Name, err)
	}
	return d.relay(w, agent.ExecUpgradeProtocol, guest)
}

// handleVMForward connects to a TCP port on the guest's loopback and relays it.
func (d *Daemon) handleVMForward(w http.ResponseWriter, r *http.Request) error {
	if !agent.IsUpgrade(r, agent.ForwardUpgradeProtocol) {
		return api.Errorf(api.CodeBadRequest, "send Connection: Upgrade and Upgrade: "+agent.ForwardUpgradeProtocol+" (the CLI does)", "forward needs an upgraded connection")
	}
	q := r.URL.Query()
	port, err := strconv.Atoi(q.Get("port"))
	if err != nil || port < 1 || port > 65535 {
		return api.Errorf(api.CodeBadRequest, "pass a TCP port 1-65535", "invalid port %q", q.Get("port"))
	}
	vm, m, err := d.runningMachine(r.Context(), q.Get("name"))
	if err != nil {
		return err
	}
	guest, err := m.Agent().Forward(r.Context(), port)
	if err != nil {
		hint := "check `banger vm health " + vm.Name + "`"
		if agent.ErrorCode(err) == agent.CodeUnreachable {
			hint = "nothing listens on that port in the guest (is the service running? `banger vm exec " + vm.Name + " -- ss -ltn`)"
		}
		return api.Errorf(api.CodeUnavailable, hint, "forward to port %d of %q: %v", port, vm.Name, err)
	}
	return d.relay(w, agent.ForwardUpgradeProtocol, guest)
}

// relay switches the client's connection to protocol and copies bytes both ways until
// either side ends; then both are closed (for an exec, the agent kills a process whose
// client hung up).
func (d *Daemon) relay(w http.ResponseWriter, protocol string, guest io.ReadWriteCloser) error {
	defer guest.Close()
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return api.Errorf(api.CodeInternal, "", "cannot take over the connection: %v", err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Time{})
	if _, err := brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: " + protocol + "\r\n\r\n"); err != nil {
		return nil
	}
	if err := brw.Flush(); err != nil {
		return nil
	}
	done := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(guest, brw.Reader); done <- struct{}{} }()
	go func() { _, _ = io.Copy(conn, guest); done <- struct{}{} }()
	<-done
	_ = conn.Close()
	_ = guest.Close()
	<-done
	return nil
}
