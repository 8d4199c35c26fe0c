package api_test

// The API description (openapi.yaml) against the Go wire types, by reflection: every JSON
// field of every type the daemon sends or reads is a property of its schema with a
// matching type, and nothing else is; answers require exactly the fields Go always
// writes; requests are closed like the daemon's strict decoder. So a field added to a
// type fails here until the description has it. (internal/daemon's openapi_test.go drives
// the routes against the same description.)

import (
	"context"
	"encoding/json"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"reflect"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"

	"github.com/banger-vm/banger/internal/api"
	"github.com/banger-vm/banger/internal/image"
)

// wireTypes maps each schema of the description to the Go type it describes.
var wireTypes = map[string]reflect.Type{
	"ErrorBody":             reflect.TypeFor[api.ErrorBody](),
	"Error":                 reflect.TypeFor[api.Error](),
	"Progress":              reflect.TypeFor[api.Progress](),
	"Stage":                 reflect.TypeFor[api.Stage](),
	"StatusResponse":        reflect.TypeFor[api.StatusResponse](),
	"Event":                 reflect.TypeFor[api.Event](),
	"EventsResponse":        reflect.TypeFor[api.EventsResponse](),
	"CheckResult":           reflect.TypeFor[api.CheckResult](),
	"DoctorResponse":        reflect.TypeFor[api.DoctorResponse](),
	"ShutdownRequest":       reflect.TypeFor[api.ShutdownRequest](),
	"Leak":                  reflect.TypeFor[api.Leak](),
	"LeakKind":              reflect.TypeFor[api.LeakKind](),
	"LeaksResponse":         reflect.TypeFor[api.LeaksResponse](),
	"VMCreateRequest":       reflect.TypeFor[api.VMCreateRequest](),
	"VMRequest":             reflect.TypeFor[api.VMRequest](),
	"VMStopRequest":         reflect.TypeFor[api.VMStopRequest](),
	"VMRemoveRequest":       reflect.TypeFor[api.VMRemoveRequest](),
	"VMPortsRequest":        reflect.TypeFor[api.VMPortsRequest](),
	"VMResizeRequest":       reflect.TypeFor[api.VMResizeRequest](),
	"VMExecRequest":         reflect.TypeFor[api.VMExecRequest](),
	"VMPort":                reflect.TypeFor[api.VMPort](),
	"VMMount":               reflect.TypeFor[api.VMMount](),
	"VMDisk":                reflect.TypeFor[api.VMDisk](),
	"VMNetwork":             reflect.TypeFor[api.VMNetwork](),
	"VMSSH":                 reflect.TypeFor[api.VMSSH](),
	"VMBoot":                reflect.TypeFor[api.VMBoot](),
	"VMPaused":              reflect.TypeFor[api.VMPaused](),
	"VM":                    reflect.TypeFor[api.VM](),
	"VMsResponse":           reflect.TypeFor[api.VMsResponse](),
	"VMHealth":              reflect.TypeFor[api.VMHealth](),
	"SnapshotCreateRequest": reflect.TypeFor[api.SnapshotCreateRequest](),
	"SnapshotRequest":       reflect.TypeFor[api.SnapshotRequest](),
	"Snapshot":              reflect.TypeFor[api.Snapshot](),
	"SnapshotsResponse":     reflect.TypeFor[api.SnapshotsResponse](),
	"Image":                 reflect.TypeFor[api.Image](),
	"ImagesResponse":        reflect.TypeFor[api.ImagesResponse](),
	"Package":               reflect.TypeFor[api.Package](),
	"Template":              reflect.TypeFor[api.Template](),
	"ImageInspect":          reflect.TypeFor[api.ImageInspect](),
	"ImagePullRequest":      reflect.TypeFor[api.ImagePullRequest](),
	"ImageImportRequest":    reflect.TypeFor[api.ImageImportRequest](),
	"BuildCopy":             reflect.TypeFor[api.BuildCopy](),
	"ImageBuildRequest":     reflect.TypeFor[api.ImageBuildRequest](),
	"ImageRemoveRequest":    reflect.TypeFor[api.ImageRemoveRequest](),
	"ImageWarmRequest":      reflect.TypeFor[api.ImageWarmRequest](),
	"CatalogEntry":          reflect.TypeFor[image.Entry](),
	"CatalogResponse":       reflect.TypeFor[api.CatalogResponse](),
	"Kernel":                reflect.TypeFor[image.Kernel](),
	"KernelsResponse":       reflect.TypeFor[api.KernelsResponse](),
	"KernelPullRequest":     reflect.TypeFor[api.KernelPullRequest](),
	"KernelImportRequest":   reflect.TypeFor[api.KernelImportRequest](),
	"KernelRemoveRequest":   reflect.TypeFor[api.KernelRemoveRequest](),
	"BenchCreateRequest":    reflect.TypeFor[api.BenchCreateRequest](),
	"BenchStat":             reflect.TypeFor[api.BenchStat](),
	"BenchStageStat":        reflect.TypeFor[api.BenchStageStat](),
	"BenchRun":              reflect.TypeFor[api.BenchRun](),
	"BenchGoal":             reflect.TypeFor[api.BenchGoal](),
	"BenchWarm":             reflect.TypeFor[api.BenchWarm](),
	"BenchCreateResult":     reflect.TypeFor[api.BenchCreateResult](),
}

