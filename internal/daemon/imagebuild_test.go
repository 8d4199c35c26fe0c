package daemon

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/banger-vm/banger/internal/api"
	"github.com/banger-vm/banger/internal/store"
)

// Bad build requests are refused before anything is built, each with a hint.
func TestImageBuildRefusesBadInput(t *testing.T) {
	ctx := context.Background()
	l := testLayout(t)
	d := startDaemon(t, l)
	if err := d.store.PutImage(ctx, store.Image{ID: "img1", Name: "base", RootfsPath: "/nonexistent"}); err != nil {
		t.Fatal(err)
	}
	script := filepath.Join(t.TempDir(), "ok.sh")
	if err := os.WriteFile(script, []byte("true\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	c := api.NewClient(l.Socket, "test")
	cases := []struct {
		req  api.ImageBuildRequest
		code api.ErrorCode
		want string
	}{
		{api.ImageBuildRequest{Name: "Bad Name", From: "base"}, api.CodeBadRequest, "invalid image name"},
		{api.ImageBuildRequest{Name: "new"}, api.CodeBadRequest, "no base image"},
		{api.ImageBuildRequest{Name: "base", From: "base"}, api.CodeBadRequest, "built from itself"},
		{api.ImageBuildRequest{Name: "new", From: "nope"}, api.CodeNotFound, `base image "nope" not found`},
		{api.ImageBuildRequest{Name: "new", From: "base", Size: "huge"}, api.CodeBadRequest, "invalid size"},
		{api.ImageBuildRequest{Name: "new", From: "base", Packages: []string{"git; rm -rf /"}}, api.CodeBadRequest, "invalid package name"},
		{api.ImageBuildRequest{Name: "new", From: "base", Packages: []string{"/missing/x.deb"}}, api.CodeBadRequest, "package file"},
		{api.ImageBuildRequest{Name: "new", From: "base", Scripts: []string{"/missing.sh"}}, api.CodeBadRequest, "not a readable file"},
		{api.ImageBuildRequest{Name: "new", From: "base", Copies: []api.BuildCopy{{Src: script, Dst: "relative"}}}, api.CodeBadRequest, "must be absolute"},
		{api.ImageBuildRequest{Name: "new", From: "base", Scripts: []string{script}, Memory: "1K"}, api.CodeBadRequest, "invalid memory"},
	}
	for _, tc := range cases {
		_, err := c.BuildImage(ctx, tc.req, nil)
		var ae *api.Error
		if !errors.As(err, &ae) || ae.Code != tc.code || !strings.Contains(ae.Message, tc.want) || ae.Hint == "" {
			t.Errorf("build %+v: %v; want %s containing %q with a hint", tc.req, err, tc.code, tc.want)
		}
	}
	if imgs, err := d.store.ListImages(ctx); err != nil || len(imgs) != 1 {
		t.Fatalf("refused builds changed the images: %v %v", imgs, err)
	}
}

// The seal step leaves root's authorized_keys as the base had it.
func TestSealScriptRestoresAuthorizedKeys(t *testing.T) {
	root := t.TempDir()
	run := func(bf builderFiles, stdin []byte) {
		t.Helper()
		script := strings.ReplaceAll(sealScript(bf), "/root/", root+"/root/")
		// Every /etc path goes under root: this runs the real script on the host.
		script = strings.ReplaceAll(script, "/etc/", root+"/etc/")
		script = strings.ReplaceAll(script, "/var/service/", root+"/var/service/")
		if strings.Contains(strings.ReplaceAll(script, root+"/", ""), " /etc/") || strings.Contains(strings.ReplaceAll(script, root+"/", ""), "/etc/machine-id") {
			t.Fatalf("the seal script touches a host path: %s", script)
		}
		script = strings.ReplaceAll(script, buildScratch, root+buildScratch)
		cmd := exec.Command("sh", "-c", script)
		cmd.Stdin = bytes.NewReader(stdin)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", script, err, out)
		}
	}
	write := func(p, s string) {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(root, p)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, p), []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// Base without .ssh: everything banger added goes, host keys too.
	write("root/.ssh/authorized_keys", "banger key\n")
	write("etc/ssh/ssh_host_ed25519_key", "k")
	write("etc/ssh/ssh_host_rsa_key.pub", "k")
	write("etc/ssh/sshd_config.d/banger.conf", "c")
	write("var/cache/banger-build/x", "x")
	write("etc/machine-id", "0123456789abcdef\n")
	if err := os.MkdirAll(filepath.Join(root, "etc/service"), 0o755); err != nil {
		t.Fatal(err)
	}
	_ = os.Symlink("/run/banger/sv/banger-agent", filepath.Join(root, "etc/service/banger-agent"))
	_ = os.Symlink("/etc/sv/sshd", filepath.Join(root, "etc/service/sshd"))
	run(builderFiles{}, nil)
	if id, err := os.ReadFile(filepath.Join(root, "etc/machine-id")); err != nil || len(id) != 0 {
		t.Errorf("machine-id after the seal: %q %v (want empty)", id, err)
	}
	if _, err := os.Lstat(filepath.Join(root, "etc/service/banger-agent")); err == nil {
		t.Error("the runit link to banger's /run service survived the seal")
	}
	if _, err := os.Lstat(filepath.Join(root, "etc/service/sshd")); err != nil {
		t.Error("the seal removed the image's own sshd service link")
	}
	for _, p := range []string{"root/.ssh", "etc/ssh/ssh_host_ed25519_key", "etc/ssh/ssh_host_rsa_key.pub", "etc/ssh/sshd_config.d/banger.conf", "var/cache/banger-build"} {
		if _, err := os.Stat(filepath.Join(root, p)); err == nil {
			t.Errorf("%s survived the seal", p)
		}
	}
	// Base with its own keys: they come back exactly.
	write("root/.ssh/authorized_keys", "theirs\nbanger key\n")
	run(builderFiles{hadSSHDir: true, hadAuthorize: true, authorized: []byte("theirs\n")}, []byte("theirs\n"))
	if got, _ := os.ReadFile(filepath.Join(root, "root/.ssh/authorized_keys")); string(got) != "theirs\n" {
		t.Errorf("authorized_keys after the seal: %q", got)
	}
}

func TestOutputLinesSplitsAndKeepsTheTail(t *testing.T) {
	var got []string
	o := &outputLines{emit: func(l string) { got = append(got, l) }}
	_, _ = o.Write([]byte("one\ntw"))
	_, _ = o.Write([]byte("o\r\n 10%\r 50%\rdone"))
	o.flush()
	if strings.Join(got, "|") != "one|two| 10%| 50%|done" {
		t.Fatalf("lines %q", got)
	}
	for i := 0; i < 100; i++ {
		_, _ = o.Write([]byte("x\n"))
	}
	if len(o.tail()) != outputTail {
		t.Fatalf("tail keeps %d lines, want %d", len(o.tail()), outputTail)
	}
	big := &outputLines{emit: func(string) {}}
	_, _ = big.Write(bytes.Repeat([]byte("y"), maxOutputLine+1))
	if len(big.buf) != 0 {
		t.Fatal("an endless line is buffered without bound")
	}
}
