package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

func TestMigrationsOrdered(t *testing.T) {
	names := map[string]bool{}
	for i, m := range migrations {
		if m.version != i+1 {
			t.Errorf("migrations[%d].version = %d, want %d", i, m.version, i+1)
		}
		if m.name == "" || names[m.name] {
			t.Errorf("migration %d: empty or duplicate name %q", m.version, m.name)
		}
		names[m.name] = true
		if strings.TrimSpace(m.sql) == "" {
			t.Errorf("migration %d: empty SQL", m.version)
		}
	}
	if latestVersion() != 5 {
		t.Errorf("latestVersion = %d; update the seeders in this file when adding a migration", latestVersion())
	}
}

// seeders[v] inserts rows that are valid at schema version v, with raw SQL
// as that version's banger would have written them (the typed API targets
// only the latest schema). Every migration needs one: TestUpgrade... fails
// otherwise, so each new migration comes with upgrade coverage.
var seeders = map[int]func(ctx context.Context, tx *sql.Tx) error{
	1: func(ctx context.Context, tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `
INSERT INTO images(id, name, source, rootfs_path, size_bytes, created_at, updated_at, metadata)
VALUES ('img-old', 'bookworm', 'debian:bookworm', '/var/images/bookworm.ext4', 1234, 1000, 2000, '{"arch":"amd64"}');
INSERT INTO vms(id, name, image_id, state, vmm, spec, created_at, updated_at)
VALUES ('vm-old', 'dev', 'img-old', 'stopped', 'qemu', '{"vcpus":2}', 3000, 4000),
       ('vm-crash', 'gone', 'img-old', 'error', 'qemu', '{}', 3000, 4000);`)
		return err
	},
	2: func(ctx context.Context, tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `
INSERT INTO network_leases(ip, vm_id, mac, leased_at) VALUES ('172.16.0.2', 'vm-old', '02:fc:00:00:00:02', 5000);`)
		return err
	},
	3: func(ctx context.Context, tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `
INSERT INTO lifecycle_events(at, operation, subject, stage, duration_ns) VALUES (6000, 'vm.start', 'vm-old', 'boot', 42);`)
		return err
	},
	4: func(ctx context.Context, tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `
INSERT INTO vms(id, name, image_id, state, vmm, spec, created_at, updated_at)
VALUES ('vm-v4', 'crashed-v4', 'img-old', 'crashed', 'qemu', '{}', 3000, 4000);`)
		return err
	},
	5: func(ctx context.Context, tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `
INSERT INTO vms(id, name, image_id, state, vmm, spec, created_at, updated_at)
VALUES ('vm-v5', 'paused-v5', 'img-old', 'paused', 'qemu', '{}', 3000, 4000);`)
		return err
	},
}

// schemaSQL returns the schema as SQLite records it, for comparing an
// upgraded file with a fresh one.
func schemaSQL(t *testing.T, s *Store) string {
	t.Helper()
	rows, err := s.r.Query(`SELECT type, name, COALESCE(sql, '') FROM sqlite_schema ORDER BY type, name`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var b strings.Builder
	for rows.Next() {
		var typ, name, q string
		if err := rows.Scan(&typ, &name, &q); err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&b, "%s %s: %s\n", typ, name, q)
	}
	return b.String()
}