// rawFields are json.RawMessage fields and the schema of what the daemon puts in them.
var rawFields = map[string]string{
	"ImageInspect.kernel":     "Kernel",
	"KernelsResponse.kernels": "Kernel",
	"CatalogResponse.entries": "CatalogEntry",
	"Image.metadata":          "", // source-specific: any JSON object
}

// requestSchemas are read by the daemon's strict decoder.
var requestSchemas = []string{"ShutdownRequest", "VMCreateRequest", "VMRequest", "VMStopRequest", "VMRemoveRequest",
	"VMPortsRequest", "VMResizeRequest", "VMExecRequest", "SnapshotCreateRequest", "SnapshotRequest", "ImagePullRequest",
	"ImageImportRequest", "BuildCopy", "ImageBuildRequest", "ImageRemoveRequest", "ImageWarmRequest", "KernelPullRequest",
	"KernelImportRequest", "KernelRemoveRequest", "BenchCreateRequest"}

// schemasWithoutAType are the description's own shapes of values Go writes untyped.
var schemasWithoutAType = map[string]string{
	"ProgressLine":        "a StreamEvent line with progress",
	"ErrorLine":           "a StreamEvent line with error",
	"VMStreamEvent":       "StreamEvent with a VM result",
	"ImageStreamEvent":    "StreamEvent with an Image result",
	"TemplateStreamEvent": "StreamEvent with a Template result",
	"KernelStreamEvent":   "StreamEvent with a Kernel result",
	"SnapshotStreamEvent": "StreamEvent with a Snapshot result",
	"BenchStreamEvent":    "StreamEvent with a BenchCreateResult result",
	"RemovedResponse":     `the handlers' map[string]string{"removed": name}`,
}

// clientOnlyTypes have JSON tags but never cross the daemon's API: the CLI prints them.
var clientOnlyTypes = map[string]string{
	"BenchPauseResult": "measured by the CLI (banger bench pause --json)",
	"BenchMountResult": "measured by the CLI (banger bench mount --json)",
	"BenchMountSide":   "part of BenchMountResult",
	"ForkResult":       "assembled by the CLI (banger vm fork --json)",
	"StreamEvent":      "described per operation as the *StreamEvent schemas (checked below)",
}

func loadDoc(t *testing.T) *openapi3.T {
	t.Helper()
	data, err := api.OpenAPIJSON()
	if err != nil {
		t.Fatal(err)
	}
	doc, err := openapi3.NewLoader().LoadFromData(data)
	if err != nil {
		t.Fatal(err)
	}
	if err := doc.Validate(context.Background()); err != nil {
		t.Fatalf("the API description is not valid OpenAPI 3: %v", err)
	}
	return doc
}

