package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/agentfence/agentfence/api/client"
	v1 "github.com/agentfence/agentfence/api/v1"
	"github.com/agentfence/agentfence/audit"
	"github.com/agentfence/agentfence/internal/kerneltest"
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

// agentOutput reads agent.mjs's lines: the tool's result, then the direct
// call's.
func agentOutput(t *testing.T, out string) agentRun {
	t.Helper()
	var r agentRun
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("agent output %q: %v", line, err)
		}
	}
	return r
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
		return agentOutput(t, out), stderr
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

// A native server, demo/mcpserver (the official Go SDK), under the node
// agent: nothing but its executable names it, so its launch is judged by
// the executable and the environment alone. Bound, its tool call reaches
// the API; the agent's own call is refused as with a script server, and so
// is the call of a launch with LD_PRELOAD set.
func TestMCPNativeServer(t *testing.T) {
	dir, node := mcpNode(t)
	d := startDaemon(t)
	api := apiStandIn(t)
	server := filepath.Join(t.TempDir(), "mcpserver")
	if out, err := exec.Command("go", "build", "-o", server, "../demo/mcpserver").CombinedOutput(); err != nil {
		t.Fatalf("build demo/mcpserver: %v\n%s", err, out)
	}
	server, err := filepath.EvalSymlinks(server)
	if err != nil {
		t.Fatal(err)
	}
	run := func(agentArgs ...string) agentRun {
		t.Helper()
		out, stderr, code := d.cli(t, []string{"API_URL=http://" + api + "/tickets", "API_KEY=sk-test"},
			append([]string{"run", "--intent", "triage tickets",
				"--mcp", "tickets=" + server, "--mcp-allow", "tickets=tcp://" + api,
				"--", node, filepath.Join(dir, "agent.mjs")}, agentArgs...)...)
		if code != 0 {
			t.Fatalf("agent exited %d: %s\n%s", code, out, stderr)
		}
		return agentOutput(t, out)
	}

	r := run(server)
	if r.ToolError || !strings.Contains(r.Tool, "created") || !strings.Contains(r.Tool, "Bearer sk-test") {
		t.Errorf("tool call through the native server: %+v, want it to reach the API", r)
	}
	if r.Direct != "EPERM" {
		t.Errorf("the agent's direct call: %q, want EPERM", r.Direct)
	}
	launch := d.waitRecord(t, "mcp launch", func(rec audit.Record) bool {
		return rec.Kind == audit.KindMCP && rec.Outcome.Verdict == audit.VerdictAllowed
	})
	if m := launch.MCP; m.Server != "tickets" || m.Exe != server || m.Script != "" || m.Serves != launch.Session.ID || m.Session == "" {
		t.Errorf("launch record: session %s mcp %+v", launch.Session.ID, m)
	}

	r = run("LD_PRELOAD=/nonexistent/preload.so", server)
	if !r.ToolError || !strings.Contains(r.Tool, "operation not permitted") || r.Direct != "EPERM" {
		t.Errorf("LD_PRELOAD: %+v, want both calls refused", r)
	}
	rec := d.waitRecord(t, "LD_PRELOAD launch", func(rec audit.Record) bool {
		return rec.Kind == audit.KindMCP && rec.Outcome.Reason == session.LaunchInjection
	})
	if rec.Outcome.Verdict != audit.VerdictFlagged || rec.MCP.Exe != server || rec.MCP.Session != "" {
		t.Errorf("LD_PRELOAD launch record: outcome %+v mcp %+v", rec.Outcome, rec.MCP)
	}
}

