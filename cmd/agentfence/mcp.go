package main

import (
	"fmt"
	"slices"
	"strings"

	v1 "github.com/agentfence/agentfence/api/v1"
	"github.com/agentfence/agentfence/scope"
)

// checkMCP turns --mcp and --mcp-allow into the request's MCP servers. The
// daemon resolves and checks the commands; here only their form.
func (f *sessionFlags) checkMCP() error {
	r := &f.req
	for _, m := range f.mcp {
		name, command, ok := strings.Cut(m, "=")
		if !ok || name == "" {
			return usageError{fmt.Sprintf("--mcp %q: want NAME=COMMAND", m)}
		}
		argv, err := splitCommand(command)
		if err != nil {
			return usageError{fmt.Sprintf("--mcp %q: %v", m, err)}
		}
		if len(argv) == 0 {
			return usageError{fmt.Sprintf("--mcp %q: no command", m)}
		}
		if slices.ContainsFunc(r.MCP, func(s v1.MCPServer) bool { return s.Name == name }) {
			return usageError{fmt.Sprintf("--mcp %q: server %s is declared twice", m, name)}
		}
		r.MCP = append(r.MCP, v1.MCPServer{Name: name, Command: argv})
	}
	for _, a := range f.mcpAllow {
		name, rule, ok := strings.Cut(a, "=")
		if !ok || name == "" || rule == "" {
			return usageError{fmt.Sprintf("--mcp-allow %q: want NAME=RULE", a)}
		}
		i := slices.IndexFunc(r.MCP, func(s v1.MCPServer) bool { return s.Name == name })
		if i < 0 {
			return usageError{fmt.Sprintf("--mcp-allow %q: no server %s declared with --mcp", a, name)}
		}
		if _, err := scope.Parse(rule); err != nil {
			return usageError{fmt.Sprintf("--mcp-allow %q: %v", a, err)}
		}
		r.MCP[i].Scope = append(r.MCP[i].Scope, rule)
	}
	return nil
}

// splitCommand splits a command line into words as a POSIX shell would
// without expanding anything: blanks separate words, quotes and a
// backslash keep them together.
func splitCommand(line string) ([]string, error) {
	var words []string
	var w strings.Builder
	inWord := false
	var quote rune
	escaped := false
	for _, c := range line {
		switch {
		case escaped:
			w.WriteRune(c)
			escaped = false
		case quote != 0 && c == quote:
			quote = 0
		case quote == '\'':
			w.WriteRune(c)
		case c == '\\':
			escaped, inWord = true, true
		case quote == '"':
			w.WriteRune(c)
		case c == '\'' || c == '"':
			quote, inWord = c, true
		case c == ' ' || c == '\t' || c == '\n':
			if inWord {
				words = append(words, w.String())
				w.Reset()
				inWord = false
			}
		default:
			w.WriteRune(c)
			inWord = true
		}
	}
	if quote != 0 || escaped {
		return nil, fmt.Errorf("unterminated quote or escape")
	}
	if inWord {
		words = append(words, w.String())
	}
	return words, nil
}
