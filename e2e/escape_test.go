package e2e

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/agentfence/agentfence/audit"
	"github.com/agentfence/agentfence/internal/cgroupv2"
	"github.com/agentfence/agentfence/internal/kerneltest"
)

// escapeProbeEnv makes the test binary an escape probe: it runs the
// ';'-separated actions in order and prints "VERB RESULT" for each, then
// exits. Checked in init, before TestMain.
const escapeProbeEnv = "AGENTFENCE_ESCAPEPROBE"

func init() {
	if actions := os.Getenv(escapeProbeEnv); actions != "" {
		for _, a := range strings.Split(actions, ";") {
			verb, arg, _ := strings.Cut(a, " ")
			fmt.Printf("%s %s\n", verb, escapeProbe(verb, arg))
		}
		os.Exit(0)
	}
}

// escapeProbe performs one action and returns "ok", an errno name, or what
// it read. Actions:
//
//	session               this process's session (AGENTFENCE_SESSION, set by run) and pid, as ID/PID
//	connect ADDR          a TCP connect to ADDR
//	cgmove DIR            write this process's pid to DIR/cgroup.procs
//	fork ADDR             a child of this process connects to ADDR; its result
//	clone DIR ADDR        a child started directly in DIR (clone3 CLONE_INTO_CGROUP) connects to ADDR; its result
//	daemon ADDR           setsid and double fork: a grandchild whose parent has exited connects to ADDR; its result
//	netns ADDR            a child in a user and network namespace of its own (lo down) connects to ADDR; its result
//	orphan ADDR           (daemon's middle step) start a grandchild that connects to ADDR once this process is gone, and exit
//	afterparent PPID ADDR (daemon's last step) wait until PPID is no longer the parent, then connect to ADDR
func escapeProbe(verb, arg string) string {
	switch verb {
	case "session":
		return fmt.Sprintf("%s/%d", os.Getenv("AGENTFENCE_SESSION"), os.Getpid())
	case "connect":
		c, err := net.DialTimeout("tcp4", arg, 5*time.Second)
		if err == nil {
			c.Close()
		}
		return errResult(err)
	case "cgmove":
		return errResult(os.WriteFile(filepath.Join(arg, "cgroup.procs"), []byte(strconv.Itoa(os.Getpid())), 0))
	case "fork":
		return spawnProbe("connect "+arg, nil)
	case "clone":
		dir, addr, _ := strings.Cut(arg, " ")
		f, err := os.Open(dir)
		if err != nil {
			return "clone:" + errResult(err)
		}
		defer f.Close()
		return spawnProbe("connect "+addr, &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(f.Fd())})
	case "daemon":
		return spawnProbe("orphan "+arg, &syscall.SysProcAttr{Setsid: true})
	case "netns":
		// A user namespace needs no capability, and in it a network
		// namespace needs none outside it: what a root member without
		// the gate's capabilities can still do.
		return spawnProbe("connect "+arg, &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWUSER | syscall.CLONE_NEWNET,
			UidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Getuid(), Size: 1}},
			GidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Getgid(), Size: 1}}})
	case "orphan":
		cmd := exec.Command(os.Args[0])
		cmd.Env = append(os.Environ(), escapeProbeEnv+"="+fmt.Sprintf("afterparent %d %s", os.Getpid(), arg))
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
		if err := cmd.Start(); err != nil {
			return "orphan:" + errResult(err)
		}
		os.Exit(0) // the grandchild answers, on the stdout it shares
	case "afterparent":
		ppid, addr, _ := strings.Cut(arg, " ")
		deadline := time.Now().Add(10 * time.Second)
		for strconv.Itoa(os.Getppid()) == ppid {
			if time.Now().After(deadline) {
				return "parent-still-there"
			}
			time.Sleep(5 * time.Millisecond)
		}
		return escapeProbe("connect", addr)
	}
	return "badverb"
}

// spawnProbe runs this binary as a probe doing action and returns the
// result of its last line.
func spawnProbe(action string, attr *syscall.SysProcAttr) string {
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), escapeProbeEnv+"="+action)
	cmd.SysProcAttr = attr
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		return "spawn:" + errResult(err)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	_, res, _ := strings.Cut(lines[len(lines)-1], " ")
	return res
}

