package store

import (
	"context"
	"database/sql"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// openTest opens a fresh store in a temp dir and closes it at test end.
func openTest(t testing.TB) *Store {
	t.Helper()
	s, err := Open(context.Background(), filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

func TestOpenFresh(t *testing.T) {
	ctx := context.Background()
	s := openTest(t)

	v, err := s.SchemaVersion(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if v != latestVersion() {
		t.Fatalf("SchemaVersion = %d, want %d", v, latestVersion())
	}
	if filepath.Base(s.Path()) != "state.db" {
		t.Fatalf("Path = %q", s.Path())
	}

	// Make sure the WAL and shared-memory files exist (a write creates them),
	// then check every file SQLite made is owner-only.
	if _, err := s.AppendEvent(ctx, Event{Operation: "test", Stage: "mode"}); err != nil {
		t.Fatal(err)
	}
	for _, suffix := range []string{"", "-wal", "-shm"} {
		fi, err := os.Stat(s.Path() + suffix)
		if err != nil {
			t.Fatal(err)
		}
		if got := fi.Mode().Perm(); got != 0o600 {
			t.Errorf("mode of state.db%s = %v, want 0600", suffix, got)
		}
	}

	// Hold several reader connections at once so the pool really has to
	// open distinct connections, then check the pragmas on each, and on
	// the writer.
	want := map[string]string{
		"journal_mode": "wal",
		"foreign_keys": "1",
		"synchronous":  "2", // FULL
		"busy_timeout": "10000",
	}
	check := func(name string, c *sql.Conn, queryOnly string) {
		t.Helper()
		for pragma, w := range want {
			var got string
			if err := c.QueryRowContext(ctx, "PRAGMA "+pragma).Scan(&got); err != nil {
				t.Fatalf("%s: PRAGMA %s: %v", name, pragma, err)
			}
			if !strings.EqualFold(got, w) {
				t.Errorf("%s: PRAGMA %s = %q, want %q", name, pragma, got, w)
			}
		}
		var qo string
		if err := c.QueryRowContext(ctx, "PRAGMA query_only").Scan(&qo); err != nil {
			t.Fatal(err)
		}
		if qo != queryOnly {
			t.Errorf("%s: query_only = %s, want %s", name, qo, queryOnly)
		}
	}
	var conns []*sql.Conn
	for i := 0; i < 4; i++ {
		c, err := s.r.Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
		check("reader", c, "1")
	}
	if n := s.r.Stats().OpenConnections; n < 4 {
		t.Fatalf("only %d reader connections open", n)
	}
	for _, c := range conns {
		c.Close()
	}
	wc, err := s.w.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	check("writer", wc, "0")
	wc.Close()

	// A reader connection must not be able to write.
	if _, err := s.r.ExecContext(ctx, `DELETE FROM lifecycle_events`); err == nil {
		t.Fatal("write through a reader connection succeeded")
	}
	if err := s.Integrity(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestReopenKeepsData(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "state.db")
	s, err := Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	id, err := s.AppendEvent(ctx, Event{Operation: "op", Stage: "st"})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err = Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	evs, err := s.ListEvents(ctx, EventFilter{})
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != 1 || evs[0].ID != id {
		t.Fatalf("events after reopen = %+v", evs)
	}
}

func TestOpenErrors(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()

	// Open does not create directories.
	if _, err := Open(ctx, filepath.Join(dir, "missing", "state.db")); err == nil {
		t.Fatal("Open in a missing directory succeeded")
	}

	// A file that is not SQLite at all.
	junk := filepath.Join(dir, "junk.db")
	if err := os.WriteFile(junk, []byte(strings.Repeat("not a database ", 100)), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(ctx, junk); err == nil {
		t.Fatal("Open of a non-SQLite file succeeded")
	}

	// Another program's SQLite database: refused, and left untouched.
	other := filepath.Join(dir, "other.db")
	db, err := sql.Open("sqlite", other)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`CREATE TABLE notes(x TEXT)`); err != nil {
		t.Fatal(err)
	}
	db.Close()
	_, err = Open(ctx, other)
	if err == nil || !strings.Contains(err.Error(), "not a banger state database") {
		t.Fatalf("Open of a foreign database: err = %v", err)
	}
	db, _ = sql.Open("sqlite", other)
	defer db.Close()
	var n int
	if err := db.QueryRow(`SELECT count(*) FROM sqlite_schema WHERE name = 'images'`).Scan(&n); err != nil || n != 0 {
		t.Fatalf("foreign database was modified: n=%d err=%v", n, err)
	}
}

func TestPathWithURICharacters(t *testing.T) {
	// '?' and '#' would be read as URI syntax if the path were not escaped.
	dir := filepath.Join(t.TempDir(), "we?ird #dir%20")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "state.db")
	s, err := Open(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("database not at the given path: %v", err)
	}
}

func TestIntegrity(t *testing.T) {
	ctx := context.Background()
	s := openTest(t)
	if err := s.Integrity(ctx); err != nil {
		t.Fatalf("fresh db: %v", err)
	}

	// Break referential integrity the way a user with the sqlite3 shell
	// could (foreign_keys is off by default there), and check that
	// Integrity reports it.
	raw, err := sql.Open("sqlite", s.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	if _, err := raw.Exec(`INSERT INTO vms(id, name, image_id, state, created_at, updated_at)
		VALUES ('vm1', 'orphan', 'no-such-image', 'created', 0, 0)`); err != nil {
		t.Fatal(err)
	}
	err = s.Integrity(ctx)
	if err == nil || !strings.Contains(err.Error(), "vms") {
		t.Fatalf("Integrity with an orphan vm = %v", err)
	}
}

func TestCloseThenUse(t *testing.T) {
	ctx := context.Background()
	s, err := Open(ctx, filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.AppendEvent(ctx, Event{Operation: "a", Stage: "b"}); err == nil {
		t.Fatal("AppendEvent after Close succeeded")
	}
	if _, err := s.GetVM(ctx, "x"); err == nil || errors.Is(err, ErrNotFound) {
		t.Fatalf("GetVM after Close = %v", err)
	}
}
