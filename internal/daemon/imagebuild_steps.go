package daemon

// The steps of an image build: what runs in the builder VM, and how its output is shown.

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"

	"github.com/banger-vm/banger/internal/api"
	"github.com/banger-vm/banger/internal/shellquote"
)

// buildStep is one command run over SSH, optionally fed a stream (an upload).
type buildStep struct {
	name  string
	cmd   string
	stdin func() (io.Reader, error)
}

// buildSteps turns a request into SSH steps: uploads, packages, scripts, then sealing.
func buildSteps(req api.ImageBuildRequest, bf builderFiles) []buildStep {
	var steps []buildStep
	steps = append(steps, buildStep{name: "prepare", cmd: "set -e; rm -rf " + buildScratch + "; mkdir -p " + buildScratch})
	for _, c := range req.Copies {
		steps = append(steps, copyStep(c))
	}
	var pkgs []string
	for i, p := range req.Packages {
		if strings.HasPrefix(p, "/") {
			guest := fmt.Sprintf("%s/pkg-%d-%s", buildScratch, i, path.Base(p))
			steps = append(steps, copyStep(api.BuildCopy{Src: p, Dst: guest}))
			pkgs = append(pkgs, guest)
		} else {
			pkgs = append(pkgs, p)
		}
	}
	if len(pkgs) > 0 {
		steps = append(steps, buildStep{name: "install packages: " + strings.Join(req.Packages, " "), cmd: installScript(pkgs)})
	}
	for i, s := range req.Scripts {
		guest := fmt.Sprintf("%s/script-%d", buildScratch, i)
		steps = append(steps, buildStep{name: "run " + filepath.Base(s),
			cmd: fmt.Sprintf("set -e; cat > %[1]s; chmod 0755 %[1]s; cd /root; if head -c2 %[1]s | grep -q '^#!'; then exec %[1]s; else exec sh %[1]s; fi", guest),
			stdin: func() (io.Reader, error) {
				f, err := os.ReadFile(s)
				return bytes.NewReader(f), err
			}})
	}
	steps = append(steps, buildStep{name: "seal the image", cmd: sealScript(bf), stdin: func() (io.Reader, error) {
		return bytes.NewReader(bf.authorized), nil
	}})
	return steps
}

// installScript installs packages with the guest's own package manager.
func installScript(pkgs []string) string {
	names := false
	for _, p := range pkgs {
		names = names || !strings.HasPrefix(p, "/")
	}
	update := ""
	if names {
		update = "apt-get update -q; "
	}
	quoted := make([]string, len(pkgs))
	for i, p := range pkgs {
		quoted[i] = shellquote.Quote(p) // a local .deb's file name is the user's: never shell syntax
	}
	list := strings.Join(quoted, " ")
	return `set -e
if command -v apt-get >/dev/null; then
	export DEBIAN_FRONTEND=noninteractive
	` + update + `apt-get install -y -q --no-install-recommends ` + list + `
	apt-get clean
elif command -v xbps-install >/dev/null; then
	xbps-install -Sy ` + list + `
else
	echo "banger: no supported package manager (apt-get, xbps-install) in the image" >&2
	exit 1
fi`
}

// sealScript takes the builder's SSH access out of the image and removes the scratch space:
// the image keeps no host key, not even ones its base carried (each VM gets its own) and root's authorized_keys is what it
// was (stdin carries the old content).
func sealScript(bf builderFiles) string {
	s := "set -e; rm -rf " + buildScratch + "; rm -f /etc/ssh/ssh_host_*_key /etc/ssh/ssh_host_*_key.pub /etc/ssh/sshd_config.d/banger.conf; "
	if bf.hadAuthorize {
		s += "cat > /root/.ssh/authorized_keys; "
	} else {
		s += "rm -f /root/.ssh/authorized_keys; "
		if !bf.hadSSHDir {
			s += "rmdir /root/.ssh 2>/dev/null || true; "
		}
	}
	// The builder's own traces: its machine-id (systemd commits one on a writable root;
	// empty means each VM makes its own) and runit links to services that live in /run.
	s += `if [ -s /etc/machine-id ]; then : > /etc/machine-id; fi; `
	s += `for l in /etc/runit/runsvdir/default/* /etc/service/* /var/service/*; do case "$(readlink "$l" 2>/dev/null)" in /run/banger/*) rm -f "$l";; esac; done; `
	return s + "sync"
}

