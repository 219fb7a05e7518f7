//go:build linux

package sensor

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/agentfence/agentfence/enforcer"
	"github.com/agentfence/agentfence/internal/cgroupv2"
	"github.com/agentfence/agentfence/internal/kerneltest"
	"github.com/agentfence/agentfence/internal/procfs"
	"github.com/agentfence/agentfence/internal/ringreader"
	"github.com/agentfence/agentfence/sensor/cgroupmeta"
)

// ctl is a helper process driven by lines on stdin, each answered on
// stdout with "ok N" or "err MESSAGE":
//
//	move DIR   write this process's pid to DIR/cgroup.procs
//	clone DIR  start a parked child directly in DIR (clone3 CLONE_INTO_CGROUP); N is its pid
//	fork       start a parked child where this process is; N is its pid
//	exec       exec /bin/sleep (no answer)
//	run ARGS   start the command ARGS as a child; N is its pid
//	runnet ARGS  the same, the child forked into a new network namespace
func ctl() {
	in := bufio.NewScanner(os.Stdin)
	fmt.Printf("ok %d\n", os.Getpid())
	for in.Scan() {
		verb, arg, _ := strings.Cut(in.Text(), " ")
		n, err := 0, error(nil)
		switch verb {
		case "move":
			err = os.WriteFile(filepath.Join(arg, "cgroup.procs"), []byte(strconv.Itoa(os.Getpid())), 0)
		case "clone", "fork":
			cmd := exec.Command("/proc/self/exe")
			cmd.Env = append(os.Environ(), helperEnv+"=park")
			cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
			var dir *os.File
			if verb == "clone" {
				if dir, err = os.Open(arg); err != nil {
					break
				}
				cmd.SysProcAttr.UseCgroupFD, cmd.SysProcAttr.CgroupFD = true, int(dir.Fd())
			}
			if err = cmd.Start(); err == nil {
				n = cmd.Process.Pid
			}
			if dir != nil {
				dir.Close()
			}
		case "exec":
			err = syscall.Exec("/bin/sleep", []string{"sleep", "600"}, nil)
		case "run", "runnet":
			args := strings.Fields(arg)
			cmd := exec.Command(args[0], args[1:]...)
			cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
			if verb == "runnet" {
				cmd.SysProcAttr.Cloneflags = syscall.CLONE_NEWNET
			}
			if err = cmd.Start(); err == nil {
				n = cmd.Process.Pid
			}
		default:
			err = fmt.Errorf("bad verb %q", verb)
		}
		if err != nil {
			fmt.Printf("err %v\n", err)
		} else {
			fmt.Printf("ok %d\n", n)
		}
	}
	os.Exit(0)
}

type ctlProc struct {
	cmd *exec.Cmd
	in  io.WriteCloser
	out *bufio.Scanner
	pid uint32
}

// startCtl starts a ctl helper directly in the cgroup dir (clone3
// CLONE_INTO_CGROUP from this process, which is in no session). It and the
// children it reports are killed when the test ends.
func startCtl(t *testing.T, dir string) *ctlProc {
	t.Helper()
	f, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cmd := exec.Command("/proc/self/exe")
	cmd.Env = append(os.Environ(), helperEnv+"=ctl")
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(f.Fd()), Pdeathsig: syscall.SIGKILL}
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &ctlProc{cmd: cmd, in: in, out: bufio.NewScanner(out), pid: uint32(cmd.Process.Pid)}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	c.answer(t, "start")
	return c
}

func (c *ctlProc) answer(t *testing.T, what string) uint32 {
	t.Helper()
	if !c.out.Scan() {
		t.Fatalf("%s: helper ended (%v)", what, c.out.Err())
	}
	res, n, _ := strings.Cut(c.out.Text(), " ")
	if res != "ok" {
		t.Fatalf("%s: %s", what, c.out.Text())
	}
	pid, _ := strconv.Atoi(n)
	return uint32(pid)
}

