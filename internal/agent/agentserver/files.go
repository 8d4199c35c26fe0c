package agentserver

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/banger-vm/banger/internal/agent"
)

// filePath validates the path query parameter: absolute, no NUL, cleaned.
func filePath(r *http.Request) (string, error) {
	p := r.URL.Query().Get("path")
	switch {
	case p == "":
		return "", errors.New("query parameter path is required")
	case !filepath.IsAbs(p):
		return "", fmt.Errorf("path %q is not absolute", p)
	case strings.ContainsRune(p, 0):
		return "", errors.New("path contains a NUL byte")
	}
	clean := filepath.Clean(p)
	if clean == "/" {
		return "", errors.New("path / is a directory")
	}
	return clean, nil
}

// intParam parses an optional integer query parameter; def when absent.
func intParam(r *http.Request, name string, base, bits int, def int64, min, max int64) (int64, error) {
	v := r.URL.Query().Get(name)
	if v == "" {
		return def, nil
	}
	n, err := strconv.ParseInt(v, base, bits)
	if err != nil || n < min || n > max {
		return 0, fmt.Errorf("query parameter %s=%q is invalid", name, v)
	}
	return n, nil
}

// handleWriteFile: PUT /v1/files?path=/abs&mode=0644&uid=0&gid=0, body = content. Parents are
// created (0755); the file is written to a temporary name beside it, fsynced and renamed
// over the target, so readers see the old or the new content, never a part. uid/gid absent:
// the file belongs to the agent (root).
func (s *Server) handleWriteFile(w http.ResponseWriter, r *http.Request) {
	path, err := filePath(r)
	if err != nil {
		writeError(w, agent.CodeBadRequest, err.Error())
		return
	}
	mode, err := intParam(r, "mode", 8, 32, 0o644, 0, 0o7777)
	if err != nil {
		writeError(w, agent.CodeBadRequest, err.Error()+" (want octal permission bits, e.g. 0644)")
		return
	}
	uid, err := intParam(r, "uid", 10, 32, -1, -1, 1<<31-1)
	if err != nil {
		writeError(w, agent.CodeBadRequest, err.Error())
		return
	}
	gid, err := intParam(r, "gid", 10, 32, -1, -1, 1<<31-1)
	if err != nil {
		writeError(w, agent.CodeBadRequest, err.Error())
		return
	}
	info, code, err := writeFileAtomic(path, r.Body, uint32(mode), int(uid), int(gid))
	if err != nil {
		s.log.Warn("write file failed", "path", path, "err", err)
		writeError(w, code, err.Error())
		return
	}
	s.log.Info("wrote file", "path", path, "size", info.Size, "mode", fmt.Sprintf("%04o", info.Mode))
	writeJSON(w, http.StatusOK, info)
}

func writeFileAtomic(path string, body io.Reader, mode uint32, uid, gid int) (agent.FileInfo, string, error) {
	fail := func(code string, format string, args ...any) (agent.FileInfo, string, error) {
		return agent.FileInfo{}, code, fmt.Errorf(format, args...)
	}
	if st, err := os.Stat(path); err == nil && st.IsDir() {
		return fail(agent.CodeIsDirectory, "%s is a directory", path)
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fail(agent.CodeBadRequest, "create parent directories: %v", err)
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".banger-tmp-*")
	if err != nil {
		return fail(agent.CodeInternal, "create temporary file: %v", err)
	}
	tmp := f.Name()
	committed := false
	defer func() {
		if !committed {
			_ = f.Close()
			_ = os.Remove(tmp)
		}
	}()
	n, err := io.Copy(f, body)
	if err != nil {
		return fail(agent.CodeBadRequest, "receive content of %s after %d bytes: %v", path, n, err)
	}
	if uid >= 0 || gid >= 0 {
		if err := f.Chown(uid, gid); err != nil {
			return fail(agent.CodeInternal, "chown %s: %v", path, err)
		}
	}
	// Fchmod after fchown: chown clears setuid/setgid bits.
	if err := unix.Fchmod(int(f.Fd()), mode); err != nil {
		return fail(agent.CodeInternal, "chmod %s: %v", path, err)
	}
	if err := f.Sync(); err != nil {
		return fail(agent.CodeInternal, "sync %s: %v", path, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return fail(agent.CodeInternal, "stat %s: %v", path, err)
	}
	if err := f.Close(); err != nil {
		return fail(agent.CodeInternal, "close %s: %v", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		if errors.Is(err, syscall.EISDIR) || errors.Is(err, syscall.EEXIST) || errors.Is(err, syscall.ENOTEMPTY) {
			return fail(agent.CodeIsDirectory, "%s is a directory", path)
		}
		return fail(agent.CodeInternal, "rename into place: %v", err)
	}
	committed = true
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		_ = d.Close()
	}
	return agent.FileInfo{Path: path, Size: n, Mode: st.Mode & 0o7777, UID: int(st.Uid), GID: int(st.Gid)}, "", nil
}

// handleReadFile: GET /v1/files?path=/abs streams the content; FileInfo is in the headers.
func (s *Server) handleReadFile(w http.ResponseWriter, r *http.Request) {
	path, err := filePath(r)
	if err != nil {
		writeError(w, agent.CodeBadRequest, err.Error())
		return
	}
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			writeError(w, agent.CodeNotFound, fmt.Sprintf("%s: no such file", path))
			return
		}
		writeError(w, agent.CodeBadRequest, err.Error())
		return
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		writeError(w, agent.CodeInternal, fmt.Sprintf("stat %s: %v", path, err))
		return
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		writeError(w, agent.CodeInternal, fmt.Sprintf("stat %s: no unix stat", path))
		return
	}
	if st.Mode&unix.S_IFMT == unix.S_IFDIR {
		writeError(w, agent.CodeIsDirectory, fmt.Sprintf("%s is a directory", path))
		return
	}
	// Regular files announce their length; other kinds (devices, FIFOs, and /proc files,
	// which claim size 0) are streamed without one.
	sized := st.Mode&unix.S_IFMT == unix.S_IFREG && st.Size > 0
	if sized {
		w.Header().Set("Content-Length", strconv.FormatInt(st.Size, 10))
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set(agent.HeaderFileMode, fmt.Sprintf("%04o", st.Mode&0o7777))
	w.Header().Set(agent.HeaderFileUID, strconv.Itoa(int(st.Uid)))
	w.Header().Set(agent.HeaderFileGID, strconv.Itoa(int(st.Gid)))
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodHead {
		return
	}
	if sized {
		// Never send more than announced, even if the file grows meanwhile.
		_, err = io.CopyN(w, f, st.Size)
	} else {
		_, err = io.Copy(w, f)
	}
	if err != nil {
		s.log.Warn("read file: stream interrupted", "path", path, "err", err)
	}
}
