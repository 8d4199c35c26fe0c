package daemon

// The API description (internal/api/openapi.yaml, served at GET /v1/openapi.json) against
// the daemon: every route of the route table is driven through a validating proxy on a
// real Unix socket, each request and answer is checked against the description, and the
// route table and the description must list exactly the same routes.

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/legacy"

	"github.com/banger-vm/banger/internal/agent"
	"github.com/banger-vm/banger/internal/api"
)

// loadDescription parses and validates an API description and closes its object schemas
// (additionalProperties: false where the description leaves it open), so an answer with a
// field the description does not name fails validation: the description cannot fall
// behind the daemon. Clients are told to ignore unknown fields; the test is stricter.
func loadDescription(t *testing.T, data []byte) *openapi3.T {
	t.Helper()
	doc, err := openapi3.NewLoader().LoadFromData(data)
	if err != nil {
		t.Fatalf("load the API description: %v", err)
	}
	if err := doc.Validate(context.Background()); err != nil {
		t.Fatalf("the API description is not valid OpenAPI 3: %v", err)
	}
	closeObjectSchemas(doc)
	return doc
}

func closeObjectSchemas(doc *openapi3.T) {
	seen := map[*openapi3.Schema]bool{}
	no := false
	var walk func(*openapi3.SchemaRef)
	walk = func(r *openapi3.SchemaRef) {
		if r == nil || r.Value == nil || seen[r.Value] {
			return
		}
		s := r.Value
		seen[s] = true
		if len(s.Properties) > 0 && s.AdditionalProperties.Has == nil && s.AdditionalProperties.Schema == nil {
			s.AdditionalProperties = openapi3.AdditionalProperties{Has: &no}
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
}

// routeKey names a route: "GET /v1/status".
func routeKey(method, path string) string { return method + " " + path }

// describedRoutes lists the routes of the description.
func describedRoutes(doc *openapi3.T) map[string]bool {
	out := map[string]bool{}
	for path, item := range doc.Paths.Map() {
		for method := range item.Operations() {
			out[routeKey(method, path)] = true
		}
	}
	return out
}

// routeGaps compares the daemon's route table with the description: undocumented routes
// are served but not described, phantom ones described but not served.
func routeGaps(table map[string][]string, doc *openapi3.T) (undocumented, phantom []string) {
	described := describedRoutes(doc)
	served := map[string]bool{}
	for path, methods := range table {
		for _, m := range methods {
			served[routeKey(m, path)] = true
		}
	}
	for k := range served {
		if !described[k] {
			undocumented = append(undocumented, k)
		}
	}
	for k := range described {
		if !served[k] {
			phantom = append(phantom, k)
		}
	}
	sort.Strings(undocumented)
	sort.Strings(phantom)
	return undocumented, phantom
}

func embeddedDescription(t *testing.T) *openapi3.T {
	t.Helper()
	data, err := api.OpenAPIJSON()
	if err != nil {
		t.Fatal(err)
	}
	return loadDescription(t, data)
}

// TestOpenAPIDescribesEveryRoute: the route table and the description list the same
// routes. The table comes from the daemon itself (routeList), not from a copy here.
func TestOpenAPIDescribesEveryRoute(t *testing.T) {
	doc := embeddedDescription(t)
	undocumented, phantom := routeGaps((&Daemon{}).routeList(), doc)
	if len(undocumented) > 0 {
		t.Errorf("routes the daemon serves but internal/api/openapi.yaml does not describe: %v", undocumented)
	}
	if len(phantom) > 0 {
		t.Errorf("routes internal/api/openapi.yaml describes but the daemon does not serve: %v", phantom)
	}
}

// TestOpenAPIRouteGapsAreReported shows the coverage check failing: a path taken out of
// the description, one method taken out of a two-method path, and a route added to it are
// each reported, exactly.
func TestOpenAPIRouteGapsAreReported(t *testing.T) {
	table := (&Daemon{}).routeList()

	doc := embeddedDescription(t)
	doc.Paths.Delete("/v1/vms/logs")
	undocumented, phantom := routeGaps(table, doc)
	if !slices.Equal(undocumented, []string{"GET /v1/vms/logs"}) || len(phantom) != 0 {
		t.Errorf("without /v1/vms/logs: undocumented %v, phantom %v; want exactly [GET /v1/vms/logs] undocumented", undocumented, phantom)
	}

	doc = embeddedDescription(t)
	doc.Paths.Value("/v1/leaks").Post = nil
	undocumented, phantom = routeGaps(table, doc)
	if !slices.Equal(undocumented, []string{"POST /v1/leaks"}) || len(phantom) != 0 {
		t.Errorf("without POST /v1/leaks: undocumented %v, phantom %v", undocumented, phantom)
	}

	doc = embeddedDescription(t)
	doc.Paths.Set("/v1/vms/teleport", &openapi3.PathItem{Post: doc.Paths.Value("/v1/vms/rm").Post})
	undocumented, phantom = routeGaps(table, doc)
	if len(undocumented) != 0 || !slices.Equal(phantom, []string{"POST /v1/vms/teleport"}) {
		t.Errorf("with POST /v1/vms/teleport: undocumented %v, phantom %v", undocumented, phantom)
	}
}

// TestOpenAPIErrorResponsesUseErrorBody: every error answer an operation describes is the
// shared ErrorBody, and every operation describes its internal error.
func TestOpenAPIErrorResponsesUseErrorBody(t *testing.T) {
	doc := embeddedDescription(t)
	for path, item := range doc.Paths.Map() {
		for method, op := range item.Operations() {
			if op.Responses.Status(http.StatusInternalServerError) == nil {
				t.Errorf("%s %s: no 500 response", method, path)
			}
			for code, r := range op.Responses.Map() {
				if code < "400" {
					continue
				}
				mt := r.Value.Content.Get("application/json")
				if mt == nil || mt.Schema == nil || mt.Schema.Ref != "#/components/schemas/ErrorBody" {
					t.Errorf("%s %s: response %s is not an ErrorBody", method, path, code)
				}
			}
		}
	}
}

// exchange is one request through the validating proxy.
type exchange struct {
	method, path string
	route        string // "GET /v1/..." when the description has it
	status       int
	reqErr       error // the request does not match the description
	respErr      error // the answer does not match the description
}

// validatingProxy sits on its own Unix socket in front of the daemon's and checks every
// request and answer against the description.
type validatingProxy struct {
	doc    *openapi3.T
	router routers.Router
	socket string
	proxy  *httputil.ReverseProxy

	mu        sync.Mutex
	exchanges []*exchange
}

type exchangeKey struct{}

func newValidatingProxy(t *testing.T, doc *openapi3.T, daemonSocket string) *validatingProxy {
	t.Helper()
	router, err := legacy.NewRouter(doc)
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "bgrp") // private (0700), as the client insists
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	p := &validatingProxy{doc: doc, router: router, socket: filepath.Join(dir, "proxy.sock")}
	p.proxy = &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.Out.URL.Scheme, pr.Out.URL.Host = "http", "banger"
		},
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", daemonSocket)
		}},
		ModifyResponse: p.checkResponse,
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			if ex, ok := r.Context().Value(exchangeKey{}).(*exchange); ok {
				p.answered(ex, http.StatusBadGateway, fmt.Errorf("proxy: %w", err))
			}
			w.WriteHeader(http.StatusBadGateway)
		},
	}
	ln, err := net.Listen("unix", p.socket)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: p, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return p
}