// do sends one command and returns the pid it reports (0 if none).
func (c *ctlProc) do(t *testing.T, cmd string) uint32 {
	t.Helper()
	if _, err := fmt.Fprintln(c.in, cmd); err != nil {
		t.Fatal(err)
	}
	pid := c.answer(t, cmd)
	if pid != 0 {
		t.Cleanup(func() { syscall.Kill(int(pid), syscall.SIGKILL) })
	}
	return pid
}

// memberFixture is the real gate, attached to a cgroup of the test's own
// (so it judges nothing else on the host), and the process programs
// sharing its maps as the daemon loads them.
type memberFixture struct {
	g      *enforcer.Gate
	base   string
	events chan enforcer.Event
	proc   *loaded // the process programs
}

func newMemberFixture(t *testing.T) *memberFixture { return newMemberFixtureAt(t, "") }

// newMemberFixtureAt loads the gate with boundary layer ceiling at most
// (enforcer.Options.Boundary).
func newMemberFixtureAt(t *testing.T, ceiling enforcer.FamilyLayer) *memberFixture {
	return newMemberFixtureWith(t, ceiling, 0)
}

// newMemberFixtureWith is newMemberFixtureAt with the process reader's
// poll interval (0: the default).
func newMemberFixtureWith(t *testing.T, ceiling enforcer.FamilyLayer, poll time.Duration) *memberFixture {
	t.Helper()
	mnt, err := procfs.Cgroup2Mount()
	if err != nil {
		t.Fatal(err)
	}
	self, err := procfs.ProcCgroupPath(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	f := &memberFixture{base: filepath.Join(mnt, self, fmt.Sprintf("af-sensor-%d-%s", os.Getpid(), strings.ReplaceAll(t.Name(), "/", "-"))),
		events: make(chan enforcer.Event, 64)}
	f.mkdir(t, "")
	g, err := enforcer.Load(enforcer.Options{CgroupRoot: f.base, NoHostnames: true, Boundary: ceiling})
	if err != nil {
		t.Fatalf("load gate: %+v", err)
	}
	t.Cleanup(func() { g.Close() })
	f.g = g
	f.proc = load(t, ProcessOptions{PidSessions: g.PidSessions(), ProcExe: g.ProcExe(), Sessions: g.Sessions(),
		CgroupSessions: g.CgroupSessions(), GateEvents: g.Events(), GateStats: g.StatsMap(), PollInterval: poll})
	rd, err := ringreader.New(g.Events(), 10*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		rd.Run(ctx, func(raw []byte) {
			ev, err := enforcer.DecodeEvent(raw)
			if err != nil {
				t.Errorf("decode: %v", err)
				return
			}
			f.events <- ev
		})
	}()
	t.Cleanup(func() { cancel(); <-done; rd.Close() })
	return f
}

// mkdir makes the cgroup base/rel and removes it when the test ends,
// waiting (bounded) for the killed helpers to leave it.
func (f *memberFixture) mkdir(t *testing.T, rel string) (string, uint64) {
	t.Helper()
	dir := filepath.Join(f.base, rel)
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// Once the probes that ran in it are gone.
		if err := cgroupv2.RemoveWhenEmpty(dir, 10*time.Second); err != nil {
			t.Error(err)
		}
	})
	id, err := cgroupmeta.ID(dir)
	if err != nil {
		t.Fatal(err)
	}
	return dir, id
}

// open puts an active session in slot with generation gen and binds the
// cgroup id to it.
func (f *memberFixture) open(t *testing.T, slot uint32, gen uint64, budget uint32, cgroup uint64) {
	t.Helper()
	f.openWith(t, slot, enforcer.SessionState{Gen: gen, Budget: budget, QuarantineOnBudget: true}, cgroup)
}

// openWith opens slot with st, active.
func (f *memberFixture) openWith(t *testing.T, slot uint32, st enforcer.SessionState, cgroup uint64) {
	t.Helper()
	gen := st.Gen
	st.State = enforcer.StateActive
	if err := f.g.PutSession(slot, st); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.g.PutSession(slot, enforcer.SessionState{Gen: gen, State: enforcer.StateFree}) })
	if cgroup != 0 {
		if err := f.g.BindCgroup(cgroup, slot, gen); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.g.UnbindCgroup(cgroup) })
	}
}

