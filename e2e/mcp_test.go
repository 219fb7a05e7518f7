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
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/agentfence/agentfence/audit"
	"github.com/agentfence/agentfence/internal/privtest"
	"github.com/agentfence/agentfence/session"
)

var npmOnce sync.Once
var npmErr error

// mcpNode installs the node fixtures' packages (the official MCP SDK,
// e2e/testdata/mcp) once per test binary and returns their directory.
func mcpNode(t *testing.T) (dir, node string) {
	t.Helper()
	node = nodeExe(t)
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

// nodeExe is node's executable, links resolved, as a declaration of a
// node server resolves it.
func nodeExe(tb testing.TB) string {
	tb.Helper()
	if privtest.Emulated() {
		// What it tests is the daemon's judgement of an exec and a pid
		// binding, which the kernel tests of the matrix cover.
		tb.Skip("the vmtest guests carry no node; the MCP stack is tested on the host")
	}
	node, err := exec.LookPath("node")
	if err == nil {
		node, err = filepath.EvalSymlinks(node)
	}
	if err != nil {
		privtest.Unavailable(tb, "node: "+err.Error())
	}
	return node
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

	run := func(agentArgs ...string) (agentRun, string) {
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
		return r, stderr
	}

	r, _ := run()
	if r.ToolError || !strings.Contains(r.Tool, "created") || !strings.Contains(r.Tool, "Bearer sk-test") {
		t.Errorf("tool call through the server: %+v, want it to reach the API", r)
	}
	if r.Direct != "EPERM" {
		t.Errorf("the agent's direct call: %q, want EPERM", r.Direct)
	}
	apiPort := func(rec audit.Record) bool {
		return rec.Destination != nil && net.JoinHostPort(rec.Destination.IP, fmt.Sprint(rec.Destination.Port)) == api
	}
	// The records: the launch, the server's call in its own session and
	// naming it, and the agent's direct call as the route around it.
	launch := d.waitRecord(t, "mcp launch", func(rec audit.Record) bool {
		return rec.Kind == audit.KindMCP && rec.Outcome.Verdict == audit.VerdictAllowed
	})
	if m := launch.MCP; m.Server != "tickets" || m.Script != server || m.Exe != node || m.Serves != launch.Session.ID || m.Session == "" {
		t.Errorf("launch record: session %s mcp %+v", launch.Session.ID, m)
	}
	d.waitRecord(t, "the server's call", func(rec audit.Record) bool {
		return rec.Kind == audit.KindConnect && apiPort(rec) && rec.Outcome.Verdict == audit.VerdictAllowed &&
			rec.Session.ID == launch.MCP.Session && rec.MCP != nil && *rec.MCP == *launch.MCP
	})
	direct := d.waitRecord(t, "the agent's direct call", func(rec audit.Record) bool {
		return rec.Kind == audit.KindConnect && apiPort(rec) && rec.Session.ID == launch.Session.ID
	})
	if o := direct.Outcome; o.Verdict != audit.VerdictDenied || o.Errno != "EPERM" || o.Reason != audit.ReasonHeldByMCPServer || o.HeldBy != "tickets" || direct.MCP != nil {
		t.Errorf("the agent's direct call: outcome %+v mcp %+v", o, direct.MCP)
	}

	other := filepath.Join(dir, "other.mjs")
	for _, tc := range []struct {
		name, reason string
		args         []string
		script       string // the script the launch runs
	}{
		{"NODE_OPTIONS preload", session.LaunchInjection, []string{"NODE_OPTIONS=--require=" + filepath.Join(dir, "evil.js")}, server},
		{"a copy of the script", session.LaunchIdentityMismatch, []string{node, copyOf}, copyOf},
		{"another script", session.LaunchIdentityMismatch, []string{node, other}, other},
	} {
		r, stderr := run(tc.args...)
		// other.mjs is no MCP server: it makes the call itself and says
		// how that went on stderr.
		refused := strings.Contains(r.Tool, "EPERM") || strings.Contains(stderr, `{"other":"EPERM"}`)
		if !r.ToolError || !refused || r.Direct != "EPERM" {
			t.Errorf("%s: %+v (stderr %q), want both calls refused with EPERM", tc.name, r, stderr)
		}
		rec := d.waitRecord(t, tc.name, func(rec audit.Record) bool {
			return rec.Kind == audit.KindMCP && rec.Outcome.Reason == tc.reason && slices.Contains(rec.Process.Argv, tc.script)
		})
		if rec.Outcome.Verdict != audit.VerdictFlagged || rec.MCP.Server != "tickets" || rec.MCP.Session != "" {
			t.Errorf("%s: launch record outcome %+v mcp %+v", tc.name, rec.Outcome, rec.MCP)
		}
	}
}
