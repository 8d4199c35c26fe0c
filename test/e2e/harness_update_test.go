//go:build integration

package e2e

import (
	"encoding/json"
	"testing"

	"github.com/banger-vm/banger/internal/api"
	"github.com/banger-vm/banger/internal/update/updatetest"
)

// inspectVM returns `banger vm inspect NAME --json` from the sandbox.
func inspectVM(t *testing.T, s *updatetest.Sandbox, name string) api.VM {
	t.Helper()
	var vm api.VM
	if err := json.Unmarshal([]byte(s.Must("vm", "inspect", name, "--json").Stdout), &vm); err != nil {
		t.Fatal(err)
	}
	return vm
}
