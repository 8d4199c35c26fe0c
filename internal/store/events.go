package store

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
	"time"
)

// Event is one stage of one operation, e.g. {Operation: "vm.start",
// Subject: vmID, Stage: "boot", Duration: 1.2s}.
type Event struct {
	ID        int64 // assigned by AppendEvent; increasing, never reused
	At        time.Time
	Operation string // required
	Subject   string // usually a VM or image id; may be empty
	Stage     string // required
	Duration  time.Duration
	Error     string // empty on success
}

// EventFilter selects events for ListEvents. Zero fields do not filter.
type EventFilter struct {
	Subject   string
	Operation string
	AfterID   int64 // only events with ID > AfterID: a cursor for paging and tailing
	Limit     int   // <= 0 means DefaultEventLimit
}

// DefaultEventLimit is the page size when EventFilter.Limit is not set, so a
// forgotten limit cannot load the whole history into memory.
const DefaultEventLimit = 1000

// AppendEvent durably records e and returns its id. A zero At is set to the
// current time.
func (s *Store) AppendEvent(ctx context.Context, e Event) (int64, error) {
	ids, err := s.AppendEvents(ctx, []Event{e})
	if err != nil {
		return 0, err
	}
	return ids[0], nil
}

// AppendEvents stores events in one transaction (all or none) and returns their ids, so an
// operation's stages cost one write, not one per stage.
func (s *Store) AppendEvents(ctx context.Context, evs []Event) ([]int64, error) {
	for i := range evs {
		e := &evs[i]
		if e.Operation == "" || e.Stage == "" {
			return nil, fmt.Errorf("store: append event: %w: operation and stage are required", ErrInvalid)
		}
		if e.Duration < 0 {
			return nil, fmt.Errorf("store: append event: %w: negative duration %v", ErrInvalid, e.Duration)
		}
	}
	ids := make([]int64, len(evs))
	err := s.writeTx(ctx, func(tx *sql.Tx) error {
		for i, e := range evs {
			at := e.At
			if at.IsZero() {
				at = time.Now()
			}
			res, err := tx.ExecContext(ctx, `
INSERT INTO lifecycle_events(at, operation, subject, stage, duration_ns, error)
VALUES (?, ?, ?, ?, ?, ?)`,
				at.UnixNano(), e.Operation, e.Subject, e.Stage, int64(e.Duration), e.Error)
			if err != nil {
				return err
			}
			if ids[i], err = res.LastInsertId(); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, mapErr(err, "append event", ErrNotFound)
	}
	return ids, nil
}

// ListEvents returns matching events in increasing id order (the order they
// were appended), at most f.Limit of them. To page or tail, pass the last
// returned ID as the next AfterID.
func (s *Store) ListEvents(ctx context.Context, f EventFilter) ([]Event, error) {
	var where []string
	var args []any
	if f.Subject != "" {
		where = append(where, "subject = ?")
		args = append(args, f.Subject)
	}
	if f.Operation != "" {
		where = append(where, "operation = ?")
		args = append(args, f.Operation)
	}
	where = append(where, "id > ?")
	args = append(args, f.AfterID)
	limit := f.Limit
	if limit <= 0 {
		limit = DefaultEventLimit
	}
	args = append(args, limit)

	q := `SELECT id, at, operation, subject, stage, duration_ns, error FROM lifecycle_events WHERE ` +
		strings.Join(where, " AND ") + ` ORDER BY id LIMIT ?`
	return queryAll(ctx, s.r, "list events", scanEvent, q, args...)
}

func scanEvent(sc scanner) (Event, error) {
	var e Event
	var at, dur int64
	if err := sc.Scan(&e.ID, &at, &e.Operation, &e.Subject, &e.Stage, &dur, &e.Error); err != nil {
		return Event{}, err
	}
	e.At = fromNanos(at)
	e.Duration = time.Duration(dur)
	return e, nil
}

// fromNanos converts a stored timestamp back to a time.Time, in UTC so
// values read back are identical whatever the daemon's TZ.
func fromNanos(n int64) time.Time { return time.Unix(0, n).UTC() }

// nowIfZero is the default for timestamps callers leave unset.
func nowIfZero(t time.Time) time.Time {
	if t.IsZero() {
		return time.Now()
	}
	return t
}
