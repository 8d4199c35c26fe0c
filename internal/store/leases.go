package store

import (
	"context"
	"database/sql"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"time"
)

// Lease is a row of network_leases: a guest IP and MAC held by one VM.
type Lease struct {
	IP       netip.Addr
	VMID     string
	MAC      net.HardwareAddr
	LeasedAt time.Time // zero: now
}

// PutLease records a new lease. Unlike PutImage and PutVM it never updates:
// an IP, VM or MAC that already has a lease is ErrConflict. That is what lets
// an allocator pick a free address optimistically and rely on the database to
// settle races. A VMID naming no VM is ErrNotFound. To move a lease, delete
// it first.
func (s *Store) PutLease(ctx context.Context, l Lease) error {
	if !l.IP.IsValid() || len(l.MAC) == 0 {
		return fmt.Errorf("store: put lease: %w: IP and MAC are required", ErrInvalid)
	}
	// Canonical text forms, so "10.0.0.2" and "::ffff:10.0.0.2", or upper-
	// and lower-case MACs, cannot be two different keys for one address.
	ip, mac := l.IP.Unmap().String(), l.MAC.String()
	err := s.writeTx(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx,
			`INSERT INTO network_leases(ip, vm_id, mac, leased_at) VALUES (?, ?, ?, ?)`,
			ip, l.VMID, mac, nowIfZero(l.LeasedAt).UnixNano())
		return err
	})
	return mapErr(err, fmt.Sprintf("put lease %s for vm %q", ip, l.VMID), ErrNotFound)
}

const leaseCols = `ip, vm_id, mac, leased_at`

func scanLease(sc scanner) (Lease, error) {
	var l Lease
	var ip, mac string
	var at int64
	if err := sc.Scan(&ip, &l.VMID, &mac, &at); err != nil {
		return l, err
	}
	var err error
	if l.IP, err = netip.ParseAddr(ip); err != nil {
		return l, fmt.Errorf("bad ip in database: %w", err)
	}
	if l.MAC, err = net.ParseMAC(mac); err != nil {
		return l, fmt.Errorf("bad mac in database: %w", err)
	}
	l.LeasedAt = fromNanos(at)
	return l, nil
}

// GetLease returns the lease of ip, or ErrNotFound.
func (s *Store) GetLease(ctx context.Context, ip netip.Addr) (Lease, error) {
	key := ip.Unmap().String()
	l, err := scanLease(s.r.QueryRowContext(ctx, `SELECT `+leaseCols+` FROM network_leases WHERE ip = ?`, key))
	return l, getErr(err, "lease", key)
}

// GetLeaseByVM returns the lease held by the VM, or ErrNotFound.
func (s *Store) GetLeaseByVM(ctx context.Context, vmID string) (Lease, error) {
	l, err := scanLease(s.r.QueryRowContext(ctx, `SELECT `+leaseCols+` FROM network_leases WHERE vm_id = ?`, vmID))
	return l, getErr(err, "lease of vm", vmID)
}

// ListLeases returns all leases in address order (numeric, not textual:
// 10.0.0.2 before 10.0.0.10).
func (s *Store) ListLeases(ctx context.Context) ([]Lease, error) {
	out, err := queryAll(ctx, s.r, "list leases", scanLease, `SELECT `+leaseCols+` FROM network_leases`)
	if err != nil {
		return nil, err
	}
	slices.SortFunc(out, func(a, b Lease) int { return a.IP.Compare(b.IP) })
	return out, nil
}

// DeleteLease releases ip. It is ErrNotFound if ip is not leased.
func (s *Store) DeleteLease(ctx context.Context, ip netip.Addr) error {
	return s.deleteRow(ctx, `DELETE FROM network_leases WHERE ip = ?`, "lease", ip.Unmap().String())
}
