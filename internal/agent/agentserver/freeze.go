package agentserver

// POST /v1/freeze and /v1/thaw: around a save (vm pause, vm snapshot). Freezing (FIFREEZE)
// flushes a filesystem and checkpoints its journal, so its disk is a clean filesystem as
// of the save, and blocks new writes until the thaw. The saved state holds the frozen
// filesystems, so whatever restores it thaws them first; if no thaw comes (a host that
// died), the agent thaws by itself after the time the freeze asked for, counted on the
// guest's clock, which stops while the VM is saved.

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/banger-vm/banger/internal/agent"
)

// The ioctls of linux/fs.h: _IOWR('X', 119, int) and _IOWR('X', 120, int).
const (
	ioctlFIFREEZE = 0xc0045877
	ioctlFITHAW   = 0xc0045878
)

// freezableTypes are the filesystems that implement freeze and that banger's disks use.
var freezableTypes = map[string]bool{"ext4": true, "ext3": true, "ext2": true, "xfs": true, "btrfs": true}

// maxMountsBytes bounds the mount table read (a guest has a handful of mounts).
const maxMountsBytes = 1 << 20

// freezeState is what the agent has frozen, and the timer that thaws it.
type freezeState struct {
	frozen []string // mount points, in freeze order
	timer  *time.Timer
}

// mountEntry is one line of a mount table.
type mountEntry struct {
	device, point, fstype string
	options               []string
}

// readMountTable parses a /proc/self/mounts table, read up to maxMountsBytes; lines that do
// not parse, or whose mount point is not an absolute clean path, are skipped.
func readMountTable(r io.Reader) ([]mountEntry, error) {
	var out []mountEntry
	sc := bufio.NewScanner(io.LimitReader(r, maxMountsBytes))
	sc.Buffer(make([]byte, 0, 4096), maxMountsBytes)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 4 {
			continue
		}
		mp, err := unescapeMount(f[1])
		if err != nil || !filepath.IsAbs(mp) || filepath.Clean(mp) != mp {
			continue
		}
		out = append(out, mountEntry{device: f[0], point: mp, fstype: f[2], options: strings.Split(f[3], ",")})
	}
	return out, sc.Err()
}

// writableBlockMounts lists the mount points of read-write, freezable filesystems on block
// devices in a /proc/self/mounts table, each once, parents before children.
func writableBlockMounts(r io.Reader) ([]string, error) {
	table, err := readMountTable(r)
	var out []string
	seen := map[string]bool{}
	for _, m := range table {
		if !strings.HasPrefix(m.device, "/dev/") || !freezableTypes[m.fstype] || !slices.Contains(m.options, "rw") || seen[m.point] {
			continue
		}
		seen[m.point] = true
		out = append(out, m.point)
	}
	return out, err
}

// unescapeMount decodes the octal escapes (\040 for a space) of a mounts field.
func unescapeMount(s string) (string, error) {
	if !strings.Contains(s, `\`) {
		return s, nil
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '\\' {
			b.WriteByte(s[i])
			continue
		}
		if i+4 > len(s) {
			return "", errors.New("truncated escape")
		}
		v, err := strconv.ParseUint(s[i+1:i+4], 8, 8)
		if err != nil {
			return "", fmt.Errorf("bad escape %q", s[i:i+4])
		}
		b.WriteByte(byte(v))
		i += 3
	}
	return b.String(), nil
}

// ioctlMount runs a freeze ioctl on the filesystem mounted at mp.
func ioctlMount(mp string, req uint) error {
	fd, err := unix.Open(mp, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return unix.IoctlSetInt(fd, req, 0)
}

func (s *Server) handleFreeze(w http.ResponseWriter, r *http.Request) {
	var req agent.FreezeRequest
	if !decodeJSON(w, r, &req) {
		return
	}
	if req.ThawAfterMS < agent.MinThawAfterMS || req.ThawAfterMS > agent.MaxThawAfterMS {
		writeError(w, agent.CodeBadRequest, fmt.Sprintf("thaw_after_ms %d: want %d-%d", req.ThawAfterMS, agent.MinThawAfterMS, agent.MaxThawAfterMS))
		return
	}
	f, err := os.Open(filepath.Join(s.cfg.ProcDir, "self", "mounts"))
	if err != nil {
		writeError(w, agent.CodeInternal, "read the mount table: "+err.Error())
		return
	}
	mounts, err := writableBlockMounts(f)
	f.Close()
	if err != nil {
		writeError(w, agent.CodeInternal, "read the mount table: "+err.Error())
		return
	}
	start := time.Now()
	unix.Sync()
	s.freezeMu.Lock()
	defer s.freezeMu.Unlock()
	res := agent.FreezeResponse{Frozen: []string{}}
	for _, mp := range mounts {
		if slices.Contains(s.freeze.frozen, mp) {
			res.Frozen = append(res.Frozen, mp)
			continue
		}
		if err := ioctlMount(mp, ioctlFIFREEZE); err != nil {
			// Not freezable here (or frozen by someone else): synced, and said so.
			res.Skipped = append(res.Skipped, mp+": "+err.Error())
			continue
		}
		s.freeze.frozen = append(s.freeze.frozen, mp)
		res.Frozen = append(res.Frozen, mp)
	}
	if s.freeze.timer != nil {
		s.freeze.timer.Stop()
	}
	if len(s.freeze.frozen) > 0 {
		s.freeze.timer = time.AfterFunc(time.Duration(req.ThawAfterMS)*time.Millisecond, func() {
			if thawed := s.thawAll(); len(thawed) > 0 {
				s.log.Warn("no thaw came: thawed the filesystems by itself", "mounts", thawed)
			}
		})
	}
	res.DurationMS = float64(time.Since(start).Microseconds()) / 1000
	s.log.Info("filesystems frozen", "frozen", res.Frozen, "skipped", res.Skipped, "ms", res.DurationMS)
	writeJSON(w, http.StatusOK, res)
}

func (s *Server) handleThaw(w http.ResponseWriter, r *http.Request) {
	thawed := s.thawAll()
	if len(thawed) > 0 {
		s.log.Info("filesystems thawed", "mounts", thawed)
	}
	writeJSON(w, http.StatusOK, agent.ThawResponse{Thawed: thawed})
}

// thawAll thaws what the agent froze, children before parents; it is harmless when nothing
// is frozen.
func (s *Server) thawAll() []string {
	s.freezeMu.Lock()
	defer s.freezeMu.Unlock()
	if s.freeze.timer != nil {
		s.freeze.timer.Stop()
		s.freeze.timer = nil
	}
	thawed := []string{}
	var stuck []string
	for i := len(s.freeze.frozen) - 1; i >= 0; i-- {
		mp := s.freeze.frozen[i]
		if err := ioctlMount(mp, ioctlFITHAW); err != nil && !errors.Is(err, unix.EINVAL) {
			// EINVAL: not frozen any more (thawed by someone else). Anything else is
			// kept, for the next thaw to try again.
			s.log.Warn("could not thaw a filesystem", "mount", mp, "err", err)
			stuck = append([]string{mp}, stuck...)
			continue
		}
		thawed = append(thawed, mp)
	}
	s.freeze.frozen = stuck
	return thawed
}