// probeResults parses a probe's "VERB RESULT" lines, in order.
func probeResults(t *testing.T, out string) []string {
	t.Helper()
	var res []string
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		_, r, _ := strings.Cut(sc.Text(), " ")
		res = append(res, r)
	}
	return res
}

func escapeEnv(actions ...string) []string {
	return []string{escapeProbeEnv + "=" + strings.Join(actions, ";")}
}

// runEscape runs the probe in a new session allowing only tcp://allowed
// (plus extra flags) and returns the session id, the member's pid and the
// results of the actions that followed "session".
func runEscape(t *testing.T, d *daemon, allow []string, actions ...string) (string, uint32, []string) {
	t.Helper()
	args := []string{"run", "--intent", "escape " + t.Name()}
	for _, a := range allow {
		args = append(args, "--allow", a)
	}
	args = append(args, "--", os.Args[0])
	stdout, stderr, code := d.cli(t, escapeEnv(append([]string{"session"}, actions...)...), args...)
	if code != 0 {
		t.Fatalf("run: exit %d: %s %s", code, stdout, stderr)
	}
	res := probeResults(t, stdout)
	if len(res) != len(actions)+1 {
		t.Fatalf("probe printed %q for %d actions", stdout, len(actions))
	}
	id, pid, _ := strings.Cut(res[0], "/")
	n, _ := strconv.Atoi(pid)
	if !strings.HasPrefix(id, "s-") || n == 0 {
		t.Fatalf("probe's session %q", res[0])
	}
	return id, uint32(n), res[1:]
}

func (d *daemon) escapeRecord(t *testing.T, session, what string) audit.Record {
	t.Helper()
	return d.waitRecord(t, what+" escape", func(r audit.Record) bool {
		return r.Kind == audit.KindEscape && r.Session != nil && r.Session.ID == session && r.Escape != nil && r.Escape.What == what
	})
}

// TestEscapeByCgroupProcs: a member running as root (without any of the
// gate's capabilities, as run starts it) writes its pid into the root
// cgroup's cgroup.procs, which it may. It stays in its session: an
// out-of-scope connect still fails with EPERM, its allowed one still
// succeeds, and so do its children's. The trail holds an escape record
// naming the session, the member and the root cgroup.
func TestEscapeByCgroupProcs(t *testing.T) {
	d := startDaemon(t)
	in := kerneltest.Serve(t, "127.0.0.1:0")
	out := kerneltest.Serve(t, "127.0.0.1:0")
	root, err := cgroupv2.Root()
	if err != nil {
		t.Fatal(err)
	}
	id, pid, res := runEscape(t, d, []string{"tcp://" + in.String()},
		"connect "+out.String(), "cgmove "+root, "connect "+out.String(), "connect "+in.String(),
		"fork "+out.String(), "fork "+in.String(), "daemon "+out.String())
	want := []string{"EPERM", "ok", "EPERM", "ok", "EPERM", "ok", "EPERM"}
	if strings.Join(res, " ") != strings.Join(want, " ") {
		t.Errorf("results %q, want %q (connect out, move to the root cgroup, connect out, connect in, a child's out and in, a daemonized grandchild's out)",
			res, want)
	}

	rec := d.escapeRecord(t, id, "cgroup_move")
	if rec.Escape.Cgroup != "/" || rec.Escape.CgroupID == 0 || rec.Escape.ByPID != 0 || rec.Process == nil || rec.Process.PID != pid ||
		rec.Outcome == nil || rec.Outcome.Verdict != audit.VerdictFlagged || rec.Session.Intent != "escape "+t.Name() {
		t.Errorf("escape record: %+v %+v %+v %+v", rec.Escape, rec.Process, rec.Outcome, rec.Session)
	}
	// The connects after the move are the session's, denied and recorded.
	d.waitRecord(t, "denied connect after the move", func(r audit.Record) bool {
		return r.Kind == audit.KindConnect && r.Session != nil && r.Session.ID == id && r.Process != nil && r.Process.PID == pid &&
			r.Outcome.Verdict == audit.VerdictDenied && r.Destination.Port == out.Port() && r.Time.After(rec.Time)
	})
	d.expectClean(t)
}

