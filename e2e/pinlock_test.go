package e2e

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/agentfence/agentfence/audit"
	"github.com/agentfence/agentfence/internal/cgroupv2"
	"github.com/agentfence/agentfence/internal/kerneltest"
	"github.com/agentfence/agentfence/internal/privtest"
)

// pinSet mounts a bpffs of the test's own and returns a pin directory in
// it. When the test ends (after its daemons have stopped) the bpffs is
// unmounted, which detaches whatever is still pinned there.
func pinSet(t *testing.T) string {
	t.Helper()
	privtest.RequireRoot(t)
	mnt := privtest.BPFFS(t)
	return filepath.Join(mnt, "agentfence")
}

// another is a second agentfenced on d's node: d's arguments (socket, state
// directory, pins) with extra appended; not started.
func (d *daemon) another(extra ...string) *daemon {
	n := &daemon{bin: d.bin, socket: d.socket, audit: d.audit, args: append(slices.Clone(d.args), extra...),
		preexisting: d.preexisting, stderr: &bytes.Buffer{}}
	for i := 0; i+1 < len(extra); i++ {
		if extra[i] == "--audit-file" {
			n.audit = extra[i+1]
		}
	}
	return n
}

// spawn starts the daemon without waiting for it to serve.
func (d *daemon) spawn(t *testing.T) {
	t.Helper()
	d.stderr = &bytes.Buffer{}
	d.cmd = exec.Command(filepath.Join(d.bin, "agentfenced"), d.args...)
	d.cmd.Stderr = &lockedWriter{w: d.stderr}
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.stop(t) })
}

// waitLog waits until the daemon's log has every one of parts.
func (d *daemon) waitLog(t *testing.T, within time.Duration, parts ...string) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		log := d.log()
		ok := true
		for _, p := range parts {
			ok = ok && strings.Contains(log, p)
		}
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("daemon log has not said %q within %v:\n%s", parts, within, log)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// exit waits for the daemon to exit and returns its exit code.
func (d *daemon) exit(t *testing.T, within time.Duration) int {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- d.cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(within):
		d.cmd.Process.Kill()
		<-done
		t.Fatalf("daemon still running after %v:\n%s", within, d.log())
	}
	return d.cmd.ProcessState.ExitCode()
}

func (d *daemon) pid() int { return d.cmd.Process.Pid }

// gateLink is the connect4 link pinned in a pin set: the gate's hook at the
// cgroup root.
type gateLink struct {
	id   link.ID
	prog ebpf.ProgramID
}

func pinnedGate(t *testing.T, pins string) gateLink {
	t.Helper()
	l, err := link.LoadPinnedLink(filepath.Join(pins, "links", "connect4"), nil)
	if err != nil {
		t.Fatalf("pinned gate link: %v", err)
	}
	defer l.Close()
	info, err := l.Info()
	if err != nil {
		t.Fatal(err)
	}
	return gateLink{info.ID, info.Program}
}

// attached reports whether the link's program is attached to the cgroup
// root as connect4. Other tests on the host may attach gates of their own at
// the same time, so this looks for this program, never at a count.
func (g gateLink) attached(t *testing.T) bool {
	t.Helper()
	root, err := cgroupv2.Root()
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(root)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	res, err := link.QueryPrograms(link.QueryOptions{Target: int(f.Fd()), Attach: ebpf.AttachCGroupInet4Connect})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range res.Programs {
		if p.ID == g.prog {
			return true
		}
	}
	return false
}

// connect4Links lists the IDs of the cgroup connect4 links a process holds,
// from its fdinfo: a daemon that adopted the pins holds the pinned one and
// no other.
func connect4Links(t *testing.T, pid int) []link.ID {
	t.Helper()
	fds, err := filepath.Glob(fmt.Sprintf("/proc/%d/fdinfo/*", pid))
	if err != nil {
		t.Fatal(err)
	}
	var out []link.ID
	for _, fd := range fds {
		data, err := os.ReadFile(fd)
		if err != nil {
			continue
		}
		kv := map[string]string{}
		for _, line := range strings.Split(string(data), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok {
				kv[k] = strings.TrimSpace(v)
			}
		}
		// attach_type 10 is BPF_CGROUP_INET4_CONNECT.
		if kv["link_type"] == "cgroup" && kv["attach_type"] == "10" {
			var id link.ID
			fmt.Sscan(kv["link_id"], &id)
			out = append(out, id)
		}
	}
	return out
}

