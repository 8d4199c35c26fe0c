// Package store is the owner daemon's durable state: one SQLite file
// (state.db) holding images, VMs, network leases and lifecycle events.
//
// It uses modernc.org/sqlite, a pure Go driver, so the banger binary stays
// static. Everything here takes a context and keeps no package-level mutable
// state: a *Store is the only handle, and two Stores on two files are
// independent.
//
// Concurrency model: SQLite allows one writer at a time per file. Rather than
// letting many pooled connections race for the write lock (and see
// SQLITE_BUSY, or deadlock when two deferred transactions both try to upgrade
// from read to write), all writes go through a dedicated *sql.DB limited to a
// single connection, so writers queue in database/sql, in Go, honouring their
// contexts. Reads use a separate pool of query_only connections; in WAL mode
// they never block the writer and the writer never blocks them.
package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"runtime"
	"strings"

	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"
)

// Errors callers can test for with errors.Is. The returned errors wrap these
// and keep SQLite's message for logs.
var (
	// ErrNotFound: the row asked for does not exist, or a row being written
	// refers to a row (image, VM) that does not exist.
	ErrNotFound = errors.New("not found")
	// ErrConflict: a UNIQUE or PRIMARY KEY constraint rejected the write
	// (a name, IP, MAC or VM already taken).
	ErrConflict = errors.New("conflict")
	// ErrInUse: a delete was refused because other rows still refer to the
	// row (an image used by a VM).
	ErrInUse = errors.New("in use")
	// ErrInvalid: a CHECK or NOT NULL constraint, or validation done here
	// before reaching SQLite, rejected a value.
	ErrInvalid = errors.New("invalid")
	// ErrSchemaTooNew: the file was migrated by a newer banger. Opening it
	// with older code could silently misread or corrupt state, so Open refuses.
	ErrSchemaTooNew = errors.New("schema too new")
)

// busyTimeoutMS bounds how long a connection waits for a lock held by
// another connection (another process, or the writer while a reader needs
// to checkpoint) before failing with SQLITE_BUSY. Within this process writes
// are already serialized in Go, so this only matters across processes
// (e.g. `sqlite3 state.db` open in a shell, or a doctor run).
const busyTimeoutMS = 10000

// Store is an open state database. It is safe for concurrent use.
type Store struct {
	path string
	// w is the only connection that writes; MaxOpenConns(1) makes
	// database/sql queue writers in Go instead of in SQLite's lock.
	w *sql.DB
	// r is a pool of read-only connections.
	r *sql.DB
}

// Open opens (creating if needed, mode 0600) the state database at path and
// migrates it to the latest schema this code knows. The parent directory
// must already exist: choosing and creating directories is the caller's job.
func Open(ctx context.Context, path string) (*Store, error) {
	return openAt(ctx, path, latestVersion())
}

// openAt is Open with the schema migrated only up to maxVersion, and with
// maxVersion treated as the newest version this code knows. Tests use it to
// build databases exactly as an older banger left them, and to play an older
// banger opening a newer file.
func openAt(ctx context.Context, path string, maxVersion int) (*Store, error) {
	if path == "" {
		return nil, fmt.Errorf("store: empty path")
	}
	if maxVersion < 0 || maxVersion > latestVersion() {
		return nil, fmt.Errorf("store: version %d out of range 0..%d", maxVersion, latestVersion())
	}
	// SQLite would create a missing file with mode 0644 (minus umask). The
	// state is the owner's alone, so create it ourselves with 0600 first;
	// the DSN then says mode=rw so SQLite never creates it. SQLite gives the
	// -wal and -shm files the same mode as the database file. An existing
	// file's mode is left as the owner set it.
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("store: create %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return nil, fmt.Errorf("store: create %s: %w", path, err)
	}

	w, err := sql.Open("sqlite", dsn(path, false))
	if err != nil {
		return nil, fmt.Errorf("store: open %s: %w", path, err)
	}
	w.SetMaxOpenConns(1)
	w.SetMaxIdleConns(1)
	w.SetConnMaxLifetime(0)
	w.SetConnMaxIdleTime(0)

	s := &Store{path: path, w: w}
	// Open the writer first and alone: its first connection switches a new
	// file to WAL (a write to the header) before any reader exists.
	if err := w.PingContext(ctx); err != nil {
		w.Close()
		return nil, fmt.Errorf("store: open %s: %w", path, err)
	}
	if err := s.migrate(ctx, maxVersion); err != nil {
		w.Close()
		return nil, err
	}

	r, err := sql.Open("sqlite", dsn(path, true))
	if err != nil {
		w.Close()
		return nil, fmt.Errorf("store: open %s: %w", path, err)
	}
	n := max(4, runtime.NumCPU())
	r.SetMaxOpenConns(n)
	r.SetMaxIdleConns(n)
	if err := r.PingContext(ctx); err != nil {
		r.Close()
		w.Close()
		return nil, fmt.Errorf("store: open %s: %w", path, err)
	}
	s.r = r
	return s, nil
}

