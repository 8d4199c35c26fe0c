package proc

// The serial console: the VMM writes it into a FIFO in the VM's run directory, and a copier
// goroutine in the daemon moves it into console.log, rotating to console.log.1 so that the
// two together never exceed the cap. A guest that floods its console therefore costs a
// bounded amount of disk and a fixed buffer of daemon memory; while no daemon reads, the
// FIFO fills (1 MiB) and the guest's serial output waits.

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// DefaultConsoleCap is the default bound on console.log plus console.log.1.
const DefaultConsoleCap = 16 << 20

// minConsoleCap keeps each half above one copy buffer.
const minConsoleCap = 2 * copyBuf

const copyBuf = 32 << 10

// fifoSize is what the FIFO buffers while no daemon reads (the unprivileged maximum of
// /proc/sys/fs/pipe-max-size by default).
const fifoSize = 1 << 20

// Console is where a VMM's serial console goes.
type Console struct {
	// FIFO is what the VMM writes: a FIFO Spawn creates (replacing a stale one). QEMU opens
	// it itself (-chardev pipe); with Stdout set, the VMM gets it as stdout and stderr.
	FIFO string
	// Log is the capped log (vm logs); it rotates to Log+".1".
	Log string
	// Cap bounds Log plus Log.1 in bytes; 0 means DefaultConsoleCap.
	Cap int64
	// Stdout: the VMM writes the console to its stdout (firecracker).
	Stdout bool
}

// RotatedSuffix is appended to Console.Log for the previous half of the console.
const RotatedSuffix = ".1"

// MakeFIFO creates the FIFO at path, replacing whatever a dead VM left there.
func MakeFIFO(path string) error {
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeNamedPipe != 0 {
			return nil
		}
		if err := os.Remove(path); err != nil {
			return err
		}
	}
	if err := unix.Mkfifo(path, 0o600); err != nil {
		return fmt.Errorf("mkfifo %s: %w", path, err)
	}
	return nil
}

// copier moves the console from the FIFO into the capped log.
type copier struct {
	fifo  *os.File
	log   *cappedLog
	ended chan struct{}
	once  sync.Once
}

func startCopier(c Console, fresh bool) (*copier, error) {
	if fresh {
		if err := MakeFIFO(c.FIFO); err != nil {
			return nil, err
		}
	}
	// Read-write: our read end never sees EOF between VMM writers (there are none yet when
	// we spawn), and the VMM never gets EPIPE while we are not reading. Non-blocking, so
	// Go's poller serves it and stop can interrupt a read.
	f, err := os.OpenFile(c.FIFO, os.O_RDWR|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	if fi, err := f.Stat(); err != nil || fi.Mode()&os.ModeNamedPipe == 0 {
		f.Close()
		return nil, fmt.Errorf("%s is not a FIFO", c.FIFO)
	}
	_, _ = unix.FcntlInt(f.Fd(), unix.F_SETPIPE_SZ, fifoSize) // best effort: the default is 64 KiB
	l, err := openCappedLog(c.Log, c.Cap, fresh)
	if err != nil {
		f.Close()
		return nil, err
	}
	cp := &copier{fifo: f, log: l, ended: make(chan struct{})}
	go cp.run()
	return cp, nil
}

func (c *copier) run() {
	defer close(c.ended)
	buf := make([]byte, copyBuf)
	for {
		n, err := c.fifo.Read(buf)
		if n > 0 {
			c.log.Write(buf[:n])
		}
		if err != nil {
			break // deadline from stop, or the file closed
		}
	}
	// Drain what the VMM wrote before it went (or before the daemon stops reading).
	if rc, err := c.fifo.SyscallConn(); err == nil {
		_ = rc.Control(func(fd uintptr) {
			for {
				n, err := unix.Read(int(fd), buf)
				if n <= 0 || err != nil {
					return
				}
				c.log.Write(buf[:n])
			}
		})
	}
	c.fifo.Close()
	c.log.Close()
}

// stop ends the copier after draining the FIFO, and waits for it.
func (c *copier) stop() {
	c.once.Do(func() {
		_ = c.fifo.SetReadDeadline(time.Unix(1, 0))
	})
	<-c.ended
}

// cappedLog is a log file that rotates to path.1 at half the cap.
type cappedLog struct {
	path string
	half int64
	f    *os.File
	size int64
	err  error // the first write error; later writes are dropped
}

func openCappedLog(path string, limit int64, fresh bool) (*cappedLog, error) {
	if limit <= 0 {
		limit = DefaultConsoleCap
	}
	limit = max(limit, minConsoleCap)
	flags := os.O_CREATE | os.O_WRONLY | os.O_APPEND
	if fresh {
		flags |= os.O_TRUNC
		_ = os.Remove(path + RotatedSuffix)
	}
	f, err := os.OpenFile(path, flags, 0o600)
	if err != nil {
		return nil, err
	}
	l := &cappedLog{path: path, half: limit / 2, f: f}
	if fi, err := f.Stat(); err == nil {
		l.size = fi.Size()
	}
	return l, nil
}

func (l *cappedLog) Write(p []byte) {
	for len(p) > 0 && l.err == nil {
		if l.size >= l.half {
			l.rotate()
			continue
		}
		n := min(int64(len(p)), l.half-l.size)
		w, err := l.f.Write(p[:n])
		l.size += int64(w)
		p = p[w:]
		if err != nil {
			l.err = err
		}
	}
}

// rotate keeps the current half as path.1 and starts an empty path. A reader following the
// log (vm logs --follow) must reopen path when its inode changes.
func (l *cappedLog) rotate() {
	l.f.Close()
	if err := os.Rename(l.path, l.path+RotatedSuffix); err != nil {
		l.err = err
		return
	}
	f, err := os.OpenFile(l.path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		l.err = err
		return
	}
	l.f, l.size = f, 0
}

func (l *cappedLog) Close() {
	if l.f != nil {
		l.f.Close()
	}
}

// tailWindow is how much of a log ConsoleTail reads from its end.
const tailWindow = 64 << 10

// ConsoleTail returns the last n non-empty lines of a console log (and of its rotated half
// when the current one has fewer), reading only the end of each file.
func ConsoleTail(path string, n int) []string {
	lines := tailLines(path, n)
	if len(lines) < n {
		prev := tailLines(path+RotatedSuffix, n-len(lines))
		lines = append(prev, lines...)
	}
	return lines
}

// TailLines returns the last n non-empty lines of a file, reading at most its last 64 KiB.
func TailLines(path string, n int) []string { return tailLines(path, n) }

func tailLines(path string, n int) []string {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	off := int64(0)
	if fi, err := f.Stat(); err == nil && fi.Size() > tailWindow {
		off = fi.Size() - tailWindow
	}
	data, err := io.ReadAll(io.NewSectionReader(f, off, tailWindow))
	if err != nil && !errors.Is(err, io.EOF) {
		return nil
	}
	if off > 0 {
		// The first line is cut; drop it.
		if i := bytes.IndexByte(data, '\n'); i >= 0 {
			data = data[i+1:]
		}
	}
	var lines []string
	for _, l := range bytes.Split(data, []byte("\n")) {
		if s := strings.TrimRight(string(l), "\r \t"); s != "" {
			lines = append(lines, s)
		}
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return lines
}
