package session

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/agentfence/agentfence/audit"
)

// Why a launch that looks like a declared server is not one (kind mcp
// records).
const (
	LaunchIdentityMismatch = "identity_mismatch" // another script, or the script changed
	LaunchInjection        = "injection"         // something that loads other code into it
	LaunchWritable         = "writable_by_agent" // its files can be swapped by the launcher
	LaunchBindFailed       = "bind_failed"       // the kernel refused the binding (logged)
)

// injectingEnv are the variables that load code into an interpreter (or
// any dynamically linked program) before or beside its script
// (e2e/testdata/mcp/INJECTION.md). Their presence, whatever their value,
// refuses the launch: an empty LD_PRELOAD is harmless, but a check that
// parses values is one more parser to get wrong.
var injectingEnv = []string{
	"LD_PRELOAD", "LD_LIBRARY_PATH", "LD_AUDIT", "OPENSSL_CONF", "BASH_ENV", "ENV",
	"NODE_OPTIONS", "NODE_PATH", "NODE_REPL_EXTERNAL_MODULE",
	"PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONUSERBASE", "PYTHONPYCACHEPREFIX",
	"PYTHONWARNINGS", "PYTHONINSPECT", "PYTHONBREAKPOINT", "PYTHONEXECUTABLE",
}

// judgeLaunch decides whether the process pid, just exec'd by a member,
// is one of the declared servers. It returns the server it was judged
// against and why it is not that server ("" when it is). A process that
// runs none of the servers' executables is no candidate (-1, "").
func judgeLaunch(servers []mcpServer, pid int) (int, string) {
	proc := "/proc/" + strconv.Itoa(pid)
	exe, _, err := statID(proc + "/exe")
	if err != nil {
		return -1, ""
	}
	var candidates []int
	for i, s := range servers {
		if s.exe == exe {
			candidates = append(candidates, i)
		}
	}
	if len(candidates) == 0 {
		return -1, ""
	}
	argv, err := readNul(proc + "/cmdline")
	if err != nil || len(argv) == 0 {
		return candidates[0], LaunchIdentityMismatch
	}
	// A refusal names the server whose script the launch mentions, if
	// any: that is the one it tried to pass for.
	named := candidates[0]
	for _, i := range candidates {
		if s := servers[i].decl.Script; s != "" && slices.ContainsFunc(argv, func(a string) bool { return filepath.Base(a) == filepath.Base(s) }) {
			named = i
			break
		}
	}
	// A traced process runs whatever its tracer writes into it.
	if readStatus(proc).tracer != 0 {
		return named, LaunchInjection
	}
	env, _ := readNul(proc + "/environ")
	for _, kv := range env {
		name, _, _ := strings.Cut(kv, "=")
		if slices.Contains(injectingEnv, name) {
			return named, LaunchInjection
		}
	}
	var reason string
	for _, i := range candidates {
		why := checkLaunch(servers[i], argv, proc)
		if why == "" {
			return i, ""
		}
		if i == named {
			reason = why
		}
	}
	return named, reason
}

// checkLaunch says why a process that runs s's executable with argv is not
// s ("" when it is).
func checkLaunch(s mcpServer, argv []string, proc string) string {
	if s.script == (fileID{}) {
		return "" // a native server: the executable is the server
	}
	script, why := launchedScript(s, argv, proc)
	if why != "" {
		return why
	}
	if id, _, err := statID(script); err != nil || id != s.script {
		return LaunchIdentityMismatch
	}
	if writableBy(script, readStatus(proc)) {
		return LaunchWritable
	}
	if h := s.decl.ScriptSHA256; h != "" {
		if sum, err := fileSHA256(script); err != nil || !strings.EqualFold(sum, h) {
			return LaunchIdentityMismatch
		}
	}
	return ""
}

// launchedScript finds the script an interpreter was started with, as
// resolveMCP finds it in a declaration: the first argument that is not an
// option, every option before it one that runs no other code.
func launchedScript(s mcpServer, argv []string, proc string) (string, string) {
	in := slices.IndexFunc(interpreters, func(in interpreter) bool { return in.name.MatchString(filepath.Base(s.decl.Exe)) })
	args := argv[1:]
	i := slices.IndexFunc(args, func(a string) bool { return !strings.HasPrefix(a, "-") })
	if i < 0 {
		return "", LaunchInjection // it reads its program from stdin or an option
	}
	for _, opt := range args[:i] {
		if in < 0 || !slices.Contains(interpreters[in].options, opt) {
			return "", LaunchInjection
		}
	}
	script := args[i]
	if !filepath.IsAbs(script) {
		cwd, err := os.Readlink(proc + "/cwd")
		if err != nil {
			return "", LaunchIdentityMismatch
		}
		script = filepath.Join(cwd, script)
	}
	return script, ""
}