// dsn builds the connection string. Pragmas go in the DSN (not in a one-off
// Exec) because database/sql opens and re-opens connections behind our back:
// only the DSN reaches every one of them.
//
//   - journal_mode(WAL): readers and the writer do not block each other, and
//     a commit is a single append to the -wal file.
//   - foreign_keys(1): SQLite leaves FK enforcement off per connection by
//     default; the schema depends on it (RESTRICT, CASCADE).
//   - busy_timeout: see busyTimeoutMS.
//   - synchronous(FULL): in WAL mode FULL fsyncs the WAL on every commit, so
//     a transaction that returned from Commit survives power loss and kernel
//     crashes too. NORMAL would fsync only at checkpoints; it still never
//     loses a committed transaction when only the process dies (kill -9,
//     OOM kill, panic), because the WAL write already sits in the kernel's
//     page cache, but an OS crash could roll back the last commits. banger
//     writes a few rows per VM operation, so one fsync per commit costs
//     nothing users notice (see BenchmarkAppendEvent), and the state must
//     agree with what exists on disk (VM directories, TAP devices) after any
//     crash: FULL.
//   - _txlock=immediate (writer only): BEGIN IMMEDIATE takes the write lock
//     at BEGIN, so a transaction never starts as a reader and fails with
//     SQLITE_BUSY when upgrading; busy_timeout applies to BEGIN instead.
//   - query_only(1) (readers only): a read connection cannot write by
//     accident, which keeps the single-writer rule enforced by SQLite.
//   - mode=rw: never create the file (openAt created it with mode 0600).
//
// The "file:" URI form is used so a path containing '?' or '#' is escaped
// rather than misparsed as parameters.
func dsn(path string, readOnly bool) string {
	q := []string{
		"mode=rw",
		fmt.Sprintf("_pragma=busy_timeout(%d)", busyTimeoutMS),
		"_pragma=foreign_keys(1)",
		"_pragma=journal_mode(WAL)",
	}
	if readOnly {
		q = append(q, "_pragma=query_only(1)")
	}
	q = append(q, "_pragma=synchronous(FULL)")
	if !readOnly {
		q = append(q, "_txlock=immediate")
	}
	u := url.URL{Path: path}
	return "file:" + u.EscapedPath() + "?" + strings.Join(q, "&")
}

// Path returns the database file's path as given to Open.
func (s *Store) Path() string { return s.path }

// Close closes all connections. The writer closes last so that, being the
// last connection, it checkpoints the WAL into the main file.
func (s *Store) Close() error {
	var errs []error
	if s.r != nil {
		errs = append(errs, s.r.Close())
	}
	errs = append(errs, s.w.Close())
	return errors.Join(errs...)
}

// SchemaVersion returns the highest migration applied to the file.
func (s *Store) SchemaVersion(ctx context.Context) (int, error) {
	var v int
	err := s.r.QueryRowContext(ctx, `SELECT COALESCE(MAX(version), 0) FROM schema_migrations`).Scan(&v)
	if err != nil {
		return 0, fmt.Errorf("store: schema version: %w", err)
	}
	return v, nil
}