func (f *memberFixture) wantBinding(t *testing.T, who string, pid, slot uint32, gen uint64) {
	t.Helper()
	s, g, ok := f.g.PidBinding(pid)
	if !ok || s != slot || g != gen {
		t.Errorf("%s (%d): binding slot %d gen %d (%v), want slot %d gen %d", who, pid, s, g, ok, slot, gen)
	}
}

func (f *memberFixture) wantUnbound(t *testing.T, who string, pid uint32) {
	t.Helper()
	if s, g, ok := f.g.PidBinding(pid); ok {
		t.Errorf("%s (%d): bound to slot %d gen %d, want no binding", who, pid, s, g)
	}
}

func (f *memberFixture) violations(t *testing.T, slot uint32) uint32 {
	t.Helper()
	s, err := f.g.Session(slot)
	if err != nil {
		t.Fatal(err)
	}
	return s.Violations
}

// escape waits for the next escape report.
func (f *memberFixture) escape(t *testing.T, what string) enforcer.Event {
	t.Helper()
	select {
	case ev := <-f.events:
		if uint8(ev.Hook) != HookEscape {
			t.Fatalf("%s: event hook %d, want an escape (%d): %+v", what, ev.Hook, HookEscape, ev)
		}
		return ev
	case <-time.After(10 * time.Second):
		t.Fatalf("%s: no escape reported", what)
	}
	return enforcer.Event{}
}

// TestMembershipKeptAcrossCgroups: a process started in a session's cgroup
// is bound by tgid at fork; moving to a cgroup outside the session (a write
// to cgroup.procs) and forking into one (clone3 CLONE_INTO_CGROUP) leave it
// and its children in the session, and each is reported once, counted
// against the budget.
func TestMembershipKeptAcrossCgroups(t *testing.T) {
	f := newMemberFixture(t)
	sess, sessID := f.mkdir(t, "session")
	other, otherID := f.mkdir(t, "other")
	const slot, gen = 3, 11
	f.open(t, slot, gen, 100, sessID)

	c := startCtl(t, sess)
	f.wantBinding(t, "started into the session cgroup", c.pid, slot, gen)
	child := c.do(t, "fork")
	f.wantBinding(t, "its child", child, slot, gen)
	if n := f.violations(t, slot); n != 0 {
		t.Errorf("violations %d after ordinary forks, want 0", n)
	}

	cloned := c.do(t, "clone "+other)
	f.wantBinding(t, "cloned into another cgroup", cloned, slot, gen)
	ev := f.escape(t, "clone3 into another cgroup")
	if EscapeKind(ev.Reason) != EscapeCloneIntoCgroup || ev.PID != c.pid || uint32(ev.NameHash) != cloned ||
		ev.CgroupID != otherID || ev.Slot != slot || ev.Gen != gen || ev.QuarantinedNow {
		t.Errorf("clone report: %+v", ev)
	}

	c.do(t, "move "+other)
	f.wantBinding(t, "moved out", c.pid, slot, gen)
	ev = f.escape(t, "write to cgroup.procs")
	if EscapeKind(ev.Reason) != EscapeCgroupMove || ev.PID != c.pid || ev.TID != c.pid || uint32(ev.NameHash) != c.pid ||
		ev.CgroupID != otherID || ev.Slot != slot || ev.Gen != gen || ev.UID != uint32(os.Getuid()) || ev.Comm == "" {
		t.Errorf("move report: %+v", ev)
	}
	after := c.do(t, "fork")
	f.wantBinding(t, "child of the moved process", after, slot, gen)
	if n := f.violations(t, slot); n != 2 {
		t.Errorf("violations %d, want 2 (one per attempt)", n)
	}
	// Someone else moving the member is the same attempt, naming the mover.
	if err := os.WriteFile(filepath.Join(sess, "cgroup.procs"), []byte(strconv.Itoa(int(after))), 0); err != nil {
		t.Fatal(err)
	}
	f.wantBinding(t, "moved back by another process", after, slot, gen)
	if err := os.WriteFile(filepath.Join(other, "cgroup.procs"), []byte(strconv.Itoa(int(after))), 0); err != nil {
		t.Fatal(err)
	}
	ev = f.escape(t, "moved out by another process")
	if ev.PID != after || uint32(ev.NameHash) != uint32(os.Getpid()) {
		t.Errorf("report of a move by another process: %+v", ev)
	}
}