// ServeHTTP validates the request, then hands it to the daemon.
func (p *validatingProxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	r.Body = io.NopCloser(bytes.NewReader(body))
	ex := &exchange{method: r.Method, path: r.URL.Path}
	if route, params, err := p.findRoute(r); err == nil {
		ex.route = routeKey(route.Method, route.Path)
		vreq := p.validationRequest(r, body)
		ex.reqErr = openapi3filter.ValidateRequest(r.Context(), &openapi3filter.RequestValidationInput{
			Request: vreq, PathParams: params, Route: route})
	}
	p.mu.Lock()
	p.exchanges = append(p.exchanges, ex)
	p.mu.Unlock()
	p.proxy.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), exchangeKey{}, ex)))
}

func (p *validatingProxy) validationRequest(r *http.Request, body []byte) *http.Request {
	vreq := r.Clone(r.Context())
	vreq.URL.Scheme, vreq.URL.Host = "http", "banger"
	vreq.Body = io.NopCloser(bytes.NewReader(body))
	return vreq
}

func (p *validatingProxy) findRoute(r *http.Request) (*routers.Route, map[string]string, error) {
	u := *r.URL
	u.Scheme, u.Host = "http", "banger"
	req := &http.Request{Method: r.Method, URL: &u, Host: "banger", Header: r.Header}
	return p.router.FindRoute(req)
}