// Integrity runs PRAGMA integrity_check and PRAGMA foreign_key_check and
// returns an error describing the first problems found, or nil when the file
// is sound. It reads the whole file: meant for `banger doctor`, not for every
// start.
func (s *Store) Integrity(ctx context.Context) error {
	const maxReport = 20
	rows, err := s.r.QueryContext(ctx, `PRAGMA integrity_check(`+fmt.Sprint(maxReport)+`)`)
	if err != nil {
		return fmt.Errorf("store: integrity_check: %w", err)
	}
	var problems []string
	for rows.Next() {
		var line string
		if err := rows.Scan(&line); err != nil {
			rows.Close()
			return fmt.Errorf("store: integrity_check: %w", err)
		}
		if line != "ok" {
			problems = append(problems, line)
		}
	}
	if err := errors.Join(rows.Err(), rows.Close()); err != nil {
		return fmt.Errorf("store: integrity_check: %w", err)
	}

	// foreign_key_check finds rows that violate FKs (possible only if
	// someone wrote with foreign_keys off, e.g. the sqlite3 shell).
	fk, err := s.r.QueryContext(ctx, `PRAGMA foreign_key_check`)
	if err != nil {
		return fmt.Errorf("store: foreign_key_check: %w", err)
	}
	for fk.Next() && len(problems) < maxReport {
		var table, parent string
		var rowid sql.NullInt64
		var fkid int64
		if err := fk.Scan(&table, &rowid, &parent, &fkid); err != nil {
			fk.Close()
			return fmt.Errorf("store: foreign_key_check: %w", err)
		}
		problems = append(problems, fmt.Sprintf("%s rowid %d refers to a missing %s row", table, rowid.Int64, parent))
	}
	if err := errors.Join(fk.Err(), fk.Close()); err != nil {
		return fmt.Errorf("store: foreign_key_check: %w", err)
	}

	if len(problems) > 0 {
		return fmt.Errorf("store: %s failed integrity check: %s", s.path, strings.Join(problems, "; "))
	}
	return nil
}

// writeTx runs fn in a write transaction (BEGIN IMMEDIATE on the single
// writer connection) and commits it if fn returns nil. Once Commit returns
// nil the transaction is durable (synchronous=FULL).
func (s *Store) writeTx(ctx context.Context, fn func(*sql.Tx) error) error {
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	if err := fn(tx); err != nil {
		// Rollback's error is secondary: SQLite may already have rolled
		// back (e.g. on an interrupted statement), and fn's error is the
		// one the caller can act on.
		_ = tx.Rollback()
		return err
	}
	return tx.Commit()
}

// constraintCode returns SQLite's extended result code when err is a
// constraint violation, else 0. The driver enables extended result codes,
// so UNIQUE, FOREIGNKEY, CHECK, ... are distinguishable.
func constraintCode(err error) int {
	var se *sqlite.Error
	if errors.As(err, &se) && se.Code()&0xff == sqlite3.SQLITE_CONSTRAINT {
		return se.Code()
	}
	return 0
}

// mapErr turns constraint violations into the package's sentinel errors,
// keeping SQLite's message. onFK is the sentinel for a FOREIGN KEY failure,
// whose meaning depends on the operation: a missing parent when inserting
// (ErrNotFound), a referencing child when deleting (ErrInUse).
func mapErr(err error, what string, onFK error) error {
	if err == nil {
		return nil
	}
	var sentinel error
	switch constraintCode(err) {
	case sqlite3.SQLITE_CONSTRAINT_UNIQUE, sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY:
		sentinel = ErrConflict
	case sqlite3.SQLITE_CONSTRAINT_FOREIGNKEY:
		sentinel = onFK
	case sqlite3.SQLITE_CONSTRAINT_TRIGGER:
		// ON DELETE RESTRICT is carried out by SQLite as a foreign key
		// action and reported as CONSTRAINT_TRIGGER with the usual FK
		// message. The schema has no triggers of its own, but check the
		// message so one added later is not mistaken for an FK failure.
		if strings.Contains(err.Error(), "FOREIGN KEY constraint failed") {
			sentinel = onFK
		}
	case sqlite3.SQLITE_CONSTRAINT_CHECK, sqlite3.SQLITE_CONSTRAINT_NOTNULL,
		sqlite3.SQLITE_CONSTRAINT_DATATYPE:
		sentinel = ErrInvalid
	}
	if sentinel == nil {
		return fmt.Errorf("store: %s: %w", what, err)
	}
	return fmt.Errorf("store: %s: %w (%v)", what, sentinel, err)
}

// scanner is a *sql.Row or *sql.Rows.
type scanner interface{ Scan(...any) error }

// queryAll runs a read query and scans every row; what names the operation in errors.
func queryAll[T any](ctx context.Context, db *sql.DB, what string, scan func(scanner) (T, error), query string, args ...any) ([]T, error) {
	rows, err := db.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("store: %s: %w", what, err)
	}
	defer rows.Close()
	var out []T
	for rows.Next() {
		v, err := scan(rows)
		if err != nil {
			return nil, fmt.Errorf("store: %s: %w", what, err)
		}
		out = append(out, v)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("store: %s: %w", what, err)
	}
	return out, nil
}
