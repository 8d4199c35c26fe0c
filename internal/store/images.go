package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// Image is a row of the images table: a root filesystem VMs are built from.
type Image struct {
	ID           string
	Name         string // unique
	Source       string // where it came from (e.g. "debian:bookworm", an OCI reference)
	Digest       string
	RootfsPath   string
	WorkSeedPath string
	KernelRef    string
	SizeBytes    int64
	CreatedAt    time.Time       // zero: now; kept unchanged when PutImage updates
	UpdatedAt    time.Time       // zero: now
	Metadata     json.RawMessage // a JSON document; empty means {}
}

// PutImage inserts img, or updates the image with the same ID. A Name used
// by another image is ErrConflict.
//
// It is an upsert (ON CONFLICT DO UPDATE), not INSERT OR REPLACE: REPLACE
// deletes the old row first, which would fire ON DELETE RESTRICT for an image
// a VM uses and would reset created_at.
func (s *Store) PutImage(ctx context.Context, img Image) error {
	meta, err := jsonDoc(img.Metadata, "metadata")
	if err != nil {
		return fmt.Errorf("store: put image %q: %w", img.ID, err)
	}
	err = s.writeTx(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `
INSERT INTO images(id, name, source, digest, rootfs_path, work_seed_path, kernel_ref,
                   size_bytes, created_at, updated_at, metadata)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT(id) DO UPDATE SET
	name = excluded.name, source = excluded.source, digest = excluded.digest,
	rootfs_path = excluded.rootfs_path, work_seed_path = excluded.work_seed_path,
	kernel_ref = excluded.kernel_ref, size_bytes = excluded.size_bytes,
	updated_at = excluded.updated_at, metadata = excluded.metadata`,
			img.ID, img.Name, img.Source, img.Digest, img.RootfsPath, img.WorkSeedPath, img.KernelRef,
			img.SizeBytes, nowIfZero(img.CreatedAt).UnixNano(), nowIfZero(img.UpdatedAt).UnixNano(), meta)
		return err
	})
	return mapErr(err, fmt.Sprintf("put image %q", img.ID), ErrNotFound)
}

const imageCols = `id, name, source, digest, rootfs_path, work_seed_path, kernel_ref,
	size_bytes, created_at, updated_at, metadata`

func scanImage(sc scanner) (Image, error) {
	var img Image
	var created, updated int64
	var meta string
	err := sc.Scan(&img.ID, &img.Name, &img.Source, &img.Digest, &img.RootfsPath, &img.WorkSeedPath,
		&img.KernelRef, &img.SizeBytes, &created, &updated, &meta)
	img.CreatedAt, img.UpdatedAt, img.Metadata = fromNanos(created), fromNanos(updated), json.RawMessage(meta)
	return img, err
}

// GetImage returns the image with the given id, or ErrNotFound.
func (s *Store) GetImage(ctx context.Context, id string) (Image, error) {
	img, err := scanImage(s.r.QueryRowContext(ctx, `SELECT `+imageCols+` FROM images WHERE id = ?`, id))
	return img, getErr(err, "image", id)
}

// GetImageByName returns the image with the given name, or ErrNotFound.
func (s *Store) GetImageByName(ctx context.Context, name string) (Image, error) {
	img, err := scanImage(s.r.QueryRowContext(ctx, `SELECT `+imageCols+` FROM images WHERE name = ?`, name))
	return img, getErr(err, "image named", name)
}

// ListImages returns all images ordered by name.
func (s *Store) ListImages(ctx context.Context) ([]Image, error) {
	return queryAll(ctx, s.r, "list images", scanImage, `SELECT `+imageCols+` FROM images ORDER BY name`)
}

// DeleteImage deletes the image with the given id. It is ErrNotFound if there
// is none and ErrInUse if a VM still uses it.
func (s *Store) DeleteImage(ctx context.Context, id string) error {
	return s.deleteRow(ctx, `DELETE FROM images WHERE id = ?`, "image", id)
}

// deleteRow runs a single-row DELETE, mapping "no row" to ErrNotFound and
// a RESTRICT foreign key to ErrInUse.
func (s *Store) deleteRow(ctx context.Context, query, what string, key any) error {
	err := s.writeTx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, query, key)
		if err != nil {
			return err
		}
		n, err := res.RowsAffected()
		if err != nil {
			return err
		}
		if n == 0 {
			return ErrNotFound
		}
		return nil
	})
	if errors.Is(err, ErrNotFound) {
		return fmt.Errorf("store: delete %s %q: %w", what, key, ErrNotFound)
	}
	return mapErr(err, fmt.Sprintf("delete %s %q", what, key), ErrInUse)
}

// getErr maps sql.ErrNoRows to ErrNotFound.
func getErr(err error, what string, key any) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, sql.ErrNoRows):
		return fmt.Errorf("store: %s %q: %w", what, key, ErrNotFound)
	default:
		return fmt.Errorf("store: get %s %q: %w", what, key, err)
	}
}

// jsonDoc validates a JSON column value here, where the error can name the
// field, rather than leaving it to the CHECK constraint. Empty means {}.
func jsonDoc(raw json.RawMessage, field string) (string, error) {
	if len(raw) == 0 {
		return "{}", nil
	}
	if !json.Valid(raw) {
		return "", fmt.Errorf("%w: %s is not valid JSON", ErrInvalid, field)
	}
	return string(raw), nil
}