// checkResponse validates the daemon's answer (reading a stream to its end first).
func (p *validatingProxy) checkResponse(resp *http.Response) error {
	ex, _ := resp.Request.Context().Value(exchangeKey{}).(*exchange)
	if ex == nil {
		return errors.New("no exchange")
	}
	var body []byte
	if resp.StatusCode != http.StatusSwitchingProtocols {
		var err error
		if body, err = io.ReadAll(resp.Body); err != nil {
			p.answered(ex, resp.StatusCode, err)
			return err
		}
		resp.Body.Close()
		resp.Body = io.NopCloser(bytes.NewReader(body))
	}
	p.answered(ex, resp.StatusCode, p.validateResponse(resp, body))
	return nil
}

// answered records the daemon's answer to ex.
func (p *validatingProxy) answered(ex *exchange, status int, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	ex.status, ex.respErr = status, err
}

func (p *validatingProxy) validateResponse(resp *http.Response, body []byte) error {
	if resp.StatusCode >= 400 {
		if err := p.checkErrorBody(resp.StatusCode, body); err != nil {
			return err
		}
	}
	route, params, err := p.findRoute(resp.Request)
	if err != nil {
		return p.checkUnrouted(resp, err)
	}
	in := &openapi3filter.RequestValidationInput{Request: p.validationRequest(resp.Request, nil), PathParams: params, Route: route}
	ri := &openapi3filter.ResponseValidationInput{
		RequestValidationInput: in, Status: resp.StatusCode, Header: resp.Header,
		Body:    io.NopCloser(bytes.NewReader(body)),
		Options: &openapi3filter.Options{IncludeResponseStatus: true},
	}
	if mediaType(resp.Header.Get("Content-Type")) == "application/x-ndjson" {
		ri.Options.ExcludeResponseBody = true
		if err := openapi3filter.ValidateResponse(context.Background(), ri); err != nil {
			return err
		}
		return p.checkStream(route.Operation, resp.StatusCode, body)
	}
	if resp.StatusCode == http.StatusSwitchingProtocols {
		want := resp.Request.Header.Get("Upgrade")
		if got := resp.Header.Get("Upgrade"); got != want {
			return fmt.Errorf("101 with Upgrade %q, asked for %q", got, want)
		}
	}
	return openapi3filter.ValidateResponse(context.Background(), ri)
}

func mediaType(ct string) string {
	mt, _, _ := strings.Cut(ct, ";")
	return strings.TrimSpace(mt)
}

// checkErrorBody: an error answer is an ErrorBody whose code maps to its status.
func (p *validatingProxy) checkErrorBody(status int, body []byte) error {
	var v any
	if err := json.Unmarshal(body, &v); err != nil {
		return fmt.Errorf("error answer %d is not JSON: %q", status, body)
	}
	if err := p.doc.Components.Schemas["ErrorBody"].Value.VisitJSON(v); err != nil {
		return fmt.Errorf("error answer %d: %w", status, err)
	}
	var eb api.ErrorBody
	_ = json.Unmarshal(body, &eb)
	if eb.Error.Code.HTTPStatus() != status {
		return fmt.Errorf("error code %s answered with status %d, want %d", eb.Error.Code, status, eb.Error.Code.HTTPStatus())
	}
	return nil
}

// checkUnrouted: a request the description has no operation for is answered not_found
// (unknown path) or method_not_allowed with Allow listing the described methods.
func (p *validatingProxy) checkUnrouted(resp *http.Response, routeErr error) error {
	switch routeErr.Error() {
	case routers.ErrPathNotFound.Error():
		if resp.StatusCode != http.StatusNotFound {
			return fmt.Errorf("undescribed path answered %d, want 404", resp.StatusCode)
		}
	case routers.ErrMethodNotAllowed.Error():
		if resp.StatusCode != http.StatusMethodNotAllowed {
			return fmt.Errorf("undescribed method answered %d, want 405", resp.StatusCode)
		}
		item := p.doc.Paths.Value(resp.Request.URL.Path)
		var methods []string
		for m := range item.Operations() {
			methods = append(methods, m)
		}
		sort.Strings(methods)
		if got, want := resp.Header.Get("Allow"), strings.Join(methods, ", "); got != want {
			return fmt.Errorf("Allow: %q, the description has %q", got, want)
		}
	default:
		return routeErr
	}
	return nil
}

