package agentserver

// POST /v1/mount: a host folder, mounted as a FUSE filesystem whose operations go to the
// host over the upgraded connection (package hostfs). The connection's end unmounts it.

import (
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/banger-vm/banger/internal/agent"
	"github.com/banger-vm/banger/internal/hostfs"
	"github.com/banger-vm/banger/internal/hostfs/fusemount"
)

// hostMount is a host folder mounted in the guest.
type hostMount struct {
	path   string
	client *hostfs.Client
	server *fuse.Server
}

func (s *Server) handleMount(w http.ResponseWriter, r *http.Request) {
	if !agent.IsUpgrade(r, agent.MountUpgradeProtocol) {
		writeError(w, agent.CodeUpgradeRequired, fmt.Sprintf("POST %s needs the headers Connection: Upgrade and Upgrade: %s", agent.PathMount, agent.MountUpgradeProtocol))
		return
	}
	dst, readOnly := r.URL.Query().Get("path"), r.URL.Query().Get("ro") == "1"
	if err := agent.CheckMountPoint(dst); err != nil {
		writeError(w, agent.CodeBadRequest, err.Error())
		return
	}
	if err := ensureFUSE(); err != nil {
		writeError(w, agent.CodeInternal, err.Error())
		return
	}
	s.unmountHost(dst) // a stale mount from before a resume or a daemon restart
	err := os.MkdirAll(dst, 0o755)
	if errors.Is(err, unix.ENOTCONN) {
		// A dead FUSE mount the agent no longer knows (it restarted): take it away.
		_ = unix.Unmount(dst, unix.MNT_DETACH)
		err = os.MkdirAll(dst, 0o755)
	}
	if err != nil {
		writeError(w, agent.CodeInternal, "create the mount point: "+err.Error())
		return
	}
	// The answer goes first: the kernel may send requests while the mount is being made,
	// and the host reads them only after the upgrade. The outcome follows in-band.
	conn, brw, done, ok := s.upgradeStream(w, agent.MountUpgradeProtocol, "the mount")
	if !ok {
		return
	}
	defer done()
	// The host's first bytes may already sit in brw's buffer.
	c := hostfs.NewClient(readWriteCloser{brw.Reader, conn, conn})
	srv, err := fusemount.Mount(dst, c, readOnly)
	if err != nil {
		_ = c.Mounted(fmt.Errorf("mount the host folder at %s: %w", dst, err))
		_ = c.Close()
		return
	}
	m := &hostMount{path: dst, client: c, server: srv}
	s.mountMu.Lock()
	if s.mounts == nil {
		s.mounts = map[string]*hostMount{}
	}
	s.mounts[dst] = m
	s.mountMu.Unlock()
	_ = c.Mounted(nil) // a failed write shows as the client's end below
	select {
	case <-c.Done():
	case <-s.closing:
	}
	s.mountMu.Lock()
	mine := s.mounts[dst] == m
	if mine {
		delete(s.mounts, dst)
	}
	s.mountMu.Unlock()
	if mine {
		m.unmount(s)
	}
}

// unmountHost ends the host folder mounted at dst, if any, before another takes its place.
func (s *Server) unmountHost(dst string) {
	s.mountMu.Lock()
	m := s.mounts[dst]
	delete(s.mounts, dst)
	s.mountMu.Unlock()
	if m != nil {
		m.unmount(s)
	}
}

// unmount takes the filesystem away, lazily when something still uses it (a shell's
// working directory), and hangs up on the host.
func (m *hostMount) unmount(s *Server) {
	_ = m.client.Close()
	if err := m.server.Unmount(); err != nil {
		if derr := unix.Unmount(m.path, unix.MNT_DETACH); derr != nil {
			s.log.Warn("could not unmount a host folder", "path", m.path, "err", errors.Join(err, derr))
		}
	}
}

// ensureFUSE loads the kernel's fuse module when /dev/fuse is missing. The module comes
// from the kernel's module tree, which banger mounts at /lib/modules/<release>.
func ensureFUSE() error {
	if _, err := os.Stat("/dev/fuse"); err == nil {
		return nil
	}
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return err
	}
	release := unix.ByteSliceToString(u.Release[:])
	ko := filepath.Join("/lib/modules", release, "kernel/fs/fuse/fuse.ko")
	f, err := os.Open(ko)
	if err != nil {
		return fmt.Errorf("host folders need FUSE: the guest has no /dev/fuse and its kernel %s no %s (%v)", release, ko, err)
	}
	err = unix.FinitModule(int(f.Fd()), "", 0)
	f.Close()
	if err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("host folders need FUSE: load %s: %w", ko, err)
	}
	for deadline := time.Now().Add(3 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if _, err := os.Stat("/dev/fuse"); err == nil {
			return nil
		}
	}
	if err := unix.Mknod("/dev/fuse", unix.S_IFCHR|0o666, int(unix.Mkdev(10, 229))); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("host folders need FUSE: fuse is loaded but /dev/fuse did not appear: %w", err)
	}
	return nil
}

// readWriteCloser reads through a buffer that may already hold bytes of the stream.
type readWriteCloser struct {
	r interface{ Read([]byte) (int, error) }
	w interface{ Write([]byte) (int, error) }
	c interface{ Close() error }
}

func (rw readWriteCloser) Read(p []byte) (int, error)  { return rw.r.Read(p) }
func (rw readWriteCloser) Write(p []byte) (int, error) { return rw.w.Write(p) }
func (rw readWriteCloser) Close() error                { return rw.c.Close() }