// checkEnforcesAndRecords runs a command in a new session through d: its
// allowed connect succeeds, its out-of-scope one fails with EPERM, and both
// are recorded in d's trail with the session.
func (d *daemon) checkEnforcesAndRecords(t *testing.T, intent string) {
	t.Helper()
	allowed := kerneltest.Listen(t, "tcp4", "127.0.0.1:0")
	other := kerneltest.Listen(t, "tcp4", "127.0.0.1:0")
	stdout, stderr, code := d.cli(t, kerneltest.Env(t, kerneltest.Options{}, kerneltest.Connect{Addr: allowed}, kerneltest.Connect{Addr: other}),
		"run", "--intent", intent, "--allow", "tcp://"+allowed.String(), "--", os.Args[0])
	if code != 0 {
		t.Fatalf("run: exit %d: %s", code, stderr)
	}
	res, err := kerneltest.ParseResults(stdout)
	if err != nil || len(res) != 2 {
		t.Fatalf("%s: probe output %q (%v)", intent, stdout, err)
	}
	pid, r1, r2 := res[0].PID, res[0].Outcome(), res[1].Outcome()
	if r1 != "ok" || r2 != "EPERM" {
		t.Fatalf("%s: allowed connect %q, out-of-scope connect %q; want ok and EPERM", intent, r1, r2)
	}
	closed := d.waitRecord(t, "closed", func(r audit.Record) bool {
		return r.Kind == audit.KindSession && r.Event == "closed" && r.Session.Intent == intent
	})
	var gotAllowed, gotDenied bool
	for _, r := range d.records(t) {
		if r.Kind != audit.KindConnect || r.Session.ID != closed.Session.ID || int(r.Process.PID) != pid {
			continue
		}
		gotAllowed = gotAllowed || (r.Outcome.Verdict == "allowed" && r.Destination.Port == allowed.Port())
		gotDenied = gotDenied || (r.Outcome.Verdict == "denied" && r.Destination.Port == other.Port() && r.Outcome.Errno == "EPERM")
	}
	if !gotAllowed || !gotDenied {
		t.Errorf("%s: trail %s has allowed record %v, denied record %v; want both", intent, d.audit, gotAllowed, gotDenied)
	}
}

// A second agentfenced on the same pins, whether a copy of the first's
// command line or with a socket, state and trail of its own, exits non-zero
// naming the first's pid, before it opens anything; the first keeps
// enforcing and recording.
func TestSecondDaemonRefusedNamingFirst(t *testing.T) {
	pins := pinSet(t)
	d := startDaemon(t, "--bpffs-path", pins)
	gate := pinnedGate(t, pins)
	if !gate.attached(t) || !slices.Equal(connect4Links(t, d.pid()), []link.ID{gate.id}) {
		t.Errorf("the daemon's gate: pinned link %d attached %v; the daemon holds connect4 links %v", gate.id, gate.attached(t), connect4Links(t, d.pid()))
	}
	if held, err := os.Readlink(filepath.Join(pins, "lock-holder")); err != nil || held != fmt.Sprint(d.pid()) {
		t.Errorf("holder record beside the pins: %q, %v; want %d", held, err, d.pid())
	}

	dir := t.TempDir()
	own := filepath.Join(dir, "audit.jsonl")
	for name, extra := range map[string][]string{
		"same command line": nil,
		"own socket, state and trail": {"--api-socket", filepath.Join(dir, "api.sock"), "--audit-file", own,
			"--state-dir", filepath.Join(dir, "state"), "--metrics-addr", "127.0.0.1:0"},
	} {
		second := d.another(extra...)
		second.spawn(t)
		if code := second.exit(t, 20*time.Second); code == 0 {
			t.Errorf("%s: second daemon exited 0:\n%s", name, second.log())
		}
		log := second.log()
		want := fmt.Sprintf("pin set %s is in use by pid %d (agentfenced); one agentfenced per pin set", pins, d.pid())
		if !strings.Contains(log, want) || !strings.Contains(log, "--wait-for-pins") {
			t.Errorf("%s: second daemon's error does not say %q and how to wait:\n%s", name, want, log)
		}
		if strings.Contains(log, "egress gate attached") || strings.Contains(log, "api listening") {
			t.Errorf("%s: second daemon got going before it was refused:\n%s", name, log)
		}
	}
	for _, p := range []string{own, filepath.Join(dir, "state"), filepath.Join(dir, "api.sock")} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("the refused daemon created %s (%v)", p, err)
		}
	}
	if now := pinnedGate(t, pins); now != gate || !gate.attached(t) {
		t.Errorf("pinned gate after the refusals: %+v attached %v, want %+v attached", now, gate.attached(t), gate)
	}
	d.checkEnforcesAndRecords(t, "after a refused second daemon")
	if held, err := os.Readlink(filepath.Join(pins, "lock-holder")); err != nil || held != fmt.Sprint(d.pid()) {
		t.Errorf("holder record after the refusals: %q, %v; want %d", held, err, d.pid())
	}

	// The first's trail is one unbroken chain, with nothing of the second's.
	d.stop(t)
	if out, stderr, code := d.cli(t, nil, "audit", "verify", d.audit); code != 0 {
		t.Errorf("first daemon's trail: %s%s", out, stderr)
	}
}

