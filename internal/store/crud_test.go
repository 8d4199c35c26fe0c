package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"
)

func mustMAC(t testing.TB, s string) net.HardwareAddr {
	t.Helper()
	m, err := net.ParseMAC(s)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func writeFile(path string, data []byte) error { return os.WriteFile(path, data, 0o600) }

func putImage(t testing.TB, s *Store, id, name string) Image {
	t.Helper()
	img := Image{ID: id, Name: name, Source: "debian:bookworm", RootfsPath: "/images/" + id + ".ext4"}
	if err := s.PutImage(context.Background(), img); err != nil {
		t.Fatalf("PutImage(%s): %v", id, err)
	}
	return img
}

func putVM(t testing.TB, s *Store, id, name, imageID string) {
	t.Helper()
	if err := s.PutVM(context.Background(), VM{ID: id, Name: name, ImageID: imageID, State: VMCreated, VMM: "qemu"}); err != nil {
		t.Fatalf("PutVM(%s): %v", id, err)
	}
}

func TestImages(t *testing.T) {
	ctx := context.Background()
	s := openTest(t)

	created := time.Date(2025, 1, 2, 3, 4, 5, 6, time.UTC)
	img := Image{
		ID: "img1", Name: "bookworm", Source: "debian:bookworm", Digest: "sha256:abc",
		RootfsPath: "/r", WorkSeedPath: "/w", KernelRef: "linux-6.1", SizeBytes: 1 << 30,
		CreatedAt: created, UpdatedAt: created, Metadata: json.RawMessage(`{"arch":"amd64"}`),
	}
	if err := s.PutImage(ctx, img); err != nil {
		t.Fatal(err)
	}
	got, err := s.GetImage(ctx, "img1")
	if err != nil {
		t.Fatal(err)
	}
	if got.Name != img.Name || got.Digest != img.Digest || got.SizeBytes != img.SizeBytes ||
		got.KernelRef != img.KernelRef || got.WorkSeedPath != img.WorkSeedPath ||
		!got.CreatedAt.Equal(created) || string(got.Metadata) != string(img.Metadata) {
		t.Fatalf("GetImage = %+v, want %+v", got, img)
	}
	if byName, err := s.GetImageByName(ctx, "bookworm"); err != nil || byName.ID != "img1" {
		t.Fatalf("GetImageByName = %+v, %v", byName, err)
	}

	// Update keeps created_at, changes the rest.
	img.Name, img.CreatedAt, img.UpdatedAt, img.Metadata = "bookworm-2", time.Now(), time.Now(), nil
	if err := s.PutImage(ctx, img); err != nil {
		t.Fatal(err)
	}
	got, _ = s.GetImage(ctx, "img1")
	if got.Name != "bookworm-2" || !got.CreatedAt.Equal(created) || string(got.Metadata) != "{}" {
		t.Fatalf("after update: %+v", got)
	}

	// Zero timestamps are filled in.
	putImage(t, s, "img0", "alpine")
	got, _ = s.GetImage(ctx, "img0")
	if time.Since(got.CreatedAt) > time.Minute || time.Since(got.UpdatedAt) > time.Minute {
		t.Fatalf("timestamps not defaulted: %+v", got)
	}

	// Name taken by another image.
	if err := s.PutImage(ctx, Image{ID: "img2", Name: "bookworm-2"}); !errors.Is(err, ErrConflict) {
		t.Fatalf("duplicate name: %v, want ErrConflict", err)
	}
	// Bad values.
	for _, bad := range []Image{
		{ID: "", Name: "x"},
		{ID: "x", Name: ""},
		{ID: "x", Name: "x", SizeBytes: -1},
		{ID: "x", Name: "x", Metadata: json.RawMessage(`{nope`)},
	} {
		if err := s.PutImage(ctx, bad); !errors.Is(err, ErrInvalid) {
			t.Errorf("PutImage(%+v) = %v, want ErrInvalid", bad, err)
		}
	}

	list, err := s.ListImages(ctx)
	if err != nil || len(list) != 2 || list[0].Name != "alpine" || list[1].Name != "bookworm-2" {
		t.Fatalf("ListImages = %+v, %v", list, err)
	}

	if err := s.DeleteImage(ctx, "img0"); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteImage(ctx, "img0"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second delete = %v, want ErrNotFound", err)
	}
	if _, err := s.GetImage(ctx, "img0"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("GetImage deleted = %v", err)
	}
	if _, err := s.GetImageByName(ctx, "nope"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("GetImageByName missing = %v", err)
	}
}

func TestVMs(t *testing.T) {
	ctx := context.Background()
	s := openTest(t)
	putImage(t, s, "img1", "bookworm")

	vm := VM{ID: "vm1", Name: "dev", ImageID: "img1", State: VMCreated, VMM: "qemu", Spec: json.RawMessage(`{"vcpus":2}`)}
	if err := s.PutVM(ctx, vm); err != nil {
		t.Fatal(err)
	}
	got, err := s.GetVM(ctx, "vm1")
	if err != nil || got.Name != "dev" || got.ImageID != "img1" || got.State != VMCreated || got.VMM != "qemu" || string(got.Spec) != `{"vcpus":2}` {
		t.Fatalf("GetVM = %+v, %v", got, err)
	}
	if got, err := s.GetVMByName(ctx, "dev"); err != nil || got.ID != "vm1" {
		t.Fatalf("GetVMByName = %+v, %v", got, err)
	}

	// Every Go state is accepted by the schema's CHECK (the two lists agree).
	for _, st := range VMStates() {
		if err := s.SetVMState(ctx, "vm1", st); err != nil {
			t.Fatalf("SetVMState(%s): %v", st, err)
		}
		if got, _ := s.GetVM(ctx, "vm1"); got.State != st {
			t.Fatalf("state = %s, want %s", got.State, st)
		}
	}
	// ... and anything else is rejected by it.
	if err := s.SetVMState(ctx, "vm1", "exploded"); !errors.Is(err, ErrInvalid) {
		t.Fatalf("SetVMState(bogus) = %v, want ErrInvalid", err)
	}
	vm.State = "hibernating"
	if err := s.PutVM(ctx, vm); !errors.Is(err, ErrInvalid) {
		t.Fatalf("PutVM(bogus state) = %v, want ErrInvalid", err)
	}
	// The CHECK itself, below the API.
	_, err = s.w.Exec(`INSERT INTO vms(id, name, image_id, state, created_at, updated_at) VALUES ('v', 'v', 'img1', 'bogus', 0, 0)`)
	if constraintCode(err) != 275 { // SQLITE_CONSTRAINT_CHECK
		t.Fatalf("raw insert with bogus state: %v", err)
	}
	if err := s.SetVMState(ctx, "nope", VMRunning); !errors.Is(err, ErrNotFound) {
		t.Fatalf("SetVMState(missing) = %v, want ErrNotFound", err)
	}

	// FK: an unknown image is rejected.
	err = s.PutVM(ctx, VM{ID: "vm2", Name: "other", ImageID: "no-such-image", State: VMCreated})
	if !errors.Is(err, ErrNotFound) {
		t.Fatalf("PutVM(unknown image) = %v, want ErrNotFound", err)
	}
	// UNIQUE name.
	err = s.PutVM(ctx, VM{ID: "vm2", Name: "dev", ImageID: "img1", State: VMCreated})
	if !errors.Is(err, ErrConflict) {
		t.Fatalf("PutVM(duplicate name) = %v, want ErrConflict", err)
	}
	putVM(t, s, "vm2", "alpha", "img1")
	list, err := s.ListVMs(ctx)
	if err != nil || len(list) != 2 || list[0].Name != "alpha" || list[1].Name != "dev" {
		t.Fatalf("ListVMs = %+v, %v", list, err)
	}

	// FK RESTRICT: an image in use cannot be deleted; once unused it can.
	if err := s.DeleteImage(ctx, "img1"); !errors.Is(err, ErrInUse) {
		t.Fatalf("DeleteImage(in use) = %v, want ErrInUse", err)
	}
	if err := s.DeleteVM(ctx, "vm1"); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteVM(ctx, "vm2"); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteVM(ctx, "vm2"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("DeleteVM twice = %v", err)
	}
	if err := s.DeleteImage(ctx, "img1"); err != nil {
		t.Fatalf("DeleteImage(unused) = %v", err)
	}
}

func TestLeases(t *testing.T) {
	ctx := context.Background()
	s := openTest(t)
	putImage(t, s, "img1", "bookworm")
	putVM(t, s, "vm1", "one", "img1")
	putVM(t, s, "vm2", "two", "img1")
	putVM(t, s, "vm3", "three", "img1")

	ip10 := netip.MustParseAddr("10.0.0.10")
	ip2 := netip.MustParseAddr("10.0.0.2")
	if err := s.PutLease(ctx, Lease{IP: ip10, VMID: "vm1", MAC: mustMAC(t, "02:00:00:00:00:0A")}); err != nil {
		t.Fatal(err)
	}
	if err := s.PutLease(ctx, Lease{IP: ip2, VMID: "vm2", MAC: mustMAC(t, "02:00:00:00:00:02")}); err != nil {
		t.Fatal(err)
	}

	l, err := s.GetLease(ctx, ip10)
	if err != nil || l.VMID != "vm1" || l.MAC.String() != "02:00:00:00:00:0a" || time.Since(l.LeasedAt) > time.Minute {
		t.Fatalf("GetLease = %+v, %v", l, err)
	}
	// The same address in IPv4-mapped form is the same key.
	if l, err := s.GetLease(ctx, netip.MustParseAddr("::ffff:10.0.0.10")); err != nil || l.VMID != "vm1" {
		t.Fatalf("GetLease(mapped) = %+v, %v", l, err)
	}
	if l, err := s.GetLeaseByVM(ctx, "vm2"); err != nil || l.IP != ip2 {
		t.Fatalf("GetLeaseByVM = %+v, %v", l, err)
	}

	// Each of ip, vm and mac can be leased once; case does not make a new MAC.
	for name, c := range map[string]Lease{
		"ip taken":  {IP: ip2, VMID: "vm3", MAC: mustMAC(t, "02:00:00:00:00:03")},
		"vm leased": {IP: netip.MustParseAddr("10.0.0.3"), VMID: "vm1", MAC: mustMAC(t, "02:00:00:00:00:03")},
		"mac taken": {IP: netip.MustParseAddr("10.0.0.3"), VMID: "vm3", MAC: mustMAC(t, "02:00:00:00:00:0a")},
	} {
		if err := s.PutLease(ctx, c); !errors.Is(err, ErrConflict) {
			t.Errorf("%s: PutLease = %v, want ErrConflict", name, err)
		}
	}
	if err := s.PutLease(ctx, Lease{IP: netip.MustParseAddr("10.0.0.4"), VMID: "no-such-vm", MAC: mustMAC(t, "02:00:00:00:00:04")}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("PutLease(unknown vm) = %v, want ErrNotFound", err)
	}
	if err := s.PutLease(ctx, Lease{VMID: "vm3"}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("PutLease(empty) = %v, want ErrInvalid", err)
	}

	list, err := s.ListLeases(ctx)
	if err != nil || len(list) != 2 || list[0].IP != ip2 || list[1].IP != ip10 {
		t.Fatalf("ListLeases (numeric order) = %+v, %v", list, err)
	}

	// Deleting a VM cascades to its lease.
	if err := s.DeleteVM(ctx, "vm1"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetLease(ctx, ip10); !errors.Is(err, ErrNotFound) {
		t.Fatalf("lease after DeleteVM = %v, want ErrNotFound", err)
	}
	if err := s.DeleteLease(ctx, ip2); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteLease(ctx, ip2); !errors.Is(err, ErrNotFound) {
		t.Fatalf("DeleteLease twice = %v", err)
	}
	if _, err := s.GetLeaseByVM(ctx, "vm2"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("GetLeaseByVM after delete = %v", err)
	}
	// An address freed can be leased again, by another VM.
	if err := s.PutLease(ctx, Lease{IP: ip2, VMID: "vm3", MAC: mustMAC(t, "02:00:00:00:00:03")}); err != nil {
		t.Fatal(err)
	}
}

func TestEvents(t *testing.T) {
	ctx := context.Background()
	s := openTest(t)

	at := time.Date(2025, 6, 1, 12, 0, 0, 123456789, time.UTC)
	first, err := s.AppendEvent(ctx, Event{At: at, Operation: "vm.start", Subject: "vm1", Stage: "boot",
		Duration: 1500 * time.Millisecond, Error: "boom"})
	if err != nil {
		t.Fatal(err)
	}
	var ids []int64
	for i := range 10 {
		subj, op := "vm1", "vm.start"
		if i%2 == 1 {
			subj = "vm2"
		}
		if i%3 == 0 {
			op = "vm.stop"
		}
		id, err := s.AppendEvent(ctx, Event{Operation: op, Subject: subj, Stage: fmt.Sprint("s", i)})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	prev := first
	for _, id := range ids {
		if id <= prev {
			t.Fatalf("ids not increasing: %d after %d", id, prev)
		}
		prev = id
	}

	all, err := s.ListEvents(ctx, EventFilter{})
	if err != nil || len(all) != 11 {
		t.Fatalf("ListEvents = %d events, %v", len(all), err)
	}
	e := all[0]
	if e.ID != first || !e.At.Equal(at) || e.Operation != "vm.start" || e.Subject != "vm1" ||
		e.Stage != "boot" || e.Duration != 1500*time.Millisecond || e.Error != "boom" {
		t.Fatalf("first event = %+v", e)
	}
	for i := 1; i < len(all); i++ {
		if all[i].ID <= all[i-1].ID {
			t.Fatal("ListEvents not in id order")
		}
		if all[i].At.IsZero() {
			t.Fatal("zero At not defaulted")
		}
	}

	vm2, _ := s.ListEvents(ctx, EventFilter{Subject: "vm2"})
	if len(vm2) != 5 {
		t.Fatalf("vm2 events = %d, want 5", len(vm2))
	}
	stops, _ := s.ListEvents(ctx, EventFilter{Operation: "vm.stop"})
	if len(stops) != 4 {
		t.Fatalf("vm.stop events = %d, want 4", len(stops))
	}
	both, _ := s.ListEvents(ctx, EventFilter{Subject: "vm1", Operation: "vm.stop"})
	if len(both) != 2 { // i = 0, 6
		t.Fatalf("vm1 vm.stop events = %d, want 2", len(both))
	}

	// Paging with AfterID + Limit visits every event once, in order.
	var paged []int64
	for after := int64(0); ; {
		page, err := s.ListEvents(ctx, EventFilter{AfterID: after, Limit: 3})
		if err != nil {
			t.Fatal(err)
		}
		if len(page) == 0 {
			break
		}
		if len(page) > 3 {
			t.Fatalf("page of %d > limit", len(page))
		}
		for _, e := range page {
			paged = append(paged, e.ID)
		}
		after = page[len(page)-1].ID
	}
	if len(paged) != 11 {
		t.Fatalf("paged %d events, want 11", len(paged))
	}

	for _, bad := range []Event{{Stage: "x"}, {Operation: "x"}, {Operation: "x", Stage: "y", Duration: -1}} {
		if _, err := s.AppendEvent(ctx, bad); !errors.Is(err, ErrInvalid) {
			t.Errorf("AppendEvent(%+v) = %v, want ErrInvalid", bad, err)
		}
	}
}

func TestContextCanceled(t *testing.T) {
	s := openTest(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := s.AppendEvent(ctx, Event{Operation: "a", Stage: "b"}); !errors.Is(err, context.Canceled) {
		t.Fatalf("AppendEvent with canceled ctx = %v", err)
	}
	if _, err := s.ListEvents(ctx, EventFilter{}); err == nil {
		t.Fatal("ListEvents with canceled ctx succeeded")
	}
}