// TestEscapeByCloneIntoCgroup: a member forks a child directly into a
// cgroup outside its session (clone3 CLONE_INTO_CGROUP). The child is
// still judged by the session, and the trail holds an escape record
// naming the cgroup and the child.
func TestEscapeByCloneIntoCgroup(t *testing.T) {
	d := startDaemon(t)
	in := kerneltest.Serve(t, "127.0.0.1:0")
	out := kerneltest.Serve(t, "127.0.0.1:0")
	root, err := cgroupv2.Root()
	if err != nil {
		t.Fatal(err)
	}
	outside := filepath.Join(root, fmt.Sprintf("agentfence-e2e-escape-%d", os.Getpid()))
	if err := os.Mkdir(outside, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { removeCgroup(t, outside) })
	id, pid, res := runEscape(t, d, []string{"tcp://" + in.String()},
		"clone "+outside+" "+out.String(), "clone "+outside+" "+in.String(), "clone "+root+" "+out.String())
	if want := []string{"EPERM", "ok", "EPERM"}; strings.Join(res, " ") != strings.Join(want, " ") {
		t.Errorf("results %q, want %q (children cloned into another cgroup, then the root)", res, want)
	}
	rec := d.escapeRecord(t, id, "clone_into_cgroup")
	rel := strings.TrimPrefix(outside, root)
	if rec.Escape.Cgroup != rel || rec.Escape.ChildPID == 0 || rec.Process.PID != pid || rec.Outcome.Verdict != audit.VerdictFlagged {
		t.Errorf("escape record: %+v %+v %+v, want cgroup %s", rec.Escape, rec.Process, rec.Outcome, rel)
	}
	d.expectClean(t)
}

// TestEscapeByNetworkNamespace: a member's child in a network namespace of
// its own is still judged by the session (an out-of-scope connect fails
// with EPERM, before any route is looked up; an allowed one gets as far as
// the namespace's down loopback), and its fork into the namespace is an
// escape record (via clone), made before the child ran, and only one: the
// exec that follows in the same namespace adds none.
// Outside any session the same child's connects both fail for want of a
// route.
func TestEscapeByNetworkNamespace(t *testing.T) {
	d := startDaemon(t)
	in := kerneltest.Serve(t, "127.0.0.1:0")
	out := kerneltest.Serve(t, "127.0.0.1:0")
	outside := probeResults(t, func() string {
		cmd := exec.Command(os.Args[0])
		cmd.Env = append(os.Environ(), escapeEnv("netns "+out.String(), "netns "+in.String())...)
		b, err := cmd.Output()
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}())
	if strings.Join(outside, " ") != "ENETUNREACH ENETUNREACH" {
		t.Fatalf("outside a session, connects from a new network namespace: %q", outside)
	}
	id, _, res := runEscape(t, d, []string{"tcp://" + in.String()}, "netns "+out.String(), "netns "+in.String())
	if strings.HasPrefix(res[0], "spawn:") {
		// Debian's kernel.unprivileged_userns_clone=0, say: the route
		// does not exist for a member without CAP_SYS_ADMIN.
		t.Skipf("a member cannot make a user namespace here (%s): nothing to test", res[0])
	}
	if want := []string{"EPERM", "ENETUNREACH"}; strings.Join(res, " ") != strings.Join(want, " ") {
		t.Errorf("results %q, want %q", res, want)
	}
	rec := d.escapeRecord(t, id, "netns")
	if rec.Escape.NetNS == 0 || rec.Escape.Via != "clone" || rec.Outcome.Verdict != audit.VerdictFlagged {
		t.Errorf("escape record: %+v %+v", rec.Escape, rec.Outcome)
	}
	// Both children forked into a namespace of their own: a clone record
	// each, and none for their execs.
	other := d.waitRecord(t, "the second child's escape", func(r audit.Record) bool {
		return r.Kind == audit.KindEscape && r.Session != nil && r.Session.ID == id && r.Process.PID != rec.Process.PID
	})
	for _, r := range d.records(t) {
		if r.Kind == audit.KindEscape && r.Session != nil && r.Session.ID == id && r.Escape.Via != "clone" {
			t.Errorf("escape via %s of pid %d, want only the children's clones (%d, %d)", r.Escape.Via, r.Process.PID,
				rec.Process.PID, other.Process.PID)
		}
	}
	d.expectClean(t)
}