// --uninstall under a running daemon is refused with its pid and removes
// nothing; with --wait-for-pins it waits for the daemon to exit, then
// uninstalls.
func TestSecondUninstallRefusedThenWaitsForLock(t *testing.T) {
	pins := pinSet(t)
	d := startDaemon(t, "--bpffs-path", pins)
	gate := pinnedGate(t, pins)

	un := d.another("--uninstall")
	un.spawn(t)
	if code := un.exit(t, 20*time.Second); code == 0 {
		t.Fatalf("--uninstall under a running daemon exited 0:\n%s", un.log())
	}
	want := fmt.Sprintf("pin set %s is in use by pid %d (agentfenced); one agentfenced per pin set: refusing to uninstall", pins, d.pid())
	if !strings.Contains(un.log(), want) {
		t.Errorf("--uninstall's error does not say %q:\n%s", want, un.log())
	}
	if now := pinnedGate(t, pins); now != gate || !gate.attached(t) {
		t.Errorf("pinned gate after the refused --uninstall: %+v attached %v, want %+v attached", now, gate.attached(t), gate)
	}
	d.checkEnforcesAndRecords(t, "after a refused uninstall")

	un = d.another("--uninstall", "--wait-for-pins", "1m")
	un.spawn(t)
	un.waitLog(t, 20*time.Second, "pin set in use: waiting for its holder to exit", fmt.Sprintf("holder_pid=%d", d.pid()))
	if entries, _ := os.ReadDir(filepath.Join(pins, "links")); len(entries) == 0 {
		t.Errorf("the waiting --uninstall removed the pinned links")
	}
	d.stop(t)
	if code := un.exit(t, 20*time.Second); code != 0 {
		t.Fatalf("--uninstall after the daemon's exit: exit %d:\n%s", code, un.log())
	}
	if _, err := os.Stat(pins); !os.IsNotExist(err) {
		t.Errorf("pins left after the waiting --uninstall: %v", err)
	}
	if gate.attached(t) {
		t.Errorf("the gate's program %d is still attached after the uninstall", gate.prog)
	}
}

// A daemon waiting for the pin set stops at once on SIGTERM, and gives up
// when its --wait-for-pins runs out, naming the holder; neither disturbs it.
func TestSecondDaemonWaitForLockEnds(t *testing.T) {
	pins := pinSet(t)
	d := startDaemon(t, "--bpffs-path", pins)
	own := filepath.Join(t.TempDir(), "audit.jsonl")

	w := d.another("--wait-for-pins", "1h", "--audit-file", own)
	w.spawn(t)
	w.waitLog(t, 20*time.Second, "pin set in use: waiting", fmt.Sprintf("holder_pid=%d", d.pid()))
	w.cmd.Process.Signal(syscall.SIGTERM)
	if code := w.exit(t, 10*time.Second); code != 0 {
		t.Errorf("waiting daemon on SIGTERM: exit %d:\n%s", code, w.log())
	}
	if !strings.Contains(w.log(), "stopped while waiting for the pin set") {
		t.Errorf("waiting daemon on SIGTERM:\n%s", w.log())
	}

	w = d.another("--wait-for-pins", "300ms", "--audit-file", own)
	w.spawn(t)
	if code := w.exit(t, 20*time.Second); code == 0 {
		t.Errorf("--wait-for-pins ran out: exit 0:\n%s", w.log())
	}
	if want := fmt.Sprintf("--wait-for-pins 300ms ran out: pin set %s is in use by pid %d", pins, d.pid()); !strings.Contains(w.log(), want) {
		t.Errorf("--wait-for-pins ran out: log does not say %q:\n%s", want, w.log())
	}
	if _, err := os.Stat(own); !os.IsNotExist(err) {
		t.Errorf("a daemon that never got the pins opened its trail (%v)", err)
	}
	d.checkEnforcesAndRecords(t, "after waiting daemons ended")

	for _, bad := range [][]string{{"--wait-for-pins", "-1s"}, {"--wait-for-pins", "soon"}, {"--wait-for-pins", "1m", "--bpffs-path", ""}} {
		b := d.another(bad...)
		b.spawn(t)
		code := b.exit(t, 10*time.Second)
		if code == 0 || !strings.Contains(b.log(), "wait-for-pins") {
			t.Errorf("%v: exit %d, want non-zero and an error about the flag:\n%s", bad, code, b.log())
		}
	}
}