// TestMembershipWithinSessionTree: moving or forking into a session nested
// in the member's own cgroup (a child session) makes it that session's
// member, as the gate finds it by cgroup, and is not an escape; moving up
// out of the child session is.
func TestMembershipWithinSessionTree(t *testing.T) {
	f := newMemberFixture(t)
	parent, parentID := f.mkdir(t, "parent")
	childDir, childID := f.mkdir(t, "parent/child")
	plain, _ := f.mkdir(t, "parent/plain")
	f.open(t, 1, 5, 100, parentID)
	f.open(t, 2, 6, 100, childID)

	c := startCtl(t, parent)
	f.wantBinding(t, "parent session member", c.pid, 1, 5)
	k := c.do(t, "clone "+childDir)
	f.wantBinding(t, "cloned into the child session", k, 2, 6)
	c.do(t, "move "+plain)
	f.wantBinding(t, "moved to an unbound cgroup below its session", c.pid, 1, 5)
	c.do(t, "move "+childDir)
	f.wantBinding(t, "moved into the child session", c.pid, 2, 6)
	if a, b := f.violations(t, 1), f.violations(t, 2); a != 0 || b != 0 {
		t.Errorf("violations %d, %d within the session tree, want none", a, b)
	}
	c.do(t, "move "+parent)
	f.wantBinding(t, "moved up out of the child session", c.pid, 2, 6)
	ev := f.escape(t, "move up out of the child session")
	if ev.Slot != 2 || ev.CgroupID != parentID || EscapeKind(ev.Reason) != EscapeCgroupMove {
		t.Errorf("report: %+v", ev)
	}
}

// TestMembershipBudget: an escape counts like a denial; the one past the
// budget quarantines the session in the kernel.
func TestMembershipBudget(t *testing.T) {
	f := newMemberFixture(t)
	sess, sessID := f.mkdir(t, "session")
	other, _ := f.mkdir(t, "other")
	f.open(t, 4, 1, 0, sessID)
	c := startCtl(t, sess)
	c.do(t, "move "+other)
	if ev := f.escape(t, "move"); !ev.QuarantinedNow {
		t.Errorf("escape past a zero budget did not quarantine: %+v", ev)
	}
	if s, err := f.g.Session(4); err != nil || s.State != enforcer.StateQuarantined || s.Violations != 1 {
		t.Errorf("session %+v %v, want quarantined with 1 violation", s, err)
	}
}

// TestMembershipBindingPoints: a process that joins a session's cgroup by a
// move, or whose cgroup is bound to a session after it started, is bound
// by tgid (at the move, at its exec); a binding whose session is gone is
// neither kept nor inherited.
func TestMembershipBindingPoints(t *testing.T) {
	f := newMemberFixture(t)
	sess, sessID := f.mkdir(t, "session")
	outside, outsideID := f.mkdir(t, "outside")
	const slot, gen = 7, 2
	f.open(t, slot, gen, 100, sessID)

	moved := startCtl(t, outside)
	f.wantUnbound(t, "outside every session", moved.pid)
	if err := os.WriteFile(filepath.Join(sess, "cgroup.procs"), []byte(strconv.Itoa(int(moved.pid))), 0); err != nil {
		t.Fatal(err)
	}
	f.wantBinding(t, "moved into the session", moved.pid, slot, gen)

	late := startCtl(t, outside)
	f.open(t, 8, 1, 100, outsideID)
	f.wantUnbound(t, "member by cgroup only", late.pid)
	fmt.Fprintln(late.in, "exec")
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, _, ok := f.g.PidBinding(late.pid); ok || time.Now().After(deadline) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	f.wantBinding(t, "after its exec", late.pid, 8, 1)

	// The session ends: its slot is freed (closing kills the members; this
	// one outlives it, as an escaped member would without the kill).
	if err := f.g.PutSession(slot, enforcer.SessionState{Gen: gen, State: enforcer.StateFree}); err != nil {
		t.Fatal(err)
	}
	if err := f.g.UnbindCgroup(sessID); err != nil {
		t.Fatal(err)
	}
	child := moved.do(t, "fork")
	f.wantUnbound(t, "child of a process whose session ended", child)
	f.wantUnbound(t, "a process whose session ended, once it forks", moved.pid)
	if n := f.violations(t, 8); n != 0 {
		t.Errorf("violations %d, want 0", n)
	}
}

