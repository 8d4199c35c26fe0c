package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"

	"github.com/banger-vm/banger/internal/api"
	"github.com/banger-vm/banger/internal/doctor"
	"github.com/banger-vm/banger/internal/lifecycle"
	"github.com/banger-vm/banger/internal/store"
)

// maxBodyBytes bounds request bodies: every request is a small JSON document.
const maxBodyBytes = 1 << 20

type handlerFunc func(w http.ResponseWriter, r *http.Request) error

// routeTable maps paths under "/v1" to per-method handlers. A hand-rolled table (rather
// than ServeMux patterns) lets unknown paths and wrong methods get typed JSON errors too.
// Every route must be in the API description (internal/api/openapi.yaml): a test drives
// each one against it.
func (d *Daemon) routeTable() map[string]map[string]handlerFunc {
	table := map[string]map[string]handlerFunc{
		"/status":       {http.MethodGet: d.handleStatus},
		"/doctor":       {http.MethodGet: d.handleDoctor},
		"/events":       {http.MethodGet: d.handleEvents},
		"/shutdown":     {http.MethodPost: d.handleShutdown},
		"/openapi.json": {http.MethodGet: d.handleOpenAPI},
	}
	d.addImageRoutes(table)
	d.addVMRoutes(table)
	table["/bench/create"] = map[string]handlerFunc{http.MethodPost: d.handleBenchCreate}
	table["/leaks"] = map[string]handlerFunc{http.MethodGet: d.handleLeaks, http.MethodPost: d.handleLeaksFix}
	return table
}

// routeList is the route table as full paths ("/v1/...") to their sorted methods.
func (d *Daemon) routeList() map[string][]string {
	out := map[string][]string{}
	for path, methods := range d.routeTable() {
		full := "/" + api.Version + path
		for m := range methods {
			out[full] = append(out[full], m)
		}
		sort.Strings(out[full])
	}
	return out
}

// routes serves the route table.
func (d *Daemon) routes() http.Handler {
	table := d.routeTable()
	prefix := "/" + api.Version
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			if p := recover(); p != nil {
				d.log.Error("handler panicked", "path", r.URL.Path, "panic", p)
				writeError(w, api.Errorf(api.CodeInternal, "this is a bug in banger; the daemon log has details", "internal error"))
			}
		}()
		if v := r.Header.Get(api.ClientVersionHeader); v != "" && v != d.opts.Version {
			d.log.Debug("client version differs from daemon", "client", v, "daemon", d.opts.Version)
		}
		methods, ok := table[strings.TrimPrefix(r.URL.Path, prefix)]
		if !ok || !strings.HasPrefix(r.URL.Path, prefix+"/") {
			writeError(w, api.Errorf(api.CodeNotFound, "this daemon speaks API "+api.Version+"; check that the CLI and daemon versions match (`banger version`)",
				"no API endpoint %s %s", r.Method, r.URL.Path))
			return
		}
		h, ok := methods[r.Method]
		if !ok {
			allowed := make([]string, 0, len(methods))
			for m := range methods {
				allowed = append(allowed, m)
			}
			sort.Strings(allowed)
			w.Header().Set("Allow", strings.Join(allowed, ", "))
			writeError(w, api.Errorf(api.CodeMethodNotAllowed, "use "+strings.Join(allowed, " or "),
				"%s is not allowed on %s", r.Method, r.URL.Path))
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, maxBodyBytes)
		if err := h(w, r); err != nil {
			var ae *api.Error
			if !errors.As(err, &ae) {
				d.log.Error("request failed", "method", r.Method, "path", r.URL.Path, "err", err)
				ae = api.Errorf(api.CodeInternal, "see the daemon log for details", "%v", err)
			}
			writeError(w, ae)
		}
	})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, e *api.Error) {
	writeJSON(w, e.Code.HTTPStatus(), api.ErrorBody{Error: e})
}