func TestOpenAPIServedAsJSONIsTheYAML(t *testing.T) {
	data, err := api.OpenAPIJSON()
	if err != nil {
		t.Fatal(err)
	}
	fromJSON, err := openapi3.NewLoader().LoadFromData(data)
	if err != nil {
		t.Fatal(err)
	}
	fromYAML, err := openapi3.NewLoader().LoadFromData(api.OpenAPIYAML())
	if err != nil {
		t.Fatal(err)
	}
	a, _ := json.Marshal(fromJSON)
	b, _ := json.Marshal(fromYAML)
	if string(a) != string(b) {
		t.Error("the JSON conversion of openapi.yaml differs from the YAML")
	}
	if fromJSON.Info.Version != api.Version {
		t.Errorf("info.version %q, the API is %q", fromJSON.Info.Version, api.Version)
	}
}

// jsonField is one field of a Go type as encoding/json writes it.
type jsonField struct {
	name      string
	omitempty bool
	typ       reflect.Type
}

// jsonFields lists t's JSON fields, embedded structs' fields promoted as encoding/json does.
func jsonFields(t reflect.Type) []jsonField {
	var out []jsonField
	for i := range t.NumField() {
		f := t.Field(i)
		tag := f.Tag.Get("json")
		if tag == "-" || (!f.IsExported() && !f.Anonymous) {
			continue
		}
		name, opts, _ := strings.Cut(tag, ",")
		if f.Anonymous && name == "" && f.Type.Kind() == reflect.Struct {
			out = append(out, jsonFields(f.Type)...)
			continue
		}
		if name == "" {
			name = f.Name
		}
		out = append(out, jsonField{name: name, omitempty: slices.Contains(strings.Split(opts, ","), "omitempty"), typ: f.Type})
	}
	return out
}

func TestOpenAPISchemasMatchGoTypes(t *testing.T) {
	doc := loadDoc(t)
	schemaOf := map[reflect.Type]string{}
	for name, typ := range wireTypes {
		schemaOf[typ] = name
	}
	for name := range doc.Components.Schemas {
		if _, ok := wireTypes[name]; !ok && schemasWithoutAType[name] == "" {
			t.Errorf("schema %s has no Go type in wireTypes (add it, or to schemasWithoutAType with a reason)", name)
		}
	}
	for name, typ := range wireTypes {
		ref := doc.Components.Schemas[name]
		if ref == nil {
			t.Errorf("schema %s (Go %s) is missing from the description", name, typ)
			continue
		}
		s := ref.Value
		if typ.Kind() != reflect.Struct {
			checkType(t, name, s, typ, schemaOf)
			continue
		}
		request := slices.Contains(requestSchemas, name)
		if request && (s.AdditionalProperties.Has == nil || *s.AdditionalProperties.Has) {
			t.Errorf("request schema %s: set additionalProperties: false (the daemon refuses unknown fields)", name)
		}
		fields := jsonFields(typ)
		var goNames, always []string
		for _, f := range fields {
			goNames = append(goNames, f.name)
			if !f.omitempty {
				always = append(always, f.name)
			}
			p := s.Properties[f.name]
			if p == nil {
				t.Errorf("%s: Go field %q is not in the schema", name, f.name)
				continue
			}
			where := name + "." + f.name
			if raw, ok := rawFields[where]; ok {
				checkRaw(t, where, p, f.typ, raw)
				continue
			}
			checkType(t, where, p.Value, f.typ, schemaOf)
			if p.Ref != "" && schemaOf[deref(f.typ)] != refName(p.Ref) {
				t.Errorf("%s: refers to %s, Go has %s", where, p.Ref, f.typ)
			}
		}
		for prop := range s.Properties {
			if !slices.Contains(goNames, prop) {
				t.Errorf("%s: schema property %q is not a field of Go %s", name, prop, typ)
			}
		}
		required := slices.Clone(s.Required)
		sort.Strings(required)
		sort.Strings(always)
		if request {
			for _, r := range required {
				if !slices.Contains(always, r) {
					t.Errorf("request %s requires %q, which Go marks omitempty", name, r)
				}
			}
		} else if !slices.Equal(required, always) {
			t.Errorf("answer %s: required %v, but Go always writes exactly %v", name, required, always)
		}
	}
}