// TestMembershipNetnsReported: a member that execs in a network namespace
// of its own (unshare(1): unshare, then exec) is reported once and stays
// a member; its children in that namespace are not reported again.
func TestMembershipNetnsReported(t *testing.T) {
	f := newMemberFixture(t)
	sess, sessID := f.mkdir(t, "session")
	f.open(t, 9, 4, 100, sessID)
	c := startCtl(t, sess)
	host, err := os.Readlink("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	same := c.do(t, "run /bin/sleep 600")
	f.wantBinding(t, "exec in the same namespace", same, 9, 4)
	// A process that a non-member starts into the session in a namespace
	// of its own (a container runtime's clone3) is not an escape.
	dir, err := os.Open(sess)
	if err != nil {
		t.Fatal(err)
	}
	defer dir.Close()
	ctr := exec.Command("/bin/sleep", "600")
	ctr.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(dir.Fd()), Cloneflags: syscall.CLONE_NEWNET,
		Pdeathsig: syscall.SIGKILL}
	if err := ctr.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ctr.Process.Kill(); ctr.Wait() })
	f.wantBinding(t, "started into the session in a namespace of its own", uint32(ctr.Process.Pid), 9, 4)
	pid := c.do(t, "run unshare --net /usr/bin/env /bin/sleep 600")
	ev := f.escape(t, "unshare into a new network namespace")
	// The gate's syscall exit program sees the unshare return, before
	// unshare(1) execs env.
	if EscapeKind(ev.Reason) != EscapeNetns || NetnsVia(ev.Protocol) != NetnsViaUnshare || ev.PID != pid || ev.Slot != 9 || ev.Gen != 4 {
		t.Errorf("netns report: %+v", ev)
	}
	if want := fmt.Sprintf("net:[%d]", ev.NameHash); want != host {
		t.Errorf("report names the old namespace %s, want %s", want, host)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", pid))
		if err == nil && ns == fmt.Sprintf("net:[%d]", ev.CgroupID) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("member's namespace %s %v, report names %d", ns, err, ev.CgroupID)
		}
		time.Sleep(5 * time.Millisecond)
	}
	f.wantBinding(t, "in its own network namespace", pid, 9, 4)
	if n := f.violations(t, 9); n != 1 {
		t.Errorf("violations %d, want 1: env's exec of sleep in the same new namespace is not another, nor a process started into a new namespace", n)
	}

	// A child forked into a new namespace is reported at the fork, before
	// it runs (and then execs sleep there).
	child := c.do(t, "runnet /bin/sleep 600")
	ev = f.escape(t, "fork into a new network namespace")
	if EscapeKind(ev.Reason) != EscapeNetns || NetnsVia(ev.Protocol) != NetnsViaClone || ev.PID != child ||
		fmt.Sprintf("net:[%d]", ev.NameHash) != host {
		t.Errorf("clone report: %+v", ev)
	}
	f.wantBinding(t, "forked into its own network namespace", child, 9, 4)
	if n := f.violations(t, 9); n != 2 {
		t.Errorf("violations %d, want 2", n)
	}
}