// procStatus is what the judgement reads of /proc/PID/status: the ids the
// process writes files with, and its tracer.
type procStatus struct {
	uid    int // -1 when unknown
	groups []int
	tracer int // TracerPid: 0 when none
}

// writableBy reports whether a process with c could replace path or what
// it is found through: the file itself or any directory above it. Root
// is left out: a launcher that is root in the initial user namespace
// holds the keys anyway (docs/threat-model.md).
func writableBy(path string, c procStatus) bool {
	if c.uid == 0 {
		return false
	}
	for p := path; ; p = filepath.Dir(p) {
		var st unix.Stat_t
		if c.uid < 0 || unix.Lstat(p, &st) != nil {
			return true
		}
		// In a sticky directory (/tmp) others cannot rename or remove
		// what is not theirs.
		sticky := st.Mode&unix.S_ISVTX != 0 && p != path
		switch {
		case int(st.Uid) == c.uid:
			return true
		case st.Mode&0o020 != 0 && !sticky && slices.Contains(c.groups, int(st.Gid)):
			return true
		case st.Mode&0o002 != 0 && !sticky:
			return true
		}
		if p == "/" {
			return false
		}
	}
}

// readStatus reads a process's effective uid, its groups and its tracer.
func readStatus(proc string) procStatus {
	c := procStatus{uid: -1}
	b, err := os.ReadFile(proc + "/status")
	if err != nil {
		return c
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		switch f[0] {
		case "Uid:":
			if len(f) >= 3 {
				c.uid, _ = strconv.Atoi(f[2])
			}
		case "TracerPid:":
			c.tracer, _ = strconv.Atoi(f[1])
		case "Gid:", "Groups:":
			if f[0] == "Gid:" && len(f) >= 3 {
				f = f[:3] // the effective gid
			}
			for _, g := range f[1:] {
				if n, err := strconv.Atoi(g); err == nil {
					c.groups = append(c.groups, n)
				}
			}
		}
	}
	return c
}

func readNul(path string) ([]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	b = bytes.TrimSuffix(b, []byte{0})
	if len(b) == 0 {
		return nil, nil
	}
	return strings.Split(string(b), "\x00"), nil
}

func (s mcpServer) String() string {
	return fmt.Sprintf("%s (%s)", s.decl.Name, strings.Join(s.decl.Command, " "))
}

// Launch is the judgement of a member's exec of a declared server's
// executable.
type Launch struct {
	// MCP is the server it was judged against; MCP.Session is set when the
	// process became that server.
	MCP audit.MCP
	// Reason is why it is not the server: LaunchIdentityMismatch,
	// LaunchInjection or LaunchWritable ("" when it is).
	Reason string
}

// Launched judges an exec of a member of a session that declares MCP
// servers (every exec of a member passes here; the others return at once)
// and binds a process that is one of them to the server's session, where
// the server's scope applies to it and to what it forks. It reports false
// when the process ran no declared server's executable.
func (r *Registry) Launched(tgid uint32) (Launch, bool) {
	// Most members' sessions declare no server: they pass without
	// waiting for a change.
	p := r.locate(int(tgid))
	r.mu.RLock()
	e := r.lookup(p)
	declares := e != nil && len(e.mcp) > 0
	r.mu.RUnlock()
	if !declares {
		return Launch{}, false
	}
	r.begin()
	defer r.end()
	if e = r.memberOf(Caller{PID: int(tgid)}); e == nil || len(e.mcp) == 0 {
		return Launch{}, false
	}
	i, reason := judgeLaunch(e.mcp, int(tgid))
	if i < 0 {
		return Launch{}, false
	}
	l := Launch{MCP: e.mcp[i].identity(), Reason: reason}
	l.MCP.Serves = e.ID
	if reason != "" {
		return l, true
	}
	for _, c := range e.servers {
		if c.MCPServer != l.MCP.Server {
			continue
		}
		if err := r.bindPid(c, tgid); err != nil {
			// It stays under the agent's scope, and the record says so.
			r.log.Error("bind an MCP server", "session", e.ID, "server", l.MCP.Server, "pid", tgid, "err", err)
			l.Reason = LaunchBindFailed
			return l, true
		}
		r.touch(c)
		r.persist()
		l.MCP.Session = c.ID
		return l, true
	}
	return Launch{}, false // its session is gone: the agent's is closing
}
