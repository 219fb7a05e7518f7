package main

import (
	"context"
	"io"
	"reflect"
	"strings"
	"testing"

	v1 "github.com/agentfence/agentfence/api/v1"
)

func TestRunMCPFlags(t *testing.T) {
	o, err := parseRun([]string{"--intent", "x", "--allow", "tcp://127.0.0.1:80",
		"--mcp", `tickets=node "/srv/mcp/my tickets/server.mjs" --flag`, "--mcp", "git=/usr/bin/mcp-git",
		"--mcp-allow", "tickets=tcp://127.0.0.2:18443", "--mcp-allow", "tickets=api.example.com:443", "--", "agent"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	want := []v1.MCPServer{
		{Name: "tickets", Command: []string{"node", "/srv/mcp/my tickets/server.mjs", "--flag"}, Scope: []string{"tcp://127.0.0.2:18443", "api.example.com:443"}},
		{Name: "git", Command: []string{"/usr/bin/mcp-git"}},
	}
	if !reflect.DeepEqual(o.sess.req.MCP, want) {
		t.Errorf("mcp = %+v, want %+v", o.sess.req.MCP, want)
	}
}

// Bad --mcp and --mcp-allow values are bad usage (exit 2), named in the
// message, before anything is opened (the socket does not exist).
func TestRunMCPBadInput(t *testing.T) {
	for _, c := range []struct {
		flags []string
		msg   string
	}{
		{[]string{"--mcp", "tickets="}, `--mcp "tickets=": no command`},
		{[]string{"--mcp", "tickets"}, `--mcp "tickets": want NAME=COMMAND`},
		{[]string{"--mcp", "=node x"}, `want NAME=COMMAND`},
		{[]string{"--mcp", `t=node "/srv/x`}, `unterminated quote`},
		{[]string{"--mcp", "t=node /a.mjs", "--mcp", "t=node /b.mjs"}, "declared twice"},
		{[]string{"--mcp-allow", "tickets=tcp://127.0.0.2:443"}, "no server tickets declared"},
		{[]string{"--mcp", "t=node /a.mjs", "--mcp-allow", "t=nonsense://x"}, `--mcp-allow "t=nonsense://x"`},
		{[]string{"--mcp", "t=node /a.mjs", "--mcp-allow", "t="}, "want NAME=RULE"},
	} {
		args := append([]string{"run", "--socket", "/nonexistent/api.sock", "--intent", "x"}, c.flags...)
		err := run(context.Background(), append(args, "--", "true"), io.Discard, io.Discard)
		if err == nil || usageOrFailure(err) != 2 || !strings.Contains(err.Error(), c.msg) {
			t.Errorf("%q: %v (exit %d); want exit 2 saying %s", c.flags, err, usageOrFailure(err), c.msg)
		}
	}
}

func TestSplitCommand(t *testing.T) {
	for line, want := range map[string][]string{
		`node /srv/server.mjs`:        {"node", "/srv/server.mjs"},
		`  node   'a b'  "c \"d\""  `: {"node", "a b", `c "d"`},
		`python3 /x\ y.py`:            {"python3", "/x y.py"},
		`''`:                          {""},
		``:                            nil,
	} {
		got, err := splitCommand(line)
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Errorf("splitCommand(%q) = %q, %v; want %q", line, got, err, want)
		}
	}
}