func refName(ref string) string { return ref[strings.LastIndex(ref, "/")+1:] }

func deref(t reflect.Type) reflect.Type {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	return t
}

var (
	timeType = reflect.TypeFor[time.Time]()
	rawType  = reflect.TypeFor[json.RawMessage]()
)

// checkType: the schema's type is what encoding/json writes for typ.
func checkType(t *testing.T, where string, s *openapi3.Schema, typ reflect.Type, schemaOf map[reflect.Type]string) {
	t.Helper()
	typ = deref(typ)
	is := func(want string) {
		if !s.Type.Is(want) {
			t.Errorf("%s: schema type %v, Go %s is written as %s", where, s.Type.Slice(), typ, want)
		}
	}
	switch {
	case typ == timeType:
		is("string")
		if s.Format != "date-time" {
			t.Errorf("%s: a time is a string of format date-time, not %q", where, s.Format)
		}
	case typ == rawType:
		t.Errorf("%s: json.RawMessage needs an entry in rawFields", where)
	case typ.Kind() == reflect.String:
		is("string")
	case typ.Kind() == reflect.Bool:
		is("boolean")
	case typ.Kind() >= reflect.Int && typ.Kind() <= reflect.Uint64:
		is("integer")
	case typ.Kind() == reflect.Float32 || typ.Kind() == reflect.Float64:
		is("number")
	case typ.Kind() == reflect.Slice:
		is("array")
		if s.Items == nil {
			t.Errorf("%s: array without items", where)
			return
		}
		checkType(t, where+"[]", s.Items.Value, typ.Elem(), schemaOf)
		if st := deref(typ.Elem()); st.Kind() == reflect.Struct && st != timeType && schemaOf[st] != refName(s.Items.Ref) {
			t.Errorf("%s: items refer to %q, Go has %s", where, s.Items.Ref, st)
		}
	case typ.Kind() == reflect.Map:
		is("object")
		if s.AdditionalProperties.Schema == nil {
			t.Errorf("%s: a Go map needs additionalProperties with the value schema", where)
			return
		}
		checkType(t, where+"{}", s.AdditionalProperties.Schema.Value, typ.Elem(), schemaOf)
	case typ.Kind() == reflect.Struct:
		is("object")
		if schemaOf[typ] == "" {
			t.Errorf("%s: Go %s has no schema in wireTypes", where, typ)
		}
	default:
		t.Errorf("%s: no rule for Go %s", where, typ)
	}
}

// checkRaw: a json.RawMessage field (or list of them) is described by the schema of what
// the daemon marshals into it, or (want "") as a JSON object.
func checkRaw(t *testing.T, where string, p *openapi3.SchemaRef, typ reflect.Type, want string) {
	t.Helper()
	if typ.Kind() == reflect.Slice && typ != rawType {
		if !p.Value.Type.Is("array") || p.Value.Items == nil {
			t.Errorf("%s: a list of raw JSON is an array", where)
			return
		}
		p = p.Value.Items
	}
	if want == "" {
		if !p.Value.Type.Is("object") {
			t.Errorf("%s: raw JSON object without type object", where)
		}
		return
	}
	if refName(p.Ref) != want {
		t.Errorf("%s: raw JSON of %s must refer to that schema, not %q", where, want, p.Ref)
	}
}