// eachHookLayer runs test with the strongest boundary layer the host has
// and with fmod_ret forced (skipped where the kernel refuses it: the
// weaker layer ran, which "strongest" covers).
func eachHookLayer(t *testing.T, test func(t *testing.T, f *memberFixture, layer enforcer.FamilyLayer)) {
	for _, ceiling := range []enforcer.FamilyLayer{"", enforcer.FamiliesFmodRet} {
		name := string(ceiling)
		if name == "" {
			name = "strongest"
		}
		t.Run(name, func(t *testing.T) {
			f := newMemberFixtureAt(t, ceiling)
			layer, err := f.g.SocketFamilies()
			if ceiling != "" && layer != ceiling {
				t.Skipf("the kernel refused layer %s: %v", ceiling, err)
			}
			test(t, f, layer)
		})
	}
}

// TestMembershipPtraceOutsideSession: a member may attach to (here:
// process_vm_readv, which asks the kernel for PTRACE_MODE_ATTACH) only
// members of its own session. Where a hook layer runs (the BPF LSM, or
// fmod_ret on security_ptrace_access_check), reading a process outside
// the session is refused with EPERM and reported as an escape naming it,
// and a fellow member stays readable (EFAULT: the kernel let it attach,
// the address is unmapped). Elsewhere nothing refuses it
// (docs/threat-model.md, route 17), which the test checks too, so that the
// route's status is not a guess.
func TestMembershipPtraceOutsideSession(t *testing.T) {
	eachHookLayer(t, func(t *testing.T, f *memberFixture, layer enforcer.FamilyLayer) {
		sess, sessID := f.mkdir(t, "session")
		f.open(t, 12, 3, 100, sessID)
		peer := kerneltest.Start(t, sess, kerneltest.Options{}, true, kerneltest.RawICMP)
		if res := peer.Next(); res.Outcome() != kerneltest.Ready {
			t.Fatalf("peer: %s", res)
		}
		outside := os.Getpid()
		res := kerneltest.Run(t, sess, kerneltest.Options{}, kerneltest.VMRead{PID: outside}, kerneltest.VMRead{PID: peer.PID})
		got := res[0].Outcome() + " " + res[1].Outcome()
		if !layer.Refuses() {
			if got != "EFAULT EFAULT" {
				t.Errorf("without a hook layer: %s, want EFAULT EFAULT (route 17 open)", got)
			}
			return
		}
		if got != "EPERM EFAULT" {
			t.Errorf("outside the session, a fellow member: %s, want EPERM EFAULT", got)
		}
		ev := f.escape(t, "attach to a process outside the session")
		if EscapeKind(ev.Reason) != EscapePtrace || ev.Verdict != enforcer.VerdictDenied || ev.NameHash != uint64(outside) ||
			PtraceHow(ev.Protocol) != PtraceOutsideSession || ev.PID != uint32(res[0].PID) || ev.Slot != 12 || ev.Gen != 3 {
			t.Errorf("escape event %+v", ev)
		}
		if n := f.violations(t, 12); n != 1 {
			t.Errorf("violations %d, want 1: the refusal counts, the fellow member's read does not", n)
		}
		// Outside a session the same read is the kernel's to allow.
		if res := kerneltest.Run(t, "", kerneltest.Options{}, kerneltest.VMRead{PID: outside}); res[0].Outcome() != "EFAULT" {
			t.Errorf("outside a session: %s, want EFAULT", res[0].Outcome())
		}
	})
}

