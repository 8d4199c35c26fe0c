package daemon

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/banger-vm/banger/internal/api"
	"github.com/banger-vm/banger/internal/config"
	"github.com/banger-vm/banger/internal/lifecycle"
	"github.com/banger-vm/banger/internal/store"
	"github.com/banger-vm/banger/internal/vmm"
)

func TestVMNames(t *testing.T) {
	for _, ok := range []string{"a", "dev", "my-vm-2", strings.Repeat("a", 32)} {
		if err := validVMName(ok); err != nil {
			t.Errorf("%q refused: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "Dev", "1vm", "a_b", "a-", "a--b", "a b", strings.Repeat("a", 33), "../x"} {
		if err := validVMName(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	for i := 0; i < 100; i++ {
		if n := generateName(); validVMName(n) != nil {
			t.Fatalf("generated name %q is invalid", n)
		}
	}
}

func TestVMAPIRefusesBadInput(t *testing.T) {
	ctx := context.Background()
	l := testLayout(t)
	d := startDaemon(t, l)
	if err := d.store.PutImage(ctx, store.Image{ID: "img1", Name: "img", RootfsPath: "/nonexistent"}); err != nil {
		t.Fatal(err)
	}
	c := api.NewClient(l.Socket, "test")
	cases := []struct {
		req  api.VMCreateRequest
		code api.ErrorCode
		want string
	}{
		{api.VMCreateRequest{Name: "Bad", Image: "img"}, api.CodeBadRequest, "invalid VM name"},
		{api.VMCreateRequest{Image: "img", CPUs: -2}, api.CodeBadRequest, "invalid CPU count"},
		{api.VMCreateRequest{Image: "img", Memory: "64M"}, api.CodeBadRequest, "invalid memory"},
		{api.VMCreateRequest{Image: "img", Memory: "lots"}, api.CodeBadRequest, "invalid memory"},
		{api.VMCreateRequest{Image: "img", DiskSize: "1M"}, api.CodeBadRequest, "invalid disk size"},
		{api.VMCreateRequest{Image: "nope"}, api.CodeNotFound, `image "nope" not found`},
		{api.VMCreateRequest{}, api.CodeNotFound, `image "debian-bookworm" not found`},
		{api.VMCreateRequest{Image: "img"}, api.CodeNotFound, "no kernel"},
	}
	for _, tc := range cases {
		_, err := c.CreateVM(ctx, tc.req, nil)
		var ae *api.Error
		if !errors.As(err, &ae) || ae.Code != tc.code || !strings.Contains(ae.Message, tc.want) || ae.Hint == "" {
			t.Errorf("create %+v: %v; want %s containing %q with a hint", tc.req, err, tc.code, tc.want)
		}
	}
	if vms, err := c.VMs(ctx); err != nil || len(vms) != 0 {
		t.Fatalf("refused creates left VMs: %v %v", vms, err)
	}
	var ae *api.Error
	if _, err := c.InspectVM(ctx, "ghost"); !errors.As(err, &ae) || ae.Code != api.CodeNotFound {
		t.Errorf("inspect of an unknown VM: %v", err)
	}
	if _, err := c.ExecStream(ctx, api.VMExecRequest{Name: "ghost", Argv: []string{"true"}}); !errors.As(err, &ae) || ae.Code != api.CodeNotFound {
		t.Errorf("exec in an unknown VM: %v", err)
	}
	if _, err := c.ExecStream(ctx, api.VMExecRequest{Name: "ghost"}); !errors.As(err, &ae) || ae.Code != api.CodeBadRequest {
		t.Errorf("exec without a command: %v", err)
	}
	if _, err := c.Forward(ctx, "ghost", 22); !errors.As(err, &ae) || ae.Code != api.CodeNotFound {
		t.Errorf("forward to an unknown VM: %v", err)
	}
	if _, err := c.Forward(ctx, "ghost", 0); !errors.As(err, &ae) || ae.Code != api.CodeBadRequest {
		t.Errorf("forward to port 0: %v", err)
	}
	// Without the upgrade headers the exec endpoint says what it needs.
	status, body, err := c.Raw(ctx, "POST", "/v1/vms/exec", []byte(`{"name":"ghost","argv":["true"]}`))
	if err != nil || status != 400 || !strings.Contains(string(body), "upgraded connection") {
		t.Errorf("exec without upgrade: %d %s %v", status, body, err)
	}
}

// A VM recorded as running whose VMM is gone is marked crashed at daemon start, its TAP
// dropped from the spec (so the network reconcile deletes it) and its sockets removed.
func TestReconcileMarksGoneVMs(t *testing.T) {
	ctx := context.Background()
	l := testLayout(t)
	d := startDaemon(t, l)
	run := filepath.Join(l.RuntimeDir, "v", "abc")
	if err := os.MkdirAll(run, 0o700); err != nil {
		t.Fatal(err)
	}
	must(0, d.store.PutImage(ctx, store.Image{ID: "img1", Name: "img", RootfsPath: "/nonexistent"}))
	rec := vmRecord{vmSpec: vmSpec{RunDir: run}, vmStatus: vmStatus{Network: vmNetwork{TAP: "bgvm0abc"},
		VMM: &vmm.State{PID: 1 << 30, StartTime: 1, RunDir: run}}}
	must(0, d.store.PutVM(ctx, store.VM{ID: "abc", Name: "ghost", ImageID: "img1", State: store.VMRunning, VMM: "qemu", Spec: rec.raw()}))
	half := filepath.Join(l.VMsDir, "half")
	must(0, os.MkdirAll(half, 0o700))
	must(0, d.store.PutVM(ctx, store.VM{ID: "half", Name: "half", ImageID: "img1", State: store.VMCreated, VMM: "qemu", Spec: vmRecord{vmSpec: vmSpec{Dir: half}, vmStatus: vmStatus{Creating: true}}.raw()}))
	must(0, d.Shutdown(ctx))

	d2, err := Start(ctx, Options{Layout: l, Config: config.Defaults(), Version: "test"})
	if err != nil {
		t.Fatal(err)
	}
	defer d2.Shutdown(ctx)
	vm, err := d2.store.GetVM(ctx, "abc")
	if err != nil {
		t.Fatal(err)
	}
	got, err := parseRecord(vm)
	if err != nil {
		t.Fatal(err)
	}
	if vm.State != store.VMCrashed || got.Network.TAP != "" || got.VMM != nil || !strings.Contains(got.LastExit, "crashed") {
		t.Fatalf("after reconcile: state %s, spec %+v", vm.State, got)
	}
	if a := d2.vmToAPI(ctx, vm); a.State != "crashed" {
		t.Fatalf("API state %q, want crashed", a.State)
	}
	// An interrupted create is cleaned: no row, no directory.
	if _, err := d2.store.GetVM(ctx, "half"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("interrupted create still in the store: %v", err)
	}
	if _, err := os.Stat(half); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("interrupted create's dir survived: %v", err)
	}
}

func TestStageDeadlineNamesTheStage(t *testing.T) {
	rec := lifecycle.New("vm.test", "x", slog.New(slog.DiscardHandler), nil)
	var reports []api.Progress
	err := runStage(context.Background(), rec, func(p api.Progress) { reports = append(reports, p) }, stage{name: "test stage", deadline: 20 * time.Millisecond},
		func(ctx context.Context) error { <-ctx.Done(); return ctx.Err() })
	var se *stageError
	if !errors.As(err, &se) || se.stage.name != "test stage" || !strings.Contains(err.Error(), "missed its 20ms deadline") {
		t.Fatalf("err = %v", err)
	}
	if st := rec.Stages(); len(st) != 1 || st[0].Error == "" {
		t.Fatalf("stages = %+v", st)
	}
	if len(reports) != 1 || reports[0].Stage != "test stage" {
		t.Fatalf("progress = %+v", reports)
	}
}
