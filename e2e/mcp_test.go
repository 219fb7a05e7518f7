package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/agentfence/agentfence/internal/privtest"
)

var npmOnce sync.Once
var npmErr error

// mcpNode installs the node fixtures' packages (the official MCP SDK,
// e2e/testdata/mcp) once per test binary and returns their directory.
func mcpNode(t *testing.T) (dir, node string) {
	t.Helper()
	if privtest.Emulated() {
		// What it tests is the daemon's judgement of an exec and a pid
		// binding, which the kernel tests of the matrix cover.
		t.Skip("the vmtest guests carry no node; the MCP stack is tested on the host")
	}
	node, err := exec.LookPath("node")
	if err == nil {
		node, err = filepath.EvalSymlinks(node)
	}
	if err != nil {
		privtest.Unavailable(t, "node: "+err.Error())
	}
	dir, _ = filepath.Abs("testdata/mcp/node")
	npmOnce.Do(func() {
		out, err := exec.Command("npm", "ci", "--prefix", dir, "--no-audit", "--no-fund", "--prefer-offline").CombinedOutput()
		if err != nil {
			npmErr = fmt.Errorf("npm ci: %v\n%s", err, out)
		}
	})
	if npmErr != nil {
		privtest.Unavailable(t, npmErr.Error())
	}
	return dir, node
}

// apiStandIn is the SaaS API: it answers every POST with what it got.
func apiStandIn(t *testing.T) string {
	ln, err := net.Listen("tcp4", "127.0.0.2:0")
	if err != nil {
		privtest.Unavailable(t, err.Error())
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		w.WriteHeader(http.StatusCreated)
		fmt.Fprintf(w, "created %s for %s", body, r.Header.Get("Authorization"))
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

type agentRun struct {
	Tool      string `json:"tool"`
	ToolError bool   `json:"tool_error"`
	Direct    string `json:"direct"`
}

// The mission's scenario with the official TypeScript SDK: a node agent
// launches its node MCP server over stdio. The server's tool call reaches
// the API with the key; the agent's own call with the same key fails with
// EPERM. A launch with code injected, or another script under the same
// interpreter, gets the agent's scope and cannot reach the API either.
func TestMCPServerOverStdio(t *testing.T) {
	dir, node := mcpNode(t)
	d := startDaemon(t)
	api := apiStandIn(t)
	server := filepath.Join(dir, "server.mjs")
	copyOf := filepath.Join(dir, "copy.mjs")
	b, _ := os.ReadFile(server)
	if err := os.WriteFile(copyOf, b, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(copyOf) })

	run := func(agentArgs ...string) agentRun {
		t.Helper()
		out, stderr, code := d.cli(t, []string{"API_URL=http://" + api + "/tickets", "API_KEY=sk-test"},
			append([]string{"run", "--intent", "triage tickets",
				"--mcp", "tickets=" + node + " " + server, "--mcp-allow", "tickets=tcp://" + api,
				"--", node, filepath.Join(dir, "agent.mjs")}, agentArgs...)...)
		if code != 0 {
			t.Fatalf("agent exited %d: %s\n%s", code, out, stderr)
		}
		var r agentRun
		for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
			if err := json.Unmarshal([]byte(line), &r); err != nil {
				t.Fatalf("agent output %q: %v", line, err)
			}
		}
		return r
	}

	r := run()
	if r.ToolError || !strings.Contains(r.Tool, "created") || !strings.Contains(r.Tool, "Bearer sk-test") {
		t.Errorf("tool call through the server: %+v, want it to reach the API", r)
	}
	if r.Direct != "EPERM" {
		t.Errorf("the agent's direct call: %q, want EPERM", r.Direct)
	}

	for name, args := range map[string][]string{
		"NODE_OPTIONS preload": {"NODE_OPTIONS=--require=" + filepath.Join(dir, "evil.js")},
		"a copy of the script": {node, copyOf},
	} {
		r := run(args...)
		if !r.ToolError || !strings.Contains(r.Tool, "EPERM") || r.Direct != "EPERM" {
			t.Errorf("%s: %+v, want both calls refused with EPERM", name, r)
		}
	}
}
