package session

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	v1 "github.com/agentfence/agentfence/api/v1"
)

// mcpFiles makes a script and a native "server" to declare.
func mcpFiles(t *testing.T) (node, script, native string) {
	t.Helper()
	node, err := exec.LookPath("node")
	if err != nil {
		t.Skip("no node on PATH")
	}
	dir := t.TempDir()
	script = filepath.Join(dir, "server.mjs")
	if err := os.WriteFile(script, []byte("console.log(1)\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	native = filepath.Join(dir, "server-bin")
	if err := os.WriteFile(native, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return node, script, native
}

func TestCheckMCP(t *testing.T) {
	node, script, native := mcpFiles(t)
	const sum = "e7b6e2d2b5d2c6a5b0b1f5c5a1d0b6b87b8b1b1e0e4a3c5a7e0a4f2d0c3b2a1f" // not the script's
	api := []string{"tcp://127.0.0.2:18443"}
	good, err := checkMCP([]v1.MCPServer{
		{Name: "tickets", Command: []string{"node", script}, Scope: api},
		{Name: "native", Command: []string{native, "--port", "1"}, Scope: api},
	}, 32)
	if err != nil {
		t.Fatal(err)
	}
	if good[0].decl.Script != script || good[0].script == (fileID{}) || good[1].script != (fileID{}) {
		t.Errorf("resolved %+v %+v", good[0].decl, good[1].decl)
	}
	if real, _ := filepath.EvalSymlinks(node); good[0].decl.Exe != real {
		t.Errorf("exe %q, want %q", good[0].decl.Exe, real)
	}

	for _, tc := range []struct {
		name  string
		decls []v1.MCPServer
		field string
	}{
		{"no command", []v1.MCPServer{{Name: "a", Scope: api}}, "mcp[0].command"},
		{"no such executable", []v1.MCPServer{{Name: "a", Command: []string{"/nonexistent/node"}, Scope: api}}, "mcp[0].command"},
		{"no such script", []v1.MCPServer{{Name: "a", Command: []string{node, "/nonexistent/server.mjs"}, Scope: api}}, "mcp[0].command"},
		{"relative script", []v1.MCPServer{{Name: "a", Command: []string{node, "server.mjs"}, Scope: api}}, "mcp[0].command"},
		{"no script", []v1.MCPServer{{Name: "a", Command: []string{node}, Scope: api}}, "mcp[0].command"},
		{"eval", []v1.MCPServer{{Name: "a", Command: []string{node, "-e", "1", script}, Scope: api}}, "mcp[0].command"},
		{"require", []v1.MCPServer{{Name: "a", Command: []string{node, "--require", "/tmp/x.js", script}, Scope: api}}, "mcp[0].command"},
		{"bad name", []v1.MCPServer{{Name: "Tickets!", Command: []string{node, script}, Scope: api}}, "mcp[0].name"},
		{"same name", []v1.MCPServer{{Name: "a", Command: []string{node, script}, Scope: api}, {Name: "a", Command: []string{native}, Scope: api}}, "mcp[1].name"},
		{"same identity", []v1.MCPServer{{Name: "a", Command: []string{node, script}, Scope: api}, {Name: "b", Command: []string{"node", script}, Scope: api}}, "mcp[1].command"},
		{"no scope", []v1.MCPServer{{Name: "a", Command: []string{node, script}}}, "mcp[0].scope"},
		{"bad rule", []v1.MCPServer{{Name: "a", Command: []string{node, script}, Scope: []string{"nonsense://x"}}}, "mcp[0].scope[0]"},
		{"hash mismatch", []v1.MCPServer{{Name: "a", Command: []string{node, script}, ScriptSHA256: sum, Scope: api}}, "mcp[0].script_sha256"},
		{"hash of a native server", []v1.MCPServer{{Name: "a", Command: []string{native}, ScriptSHA256: sum, Scope: api}}, "mcp[0].script_sha256"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := checkMCP(tc.decls, 32)
			wantErr(t, err, v1.CodeInvalid, tc.field)
		})
	}
}

func TestCheckMCPScriptHash(t *testing.T) {
	_, script, _ := mcpFiles(t)
	sum, err := fileSHA256(script)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := checkMCP([]v1.MCPServer{{Name: "a", Command: []string{"node", "-u", script}, ScriptSHA256: sum,
		Scope: []string{"tcp://127.0.0.2:443"}}}, 32); err == nil {
		t.Fatal("-u is a python option, not node's: want it refused")
	}
	if _, err := checkMCP([]v1.MCPServer{{Name: "a", Command: []string{"node", "--no-warnings", script}, ScriptSHA256: sum,
		Scope: []string{"tcp://127.0.0.2:443"}}}, 32); err != nil {
		t.Fatal(err)
	}
}