// checkStream validates an NDJSON answer line by line against the operation's item
// schema, and its framing: progress lines, then exactly one result or error line.
func (p *validatingProxy) checkStream(op *openapi3.Operation, status int, body []byte) error {
	mt := op.Responses.Status(status).Value.Content.Get("application/x-ndjson")
	if mt == nil {
		return fmt.Errorf("%d answered as application/x-ndjson, which the description does not say", status)
	}
	sc := bufio.NewScanner(bytes.NewReader(body))
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	var lines []map[string]any
	for sc.Scan() {
		var v map[string]any
		if err := json.Unmarshal(sc.Bytes(), &v); err != nil {
			return fmt.Errorf("stream line %d: %w", len(lines)+1, err)
		}
		if err := mt.Schema.Value.VisitJSON(v); err != nil {
			return fmt.Errorf("stream line %d %s: %w", len(lines)+1, sc.Bytes(), err)
		}
		lines = append(lines, v)
	}
	if len(lines) == 0 {
		return errors.New("empty stream")
	}
	for i, l := range lines {
		_, progress := l["progress"]
		if last := i == len(lines)-1; last == progress {
			return fmt.Errorf("stream line %d of %d: %v: progress lines come first, then one result or error", i+1, len(lines), l)
		}
	}
	return nil
}

// since returns (copies of) the exchanges from index n on.
func (p *validatingProxy) since(n int) []exchange {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]exchange, 0, len(p.exchanges)-n)
	for _, ex := range p.exchanges[n:] {
		out = append(out, *ex)
	}
	return out
}

func (p *validatingProxy) count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.exchanges)
}

// exerciser runs steps through the proxy and keeps what each route got.
type exerciser struct {
	t     *testing.T
	p     *validatingProxy
	c     *api.Client
	raw   *http.Client
	ok    map[string]bool // route -> answered 2xx or 101
	fail  map[string]bool // route -> answered a described 4xx
	wrong map[string]bool // path -> answered 405 to another method
}

// want is what a step expects: the status, the client's error code ("" = none; only for
// steps through api.Client), and whether the request itself breaks the description
// (malformed on purpose: the description must refuse it too).
type want struct {
	status     int
	code       api.ErrorCode
	invalidReq bool
}

func (x *exerciser) step(label string, w want, fn func() error) {
	x.t.Helper()
	n := x.p.count()
	err := fn()
	if w.code == "" && err != nil {
		x.t.Errorf("%s: %v", label, err)
	}
	if w.code != "" {
		var ae *api.Error
		if !errors.As(err, &ae) || ae.Code != w.code {
			x.t.Errorf("%s: got error %v, want code %s", label, err, w.code)
		}
	}
	exs := x.p.since(n)
	if len(exs) != 1 {
		x.t.Errorf("%s: %d requests, want 1", label, len(exs))
		return
	}
	ex := exs[0]
	if ex.status != w.status {
		x.t.Errorf("%s: %s %s answered %d, want %d", label, ex.method, ex.path, ex.status, w.status)
	}
	if ex.respErr != nil {
		x.t.Errorf("%s: %s %s: the answer does not match the description: %v", label, ex.method, ex.path, ex.respErr)
	}
	switch {
	case w.invalidReq && ex.reqErr == nil && ex.route != "":
		x.t.Errorf("%s: %s %s: the description accepts a request the test made malformed", label, ex.method, ex.path)
	case !w.invalidReq && ex.reqErr != nil:
		x.t.Errorf("%s: %s %s: the request does not match the description: %v", label, ex.method, ex.path, ex.reqErr)
	}
	switch {
	case ex.route == "" && ex.status == http.StatusMethodNotAllowed:
		x.wrong[ex.path] = true
	case ex.route == "":
	case ex.status < 300:
		x.ok[ex.route] = true
	case ex.status < 500:
		x.fail[ex.route] = true
	}
}

