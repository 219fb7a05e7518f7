package session

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	v1 "github.com/agentfence/agentfence/api/v1"
	"github.com/agentfence/agentfence/internal/privtest"
)

// launch starts argv (in dir, with env added) and returns its pid; the
// process sleeps until the test ends.
func launch(t testing.TB, dir string, env []string, cred *syscall.Credential, argv ...string) int {
	t.Helper()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir, cmd.Env = dir, append(os.Environ(), env...)
	if cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	waitExeced(t, cmd.Process.Pid)
	return cmd.Process.Pid
}

// waitExeced returns once pid's exec is complete, as it is when the exec
// event reaches the daemon. Start returns earlier: when the exec closes the
// child's descriptors, before the new program's arguments are in place.
func waitExeced(t testing.TB, pid int) {
	t.Helper()
	for range 5000 {
		if argv, _ := readNul(fmt.Sprintf("/proc/%d/cmdline", pid)); len(argv) > 0 {
			return
		}
		time.Sleep(time.Millisecond)
	}
	t.Fatalf("process %d never showed its arguments", pid)
}

// A member's exec is the declared server only if it runs the declared
// executable and script with nothing injected; the rest stays the agent's.
func TestJudgeLaunch(t *testing.T) {
	node, err := exec.LookPath("node")
	if err != nil {
		t.Skip("no node on PATH")
	}
	dir := t.TempDir()
	// Reachable by the unprivileged launcher below.
	os.Chmod(filepath.Dir(dir), 0o755)
	os.Chmod(dir, 0o755)
	sleeper := []byte("setTimeout(() => {}, 60000)\n")
	script, copyOf, evil := filepath.Join(dir, "server.mjs"), filepath.Join(dir, "copy.mjs"), filepath.Join(dir, "evil.js")
	for _, p := range []string{script, copyOf, evil} {
		if err := os.WriteFile(p, sleeper, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	native := filepath.Join(dir, "native-server")
	sleep, _ := exec.LookPath("sleep")
	b, _ := os.ReadFile(sleep)
	if err := os.WriteFile(native, b, 0o755); err != nil {
		t.Fatal(err)
	}
	api := []string{"tcp://127.0.0.2:18443"}
	servers, err := checkMCP([]v1.MCPServer{
		{Name: "tickets", Command: []string{"node", script}, Scope: api},
		{Name: "native", Command: []string{native, "60"}, Scope: api},
	}, 32)
	if err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name   string
		env    []string
		argv   []string
		server int
		reason string
	}{
		{"the declared server", nil, []string{node, script}, 0, ""},
		{"by a relative path", nil, []string{node, "server.mjs"}, 0, ""},
		{"with an option that runs nothing else", nil, []string{node, "--no-warnings", script}, 0, ""},
		{"the native server", nil, []string{native, "60"}, 1, ""},
		{"NODE_OPTIONS", []string{"NODE_OPTIONS=--require=" + evil}, []string{node, script}, 0, LaunchInjection},
		{"LD_PRELOAD", []string{"LD_PRELOAD=/tmp/evil.so"}, []string{node, script}, 0, LaunchInjection},
		{"LD_PRELOAD into the native server", []string{"LD_PRELOAD=/tmp/evil.so"}, []string{native, "60"}, 1, LaunchInjection},
		{"--require", nil, []string{node, "--require", evil, script}, 0, LaunchInjection},
		{"-e", nil, []string{node, "-e", "setTimeout(() => {}, 60000)"}, 0, LaunchInjection},
		{"a copy of the script", nil, []string{node, copyOf}, 0, LaunchIdentityMismatch},
		{"not a server's executable", nil, []string{sleep, "60"}, -1, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pid := launch(t, dir, tc.env, nil, tc.argv...)
			if i, reason := judgeLaunch(servers, pid); i != tc.server || reason != tc.reason {
				t.Errorf("judgeLaunch = %d %q, want %d %q", i, reason, tc.server, tc.reason)
			}
		})
	}

	// A traced process runs whatever its tracer writes into it: one that
	// asked to be traced before its exec (PTRACE_TRACEME) is not the server.
	t.Run("traced", func(t *testing.T) {
		cmd := exec.Command(node, script)
		cmd.SysProcAttr = &syscall.SysProcAttr{Ptrace: true}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { cmd.Process.Kill(); cmd.Wait() }()
		waitExeced(t, cmd.Process.Pid)
		if i, reason := judgeLaunch(servers, cmd.Process.Pid); i != 0 || reason != LaunchInjection {
			t.Errorf("judgeLaunch = %d %q, want 0 %q", i, reason, LaunchInjection)
		}
	})

	// A launcher that could swap the script (its owner, here) does not get
	// the server's scope.
	t.Run("script writable by the launcher", func(t *testing.T) {
		privtest.RequireRoot(t)
		const nobody = 65534
		if err := os.Chown(script, nobody, nobody); err != nil {
			t.Fatal(err)
		}
		defer os.Chown(script, 0, 0)
		pid := launch(t, dir, nil, &syscall.Credential{Uid: nobody, Gid: nobody}, node, script)
		if i, reason := judgeLaunch(servers, pid); i != 0 || reason != LaunchWritable {
			t.Errorf("judgeLaunch = %d %q, want 0 %q", i, reason, LaunchWritable)
		}
	})
}

// BenchmarkJudgeLaunch: the daemon's judgement of one exec of a member of
// a session that declares a node server, on a live process, for what it
// adds to the daemon's work per exec (docs/benchmarks.md, "MCP servers").
// The bind that follows a match is the registry's and is not included.
func BenchmarkJudgeLaunch(b *testing.B) {
	node, err := exec.LookPath("node")
	if err != nil {
		b.Skip("no node on PATH")
	}
	dir := b.TempDir()
	script := filepath.Join(dir, "server.mjs")
	if err := os.WriteFile(script, []byte("setTimeout(() => {}, 60000)\n"), 0o644); err != nil {
		b.Fatal(err)
	}
	servers, err := checkMCP([]v1.MCPServer{{Name: "tickets", Command: []string{"node", script}, Scope: []string{"tcp://127.0.0.2:18443"}}}, 32)
	if err != nil {
		b.Fatal(err)
	}
	sleep, _ := exec.LookPath("sleep")
	for _, tc := range []struct {
		name   string
		argv   []string
		server int
		reason string
	}{
		{"not_a_server_executable", []string{sleep, "60"}, -1, ""},
		{"node_-e", []string{node, "-e", "setTimeout(() => {}, 60000)"}, 0, LaunchInjection},
		{"the_server", []string{node, script}, 0, ""},
	} {
		b.Run(tc.name, func(b *testing.B) {
			pid := launch(b, dir, nil, nil, tc.argv...)
			for b.Loop() {
				if i, reason := judgeLaunch(servers, pid); i != tc.server || reason != tc.reason {
					b.Fatalf("judgeLaunch = %d %q, want %d %q", i, reason, tc.server, tc.reason)
				}
			}
		})
	}
}