// decodeBody reads a JSON body strictly: unknown fields and trailing data are errors, so a
// typo in a client's request is reported instead of silently ignored. An empty body means
// the zero request.
func decodeBody(r *http.Request, v any) error {
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		if errors.Is(err, io.EOF) {
			return nil
		}
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return api.Errorf(api.CodeBadRequest, "", "request body is larger than %d bytes", maxBodyBytes)
		}
		return api.Errorf(api.CodeBadRequest, "send a JSON object as documented for this endpoint", "malformed JSON body: %v", err)
	}
	if dec.More() {
		return api.Errorf(api.CodeBadRequest, "send exactly one JSON object", "malformed JSON body: trailing data after the object")
	}
	return nil
}

func (d *Daemon) status() api.StatusResponse {
	return api.StatusResponse{
		Version:    d.opts.Version,
		APIVersion: api.Version,
		PID:        os.Getpid(),
		UID:        os.Getuid(),
		StartedAt:  d.startedAt,
		Socket:     d.opts.Layout.Socket,
		DataDir:    d.opts.Layout.DataDir,
		StateDB:    d.opts.Layout.StateDB,
		LogFile:    d.opts.Layout.DaemonLog,
		ConfigFile: d.opts.Layout.ConfigFile,
		Startup:    d.startup.Stages(),
	}
}

func (d *Daemon) handleStatus(w http.ResponseWriter, _ *http.Request) error {
	writeJSON(w, http.StatusOK, d.status())
	return nil
}

// handleOpenAPI serves the API description, so a client can be generated from the daemon
// it talks to.
func (d *Daemon) handleOpenAPI(w http.ResponseWriter, _ *http.Request) error {
	doc, err := api.OpenAPIJSON()
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(doc)
	return nil
}

func (d *Daemon) handleDoctor(w http.ResponseWriter, r *http.Request) error {
	writeJSON(w, http.StatusOK, api.DoctorResponse{Checks: d.doctor.Run(r.Context())})
	return nil
}

func (d *Daemon) storeCheck(ctx context.Context) api.CheckResult {
	if err := d.store.Integrity(ctx); err != nil {
		return doctor.Failf("stop the daemon and restore "+d.store.Path()+" from a backup; `banger doctor` will re-check", "state database is damaged: %v", err)
	}
	v, err := d.store.SchemaVersion(ctx)
	if err != nil {
		return doctor.Failf("see the daemon log", "cannot read the schema version: %v", err)
	}
	return doctor.Pass("%s: schema version %d, integrity ok", d.store.Path(), v)
}

func (d *Daemon) handleEvents(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	f := store.EventFilter{Subject: q.Get("subject"), Operation: q.Get("operation")}
	var err error
	if f.AfterID, err = queryInt(q.Get("after"), "after"); err != nil {
		return err
	}
	limit, err := queryInt(q.Get("limit"), "limit")
	if err != nil {
		return err
	}
	f.Limit = int(limit)
	events, err := d.store.ListEvents(r.Context(), f)
	if err != nil {
		return err
	}
	out := api.EventsResponse{Events: make([]api.Event, 0, len(events))}
	for _, e := range events {
		out.Events = append(out.Events, lifecycle.EventToAPI(e))
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func queryInt(s, name string) (int64, error) {
	if s == "" {
		return 0, nil
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 {
		return 0, api.Errorf(api.CodeBadRequest, "pass a non-negative integer", "query parameter %s=%q is not a non-negative integer", name, s)
	}
	return n, nil
}

func (d *Daemon) handleShutdown(w http.ResponseWriter, r *http.Request) error {
	var req api.ShutdownRequest
	if err := decodeBody(r, &req); err != nil {
		return err
	}
	reason := req.Reason
	if reason == "" {
		reason = "requested by a client"
	}
	select {
	case d.shutdownReq <- reason:
	default: // a shutdown is already on its way
	}
	writeJSON(w, http.StatusAccepted, map[string]string{"status": "shutting down"})
	return nil
}