// send is a request made by hand (for malformed ones), with a JSON body unless nil.
func (x *exerciser) send(method, path string, body []byte, hdr http.Header) func() error {
	return func() error {
		var rd io.Reader
		if body != nil {
			rd = bytes.NewReader(body)
		}
		req, err := http.NewRequest(method, "http://banger"+path, rd)
		if err != nil {
			return err
		}
		if body != nil {
			req.Header.Set("Content-Type", "application/json")
		}
		for k, v := range hdr {
			req.Header[k] = v
		}
		resp, err := x.raw.Do(req)
		if err != nil {
			return err
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		return resp.Body.Close()
	}
}

// postJSON sends v as the body of a POST.
func (x *exerciser) postJSON(path string, v any) func() error {
	b, err := json.Marshal(v)
	if err != nil {
		x.t.Fatal(err)
	}
	return x.send(http.MethodPost, path, b, nil)
}

// routesNeedingTheOutside are the routes that cannot answer 2xx here: the benchmark
// validates like a create, then boots the bare VMM command, which a unit test does not
// have. Its error path is driven. (The pulls, builds and warm-ups do answer 200 here: their
// streams start, then end with an error line, which is checked like any other line.)
var routesNeedingTheOutside = map[string]string{
	"POST /v1/bench/create": "boots the bare VMM command",
}

// TestOpenAPIRoundTrip drives every route of a daemon (fake VMM driver, real store, real
// socket) through the validating proxy: successes and errors, streams and upgrades. Then
// every route must have answered a success (unless it needs the outside), every route
// that takes input a described 4xx, and every path a 405 to a method it does not have.
func TestOpenAPIRoundTrip(t *testing.T) {
	e := newFakeEnv(t)
	e.drv.upgrades = true
	// A Debian "mirror" that has nothing: pulls start streaming, then fail at once.
	mirror := httptest.NewServer(http.NotFoundHandler())
	defer mirror.Close()
	e.cfg.Images.DebianMirror = mirror.URL
	e.restart()
	ctx := context.Background()

	// The description under test is the one the daemon serves.
	served, err := fetchDescription(ctx, e.l.Socket)
	if err != nil {
		t.Fatal(err)
	}
	embedded, _ := api.OpenAPIJSON()
	if !bytes.Equal(served, embedded) {
		t.Fatal("GET /v1/openapi.json does not serve the embedded description")
	}
	doc := loadDescription(t, served)
	p := newValidatingProxy(t, doc, e.l.Socket)
	x := &exerciser{t: t, p: p, c: api.NewClient(p.socket, "test"),
		raw: &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", p.socket)
		}}},
		ok: map[string]bool{}, fail: map[string]bool{}, wrong: map[string]bool{}}
	c := x.c
	ok := want{status: 200}
	bad := want{status: 400, invalidReq: true} // malformed: the description refuses it too
	badValue := func(code api.ErrorCode) want { return want{status: code.HTTPStatus(), code: code} }
	badRaw := func(status int) want { return want{status: status} }
	table := e.d.routeList()

	// Wrong methods on every path, and paths that do not exist.
	for path, methods := range table {
		m := http.MethodDelete
		if slices.Contains(methods, m) {
			t.Fatalf("%s has DELETE: pick another wrong method", path)
		}
		x.step("wrong method on "+path, badRaw(405), x.send(m, path, nil, nil))
	}
	x.step("unknown path", badRaw(404), x.send(http.MethodGet, "/v1/nope", nil, nil))
	x.step("no version prefix", badRaw(404), x.send(http.MethodGet, "/status", nil, nil))

	// The daemon.
	x.step("openapi", ok, x.send(http.MethodGet, "/v1/openapi.json", nil, nil))
	x.step("status", ok, func() error { _, err := c.Status(ctx); return err })
	x.step("doctor", ok, func() error { _, err := c.Doctor(ctx); return err })
	x.step("events", ok, func() error {
		_, err := c.Events(ctx, api.EventFilter{Operation: "vm.create", AfterID: 1, Limit: 5})
		return err
	})
	x.step("events, limit not a number", bad, x.send(http.MethodGet, "/v1/events?limit=ten", nil, nil))
	x.step("leaks", ok, func() error { _, err := c.Leaks(ctx); return err })
	x.step("leaks fix", ok, func() error { _, err := c.FixLeaks(ctx); return err })
	x.step("leaks fix, unknown field", bad, x.send(http.MethodPost, "/v1/leaks", []byte(`{"all":true}`), nil))
	x.step("shutdown, malformed JSON", bad, x.send(http.MethodPost, "/v1/shutdown", []byte(`{"reason":`), nil))
	x.step("bench, too many runs", badValue(api.CodeBadRequest), func() error {
		_, err := c.BenchCreate(ctx, api.BenchCreateRequest{Runs: 1000}, nil)
		return err
	})

	// Images and kernels.
	x.step("images", ok, func() error { _, err := c.Images(ctx); return err })
	x.step("image inspect", ok, func() error { _, err := c.InspectImage(ctx, "img"); return err })
	x.step("image inspect, missing", badValue(api.CodeNotFound), func() error { _, err := c.InspectImage(ctx, "nope"); return err })
	x.step("image inspect, no name", bad, x.send(http.MethodGet, "/v1/images/inspect", nil, nil))
	x.step("catalog", ok, func() error { _, err := c.Catalog(ctx); return err })
	x.step("image pull, unknown", badValue(api.CodeNotFound), func() error {
		_, err := c.PullImage(ctx, api.ImagePullRequest{Ref: "no-such-image"}, nil)
		return err
	})
	x.step("image pull, archive has nothing", ok, x.postJSON("/v1/images/pull", api.ImagePullRequest{Ref: "debian-bookworm", Name: "pulled"}))
	x.step("image pull, unknown field", bad, x.send(http.MethodPost, "/v1/images/pull", []byte(`{"reff":"x"}`), nil))
	tarball := writeTar(t)
	x.step("image import", ok, func() error {
		_, err := c.ImportImage(ctx, api.ImageImportRequest{Name: "imported", Path: tarball, NoKernel: true}, nil)
		return err
	})
	x.step("image import, relative path", badValue(api.CodeBadRequest), func() error {
		_, err := c.ImportImage(ctx, api.ImageImportRequest{Name: "x", Path: "rootfs.tar"}, nil)
		return err
	})
	x.step("image import, no name", bad, x.postJSON("/v1/images/import", map[string]string{"path": tarball}))
	x.step("image build, missing base", badValue(api.CodeNotFound), func() error {
		_, err := c.BuildImage(ctx, api.ImageBuildRequest{Name: "built", From: "nope"}, nil)
		return err
	})
	x.step("image build, copies not a list", bad, x.send(http.MethodPost, "/v1/images/build", []byte(`{"name":"b","from":"img","copies":"x"}`), nil))
	x.step("image build, fake base", ok, x.postJSON("/v1/images/build", api.ImageBuildRequest{Name: "built", From: "img"}))
	x.step("image warm", ok, x.postJSON("/v1/images/warm", api.ImageWarmRequest{Name: "img"}))
	x.step("image warm, missing image", badValue(api.CodeNotFound), func() error {
		_, err := c.WarmImage(ctx, api.ImageWarmRequest{Name: "nope"}, nil)
		return err
	})
	x.step("image rm", ok, func() error { return c.RemoveImage(ctx, "imported") })
	x.step("image rm, missing", badValue(api.CodeNotFound), func() error { return c.RemoveImage(ctx, "imported") })
	x.step("kernels", ok, func() error { _, err := c.Kernels(ctx); return err })
	x.step("kernel pull, archive has nothing", ok, x.postJSON("/v1/kernels/pull", api.KernelPullRequest{Suite: "bookworm"}))
	x.step("kernel pull, suite not a string", bad, x.send(http.MethodPost, "/v1/kernels/pull", []byte(`{"suite":12}`), nil))
	x.step("kernel import, relative path", badValue(api.CodeBadRequest), func() error {
		_, err := c.ImportKernel(ctx, api.KernelImportRequest{Path: "boot"})
		return err
	})
	x.step("kernel import, not a kernel package", ok, x.postJSON("/v1/kernels/import", api.KernelImportRequest{Path: t.TempDir()}))
	addFakeKernel(t, e, "k2")
	x.step("kernel rm", ok, func() error { return c.RemoveKernel(ctx, "k2") })
	x.step("kernel rm, missing", badValue(api.CodeNotFound), func() error { return c.RemoveKernel(ctx, "k2") })

	// VMs.
	x.step("vm create", ok, func() error {
		_, err := c.CreateVM(ctx, api.VMCreateRequest{Name: "dev", Image: "img", DiskSize: "256M", Start: true}, nil)
		return err
	})
	x.step("vm create, missing image", badValue(api.CodeNotFound), func() error {
		_, err := c.CreateVM(ctx, api.VMCreateRequest{Name: "dev2", Image: "nope"}, nil)
		return err
	})
	x.step("vm create, cpus not a number", bad, x.send(http.MethodPost, "/v1/vms/create", []byte(`{"cpus":"two"}`), nil))
	x.step("vms", ok, func() error { _, err := c.VMs(ctx); return err })
	x.step("vm inspect", ok, func() error { _, err := c.InspectVM(ctx, "dev"); return err })
	x.step("vm inspect, missing", badValue(api.CodeNotFound), func() error { _, err := c.InspectVM(ctx, "nope"); return err })
	x.step("vm health", ok, func() error { _, err := c.VMHealth(ctx, "dev"); return err })
	x.step("vm health, missing", badValue(api.CodeNotFound), func() error { _, err := c.VMHealth(ctx, "nope"); return err })
	x.step("vm logs", ok, func() error {
		rc, err := c.VMLogs(ctx, "dev", false)
		if err != nil {
			return err
		}
		_, _ = io.Copy(io.Discard, rc)
		return rc.Close()
	})
	x.step("vm logs, missing", badValue(api.CodeNotFound), func() error { _, err := c.VMLogs(ctx, "nope", false); return err })
	x.step("vm exec", want{status: 101}, func() error {
		conn, err := c.ExecStream(ctx, api.VMExecRequest{Name: "dev", Argv: []string{"true"}})
		if err != nil {
			return err
		}
		defer conn.Close()
		typ, payload, err := agent.ReadFrame(conn)
		if err != nil || typ != agent.FrameExit {
			return fmt.Errorf("exec stream: frame %v %q %v, want the exit frame", typ, payload, err)
		}
		return nil
	})
	x.step("vm exec, no upgrade", bad, x.postJSON("/v1/vms/exec", api.VMExecRequest{Name: "dev", Argv: []string{"true"}}))
	x.step("vm exec, no command", bad, x.send(http.MethodPost, "/v1/vms/exec", []byte(`{"name":"dev","argv":[]}`),
		http.Header{"Connection": {"Upgrade"}, "Upgrade": {agent.ExecUpgradeProtocol}}))
	x.step("vm forward", want{status: 101}, func() error {
		conn, err := c.Forward(ctx, "dev", 22)
		if err != nil {
			return err
		}
		defer conn.Close()
		if _, err := conn.Write([]byte("ping")); err != nil {
			return err
		}
		buf := make([]byte, 4)
		if _, err := io.ReadFull(conn, buf); err != nil || string(buf) != "ping" {
			return fmt.Errorf("forward stream: read %q %v, want the echo", buf, err)
		}
		return nil
	})
	x.step("vm forward, port 0", bad, x.send(http.MethodPost, "/v1/vms/forward?name=dev&port=0", nil,
		http.Header{"Connection": {"Upgrade"}, "Upgrade": {agent.ForwardUpgradeProtocol}}))
	x.step("vm ports", ok, func() error {
		_, err := c.ChangePorts(ctx, api.VMPortsRequest{Name: "dev", Add: []string{"8080"}})
		return err
	})
	x.step("vm ports, missing", badValue(api.CodeNotFound), func() error {
		_, err := c.ChangePorts(ctx, api.VMPortsRequest{Name: "nope", Add: []string{"8080"}})
		return err
	})
	x.step("vm resize", ok, func() error { _, err := c.ResizeVM(ctx, api.VMResizeRequest{Name: "dev", Disk: "512M"}); return err })
	x.step("vm resize, no size", bad, x.postJSON("/v1/vms/resize", map[string]string{"name": "dev"}))

	// Snapshots, pause and resume of the running VM.
	x.step("snapshot create", ok, func() error {
		_, err := c.CreateSnapshot(ctx, api.SnapshotCreateRequest{VM: "dev", Snapshot: "snap"}, nil)
		return err
	})
	x.step("snapshot create, bad name", badValue(api.CodeBadRequest), func() error {
		_, err := c.CreateSnapshot(ctx, api.SnapshotCreateRequest{VM: "dev", Snapshot: "Bad Name"}, nil)
		return err
	})
	x.step("snapshots", ok, func() error { _, err := c.Snapshots(ctx); return err })
	x.step("snapshot inspect", ok, func() error { _, err := c.InspectSnapshot(ctx, "snap"); return err })
	x.step("snapshot inspect, missing", badValue(api.CodeNotFound), func() error { _, err := c.InspectSnapshot(ctx, "nope"); return err })
	x.step("vm pause", ok, func() error { _, err := c.PauseVM(ctx, "dev", nil); return err })
	x.step("vm pause, missing", badValue(api.CodeNotFound), func() error { _, err := c.PauseVM(ctx, "nope", nil); return err })
	x.step("vm resume", ok, func() error { _, err := c.ResumeVM(ctx, "dev", nil); return err })
	x.step("vm resume, not paused", badValue(api.CodeConflict), func() error { _, err := c.ResumeVM(ctx, "dev", nil); return err })
	x.step("vm restart", ok, func() error {
		_, err := c.RestartVM(ctx, api.VMStopRequest{Name: "dev", TimeoutSeconds: 5}, nil)
		return err
	})
	x.step("vm restart, missing", badValue(api.CodeNotFound), func() error {
		_, err := c.RestartVM(ctx, api.VMStopRequest{Name: "nope"}, nil)
		return err
	})
	x.step("vm stop", ok, func() error { _, err := c.StopVM(ctx, api.VMStopRequest{Name: "dev", TimeoutSeconds: 5}); return err })
	x.step("vm stop, negative timeout", bad, x.postJSON("/v1/vms/stop", map[string]any{"name": "dev", "timeout_seconds": -1}))
	x.step("vm exec, stopped", badValue(api.CodeConflict), func() error {
		_, err := c.ExecStream(ctx, api.VMExecRequest{Name: "dev", Argv: []string{"true"}})
		return err
	})
	x.step("vm forward, stopped", badValue(api.CodeConflict), func() error { _, err := c.Forward(ctx, "dev", 22); return err })
	x.step("vm start", ok, func() error { _, err := c.StartVM(ctx, "dev", nil); return err })
	x.step("vm start, missing", badValue(api.CodeNotFound), func() error { _, err := c.StartVM(ctx, "nope", nil); return err })
	x.step("vm rm, running", badValue(api.CodeConflict), func() error { return c.RemoveVM(ctx, api.VMRemoveRequest{Name: "dev"}) })
	x.step("vm rm", ok, func() error { return c.RemoveVM(ctx, api.VMRemoveRequest{Name: "dev", Force: true}) })
	x.step("vm rm, missing", badValue(api.CodeNotFound), func() error { return c.RemoveVM(ctx, api.VMRemoveRequest{Name: "dev"}) })
	x.step("snapshot rm", ok, func() error { return c.RemoveSnapshot(ctx, "snap") })
	x.step("snapshot rm, missing", badValue(api.CodeNotFound), func() error { return c.RemoveSnapshot(ctx, "snap") })
	x.step("shutdown", want{status: 202}, func() error { return c.Shutdown(ctx, "openapi test") })

	// Both ways: every served route described, every described route served...
	undocumented, phantom := routeGaps(table, doc)
	if len(undocumented)+len(phantom) > 0 {
		t.Errorf("route table and description differ: undocumented %v, phantom %v", undocumented, phantom)
	}
	// ...and every one of them driven.
	for path, methods := range table {
		if !x.wrong[path] {
			t.Errorf("%s: no 405 checked", path)
		}
		for _, m := range methods {
			k := routeKey(m, path)
			if _, outside := routesNeedingTheOutside[k]; !outside && !x.ok[k] {
				t.Errorf("%s: no success driven", k)
			}
			op := doc.Paths.Value(path).GetOperation(m)
			if op != nil && (len(op.Parameters) > 0 || op.RequestBody != nil) && !x.fail[k] {
				t.Errorf("%s: takes input but no 4xx was driven", k)
			}
		}
	}
	for k := range routesNeedingTheOutside {
		if x.ok[k] {
			t.Errorf("%s is listed as needing the outside but succeeded here: take it off the list", k)
		}
	}
}

