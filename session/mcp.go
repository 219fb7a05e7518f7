package session

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"

	"golang.org/x/sys/unix"

	v1 "github.com/agentfence/agentfence/api/v1"
	"github.com/agentfence/agentfence/audit"
	"github.com/agentfence/agentfence/scope"
)

// fileID is a file's identity: its device and inode, as exe= rules and the
// process programs name an executable.
type fileID struct{ dev, ino uint64 }

func statID(path string) (id fileID, regular bool, err error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return fileID{}, false, &os.PathError{Op: "stat", Path: path, Err: err}
	}
	return fileID{dev: st.Dev, ino: st.Ino}, st.Mode&unix.S_IFMT == unix.S_IFREG, nil
}

// mcpServer is a declared server as the registry keeps it: the
// declaration with what its command resolved to, and its compiled scope.
type mcpServer struct {
	decl        v1.MCPServer
	exe, script fileID // script: zero for a native server
	rules       []scope.Rule
	entries     []scope.Entry
}

// interpreter is how a script interpreter is told apart and which of its
// options may stand before the script: only those that cannot run code
// other than the script (docs/mcp.md, "Injection").
type interpreter struct {
	name    *regexp.Regexp // the executable's base name, links resolved
	options []string
}

var interpreters = []interpreter{
	{regexp.MustCompile(`^node(js)?(\d+)?$`), []string{"--no-warnings", "--enable-source-maps", "--no-deprecation"}},
	// -E and -I ignore PYTHON* variables, -s the user site, -S site.
	{regexp.MustCompile(`^python(\d+(\.\d+)?)?$`), []string{"-u", "-B", "-E", "-I", "-s", "-S", "-O", "-OO"}},
}

var mcpName = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)

// checkMCP validates the MCP servers of an open request and resolves each
// command to the files it will run.
func checkMCP(decls []v1.MCPServer, maxRules int) ([]mcpServer, error) {
	var out []mcpServer
	for i, d := range decls {
		field := fmt.Sprintf("mcp[%d]", i)
		if !mcpName.MatchString(d.Name) {
			return nil, invalid(field+".name", "%q is not a server name (lowercase letters, digits, '.', '_' and '-', at most 63)", d.Name)
		}
		if slices.ContainsFunc(out, func(s mcpServer) bool { return s.decl.Name == d.Name }) {
			return nil, invalid(field+".name", "server %q is declared twice", d.Name)
		}
		s, err := resolveMCP(field, d)
		if err != nil {
			return nil, err
		}
		if s.rules, s.entries, err = parseScope(field+".scope", d.Scope, maxRules); err != nil {
			return nil, err
		}
		if len(s.rules) == 0 {
			return nil, invalid(field+".scope", "server %q has no scope: declare what it may reach", d.Name)
		}
		for _, o := range out {
			if o.exe == s.exe && o.script == s.script {
				return nil, invalid(field+".command", "server %q runs the same files as server %q: a launch could not be told apart", d.Name, o.decl.Name)
			}
		}
		out = append(out, s)
	}
	return out, nil
}

// resolveMCP finds the executable and script a server's command runs.
func resolveMCP(field string, d v1.MCPServer) (mcpServer, error) {
	s := mcpServer{decl: d}
	if len(d.Command) == 0 || strings.TrimSpace(d.Command[0]) == "" {
		return s, invalid(field+".command", "server %q has no command", d.Name)
	}
	exe, err := exec.LookPath(d.Command[0])
	if err != nil {
		return s, invalid(field+".command", "%q: %v", d.Command[0], err)
	}
	if exe, err = filepath.EvalSymlinks(exe); err != nil {
		return s, invalid(field+".command", "%q: %v", d.Command[0], err)
	}
	if s.exe, _, err = statID(exe); err != nil {
		return s, invalid(field+".command", "%v", err)
	}
	s.decl.Exe = exe
	interp := slices.IndexFunc(interpreters, func(in interpreter) bool { return in.name.MatchString(filepath.Base(exe)) })
	if interp < 0 {
		if d.ScriptSHA256 != "" {
			return s, invalid(field+".script_sha256", "%s is not a script interpreter agentfence knows (node, python): there is no script to pin", exe)
		}
		return s, nil
	}
	args := d.Command[1:]
	i := slices.IndexFunc(args, func(a string) bool { return !strings.HasPrefix(a, "-") })
	for _, opt := range args[:max(i, 0)] {
		if !slices.Contains(interpreters[interp].options, opt) {
			return s, invalid(field+".command", "option %q before the script can run other code than the script (allowed: %s)",
				opt, strings.Join(interpreters[interp].options, " "))
		}
	}
	if i < 0 {
		return s, invalid(field+".command", "%s runs no script: the server would be whatever its stdin says", exe)
	}
	script := args[i]
	if !filepath.IsAbs(script) {
		return s, invalid(field+".command", "script %q must be an absolute path (the launching process's directory is not known)", script)
	}
	script, err = filepath.EvalSymlinks(script)
	if err != nil {
		return s, invalid(field+".command", "script: %v", err)
	}
	id, regular, err := statID(script)
	if err != nil {
		return s, invalid(field+".command", "script: %v", err)
	}
	if !regular {
		return s, invalid(field+".command", "script %s is not a regular file", script)
	}
	s.script, s.decl.Script = id, script
	if d.ScriptSHA256 != "" {
		sum, err := fileSHA256(script)
		switch {
		case err != nil:
			return s, invalid(field+".script_sha256", "%v", err)
		case !strings.EqualFold(sum, d.ScriptSHA256):
			return s, invalid(field+".script_sha256", "%s has sha256 %s, not %s", script, sum, d.ScriptSHA256)
		}
	}
	return s, nil
}

func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func (s mcpServer) identity() audit.MCP {
	return audit.MCP{Server: s.decl.Name, Exe: s.decl.Exe, Script: s.decl.Script, ScriptSHA256: s.decl.ScriptSHA256}
}

// linkServers ties a session that declares MCP servers to their sessions,
// so that records name the server a process runs as, and the server whose
// scope holds what a member was denied. Call it with mu held for writing.
func (r *Registry) linkServers(e *entry) {
	e.servers = nil
	for _, c := range r.children(e.ID) {
		if c.MCPServer == "" {
			continue
		}
		e.servers = append(e.servers, c)
		// A server whose files no longer check after a restart is named
		// without them (and no launch becomes it).
		id := audit.MCP{Server: c.MCPServer}
		if i := slices.IndexFunc(e.mcp, func(s mcpServer) bool { return s.decl.Name == c.MCPServer }); i >= 0 {
			id = e.mcp[i].identity()
		}
		id.Session, id.Serves = c.ID, e.ID
		c.server = &id
	}
}