// TestEscapeByUnshareWithoutExec: a root member bound by pid (so holding
// CAP_SYS_ADMIN, which run would have dropped) moves a thread to a new
// network namespace and back, and never execs. Each move is an escape
// record when the syscall returns (via unshare, then via setns).
func TestEscapeByUnshareWithoutExec(t *testing.T) {
	d := startDaemon(t)
	s := d.openSession(t, "--intent", "netns round trip", "--allow", "udp://127.0.0.53:53")
	p := kerneltest.Start(t, "", kerneltest.Options{}, true, kerneltest.Netns{})
	if res := p.Next(); res.Outcome() != kerneltest.Ready {
		t.Fatalf("probe: %s", res)
	}
	if _, stderr, code := d.cli(t, nil, "session", "bind", "--socket", d.socket, s.ID, "--pid", fmt.Sprint(p.PID)); code != 0 {
		t.Fatalf("bind: %s", stderr)
	}
	host, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", p.PID))
	if err != nil {
		t.Fatal(err)
	}
	p.Go()
	if res := p.Next(); res.Outcome() != "ok" {
		t.Fatalf("unshare and setns back: %s", res)
	}
	out := d.waitRecord(t, "unshare escape", func(r audit.Record) bool {
		return r.Kind == audit.KindEscape && r.Escape.Via == "unshare" && r.Process.PID == uint32(p.PID)
	})
	back := d.waitRecord(t, "setns escape", func(r audit.Record) bool {
		return r.Kind == audit.KindEscape && r.Escape.Via == "setns" && r.Process.PID == uint32(p.PID)
	})
	if out.Session.ID != s.ID || out.Escape.What != "netns" || fmt.Sprintf("net:[%d]", out.Escape.NetNS) == host {
		t.Errorf("unshare record: session %s escape %+v (host %s)", out.Session.ID, out.Escape, host)
	}
	if back.Session.ID != s.ID || fmt.Sprintf("net:[%d]", back.Escape.NetNS) != host {
		t.Errorf("setns record: session %s escape %+v, want back in %s", back.Session.ID, back.Escape, host)
	}
}

// TestEscapeCountsAsDrift: with a violation budget of 0 the escape alone
// quarantines the session: afterwards only its essential rule matches.
func TestEscapeCountsAsDrift(t *testing.T) {
	d := startDaemon(t, "--config", configFile(t, "sessions:\n  violation_budget: 0\n  drift_action: quarantine\n"))
	mcp := kerneltest.Serve(t, "127.0.0.1:0")
	api := kerneltest.Serve(t, "127.0.0.1:0")
	root, err := cgroupv2.Root()
	if err != nil {
		t.Fatal(err)
	}
	id, _, res := runEscape(t, d, []string{"essential,tcp://" + mcp.String(), "tcp://" + api.String()},
		"connect "+api.String(), "cgmove "+root, "connect "+api.String(), "connect "+mcp.String())
	if want := []string{"ok", "ok", "EPERM", "ok"}; strings.Join(res, " ") != strings.Join(want, " ") {
		t.Errorf("results %q, want %q: after the escape only the essential rule matches", res, want)
	}
	d.escapeRecord(t, id, "cgroup_move")
	d.waitRecord(t, "quarantined", func(r audit.Record) bool {
		return r.Kind == audit.KindSession && r.Event == "quarantined" && r.Session.ID == id
	})
}

// removeCgroup removes a test cgroup once the probes that ran in it have
// gone (bounded).
func removeCgroup(t *testing.T, dir string) {
	if err := cgroupv2.RemoveWhenEmpty(dir, 10*time.Second); err != nil {
		t.Error(err)
	}
}