// fetchDescription GETs /v1/openapi.json straight from the daemon.
func fetchDescription(ctx context.Context, socket string) ([]byte, error) {
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", socket)
	}}}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://banger/v1/openapi.json", nil)
	resp, err := hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK || mediaType(resp.Header.Get("Content-Type")) != "application/json" {
		return nil, fmt.Errorf("GET /v1/openapi.json: %s, %s", resp.Status, resp.Header.Get("Content-Type"))
	}
	return io.ReadAll(resp.Body)
}

// writeTar writes a tiny root filesystem tarball to import.
func writeTar(t *testing.T) string {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, h := range []*tar.Header{
		{Name: "etc/", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: "root/", Typeflag: tar.TypeDir, Mode: 0o700},
		{Name: "etc/os-release", Typeflag: tar.TypeReg, Mode: 0o644, Size: 8},
	} {
		h.ModTime = time.Unix(1700000000, 0)
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Size > 0 {
			_, _ = tw.Write([]byte("ID=test\n"))
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "rootfs.tar")
	if err := os.WriteFile(p, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// addFakeKernel installs a kernel no image uses, as newFakeEnv installs k1.
func addFakeKernel(t *testing.T, e *fakeEnv, id string) {
	t.Helper()
	dir := filepath.Join(e.l.DataDir, "kernels", id)
	bz := filepath.Join(dir, "bzImage")
	must(0, os.MkdirAll(dir, 0o755))
	must(0, os.WriteFile(bz, []byte("fake bzImage"), 0o644))
	must(0, os.WriteFile(filepath.Join(dir, "kernel.json"), []byte(`{"id":"`+id+`","release":"6.1.0-fake","bzimage":"`+bz+`"}`), 0o644))
}