// A member of the agent's session cannot attach to its bound MCP server
// (ptrace, process_vm_*, /proc/PID/mem, pidfd_getfd): the server runs in a
// session of its own, and the ptrace_access_check hook refuses a member
// any process outside its session. Where no hook layer runs (neither the
// BPF LSM nor fmod_ret), the route is open (route 24 in
// docs/threat-model.md). The server is native here (sleep), so this runs
// in the vmtest guests.
func TestMCPServerOutOfPtraceReach(t *testing.T) {
	// Yama's ptrace_scope 1 would refuse the probe, which is not the
	// server's ancestor; the agent that launched it is, so Yama does not
	// protect a real server.
	yamaOff(t)
	d := startDaemon(t)
	c := client.New(d.socket)
	ctx := context.Background()
	sleep, err := filepath.EvalSymlinks("/bin/sleep")
	if err != nil {
		t.Fatal(err)
	}
	agent, err := c.Open(ctx, v1.OpenRequest{Intent: "borrow the server", Scope: []string{"udp://127.0.0.53:53"},
		MCP: []v1.MCPServer{{Name: "srv", Command: []string{sleep, "600"}, Scope: []string{"tcp://127.0.0.2:18443"}}}})
	if err != nil {
		t.Fatal(err)
	}
	children, err := c.List(ctx, url.Values{"parent": {agent.ID}})
	if err != nil || len(children) != 1 || children[0].MCPServer != "srv" {
		t.Fatalf("server session: %+v %v", children, err)
	}
	server := children[0]

	// The agent launches its server: an exec in the agent's cgroup.
	cg, err := os.Open(agent.Binding.Cgroup)
	if err != nil {
		t.Fatal(err)
	}
	defer cg.Close()
	srv := exec.Command(sleep, "600")
	srv.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(cg.Fd()), Pdeathsig: syscall.SIGKILL}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Process.Kill(); srv.Wait() })
	pid := uint32(srv.Process.Pid)
	d.waitRecord(t, "the server's launch", func(r audit.Record) bool {
		return r.Kind == audit.KindMCP && r.Process.PID == pid && r.MCP.Session == server.ID
	})

	res := kerneltest.Run(t, agent.Binding.Cgroup, kerneltest.Options{}, kerneltest.VMRead{PID: int(pid)})
	if d.hookLayer() == "" {
		if res[0].Outcome() != "EFAULT" {
			t.Errorf("without a hook layer: %s, want EFAULT (route 24 open here)", res[0].Outcome())
		}
		t.Skip("no hook layer (BPF LSM or fmod_ret) on this host: route 24 is open (docs/threat-model.md)")
	}
	if res[0].Outcome() != "EPERM" {
		t.Errorf("the agent's vmread of its server: %s, want EPERM", res[0].Outcome())
	}
	r := d.waitRecord(t, "ptrace escape", func(r audit.Record) bool {
		return r.Kind == audit.KindEscape && r.Escape != nil && r.Escape.What == "ptrace" && r.Escape.TargetPID == pid
	})
	if !denied(r) || r.Session.ID != agent.ID || r.Outcome.Reason != audit.ReasonLaunchesMCPServers {
		t.Errorf("ptrace record: session %s outcome %+v", r.Session.ID, r.Outcome)
	}
}

// In a session that declares MCP servers, the agent cannot borrow a
// server in the window before the daemon binds it (route 25): it may not
// attach to a fellow member, which an unjudged launch is, nor ask to be
// traced by its parent across an exec. Nor can it take a connection a
// server made (route 30): an inet socket handed to it over a unix socket
// never arrives. Each refusal is an escape record naming why. Where no
// hook layer runs, the routes are open, which the test checks too.
func TestMCPAgentCannotBorrowTheServer(t *testing.T) {
	yamaOff(t)
	d := startDaemon(t)
	c := client.New(d.socket)
	api := kerneltest.Listen(t, "tcp4", "127.0.0.2:0")
	agent, err := c.Open(context.Background(), v1.OpenRequest{Intent: "borrow the server", Scope: []string{"udp://127.0.0.53:53"},
		MCP: []v1.MCPServer{{Name: "srv", Command: []string{"/bin/sleep", "600"}, Scope: []string{"tcp://" + api.String()}}}})
	if err != nil {
		t.Fatal(err)
	}
	// The server's connection to the API, which it hands to the agent.
	handed := kerneltest.SendConnection(t, api)

	fellow := kerneltest.Start(t, agent.Binding.Cgroup, kerneltest.Options{}, true, kerneltest.RawICMP)
	if res := fellow.Next(); res.Outcome() != kerneltest.Ready {
		t.Fatalf("fellow member: %s", res)
	}
	res := kerneltest.Run(t, agent.Binding.Cgroup, kerneltest.Options{}, kerneltest.VMRead{PID: fellow.PID},
		kerneltest.Traceme{}, kerneltest.RecvSocket{Unix: handed}, kerneltest.Connect{Addr: api})
	got := strings.Join(kerneltest.Outcomes(res), " ")
	if d.hookLayer() == "" {
		if got != "EFAULT ok ok EPERM" {
			t.Errorf("without a hook layer: %s, want EFAULT ok ok EPERM (routes 25 and 30 open here)", got)
		}
		t.Skip("no hook layer (BPF LSM or fmod_ret) on this host: routes 25 and 30 are open (docs/threat-model.md)")
	}
	if want := "EPERM EPERM " + kerneltest.ErrNoRights + " EPERM"; got != want {
		t.Fatalf("the agent: %s, want %s", got, want)
	}
	pid := uint32(res[0].PID)
	for _, w := range []struct{ what, via string }{{"ptrace", "attach"}, {"ptrace", "traceme"}, {"socket_receive", ""}} {
		r := d.waitRecord(t, w.what+" "+w.via, func(r audit.Record) bool {
			if r.Kind != audit.KindEscape || r.Escape == nil || r.Escape.What != w.what || r.Escape.Via != w.via || r.Outcome == nil {
				return false
			}
			// traceme is asked by the probe's child, naming the probe.
			return r.Process.PID == pid || w.via == "traceme" && r.Escape.TargetPID == pid
		})
		if !denied(r) || r.Outcome.Reason != audit.ReasonLaunchesMCPServers || r.Session.ID != agent.ID {
			t.Errorf("%s %s record: session %s outcome %+v", w.what, w.via, r.Session.ID, r.Outcome)
		}
		if w.via == "attach" && r.Escape.TargetPID != uint32(fellow.PID) {
			t.Errorf("attach record names pid %d, want %d", r.Escape.TargetPID, fellow.PID)
		}
		if w.what == "socket_receive" && (r.Destination == nil || r.Destination.IP != "127.0.0.2" || r.Destination.Port != api.Port() ||
			r.Destination.Protocol != "tcp") {
			t.Errorf("socket_receive record: destination %+v, want the API %s", r.Destination, api)
		}
	}
}

