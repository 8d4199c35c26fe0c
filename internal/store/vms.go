package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"time"
)

// VMState is a VM's lifecycle state. The set is enforced by a CHECK
// constraint in the schema; a value outside it is ErrInvalid.
type VMState string

// The states the vms.state CHECK constraint admits.
const (
	VMCreated  VMState = "created"
	VMStarting VMState = "starting"
	VMRunning  VMState = "running"
	VMStopping VMState = "stopping"
	VMStopped  VMState = "stopped"
	// VMPaused: the VM's whole state is saved in its directory; no VMM runs.
	VMPaused VMState = "paused"
	// VMCrashed: the VMM ended without the guest shutting down.
	VMCrashed VMState = "crashed"
	// VMError: banger cannot use the VM as recorded (its record does not decode).
	VMError VMState = "error"
)

// VMStates lists every state, in lifecycle order.
func VMStates() []VMState {
	return []VMState{VMCreated, VMStarting, VMRunning, VMStopping, VMStopped, VMPaused, VMCrashed, VMError}
}

// VM is a row of the vms table.
type VM struct {
	ID        string
	Name      string // unique
	ImageID   string // must name an existing image
	State     VMState
	VMM       string          // driver that runs it: "firecracker", "qemu"
	Spec      json.RawMessage // the VM's configuration as JSON; empty means {}
	CreatedAt time.Time       // zero: now; kept unchanged when PutVM updates
	UpdatedAt time.Time       // zero: now
}

// PutVM inserts vm, or updates the VM with the same ID. A Name used by
// another VM is ErrConflict; an ImageID naming no image is ErrNotFound; a
// State outside VMStates is ErrInvalid. Like PutImage it is an upsert, not a
// REPLACE, which would delete the row and cascade-delete its lease.
func (s *Store) PutVM(ctx context.Context, vm VM) error {
	spec, err := jsonDoc(vm.Spec, "spec")
	if err != nil {
		return fmt.Errorf("store: put vm %q: %w", vm.ID, err)
	}
	err = s.writeTx(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `
INSERT INTO vms(id, name, image_id, state, vmm, spec, created_at, updated_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT(id) DO UPDATE SET
	name = excluded.name, image_id = excluded.image_id, state = excluded.state,
	vmm = excluded.vmm, spec = excluded.spec, updated_at = excluded.updated_at`,
			vm.ID, vm.Name, vm.ImageID, string(vm.State), vm.VMM, spec,
			nowIfZero(vm.CreatedAt).UnixNano(), nowIfZero(vm.UpdatedAt).UnixNano())
		return err
	})
	return mapErr(err, fmt.Sprintf("put vm %q", vm.ID), ErrNotFound)
}

// SetVMState changes only the state (and updated_at) of a VM, so concurrent
// updates of other fields are not overwritten by a stale copy.
func (s *Store) SetVMState(ctx context.Context, id string, state VMState) error {
	err := s.writeTx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `UPDATE vms SET state = ?, updated_at = ? WHERE id = ?`,
			string(state), time.Now().UnixNano(), id)
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil {
			return err
		} else if n == 0 {
			return ErrNotFound
		}
		return nil
	})
	return mapErr(err, fmt.Sprintf("set vm %q state", id), ErrNotFound)
}

const vmCols = `id, name, image_id, state, vmm, spec, created_at, updated_at`

func scanVM(sc scanner) (VM, error) {
	var vm VM
	var state, spec string
	var created, updated int64
	err := sc.Scan(&vm.ID, &vm.Name, &vm.ImageID, &state, &vm.VMM, &spec, &created, &updated)
	vm.State, vm.Spec = VMState(state), json.RawMessage(spec)
	vm.CreatedAt, vm.UpdatedAt = fromNanos(created), fromNanos(updated)
	return vm, err
}

// GetVM returns the VM with the given id, or ErrNotFound.
func (s *Store) GetVM(ctx context.Context, id string) (VM, error) {
	vm, err := scanVM(s.r.QueryRowContext(ctx, `SELECT `+vmCols+` FROM vms WHERE id = ?`, id))
	return vm, getErr(err, "vm", id)
}

// GetVMByName returns the VM with the given name, or ErrNotFound.
func (s *Store) GetVMByName(ctx context.Context, name string) (VM, error) {
	vm, err := scanVM(s.r.QueryRowContext(ctx, `SELECT `+vmCols+` FROM vms WHERE name = ?`, name))
	return vm, getErr(err, "vm named", name)
}

// ListVMs returns all VMs ordered by name.
func (s *Store) ListVMs(ctx context.Context) ([]VM, error) {
	return queryAll(ctx, s.r, "list vms", scanVM, `SELECT `+vmCols+` FROM vms ORDER BY name`)
}

// DeleteVM deletes the VM with the given id, and its network lease with it
// (ON DELETE CASCADE), in one transaction. It is ErrNotFound if there is none.
func (s *Store) DeleteVM(ctx context.Context, id string) error {
	return s.deleteRow(ctx, `DELETE FROM vms WHERE id = ?`, "vm", id)
}