// copyStep uploads a host file or directory (as a tar stream, owned by root) to dst.
func copyStep(c api.BuildCopy) buildStep {
	src, dst := c.Src, c.Dst
	st, err := os.Stat(src)
	if err == nil && st.IsDir() {
		target := dst
		return buildStep{name: "copy " + src + " to " + dst,
			cmd: fmt.Sprintf("set -e; mkdir -p %[1]s; tar -x --no-same-permissions -C %[1]s", shellquote.Quote(target)),
			stdin: func() (io.Reader, error) {
				pr, pw := io.Pipe()
				go func() { pw.CloseWithError(tarDir(src, pw)) }()
				return pr, nil
			}}
	}
	target := dst
	if strings.HasSuffix(dst, "/") {
		target = path.Join(dst, filepath.Base(src))
	}
	mode := os.FileMode(0o644)
	if err == nil {
		mode = st.Mode().Perm()
	}
	return buildStep{name: "copy " + src + " to " + target,
		cmd: fmt.Sprintf("set -e; mkdir -p %[1]s; cat > %[2]s; chmod %04[3]o %[2]s", shellquote.Quote(path.Dir(target)), shellquote.Quote(target), mode),
		stdin: func() (io.Reader, error) {
			return os.Open(src)
		}}
}

// tarDir writes dir's tree as a tar owned by root:root.
func tarDir(dir string, w io.Writer) error {
	// A symlink to a directory copies the directory (WalkDir does not follow its root).
	dir, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return err
	}
	tw := tar.NewWriter(w)
	err = filepath.WalkDir(dir, func(p string, de fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if rel == "." {
			return nil
		}
		fi, err := de.Info()
		if err != nil {
			return err
		}
		link := ""
		if fi.Mode()&fs.ModeSymlink != 0 {
			if link, err = os.Readlink(p); err != nil {
				return err
			}
		}
		hdr, err := tar.FileInfoHeader(fi, link)
		if err != nil {
			return err
		}
		hdr.Name, hdr.Uid, hdr.Gid, hdr.Uname, hdr.Gname = filepath.ToSlash(rel), 0, 0, "root", "root"
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if fi.Mode().IsRegular() {
			f, err := os.Open(p)
			if err != nil {
				return err
			}
			_, err = io.Copy(tw, f)
			f.Close()
			return err
		}
		return nil
	})
	if err != nil {
		return err
	}
	return tw.Close()
}

// outputLines splits a step's output into lines for progress, keeping the last ones for
// the error of a failed step.
type outputLines struct {
	mu   sync.Mutex
	buf  []byte
	last []string
	emit func(string)
}

const (
	outputTail    = 30
	maxOutputLine = 8 << 10
)

func (o *outputLines) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.buf = append(o.buf, p...)
	for {
		// \r ends a line too: progress bars redraw with it.
		i := bytes.IndexAny(o.buf, "\r\n")
		if i < 0 {
			break
		}
		if i > 0 {
			o.line(string(o.buf[:i]))
		}
		o.buf = o.buf[i+1:]
	}
	if len(o.buf) > maxOutputLine {
		o.line(string(o.buf))
		o.buf = nil
	}
	return len(p), nil
}

func (o *outputLines) line(l string) {
	o.last = append(o.last, l)
	if len(o.last) > outputTail {
		o.last = o.last[len(o.last)-outputTail:]
	}
	o.emit(l)
}

func (o *outputLines) flush() {
	o.mu.Lock()
	defer o.mu.Unlock()
	if len(o.buf) > 0 {
		o.line(string(o.buf))
		o.buf = nil
	}
}

func (o *outputLines) tail() []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	if len(o.last) == 0 {
		return []string{"(no output)"}
	}
	return append([]string(nil), o.last...)
}
