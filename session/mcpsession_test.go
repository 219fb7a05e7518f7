package session

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"

	v1 "github.com/agentfence/agentfence/api/v1"
	"github.com/agentfence/agentfence/audit"
)

// openWithServer opens an agent session that declares one node server.
func openWithServer(t *testing.T, e *env) (agent, server v1.Session, script string) {
	t.Helper()
	if _, err := exec.LookPath("node"); err != nil {
		t.Skip("no node on PATH")
	}
	dir := t.TempDir()
	os.Chmod(filepath.Dir(dir), 0o755)
	os.Chmod(dir, 0o755)
	script = filepath.Join(dir, "server.mjs")
	if err := os.WriteFile(script, []byte("setTimeout(() => {}, 60000)\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	req := req("triage tickets", "tcp://127.0.0.1:8080")
	req.MCP = []v1.MCPServer{{Name: "tickets", Command: []string{"node", script}, Scope: []string{"tcp://127.0.0.2:18443"}}}
	agent = e.open(t, req, admin)
	for _, s := range e.r.List(Filter{Parent: agent.ID}) {
		if s.MCPServer == "tickets" {
			server = s
		}
	}
	if server.ID == "" {
		t.Fatalf("no server session below %s", agent.ID)
	}
	return agent, server, script
}

// A declared server gets a session of its own below the agent's, with the
// scope the opener gave it, outside the agent's.
func TestOpenMCPServer(t *testing.T) {
	e := newEnv(t, nil)
	agent, server, script := openWithServer(t, e)
	if len(agent.MCP) != 1 || agent.MCP[0].Script != script || agent.MCP[0].Exe == "" {
		t.Errorf("agent session's mcp = %+v", agent.MCP)
	}
	if !slices.Equal(server.Scope, []string{"tcp://127.0.0.2:18443"}) || server.Parent != agent.ID {
		t.Errorf("server session: scope %v parent %s", server.Scope, server.Parent)
	}
	es := e.entry(t, server.ID)
	if got := e.k.scopeOf(es.slot); len(got) != 1 {
		t.Errorf("server scope in the kernel: %v", got)
	}
	// The agent's session is marked in the kernel as one that launches
	// servers (no ptrace, no received inet sockets); the server's is not.
	if st, _ := e.k.Session(e.entry(t, agent.ID).slot); !st.LaunchesServers {
		t.Errorf("agent session in the kernel: %+v, want LaunchesServers", st)
	}
	if st, _ := e.k.Session(es.slot); st.LaunchesServers {
		t.Errorf("server session in the kernel: %+v, want no LaunchesServers", st)
	}
	// The server session's records name the server; the agent's do not.
	if m := e.recs.find(t, server.ID, "opened").MCP; m == nil || m.Server != "tickets" || m.Serves != agent.ID || m.Session != server.ID {
		t.Errorf("server session's opened record: mcp %+v", m)
	}
	if m := e.recs.find(t, agent.ID, "opened").MCP; m != nil {
		t.Errorf("agent session's opened record: mcp %+v", m)
	}
	// Narrowing the agent's session leaves the server's scope alone.
	if _, err := e.r.Narrow(agent.ID, v1.NarrowRequest{Scope: []string{"tcp://127.0.0.1:8080"}}, admin); err != nil {
		t.Fatal(err)
	}
	if got := e.get(t, server.ID).Scope; !slices.Equal(got, []string{"tcp://127.0.0.2:18443"}) {
		t.Errorf("server scope after narrowing the agent's: %v", got)
	}
	// Closing the agent's session ends the server's.
	if err := e.r.Close(agent.ID, admin); err != nil {
		t.Fatal(err)
	}
	e.k.assertClean(t)
}

// A member of the agent's session cannot reach into the server's session:
// not bind a process into it, not open a child under it, not narrow or
// revoke it.
func TestMCPServerOutOfTheAgentsReach(t *testing.T) {
	e := newEnv(t, nil)
	agent, server, _ := openWithServer(t, e)
	const agentPid = 4242
	e.cg.setOf(agentPid, agent.Binding.Cgroup)
	member := Caller{ID: "agent", PID: agentPid, UID: 1000}
	self := uint32(os.Getpid())
	e.cg.setOf(int(self), agent.Binding.Cgroup)

	_, err := e.r.Bind(server.ID, v1.BindRequest{PID: self}, member)
	wantErr(t, err, v1.CodeForbidden, "id")
	_, err = e.r.Open(v1.OpenRequest{Intent: "borrow", Scope: []string{"tcp://127.0.0.2:18443"}, Parent: server.ID}, member)
	wantErr(t, err, v1.CodeForbidden, "parent")
	_, err = e.r.Narrow(server.ID, v1.NarrowRequest{Scope: nil}, member)
	wantErr(t, err, v1.CodeForbidden, "id")
	_, err = e.r.Revoke(server.ID, member)
	wantErr(t, err, v1.CodeForbidden, "id")
	// Nor open a child of its own with the server's scope.
	_, err = e.r.Open(v1.OpenRequest{Intent: "borrow", Scope: []string{"tcp://127.0.0.2:18443"}}, member)
	wantErr(t, err, v1.CodeInvalid, "scope[0]")
}

// The declared server, launched by a member, is bound to the server's
// session; anything else stays the agent's.
func TestLaunchedBindsTheServer(t *testing.T) {
	e := newEnv(t, nil)
	agent, server, script := openWithServer(t, e)
	start := func(env []string, argv ...string) int {
		cmd := exec.Command(argv[0], argv[1:]...)
		cmd.Env = append(os.Environ(), env...)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		waitExeced(t, cmd.Process.Pid)
		e.cg.setOf(cmd.Process.Pid, agent.Binding.Cgroup)
		return cmd.Process.Pid
	}
	node, _ := exec.LookPath("node")
	es := e.entry(t, server.ID)

	pid := start(nil, node, script)
	l, ok := e.r.Launched(uint32(pid))
	nodeExe, _ := filepath.EvalSymlinks(node)
	want := audit.MCP{Server: "tickets", Session: server.ID, Serves: agent.ID, Exe: nodeExe, Script: script}
	if !ok || l.Reason != "" || l.MCP != want {
		t.Fatalf("Launched = %+v %v, want %+v bound", l, ok, want)
	}
	if b := e.k.pids[uint32(pid)]; b != (binding{es.slot, es.gen}) {
		t.Errorf("kernel binding of the server %+v, want the server session's", b)
	}
	if s := e.get(t, server.ID); !slices.Contains(s.Binding.PIDs, uint32(pid)) {
		t.Errorf("server session's pids %v", s.Binding.PIDs)
	}

	preload := filepath.Join(filepath.Dir(script), "evil.js")
	if err := os.WriteFile(preload, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	evil := start([]string{"NODE_OPTIONS=--require=" + preload}, node, script)
	if l, ok := e.r.Launched(uint32(evil)); !ok || l.Reason != LaunchInjection || l.MCP.Server != "tickets" || l.MCP.Session != "" {
		t.Errorf("injected launch: %+v %v, want tickets refused as %s", l, ok, LaunchInjection)
	}
	if _, ok := e.k.pids[uint32(evil)]; ok {
		t.Error("an injected launch was bound")
	}
	// A process in no session that declares servers is not judged.
	other := start(nil, node, script)
	e.cg.setOf(other, "/")
	if l, ok := e.r.Launched(uint32(other)); ok {
		t.Errorf("non-member judged: %+v", l)
	}
}

// A restarted daemon still recognises the servers its sessions declare,
// and still keeps their sessions out of the agent's reach.
func TestRestoreKeepsMCPServers(t *testing.T) {
	e := stateEnv(t)
	agent, server, script := openWithServer(t, e)
	r2 := e.registry(e.k)
	if _, _, err := r2.Restore(); err != nil {
		t.Fatal(err)
	}
	e.r = r2
	node, _ := exec.LookPath("node")
	cmd := exec.Command(node, script)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	waitExeced(t, cmd.Process.Pid)
	e.cg.setOf(cmd.Process.Pid, agent.Binding.Cgroup)
	if l, ok := r2.Launched(uint32(cmd.Process.Pid)); !ok || l.Reason != "" || l.MCP.Session != server.ID {
		t.Errorf("after restore, Launched = %+v %v, want tickets bound", l, ok)
	}
	// Records still name the server and the agent's servers.
	es, ea := e.entry(t, server.ID), e.entry(t, agent.ID)
	if a, _ := r2.Resolve(es.slot, es.gen); a.MCP == nil || a.MCP.Server != "tickets" || a.MCP.Script != script || a.MCP.Serves != agent.ID {
		t.Errorf("server attribution after restore: %+v", a.MCP)
	}
	if a, _ := r2.Resolve(ea.slot, ea.gen); len(a.Servers) != 1 || a.Servers[0].Slot != es.slot {
		t.Errorf("agent's servers after restore: %+v", a.Servers)
	}
	e.cg.setOf(4242, agent.Binding.Cgroup)
	_, err := r2.Revoke(server.ID, Caller{ID: "agent", PID: 4242, UID: 1000})
	wantErr(t, err, v1.CodeForbidden, "id")
}
