package firecracker

// The contract test: every request the Client can send is captured off a real Unix socket
// and validated against Firecracker's own API description (Swagger 2.0, converted to
// OpenAPI 3 with kin-openapi), with unknown fields rejected. It needs no firecracker binary:
// the description is in testdata (see testdata/README.md for its origin and licence), and a
// missing file fails the test rather than skipping it.

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi2"
	"github.com/getkin/kin-openapi/openapi2conv"
	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/legacy"
)

// specPath is Firecracker's API description, kept in this repository.
const specPath = "testdata/firecracker-api.yaml"

// findSpec returns the API description to test against: $BANGER_FIRECRACKER_API (a newer
// upstream copy, say) or the one in testdata.
func findSpec(t *testing.T) string {
	if p := os.Getenv("BANGER_FIRECRACKER_API"); p != "" {
		return p
	}
	if _, err := os.Stat(specPath); err != nil {
		t.Fatalf("the contract test needs Firecracker's API description: %v", err)
	}
	return specPath
}

type contract struct {
	doc    *openapi3.T
	router routers.Router
}

var (
	contractOnce sync.Once
	contractVal  *contract
	contractErr  string
)

func loadContract(t *testing.T) *contract {
	t.Helper()
	path := findSpec(t)
	contractOnce.Do(func() {
		data, err := os.ReadFile(path)
		if err != nil {
			contractErr = err.Error()
			return
		}
		var doc2 openapi2.T
		if err := openapi2.UnmarshalFromData(data, &doc2); err != nil {
			contractErr = "parse " + path + ": " + err.Error()
			return
		}
		doc, err := openapi2conv.ToV3(&doc2)
		if err != nil {
			contractErr = "convert to OpenAPI 3: " + err.Error()
			return
		}
		// kin-openapi accepts unknown properties unless told otherwise; Firecracker's serde
		// types reject them (deny_unknown_fields), so the contract must too.
		closeSchemas(doc)
		// The converted servers are http://localhost/ (host + basePath), the URL the
		// client's requests carry.
		router, err := legacy.NewRouter(doc)
		if err != nil {
			contractErr = "router: " + err.Error()
			return
		}
		contractVal = &contract{doc: doc, router: router}
	})
	if contractVal == nil {
		t.Fatal(contractErr)
	}
	return contractVal
}

// closeSchemas sets additionalProperties: false on every object schema reachable from the
// document (components and inline), once each.
func closeSchemas(doc *openapi3.T) {
	seen := map[*openapi3.Schema]bool{}
	f := false
	var walk func(*openapi3.SchemaRef)
	walk = func(r *openapi3.SchemaRef) {
		if r == nil || r.Value == nil || seen[r.Value] {
			return
		}
		s := r.Value
		seen[s] = true
		if s.Type.Is("object") || len(s.Properties) > 0 {
			if s.AdditionalProperties.Schema == nil {
				s.AdditionalProperties = openapi3.AdditionalProperties{Has: &f}
			}
		}
		for _, p := range s.Properties {
			walk(p)
		}
		walk(s.Items)
		walk(s.AdditionalProperties.Schema)
		for _, l := range []openapi3.SchemaRefs{s.AllOf, s.AnyOf, s.OneOf} {
			for _, x := range l {
				walk(x)
			}
		}
	}
	for _, s := range doc.Components.Schemas {
		walk(s)
	}
	for _, rb := range doc.Components.RequestBodies {
		for _, mt := range rb.Value.Content {
			walk(mt.Schema)
		}
	}
	for _, pi := range doc.Paths.Map() {
		for _, op := range pi.Operations() {
			if op.RequestBody != nil && op.RequestBody.Value != nil {
				for _, mt := range op.RequestBody.Value.Content {
					walk(mt.Schema)
				}
			}
		}
	}
}

// validate checks one request against the contract.
func (c *contract) validate(method, path string, body []byte) error {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, _ := http.NewRequest(method, "http://localhost"+path, rd)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	route, params, err := c.router.FindRoute(req)
	if err != nil {
		return err
	}
	return openapi3filter.ValidateRequest(context.Background(), &openapi3filter.RequestValidationInput{
		Request: req, PathParams: params, Route: route,
		Options: &openapi3filter.Options{MultiError: true},
	})
}

// captureServer records the requests a Client sends over a real Unix socket.
type captureServer struct {
	mu   sync.Mutex
	reqs []recorded
	ct   []string
}