// The upgrade path: a second daemon with --wait-for-pins waits while the
// first runs, takes over when it exits, adopts its sessions and pins (no
// second gate), and enforces and records in its own trail.
func TestTakeoverAfterSIGTERM(t *testing.T) { testTakeover(t, syscall.SIGTERM) }

// The same when the first daemon dies without a chance to clean up.
func TestTakeoverAfterKill9(t *testing.T) { testTakeover(t, syscall.SIGKILL) }

func testTakeover(t *testing.T, sig syscall.Signal) {
	pins := pinSet(t)
	d := startDaemon(t, "--bpffs-path", pins)
	gate := pinnedGate(t, pins)
	s := d.openSession(t, "--intent", "lives through the takeover", "--allow", "tcp://127.0.0.1:9")

	own := filepath.Join(t.TempDir(), "audit.jsonl")
	next := d.another("--wait-for-pins", "2m", "--audit-file", own)
	next.spawn(t)
	next.waitLog(t, 20*time.Second, "pin set in use: waiting for its holder to exit", fmt.Sprintf("holder_pid=%d", d.pid()))
	// Waiting, it has touched nothing: the first still serves and records.
	if strings.Contains(next.log(), "egress gate attached") {
		t.Fatalf("the waiting daemon loaded the gate:\n%s", next.log())
	}
	if _, err := os.Stat(own); !os.IsNotExist(err) {
		t.Errorf("the waiting daemon opened its trail (%v)", err)
	}
	d.checkEnforcesAndRecords(t, "first daemon, while a second waits")

	d.cmd.Process.Signal(sig)
	code := d.exit(t, 20*time.Second)
	if sig == syscall.SIGTERM && code != 0 {
		t.Errorf("first daemon on SIGTERM: exit %d:\n%s", code, d.log())
	}
	next.waitLog(t, 2*time.Minute, "pin set free: taking over", "api listening")
	if !strings.Contains(next.log(), "adopted=true") {
		t.Errorf("the second daemon did not adopt the pins:\n%s", next.log())
	}
	// Adopted, not doubled: the same pinned link, and the only one the
	// second daemon holds.
	now := pinnedGate(t, pins)
	if now.id != gate.id || !now.attached(t) || !slices.Equal(connect4Links(t, next.pid()), []link.ID{gate.id}) {
		t.Errorf("after the takeover: pinned link %d (was %d), attached %v; the second daemon holds connect4 links %v",
			now.id, gate.id, now.attached(t), connect4Links(t, next.pid()))
	}
	if held, err := os.Readlink(filepath.Join(pins, "lock-holder")); err != nil || held != fmt.Sprint(next.pid()) {
		t.Errorf("holder record after the takeover: %q, %v; want %d", held, err, next.pid())
	}
	next.waitRecord(t, "adopted", func(r audit.Record) bool {
		return r.Kind == audit.KindSession && r.Event == "adopted" && r.Session.ID == s.ID
	})
	next.checkEnforcesAndRecords(t, "second daemon, after the takeover")

	// And now the second one is the one a third is refused by.
	third := d.another("--audit-file", filepath.Join(t.TempDir(), "audit.jsonl"))
	third.spawn(t)
	if code := third.exit(t, 20*time.Second); code == 0 || !strings.Contains(third.log(), fmt.Sprintf("in use by pid %d", next.pid())) {
		t.Errorf("third daemon: exit %d:\n%s", code, third.log())
	}
	if _, stderr, code := next.cli(t, nil, "session", "close", s.ID); code != 0 {
		t.Errorf("close the adopted session: exit %d: %s", code, stderr)
	}
}