// TestMembershipServersSession: in a session that launches MCP servers
// (routes 25 and 30), a member may not attach even to a fellow member (a
// server's launch is one until the daemon binds it), may not ask to be
// traced, and may not receive an inet socket, here one connected to a
// listener it could not reach itself. Unix sockets still pass. A session
// without servers keeps all three. Where no hook layer runs, all three
// stay open, which the test checks too.
func TestMembershipServersSession(t *testing.T) {
	eachHookLayer(t, func(t *testing.T, f *memberFixture, layer enforcer.FamilyLayer) {
		api := kerneltest.Listen(t, "tcp4", "127.0.0.2:0")
		inet := kerneltest.SendConnection(t, api)
		pair, err := unixPairFile()
		if err != nil {
			t.Fatal(err)
		}
		defer pair.Close()
		local := kerneltest.SendSockets(t, pair)

		prober := 0 // the probe of the last try
		try := func(cg string, peer int) string {
			res := kerneltest.Run(t, cg, kerneltest.Options{}, kerneltest.VMRead{PID: peer}, kerneltest.Traceme{},
				kerneltest.RecvSocket{Unix: inet}, kerneltest.RecvSocket{Unix: local})
			prober = res[0].PID
			return strings.Join(kerneltest.Outcomes(res), " ")
		}
		start := func(cg string) int {
			p := kerneltest.Start(t, cg, kerneltest.Options{}, true, kerneltest.RawICMP)
			if res := p.Next(); res.Outcome() != kerneltest.Ready {
				t.Fatalf("peer: %s", res)
			}
			return p.PID
		}

		plain, plainID := f.mkdir(t, "plain")
		f.open(t, 13, 1, 100, plainID)
		if got := try(plain, start(plain)); got != "EFAULT ok ok ok" {
			t.Errorf("a session without servers: %s, want EFAULT ok ok ok", got)
		}

		agent, agentID := f.mkdir(t, "agent")
		f.openWith(t, 14, enforcer.SessionState{Gen: 2, Budget: 100, QuarantineOnBudget: true, LaunchesServers: true}, agentID)
		peer := start(agent)
		got := try(agent, peer)
		if !layer.Refuses() {
			if got != "EFAULT ok ok ok" {
				t.Errorf("without a hook layer: %s, want EFAULT ok ok ok (routes 25 and 30 open)", got)
			}
			return
		}
		if want := "EPERM EPERM " + kerneltest.ErrNoRights + " ok"; got != want {
			t.Fatalf("a session that launches servers: %s, want %s", got, want)
		}
		attach := f.escape(t, "attach to a fellow member")
		if EscapeKind(attach.Reason) != EscapePtrace || PtraceHow(attach.Protocol) != PtraceServersSession ||
			attach.NameHash != uint64(peer) || attach.Verdict != enforcer.VerdictDenied || attach.Slot != 14 {
			t.Errorf("attach event %+v", attach)
		}
		traceme := f.escape(t, "traceme")
		if EscapeKind(traceme.Reason) != EscapePtrace || PtraceHow(traceme.Protocol) != PtraceTraceme ||
			traceme.Verdict != enforcer.VerdictDenied || traceme.NameHash != uint64(prober) {
			t.Errorf("traceme event %+v", traceme)
		}
		recv := f.escape(t, "receive an inet socket")
		if EscapeKind(recv.Reason) != EscapeSocketReceive || recv.Dest != api || recv.Protocol != syscall.IPPROTO_TCP ||
			recv.Verdict != enforcer.VerdictDenied || recv.Slot != 14 {
			t.Errorf("receive event %+v", recv)
		}
		if n := f.violations(t, 14); n != 3 {
			t.Errorf("violations %d, want 3", n)
		}
	})
}

// unixPairFile is one end of a unix socket pair, as a file to send.
func unixPairFile() (*os.File, error) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	syscall.Close(fds[1])
	return os.NewFile(uintptr(fds[0]), "pair"), nil
}

// TestMembershipLaunchWakesReader: an exec in a session that launches MCP
// servers reaches the reader at once, with a poll interval no test waits
// out: the daemon must judge a launch before the server calls out, about
// 12 ms after its exec (docs/mcp.md), and the default poll is 10 ms.
func TestMembershipLaunchWakesReader(t *testing.T) {
	f := newMemberFixtureWith(t, "", time.Hour)
	agent, agentID := f.mkdir(t, "agent")
	f.openWith(t, 14, enforcer.SessionState{Gen: 2, Budget: 100, LaunchesServers: true}, agentID)
	p := kerneltest.Start(t, agent, kerneltest.Options{}, true)
	deadline := time.After(10 * time.Second)
	for {
		select {
		case ev := <-f.proc.events:
			if e, ok := ev.(*ExecEvent); ok && e.TGID == uint32(p.PID) {
				return
			}
		case <-deadline:
			t.Fatal("the exec of a member of a session that launches servers waited for the reader's poll")
		}
	}
}