// TestOpenAPIStreamEvents: each streamed operation's line schema is one of progress,
// result or error, exactly the fields of api.StreamEvent.
func TestOpenAPIStreamEvents(t *testing.T) {
	doc := loadDoc(t)
	var goNames []string
	for _, f := range jsonFields(reflect.TypeFor[api.StreamEvent]()) {
		goNames = append(goNames, f.name)
	}
	sort.Strings(goNames)
	for name := range schemasWithoutAType {
		if !strings.HasSuffix(name, "StreamEvent") {
			continue
		}
		s := doc.Components.Schemas[name].Value
		var props []string
		for _, branch := range s.OneOf {
			if len(branch.Value.Properties) != 1 || len(branch.Value.Required) != 1 {
				t.Errorf("%s: each line has exactly one of progress, result, error", name)
			}
			for p := range branch.Value.Properties {
				props = append(props, p)
			}
		}
		sort.Strings(props)
		if !slices.Equal(props, goNames) {
			t.Errorf("%s: lines carry %v, api.StreamEvent has %v", name, props, goNames)
		}
	}
}

// TestOpenAPIErrorCodes: the description lists exactly the codes the daemon answers with
// (the client-made ones never cross the wire), and LeakKind its kinds.
func TestOpenAPIErrorCodes(t *testing.T) {
	doc := loadDoc(t)
	wire := []api.ErrorCode{api.CodeBadRequest, api.CodeNotFound, api.CodeMethodNotAllowed, api.CodeConflict, api.CodeUnavailable, api.CodeInternal}
	var got []string
	for _, v := range doc.Components.Schemas["Error"].Value.Properties["code"].Value.Enum {
		got = append(got, v.(string))
	}
	var wantCodes []string
	for _, c := range wire {
		wantCodes = append(wantCodes, string(c))
	}
	if !slices.Equal(got, wantCodes) {
		t.Errorf("Error.code enum %v, the daemon answers %v", got, wantCodes)
	}
	var kinds, wantKinds []string
	for _, v := range doc.Components.Schemas["LeakKind"].Value.Enum {
		kinds = append(kinds, v.(string))
	}
	for _, k := range api.LeakKinds() {
		wantKinds = append(wantKinds, string(k))
	}
	if !slices.Equal(kinds, wantKinds) {
		t.Errorf("LeakKind enum %v, api.LeakKinds() %v", kinds, wantKinds)
	}
}

// TestOpenAPIHasEveryWireType: every struct of this package with JSON tags is in the
// description (or known to stay in the CLI), so a new wire type cannot be forgotten.
func TestOpenAPIHasEveryWireType(t *testing.T) {
	fset := token.NewFileSet()
	ents, err := os.ReadDir(".")
	if err != nil {
		t.Fatal(err)
	}
	described := map[string]bool{}
	for _, typ := range wireTypes {
		if typ.PkgPath() == reflect.TypeFor[api.VM]().PkgPath() {
			described[typ.Name()] = true
		}
	}
	for _, ent := range ents {
		if !strings.HasSuffix(ent.Name(), ".go") || strings.HasSuffix(ent.Name(), "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, ent.Name(), nil, parser.SkipObjectResolution)
		if err != nil {
			t.Fatal(err)
		}
		ast.Inspect(f, func(n ast.Node) bool {
			ts, ok := n.(*ast.TypeSpec)
			if !ok {
				return true
			}
			st, ok := ts.Type.(*ast.StructType)
			if !ok || !ts.Name.IsExported() {
				return true
			}
			tagged := false
			for _, fl := range st.Fields.List {
				if fl.Tag != nil && strings.Contains(fl.Tag.Value, `json:"`) {
					tagged = true
				}
			}
			if tagged && !described[ts.Name.Name] && clientOnlyTypes[ts.Name.Name] == "" {
				t.Errorf("%s (%s) has JSON fields but no schema: describe it in openapi.yaml and add it to wireTypes", ts.Name.Name, ent.Name())
			}
			return true
		})
	}
}