func TestUpgradeFromEveryVersion(t *testing.T) {
	ctx := context.Background()
	fresh := openTest(t)
	wantSchema := schemaSQL(t, fresh)

	for k := 0; k < latestVersion(); k++ {
		t.Run(fmt.Sprintf("from_v%d", k), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "state.db")
			old, err := openAt(ctx, path, k)
			if err != nil {
				t.Fatalf("openAt(%d): %v", k, err)
			}
			if v, _ := old.SchemaVersion(ctx); v != k {
				t.Fatalf("old store at version %d, want %d", v, k)
			}
			for v := 1; v <= k; v++ {
				seed, ok := seeders[v]
				if !ok {
					t.Fatalf("no seeder for version %d", v)
				}
				if err := old.writeTx(ctx, func(tx *sql.Tx) error { return seed(ctx, tx) }); err != nil {
					t.Fatalf("seed v%d: %v", v, err)
				}
			}
			if err := old.Close(); err != nil {
				t.Fatal(err)
			}

			s, err := Open(ctx, path)
			if err != nil {
				t.Fatalf("Open after v%d: %v", k, err)
			}
			defer s.Close()
			if v, _ := s.SchemaVersion(ctx); v != latestVersion() {
				t.Fatalf("upgraded to %d, want %d", v, latestVersion())
			}
			if got := schemaSQL(t, s); got != wantSchema {
				t.Fatalf("schema after upgrade from v%d differs from a fresh one:\n%s\nwant:\n%s", k, got, wantSchema)
			}
			var n int
			if err := s.r.QueryRow(`SELECT count(*) FROM schema_migrations`).Scan(&n); err != nil || n != latestVersion() {
				t.Fatalf("schema_migrations rows = %d (%v)", n, err)
			}
			if err := s.Integrity(ctx); err != nil {
				t.Fatal(err)
			}

			if k < 1 {
				return // nothing old to check
			}
			// v1 data intact and readable by the current code.
			img, err := s.GetImageByName(ctx, "bookworm")
			if err != nil {
				t.Fatal(err)
			}
			if img.ID != "img-old" || img.SizeBytes != 1234 || img.CreatedAt.UnixNano() != 1000 ||
				img.UpdatedAt.UnixNano() != 2000 || string(img.Metadata) != `{"arch":"amd64"}` {
				t.Fatalf("old image = %+v", img)
			}
			vm, err := s.GetVM(ctx, "vm-old")
			if err != nil {
				t.Fatal(err)
			}
			if vm.Name != "dev" || vm.ImageID != "img-old" || vm.State != VMStopped || string(vm.Spec) != `{"vcpus":2}` {
				t.Fatalf("old vm = %+v", vm)
			}

			// A crash recorded as 'error' before v4 reads as crashed.
			// (Seeded into v4 or later, 'error' is written as today's 'error'.)
			if crashed, err := s.GetVM(ctx, "vm-crash"); err != nil || (k < 4) != (crashed.State == VMCrashed) {
				t.Fatalf("old crashed vm = %+v, %v", crashed, err)
			}

			if k >= 5 {
				if p, err := s.GetVM(ctx, "vm-v5"); err != nil || p.State != VMPaused {
					t.Fatalf("paused vm = %+v, %v", p, err)
				}
			}

			// The old VM works with tables newer than it.
			oldIP := netip.MustParseAddr("172.16.0.2")
			if k < 2 {
				if err := s.PutLease(ctx, Lease{IP: oldIP, VMID: "vm-old", MAC: mustMAC(t, "02:fc:00:00:00:02")}); err != nil {
					t.Fatal(err)
				}
			}
			l, err := s.GetLeaseByVM(ctx, "vm-old")
			if err != nil || l.IP != oldIP || l.MAC.String() != "02:fc:00:00:00:02" {
				t.Fatalf("lease of old vm = %+v, %v", l, err)
			}
			if _, err := s.AppendEvent(ctx, Event{Operation: "vm.start", Subject: "vm-old", Stage: "boot"}); err != nil {
				t.Fatal(err)
			}
			evs, err := s.ListEvents(ctx, EventFilter{Subject: "vm-old"})
			if err != nil || len(evs) == 0 {
				t.Fatalf("events of old vm = %v, %v", evs, err)
			}
			// FKs and cascades created by later migrations apply to old rows.
			if err := s.DeleteImage(ctx, "img-old"); !errors.Is(err, ErrInUse) {
				t.Fatalf("delete old image in use = %v, want ErrInUse", err)
			}
			if err := s.DeleteVM(ctx, "vm-old"); err != nil {
				t.Fatal(err)
			}
			if _, err := s.GetLease(ctx, oldIP); !errors.Is(err, ErrNotFound) {
				t.Fatalf("lease after deleting old vm = %v, want ErrNotFound", err)
			}
		})
	}
}

func TestUpgradeFromEmptyFile(t *testing.T) {
	// A zero-length file (e.g. created by a crashed first start before
	// SQLite wrote anything) is a valid empty database.
	path := filepath.Join(t.TempDir(), "state.db")
	if err := writeFile(path, nil); err != nil {
		t.Fatal(err)
	}
	s, err := Open(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if v, _ := s.SchemaVersion(context.Background()); v != latestVersion() {
		t.Fatalf("version %d", v)
	}
}

func TestNewerSchemaRefused(t *testing.T) {
	ctx := context.Background()

	t.Run("older_code", func(t *testing.T) {
		// A file migrated by this code, opened by a banger that only knows
		// versions up to latest-1.
		path := filepath.Join(t.TempDir(), "state.db")
		s, err := Open(ctx, path)
		if err != nil {
			t.Fatal(err)
		}
		s.Close()
		_, err = openAt(ctx, path, latestVersion()-1)
		if !errors.Is(err, ErrSchemaTooNew) {
			t.Fatalf("err = %v, want ErrSchemaTooNew", err)
		}
		want := fmt.Sprintf("schema version %d is newer than this banger (max %d): upgrade banger",
			latestVersion(), latestVersion()-1)
		if !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), path) {
			t.Fatalf("error %q does not contain %q and the path", err, want)
		}
	})

	t.Run("future_version", func(t *testing.T) {
		// A file from a future banger with a migration this code lacks.
		path := filepath.Join(t.TempDir(), "state.db")
		s, err := Open(ctx, path)
		if err != nil {
			t.Fatal(err)
		}
		future := latestVersion() + 1
		if _, err := s.w.Exec(`INSERT INTO schema_migrations(version, name, applied_at) VALUES (?, 'from the future', 0)`, future); err != nil {
			t.Fatal(err)
		}
		s.Close()
		_, err = Open(ctx, path)
		want := fmt.Sprintf("%s schema version %d is newer than this banger (max %d): upgrade banger", path, future, latestVersion())
		if !errors.Is(err, ErrSchemaTooNew) || !strings.Contains(err.Error(), want) {
			t.Fatalf("err = %v, want ErrSchemaTooNew containing %q", err, want)
		}
	})
}

func TestConcurrentFirstOpen(t *testing.T) {
	// Several processes (here: Stores, each with its own connections, which
	// is the same to SQLite) opening a new file at once must apply each
	// migration exactly once.
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "state.db")
	const n = 6
	var wg sync.WaitGroup
	stores := make([]*Store, n)
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			stores[i], errs[i] = Open(ctx, path)
		}()
	}
	wg.Wait()
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("Open %d: %v", i, errs[i])
		}
		defer stores[i].Close()
	}
	var rows int
	if err := stores[0].r.QueryRow(`SELECT count(*) FROM schema_migrations`).Scan(&rows); err != nil {
		t.Fatal(err)
	}
	if rows != latestVersion() {
		t.Fatalf("schema_migrations has %d rows, want %d", rows, latestVersion())
	}
}
