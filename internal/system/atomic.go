package system

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
)

// WriteFileAtomic replaces path with data, mode perm: see WriteAtomic.
func WriteFileAtomic(path string, data []byte, perm fs.FileMode) error {
	return WriteAtomic(path, perm, func(w io.Writer) error {
		_, err := w.Write(data)
		return err
	})
}

// WriteAtomic replaces path with what write writes, mode perm, through a temporary file
// beside it that is synced before the rename (and the directory after it): readers see
// the old file or the new one, never part of one. On an error path is untouched and the
// temporary file is removed.
func WriteAtomic(path string, perm fs.FileMode, write func(io.Writer) error) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*.tmp")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := write(tmp); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(perm); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	return SyncDir(filepath.Dir(path))
}

// AtomicReplace installs newSrc at dst, keeping the previous dst as
// dst+suffixPrevious (for `banger update` and its rollback). newSrc must be
// on dst's filesystem so the final rename is atomic. A stale backup from a
// half-finished earlier run is replaced when dst exists, and kept (it is
// then the only copy of the previous binary) when dst is missing. If
// installing fails, the original dst is put back.
func AtomicReplace(newSrc, dst, suffixPrevious string) error {
	return atomicReplace(newSrc, dst, suffixPrevious, os.Rename)
}

// atomicReplace takes the rename used for the final step so tests can make
// exactly that step fail.
func atomicReplace(newSrc, dst, suffixPrevious string, finalRename func(string, string) error) error {
	if suffixPrevious == "" {
		return errors.New("atomic replace: empty backup suffix refused: the previous binary would be lost")
	}
	src, err := os.Lstat(newSrc)
	if err != nil {
		return fmt.Errorf("atomic replace %s: new file: %w", dst, err)
	}
	if src.IsDir() {
		return fmt.Errorf("atomic replace %s: new file %s is a directory", dst, newSrc)
	}
	backup := dst + suffixPrevious
	dir := filepath.Dir(dst)
	hadDst := false
	if st, err := os.Lstat(dst); err == nil {
		if st.IsDir() {
			return fmt.Errorf("atomic replace %s: destination is a directory", dst)
		}
		hadDst = true
		if err := linkBackup(dst, backup); err == nil {
			// dst never disappeared: the final rename swaps it atomically, so a kill -9 at
			// any point leaves the old or the new file at dst, never neither.
			if err := finalRename(newSrc, dst); err != nil {
				_ = os.Remove(backup) // dst is still the previous file; the extra name is noise
				return fmt.Errorf("atomic replace %s: install %s: %w (previous file kept)", dst, newSrc, err)
			}
			return SyncDir(dir)
		}
		// No hard links on this filesystem: move dst aside, leaving a short window without it.
		if err := os.Rename(dst, backup); err != nil {
			return fmt.Errorf("atomic replace %s: keep previous as %s: %w (remove %s and retry)", dst, backup, err, backup)
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("atomic replace %s: %w", dst, err)
	}
	if err := finalRename(newSrc, dst); err != nil {
		if hadDst {
			if rerr := os.Rename(backup, dst); rerr != nil {
				return fmt.Errorf("atomic replace %s: install failed (%v) and restoring the previous file failed too (%v): it is at %s, move it back by hand", dst, err, rerr, backup)
			}
			_ = SyncDir(dir)
		}
		return fmt.Errorf("atomic replace %s: install %s: %w (previous file kept)", dst, newSrc, err)
	}
	if err := SyncDir(dir); err != nil {
		return fmt.Errorf("atomic replace %s: installed but could not sync %s: %w", dst, dir, err)
	}
	return nil
}

// AtomicReplaceRollback undoes AtomicReplace: the backup dst+suffixPrevious
// is renamed over dst. Without a backup (the replace was a fresh install)
// dst is removed and no error is returned.
func AtomicReplaceRollback(dst, suffixPrevious string) error {
	if suffixPrevious == "" {
		return errors.New("atomic replace rollback: empty backup suffix refused")
	}
	backup := dst + suffixPrevious
	dir := filepath.Dir(dst)
	if _, err := os.Lstat(backup); errors.Is(err, fs.ErrNotExist) {
		if err := os.Remove(dst); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("rollback %s (no backup, fresh install): remove: %w", dst, err)
		}
		return SyncDir(dir)
	} else if err != nil {
		return fmt.Errorf("rollback %s: %w", dst, err)
	}
	// rename(2) replaces dst atomically: there is never a moment without it.
	if err := os.Rename(backup, dst); err != nil {
		return fmt.Errorf("rollback %s: restore %s: %w", dst, backup, err)
	}
	return SyncDir(dir)
}

// linkBackup makes backup a second name of dst, replacing a stale backup atomically (link to
// a temporary name, then rename over the backup).
func linkBackup(dst, backup string) error {
	tmp := fmt.Sprintf("%s.%d.tmp", backup, os.Getpid())
	_ = os.Remove(tmp)
	if err := os.Link(dst, tmp); err != nil {
		return err
	}
	if err := os.Rename(tmp, backup); err != nil {
		_ = os.Remove(tmp)
		return err
	}
	return nil
}

// SyncDir makes renames in dir durable.
func SyncDir(dir string) error { return SyncFile(dir) }

// SyncFile flushes what was written to path (a file another process wrote, say) to disk.
func SyncFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", path, err)
	}
	return nil
}
