package store

import (
	"context"
	"database/sql"
	"fmt"
	"time"
)

// migration is one step of the schema's history. Migrations are append-only:
// once released, a migration's SQL never changes (files in the field were
// built by it); a change is a new migration at the end.
type migration struct {
	version int
	name    string
	sql     string
}

// Conventions used by every table:
//   - STRICT tables: SQLite otherwise stores any type in any column ('12' in
//     an INTEGER column, an int in a TEXT one) and our Go scans would fail
//     late and far from the bug.
//   - Timestamps are INTEGER Unix nanoseconds, UTC: exact round trip of
//     time.Time (to the nanosecond), sortable, no time zone or format parsing.
//   - Optional text is NOT NULL DEFAULT ” rather than NULL, so Go code scans
//     into plain strings and "unset" has one representation.
//   - JSON columns are TEXT with CHECK(json_valid(...)), so a bad document is
//     rejected at write time instead of failing every later read.
//   - Identifiers and names must be non-empty (CHECK), as ” would be a
//     valid, unique, and useless key.
var migrations = []migration{
	{
		version: 1,
		name:    "images and vms",
		sql: `
CREATE TABLE images (
	id             TEXT    NOT NULL PRIMARY KEY CHECK (id <> ''),
	name           TEXT    NOT NULL UNIQUE CHECK (name <> ''),
	source         TEXT    NOT NULL DEFAULT '',
	digest         TEXT    NOT NULL DEFAULT '',
	rootfs_path    TEXT    NOT NULL DEFAULT '',
	work_seed_path TEXT    NOT NULL DEFAULT '',
	kernel_ref     TEXT    NOT NULL DEFAULT '',
	size_bytes     INTEGER NOT NULL DEFAULT 0 CHECK (size_bytes >= 0),
	created_at     INTEGER NOT NULL,
	updated_at     INTEGER NOT NULL,
	metadata       TEXT    NOT NULL DEFAULT '{}' CHECK (json_valid(metadata))
) STRICT;

-- state is CHECKed because every other part of banger switches on it; an
-- unknown value would be a bug to catch at write time. Adding a state later
-- means a table-rebuild migration (SQLite cannot ALTER a CHECK); that cost is
-- accepted. vmm is deliberately not CHECKed: a new driver must not need a
-- schema change.
--
-- image_id is ON DELETE RESTRICT: deleting an image a VM was built from
-- would leave the VM unbootable, so the delete is refused.
CREATE TABLE vms (
	id         TEXT    NOT NULL PRIMARY KEY CHECK (id <> ''),
	name       TEXT    NOT NULL UNIQUE CHECK (name <> ''),
	image_id   TEXT    NOT NULL REFERENCES images(id) ON DELETE RESTRICT ON UPDATE RESTRICT,
	state      TEXT    NOT NULL CHECK (state IN ('created', 'starting', 'running', 'stopping', 'stopped', 'error')),
	vmm        TEXT    NOT NULL DEFAULT '',
	spec       TEXT    NOT NULL DEFAULT '{}' CHECK (json_valid(spec)),
	created_at INTEGER NOT NULL,
	updated_at INTEGER NOT NULL
) STRICT;

-- Without an index on the child column every image delete (the RESTRICT
-- check) would scan all VMs.
CREATE INDEX vms_image_id ON vms(image_id);
`,
	},
	{
		version: 2,
		name:    "network leases",
		sql: `
-- One row per leased guest address. Each of ip, vm_id and mac is unique, so
-- two racing allocations cannot both succeed: the loser gets ErrConflict.
-- A lease belongs to its VM (ON DELETE CASCADE): deleting the VM frees its
-- address in the same transaction. ip and mac are stored in canonical form
-- (netip.Addr.String, lower-case net.HardwareAddr.String) so uniqueness means
-- what it should; the CHECK on mac guards the one form a typo would break.
-- The UNIQUE on vm_id also indexes the FK child column.
CREATE TABLE network_leases (
	ip        TEXT    NOT NULL PRIMARY KEY CHECK (ip <> ''),
	vm_id     TEXT    NOT NULL UNIQUE REFERENCES vms(id) ON DELETE CASCADE ON UPDATE RESTRICT,
	mac       TEXT    NOT NULL UNIQUE CHECK (mac <> '' AND mac = lower(mac)),
	leased_at INTEGER NOT NULL
) STRICT;
`,
	},
	{
		version: 3,
		name:    "lifecycle events",
		sql: `
-- Append-only log of operation stages and their timings.
-- AUTOINCREMENT (not just INTEGER PRIMARY KEY) guarantees ids are never
-- reused, even after old rows are pruned, so "events after id N" cursors
-- stay correct. subject is a VM or image id but has no FK: the history of a
-- deleted VM is still worth keeping.
CREATE TABLE lifecycle_events (
	id          INTEGER PRIMARY KEY AUTOINCREMENT,
	at          INTEGER NOT NULL,
	operation   TEXT    NOT NULL CHECK (operation <> ''),
	subject     TEXT    NOT NULL DEFAULT '',
	stage       TEXT    NOT NULL CHECK (stage <> ''),
	duration_ns INTEGER NOT NULL DEFAULT 0 CHECK (duration_ns >= 0),
	error       TEXT    NOT NULL DEFAULT ''
) STRICT;

-- "events of this VM, after cursor N" and "events of this operation, after
-- cursor N" are the two filtered reads; each is one index range scan.
CREATE INDEX lifecycle_events_subject ON lifecycle_events(subject, id);
CREATE INDEX lifecycle_events_operation ON lifecycle_events(operation, id);
`,
	},
	{
		version: 4,
		name:    "vm state crashed",
		sql: `
-- A VMM that ended without the guest shutting down was recorded as 'error';
-- it is now 'crashed', and 'error' means a VM banger cannot use as recorded
-- (a record that does not decode). SQLite cannot ALTER a CHECK, so vms is
-- rebuilt. network_leases references vms with ON DELETE CASCADE: dropping
-- vms under it would delete every lease, so it is rebuilt first against the
-- new table, and the renames below point its reference back at "vms".
CREATE TABLE vms_new (
	id         TEXT    NOT NULL PRIMARY KEY CHECK (id <> ''),
	name       TEXT    NOT NULL UNIQUE CHECK (name <> ''),
	image_id   TEXT    NOT NULL REFERENCES images(id) ON DELETE RESTRICT ON UPDATE RESTRICT,
	state      TEXT    NOT NULL CHECK (state IN ('created', 'starting', 'running', 'stopping', 'stopped', 'crashed', 'error')),
	vmm        TEXT    NOT NULL DEFAULT '',
	spec       TEXT    NOT NULL DEFAULT '{}' CHECK (json_valid(spec)),
	created_at INTEGER NOT NULL,
	updated_at INTEGER NOT NULL
) STRICT;
INSERT INTO vms_new(id, name, image_id, state, vmm, spec, created_at, updated_at)
	SELECT id, name, image_id, CASE state WHEN 'error' THEN 'crashed' ELSE state END, vmm, spec, created_at, updated_at FROM vms;
CREATE TABLE network_leases_new (
	ip        TEXT    NOT NULL PRIMARY KEY CHECK (ip <> ''),
	vm_id     TEXT    NOT NULL UNIQUE REFERENCES vms_new(id) ON DELETE CASCADE ON UPDATE RESTRICT,
	mac       TEXT    NOT NULL UNIQUE CHECK (mac <> '' AND mac = lower(mac)),
	leased_at INTEGER NOT NULL
) STRICT;
INSERT INTO network_leases_new(ip, vm_id, mac, leased_at) SELECT ip, vm_id, mac, leased_at FROM network_leases;
DROP TABLE network_leases;
DROP TABLE vms;
ALTER TABLE vms_new RENAME TO vms;
ALTER TABLE network_leases_new RENAME TO network_leases;
CREATE INDEX vms_image_id ON vms(image_id);
`,
	},
	{
		version: 5,
		name:    "vm state paused",
		sql: `
-- 'paused': the VM's whole state (RAM, devices) is saved in its directory and no VMM runs;
-- resuming brings its processes back. The rebuild is migration 4's, for the same reasons.
CREATE TABLE vms_new (
	id         TEXT    NOT NULL PRIMARY KEY CHECK (id <> ''),
	name       TEXT    NOT NULL UNIQUE CHECK (name <> ''),
	image_id   TEXT    NOT NULL REFERENCES images(id) ON DELETE RESTRICT ON UPDATE RESTRICT,
	state      TEXT    NOT NULL CHECK (state IN ('created', 'starting', 'running', 'stopping', 'stopped', 'paused', 'crashed', 'error')),
	vmm        TEXT    NOT NULL DEFAULT '',
	spec       TEXT    NOT NULL DEFAULT '{}' CHECK (json_valid(spec)),
	created_at INTEGER NOT NULL,
	updated_at INTEGER NOT NULL
) STRICT;
INSERT INTO vms_new(id, name, image_id, state, vmm, spec, created_at, updated_at)
	SELECT id, name, image_id, state, vmm, spec, created_at, updated_at FROM vms;
CREATE TABLE network_leases_new (
	ip        TEXT    NOT NULL PRIMARY KEY CHECK (ip <> ''),
	vm_id     TEXT    NOT NULL UNIQUE REFERENCES vms_new(id) ON DELETE CASCADE ON UPDATE RESTRICT,
	mac       TEXT    NOT NULL UNIQUE CHECK (mac <> '' AND mac = lower(mac)),
	leased_at INTEGER NOT NULL
) STRICT;
INSERT INTO network_leases_new(ip, vm_id, mac, leased_at) SELECT ip, vm_id, mac, leased_at FROM network_leases;
DROP TABLE network_leases;
DROP TABLE vms;
ALTER TABLE vms_new RENAME TO vms;
ALTER TABLE network_leases_new RENAME TO network_leases;
CREATE INDEX vms_image_id ON vms(image_id);
`,
	},
}