func newCaptureServer(t *testing.T) (*captureServer, string) {
	sock := filepath.Join(shortDir(t), "api.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	cs := &captureServer{}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		cs.mu.Lock()
		cs.reqs = append(cs.reqs, recorded{Method: r.Method, Path: r.URL.Path, Body: body})
		cs.ct = append(cs.ct, r.Header.Get("Content-Type"))
		cs.mu.Unlock()
		switch {
		case r.Method == http.MethodGet && r.URL.Path == "/":
			json.NewEncoder(w).Encode(InstanceInfo{AppName: "Firecracker", ID: "anonymous-instance", State: "Not started", VMMVersion: "1.10.1"})
		case r.Method == http.MethodGet && r.URL.Path == "/version":
			json.NewEncoder(w).Encode(FirecrackerVersion{FirecrackerVersion: "1.10.1"})
		default:
			w.WriteHeader(http.StatusNoContent)
		}
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return cs, sock
}

// clientCalls exercises every method of Client that talks to Firecracker, keyed by name.
// A new method must be added here, or TestContractCoversEveryMethod fails.
var clientCalls = map[string]func(context.Context, *Client) error{
	"PutMachineConfig": func(ctx context.Context, c *Client) error {
		return c.PutMachineConfig(ctx, MachineConfig{VCPUCount: 2, MemSizeMiB: 1024})
	},
	"PutBootSource": func(ctx context.Context, c *Client) error {
		return c.PutBootSource(ctx, BootSource{KernelImagePath: "/k/vmlinux", InitrdPath: "/k/initrd", BootArgs: "console=ttyS0"})
	},
	"PutDrive": func(ctx context.Context, c *Client) error {
		return c.PutDrive(ctx, Drive{DriveID: "root", PathOnHost: "/img/root.ext4", IsRootDevice: false, IsReadOnly: true})
	},
	"PatchDrive": func(ctx context.Context, c *Client) error {
		return c.PatchDrive(ctx, PartialDrive{DriveID: "work", PathOnHost: "/vm/work.ext4"})
	},
	"PutNetworkInterface": func(ctx context.Context, c *Client) error {
		return c.PutNetworkInterface(ctx, NetworkInterface{IfaceID: "eth0", HostDevName: "bgtap0", GuestMAC: "02:fc:00:00:00:01"})
	},
	"PutVsock": func(ctx context.Context, c *Client) error {
		return c.PutVsock(ctx, Vsock{GuestCID: 3, UDSPath: "/run/vm/vsock.sock"})
	},
	"Action": func(ctx context.Context, c *Client) error {
		for _, a := range []ActionType{ActionInstanceStart, ActionSendCtrlAltDel, ActionFlushMetrics} {
			if err := c.Action(ctx, a); err != nil {
				return err
			}
		}
		return nil
	},
	"PatchVM": func(ctx context.Context, c *Client) error {
		if err := c.PatchVM(ctx, VMPaused); err != nil {
			return err
		}
		return c.PatchVM(ctx, VMResumed)
	},
	"CreateSnapshot": func(ctx context.Context, c *Client) error {
		return c.CreateSnapshot(ctx, SnapshotCreateParams{MemFilePath: "/snap/memory", SnapshotPath: "/snap/state", SnapshotType: SnapshotFull})
	},
	"LoadSnapshot": func(ctx context.Context, c *Client) error {
		return c.LoadSnapshot(ctx, SnapshotLoadParams{
			SnapshotPath: "/snap/state", MemBackend: &MemoryBackend{BackendType: MemoryBackendFile, BackendPath: "/snap/memory"},
			ResumeVM: true, NetworkOverrides: []NetworkOverride{{IfaceID: "eth0", HostDevName: "bgtap7"}},
			VsockOverride: &VsockOverride{UDSPath: "/run/clone/vsock.sock"}, ClockRealtime: true,
		})
	},
	"InstanceInfo": func(ctx context.Context, c *Client) error {
		ii, err := c.InstanceInfo(ctx)
		if err == nil && ii.State != "Not started" {
			return io.ErrUnexpectedEOF
		}
		return err
	},
	"Version": func(ctx context.Context, c *Client) error {
		v, err := c.Version(ctx)
		if err == nil && v != "1.10.1" {
			return io.ErrUnexpectedEOF
		}
		return err
	},
}

// notAPI are Client methods that send nothing.
var notAPI = map[string]bool{"Close": true, "Socket": true}

func TestContractCoversEveryMethod(t *testing.T) {
	typ := reflect.TypeOf(&Client{})
	for i := range typ.NumMethod() {
		name := typ.Method(i).Name
		if _, ok := clientCalls[name]; !ok && !notAPI[name] {
			t.Errorf("Client.%s is not exercised by the contract test: add it to clientCalls", name)
		}
	}
}

func TestContractEveryRequestValidates(t *testing.T) {
	c := loadContract(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var names []string
	for n := range clientCalls {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, name := range names {
		t.Run(name, func(t *testing.T) {
			cs, sock := newCaptureServer(t)
			cl := NewClient(sock)
			defer cl.Close()
			if err := clientCalls[name](ctx, cl); err != nil {
				t.Fatal(err)
			}
			if len(cs.reqs) == 0 {
				t.Fatal("no request captured")
			}
			for i, r := range cs.reqs {
				var body []byte
				if len(r.Body) > 0 {
					body = r.Body
					if cs.ct[i] != "application/json" {
						t.Errorf("%s %s: Content-Type %q", r.Method, r.Path, cs.ct[i])
					}
				}
				if err := c.validate(r.Method, r.Path, body); err != nil {
					t.Errorf("%s %s %s:\n%v", r.Method, r.Path, body, err)
				} else {
					t.Logf("valid: %s %s %s", r.Method, r.Path, body)
				}
			}
		})
	}
}

// TestContractRejectsWrongRequests shows the validation has teeth: each of these is a
// mistake the client could make, and each must fail.
func TestContractRejectsWrongRequests(t *testing.T) {
	c := loadContract(t)
	bad := []struct{ name, method, path, body string }{
		{"vcpu_count as a string", "PUT", "/machine-config", `{"vcpu_count":"2","mem_size_mib":1024}`},
		{"vcpu_count out of range", "PUT", "/machine-config", `{"vcpu_count":0,"mem_size_mib":1024}`},
		{"missing mem_size_mib", "PUT", "/machine-config", `{"vcpu_count":2}`},
		{"unknown machine field", "PUT", "/machine-config", `{"vcpu_count":2,"mem_size_mib":1024,"memory":1}`},
		{"missing is_root_device", "PUT", "/drives/root", `{"drive_id":"root","path_on_host":"/r","is_read_only":true}`},
		{"unknown drive field", "PUT", "/drives/root", `{"drive_id":"root","path_on_host":"/r","is_root_device":false,"is_read_only":true,"serial":"x"}`},
		{"bad action_type", "PUT", "/actions", `{"action_type":"Reboot"}`},
		{"lowercase action_type", "PUT", "/actions", `{"action_type":"instancestart"}`},
		{"bad vm state", "PATCH", "/vm", `{"state":"Stopped"}`},
		{"guest_cid below 3", "PUT", "/vsock", `{"guest_cid":2,"uds_path":"/v"}`},
		{"boot source without kernel", "PUT", "/boot-source", `{"boot_args":"x"}`},
		{"nic without host_dev_name", "PUT", "/network-interfaces/eth0", `{"iface_id":"eth0"}`},
		{"wrong method", "POST", "/actions", `{"action_type":"InstanceStart"}`},
		{"unknown path", "PUT", "/vsocks", `{"guest_cid":3,"uds_path":"/v"}`},
		{"no body", "PUT", "/actions", ``},
		{"snapshot without state path", "PUT", "/snapshot/create", `{"mem_file_path":"/m"}`},
		{"half snapshot", "PUT", "/snapshot/create", `{"mem_file_path":"/m","snapshot_path":"/s","snapshot_type":"Half"}`},
		{"memory backend of no type", "PUT", "/snapshot/load", `{"snapshot_path":"/s","mem_backend":{"backend_path":"/m"}}`},
		{"override without a TAP", "PUT", "/snapshot/load", `{"snapshot_path":"/s","mem_backend":{"backend_type":"File","backend_path":"/m"},"network_overrides":[{"iface_id":"eth0"}]}`},
	}
	for _, b := range bad {
		var body []byte
		if b.body != "" {
			body = []byte(b.body)
		}
		if err := c.validate(b.method, b.path, body); err == nil {
			t.Errorf("%s: %s %s %s passed validation", b.name, b.method, b.path, b.body)
		}
	}
	// And the same shapes done right pass, so the failures above are about the mistake.
	if err := c.validate("PUT", "/machine-config", []byte(`{"vcpu_count":2,"mem_size_mib":1024}`)); err != nil {
		t.Errorf("good request failed: %v", err)
	}
}

// TestContractResponsesDecode checks the answer types' fields against the response
// schemas: a JSON body built from them must validate (no unknown, no missing field).
func TestContractResponsesDecode(t *testing.T) {
	c := loadContract(t)
	for path, v := range map[string]any{
		"/":        InstanceInfo{AppName: "Firecracker", ID: "x", State: "Running", VMMVersion: "1.10.1"},
		"/version": FirecrackerVersion{FirecrackerVersion: "1.10.1"},
	} {
		body, _ := json.Marshal(v)
		req, _ := http.NewRequest("GET", "http://localhost"+path, nil)
		route, params, err := c.router.FindRoute(req)
		if err != nil {
			t.Fatal(err)
		}
		in := &openapi3filter.ResponseValidationInput{
			RequestValidationInput: &openapi3filter.RequestValidationInput{Request: req, PathParams: params, Route: route},
			Status:                 200,
			Header:                 http.Header{"Content-Type": {"application/json"}},
			Options:                &openapi3filter.Options{MultiError: true},
		}
		in.SetBodyBytes(body)
		if err := openapi3filter.ValidateResponse(context.Background(), in); err != nil {
			t.Errorf("GET %s answer %s: %v", path, body, err)
		}
	}
	// The fault shape we decode is the spec's Error definition.
	if p := c.doc.Components.Schemas["Error"]; p == nil || p.Value.Properties["fault_message"] == nil {
		t.Error("the spec's Error has no fault_message")
	}
}

// TestDriverRequestsMatchContract validates what the driver really sends for a full VM
// (via the fake firecracker's request log): boot, then a stop through Ctrl-Alt-Del.
func TestDriverRequestsMatchContract(t *testing.T) {
	c := loadContract(t)
	f := newFixture(t, "ignore-power")
	ctx := ctxT(t)
	m, err := f.drv.Start(ctx, f.spec)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Stop(ctx, 600*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	reqs := f.requests(t)
	if len(reqs) < 9 {
		t.Fatalf("only %d requests", len(reqs))
	}
	for _, r := range reqs {
		var body []byte
		if len(r.Body) > 0 {
			body = r.Body
		}
		if err := c.validate(r.Method, r.Path, body); err != nil {
			t.Errorf("%s %s %s:\n%v", r.Method, r.Path, body, err)
		}
	}
}

func TestAPIErrors(t *testing.T) {
	sock := filepath.Join(shortDir(t), "api.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/drives/root":
			w.WriteHeader(400)
			io.WriteString(w, `{"fault_message":"Unable to create the block device: No such file or directory (os error 2)"}`)
		case "/actions":
			w.WriteHeader(500)
			io.WriteString(w, "internal trouble\n")
		case "/":
			io.WriteString(w, "not json")
		}
	})}
	go srv.Serve(ln)
	defer srv.Close()
	cl := NewClient(sock)
	ctx := ctxT(t)
	err = cl.PutDrive(ctx, Drive{DriveID: "root", PathOnHost: "/nope"})
	ae, ok := err.(*APIError)
	if !ok || ae.Status != 400 || ae.Method != "PUT" || ae.Path != "/drives/root" || !strings.HasPrefix(ae.FaultMessage, "Unable to create the block device") {
		t.Fatalf("err = %#v", err)
	}
	if s := err.Error(); s != "firecracker PUT /drives/root: 400 Bad Request: Unable to create the block device: No such file or directory (os error 2)" {
		t.Errorf("message %q", s)
	}
	if err := cl.Action(ctx, ActionInstanceStart); err == nil || !strings.Contains(err.Error(), "500 Internal Server Error: internal trouble") {
		t.Errorf("non-JSON error body: %v", err)
	}
	if _, err := cl.InstanceInfo(ctx); err == nil || !strings.Contains(err.Error(), "decode answer") {
		t.Errorf("bad answer: %v", err)
	}
	srv.Close()
	gone := NewClient(filepath.Join(filepath.Dir(sock), "missing.sock"))
	if err := gone.PatchVM(ctx, VMPaused); err == nil || !strings.Contains(err.Error(), "missing.sock") || !strings.Contains(err.Error(), "PATCH /vm") {
		t.Errorf("no socket: %v", err)
	}
}
