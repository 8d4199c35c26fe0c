package api

import (
	_ "embed"
	"encoding/json"
	"fmt"

	"go.yaml.in/yaml/v4"
)

// openAPIYAML is the OpenAPI 3 description of this API, kept beside the types it
// describes. The daemon's tests drive every route against it (internal/daemon's
// openapi_test.go) and this package's tests check it names every field of the wire types.
//
//go:embed openapi.yaml
var openAPIYAML []byte

// OpenAPIYAML returns the API description as written (YAML).
func OpenAPIYAML() []byte { return append([]byte(nil), openAPIYAML...) }

// OpenAPIJSON returns the API description as JSON, what GET /v1/openapi.json serves.
func OpenAPIJSON() ([]byte, error) {
	var doc any
	if err := yaml.Unmarshal(openAPIYAML, &doc); err != nil {
		return nil, fmt.Errorf("parse the embedded API description: %w", err)
	}
	doc, err := jsonable(doc)
	if err != nil {
		return nil, fmt.Errorf("convert the embedded API description: %w", err)
	}
	return json.Marshal(doc)
}

// jsonable turns what the YAML decoder made into values encoding/json accepts: JSON
// object keys are strings (an unquoted YAML key like 200 decodes as a number).
func jsonable(v any) (any, error) {
	switch x := v.(type) {
	case map[string]any:
		for k, e := range x {
			j, err := jsonable(e)
			if err != nil {
				return nil, err
			}
			x[k] = j
		}
		return x, nil
	case map[any]any:
		m := make(map[string]any, len(x))
		for k, e := range x {
			j, err := jsonable(e)
			if err != nil {
				return nil, err
			}
			m[fmt.Sprint(k)] = j
		}
		return m, nil
	case []any:
		for i, e := range x {
			j, err := jsonable(e)
			if err != nil {
				return nil, err
			}
			x[i] = j
		}
		return x, nil
	default:
		return v, nil
	}
}