// SIGUSR1 opens node's inspector, a way to run code in the server, on
// 127.0.0.1:9229. The agent may signal its server, but the server may not
// listen on a port its scope does not name, and the agent may not connect
// to one its own scope does not name.
func TestMCPServerInspectorOutOfReach(t *testing.T) {
	dir, node := mcpNode(t)
	d := startDaemon(t)
	c := client.New(d.socket)
	ctx := context.Background()
	script := filepath.Join(dir, "server.mjs")
	agent, err := c.Open(ctx, v1.OpenRequest{Intent: "open the server's inspector", Scope: []string{"udp://127.0.0.53:53"},
		MCP: []v1.MCPServer{{Name: "tickets", Command: []string{node, script}, Scope: []string{"tcp://127.0.0.2:18443"}}}})
	if err != nil {
		t.Fatal(err)
	}
	cg, err := os.Open(agent.Binding.Cgroup)
	if err != nil {
		t.Fatal(err)
	}
	defer cg.Close()
	srv := exec.Command(node, script)
	srv.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(cg.Fd()), Pdeathsig: syscall.SIGKILL}
	stdin, err := srv.StdinPipe() // a stdio server exits at the end of its input
	if err != nil {
		t.Fatal(err)
	}
	stderr, err := os.Create(filepath.Join(t.TempDir(), "stderr"))
	if err != nil {
		t.Fatal(err)
	}
	srv.Stderr = stderr
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stdin.Close(); srv.Process.Kill(); srv.Wait() })
	pid := uint32(srv.Process.Pid)
	launch := d.waitRecord(t, "the server's launch", func(r audit.Record) bool {
		return r.Kind == audit.KindMCP && r.Process.PID == pid
	})
	if launch.MCP.Session == "" {
		t.Fatalf("the server was not bound: %+v", launch.Outcome)
	}

	// Until node handles SIGUSR1, the signal kills it.
	waitFor(t, "SIGUSR1 handler in node", func() bool { return catches(int(pid), syscall.SIGUSR1) })
	if err := srv.Process.Signal(syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	bind := d.recordOf(t, "the inspector's bind", audit.KindBind, pid, nil)
	if !denied(bind) || bind.Session.ID != launch.MCP.Session || bind.Destination == nil || bind.Destination.Port != 9229 {
		t.Errorf("inspector bind: session %s outcome %+v destination %+v", bind.Session.ID, bind.Outcome, bind.Destination)
	}
	if b, _ := os.ReadFile(stderr.Name()); strings.Contains(string(b), "Debugger listening") {
		t.Errorf("the inspector listens: %s", b)
	}
	res := kerneltest.Run(t, agent.Binding.Cgroup, kerneltest.Options{}, kerneltest.Connect{Addr: netip.MustParseAddrPort("127.0.0.1:9229")})
	if res[0].Outcome() != "EPERM" {
		t.Errorf("the agent's connect to the inspector port: %s, want EPERM", res[0].Outcome())
	}
}

// catches reports whether process pid has a handler for sig.
func catches(pid int, sig syscall.Signal) bool {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "SigCgt:"); ok {
			mask, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			return err == nil && mask&(1<<(sig-1)) != 0
		}
	}
	return false
}
