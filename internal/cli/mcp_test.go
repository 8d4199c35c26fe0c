package cli

import (
	"encoding/json"
	"io"
	"net/http"
	"testing"

	"github.com/banger-vm/banger/internal/api"
)

// TestMCPCommandServesOnStdio: `banger mcp` speaks JSON-RPC on the streams it was given
// (nothing else on stdout) and answers a tool call from the daemon.
func TestMCPCommandServesOnStdio(t *testing.T) {
	w := newCLIWorld(t)
	serveFake(t, w.socket, map[string]http.HandlerFunc{
		"GET /v1/vms": func(rw http.ResponseWriter, _ *http.Request) {
			_ = json.NewEncoder(rw).Encode(api.VMsResponse{VMs: []api.VM{{Name: "dev", State: "running", Image: "bb"}}})
		},
	})
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	w.env.Stdin, w.env.Stdout = inR, outW
	done := make(chan int, 1)
	go func() {
		done <- w.run("mcp")
		outW.Close()
	}()
	dec := json.NewDecoder(outR)
	exchange := func(req string) map[string]any {
		t.Helper()
		if _, err := io.WriteString(inW, req+"\n"); err != nil {
			t.Fatal(err)
		}
		var msg map[string]any
		if err := dec.Decode(&msg); err != nil {
			t.Fatalf("reading the answer to %s: %v (stderr: %s)", req, err, w.stderr)
		}
		if msg["error"] != nil {
			t.Fatalf("%s: %v", req, msg["error"])
		}
		res, _ := msg["result"].(map[string]any)
		return res
	}
	init := exchange(`{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}`)
	if info, _ := init["serverInfo"].(map[string]any); info["name"] != "banger" {
		t.Fatalf("initialize: %v", init)
	}
	if _, err := io.WriteString(inW, `{"jsonrpc":"2.0","method":"notifications/initialized"}`+"\n"); err != nil {
		t.Fatal(err)
	}
	res := exchange(`{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"vm_ls","arguments":{}}}`)
	vms, _ := res["structuredContent"].(map[string]any)["vms"].([]any)
	if res["isError"] == true || len(vms) != 1 || vms[0].(map[string]any)["name"] != "dev" {
		t.Fatalf("vm_ls: %v", res)
	}
	inW.Close()
	if code := <-done; code != 0 {
		t.Fatalf("banger mcp exited %d after stdin closed: %s", code, w.stderr)
	}
}