func latestVersion() int { return len(migrations) }

// migrate brings the file up to maxVersion, one transaction per migration,
// and refuses a file newer than maxVersion.
//
// Each migration re-reads the version inside its own BEGIN IMMEDIATE
// transaction, so two processes opening the same file at once cannot both
// apply a step: the second waits for the write lock, then sees it done.
func (s *Store) migrate(ctx context.Context, maxVersion int) error {
	for i, m := range migrations {
		if m.version != i+1 {
			// A programming error in this file; TestMigrationsOrdered
			// catches it before release.
			return fmt.Errorf("store: migration %q has version %d, want %d", m.name, m.version, i+1)
		}
	}

	err := s.writeTx(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `
CREATE TABLE IF NOT EXISTS schema_migrations (
	version    INTEGER NOT NULL PRIMARY KEY CHECK (version > 0),
	name       TEXT    NOT NULL,
	applied_at INTEGER NOT NULL
) STRICT`)
		return err
	})
	if err != nil {
		return fmt.Errorf("store: %s: create schema_migrations: %w", s.path, err)
	}

	for {
		done := false
		err := s.writeTx(ctx, func(tx *sql.Tx) error {
			cur, err := versionTx(ctx, tx)
			if err != nil {
				return err
			}
			if cur > maxVersion {
				return fmt.Errorf("%w: %s schema version %d is newer than this banger (max %d): "+
					"upgrade banger, or move the file aside to start with empty state",
					ErrSchemaTooNew, s.path, cur, maxVersion)
			}
			if cur == maxVersion {
				done = true
				return nil
			}
			if cur == 0 {
				if err := checkEmpty(ctx, tx); err != nil {
					return fmt.Errorf("store: %s: %w", s.path, err)
				}
			}
			m := migrations[cur] // version cur+1
			if _, err := tx.ExecContext(ctx, m.sql); err != nil {
				return fmt.Errorf("store: %s: migration %d (%s): %w", s.path, m.version, m.name, err)
			}
			if _, err := tx.ExecContext(ctx,
				`INSERT INTO schema_migrations(version, name, applied_at) VALUES (?, ?, ?)`,
				m.version, m.name, time.Now().UnixNano()); err != nil {
				return fmt.Errorf("store: %s: record migration %d: %w", s.path, m.version, err)
			}
			return nil
		})
		if err != nil {
			return err
		}
		if done {
			return nil
		}
	}
}

func versionTx(ctx context.Context, tx *sql.Tx) (int, error) {
	var v int
	if err := tx.QueryRowContext(ctx, `SELECT COALESCE(MAX(version), 0) FROM schema_migrations`).Scan(&v); err != nil {
		return 0, fmt.Errorf("store: read schema version: %w", err)
	}
	return v, nil
}

// checkEmpty refuses to migrate a file that holds tables but no migration
// history: it is some other program's database (a wrong path), and
// creating our tables in it would mix two programs' state.
func checkEmpty(ctx context.Context, tx *sql.Tx) error {
	var name string
	err := tx.QueryRowContext(ctx, `
SELECT name FROM sqlite_schema
WHERE type = 'table' AND name NOT IN ('schema_migrations') AND name NOT LIKE 'sqlite_%'
LIMIT 1`).Scan(&name)
	switch {
	case err == sql.ErrNoRows:
		return nil
	case err != nil:
		return err
	default:
		return fmt.Errorf("not a banger state database: it has table %q but no schema_migrations history", name)
	}
}
