package proccache

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"syscall"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/agentfence/agentfence/sensor"
)

const sec = uint64(time.Second)

type clock struct{ t uint64 }

func (c *clock) now() uint64 { return c.t }

func newTest(t testing.TB, cfg Config) (*Cache, *clock) {
	clk := &clock{} // events in tests happen after "now" unless a test advances it
	cfg.Now = clk.now
	if cfg.ProcRoot == "" {
		cfg.ProcRoot = t.TempDir() // empty: no accidental /proc reads
	}
	c := New(cfg)
	t.Cleanup(c.Close)
	return c, clk
}

func execEv(tgid uint32, start, at uint64, path string, args ...string) *sensor.ExecEvent {
	return &sensor.ExecEvent{
		TGID: tgid, PID: tgid, PPID: 1, StartTime: start, Ktime: at,
		Exe: sensor.ExeID{Ino: uint64(len(path)), Dev: 1 << 20}, Filename: path, Args: args,
	}
}

func TestPidReuseNeverBorrowsIdentity(t *testing.T) {
	c, clk := newTest(t, Config{ExitGrace: 10 * time.Second})
	// pid 500: /usr/bin/agent from t=10s, exits at t=20s; then pid 500 is
	// reused by /usr/bin/curl at t=21s.
	c.Apply(execEv(500, 10*sec, 10*sec, "/usr/bin/agent", "agent"))
	c.Apply(&sensor.ExitEvent{TGID: 500, StartTime: 10 * sec, Ktime: 20 * sec, Status: 3 << 8})
	c.Apply(&sensor.ForkEvent{TGID: 500, ParentTGID: 1, StartTime: 21 * sec, Ktime: 21 * sec})
	c.Apply(execEv(500, 21*sec, 21*sec, "/usr/bin/curl", "curl", "x"))
	clk.t = 22 * sec

	for _, tc := range []struct {
		at   uint64
		want string
		ok   bool
	}{
		{15 * sec, "/usr/bin/agent", true}, // connect while the agent lived
		{20 * sec, "/usr/bin/agent", true}, // exit instant still the agent
		{20*sec + 1, "", false},            // dead, successor not born yet
		{21 * sec, "/usr/bin/curl", true},
		{25 * sec, "/usr/bin/curl", true},
		{0, "/usr/bin/curl", true},
		{5 * sec, "", false}, // before either
	} {
		p, ok := c.Lookup(500, tc.at)
		if ok != tc.ok || p.ExePath != tc.want {
			t.Errorf("Lookup(500, %d) = %q %v, want %q %v", tc.at, p.ExePath, ok, tc.want, tc.ok)
		}
	}
	if p, ok := c.Get(Key{500, 10 * sec}); !ok || !p.Exited || p.ExitStatus != 3<<8 {
		t.Errorf("Get old: %+v %v", p, ok)
	}
	// After the grace period the dead one is gone, the live one stays.
	c.Sweep(31 * sec)
	if _, ok := c.Lookup(500, 15*sec); ok {
		t.Error("exited process outlived grace")
	}
	if _, ok := c.Lookup(500, 25*sec); !ok {
		t.Error("live process swept")
	}
}

func TestMissedExitRetiredByReuse(t *testing.T) {
	c, _ := newTest(t, Config{})
	c.Apply(execEv(7, 1*sec, 1*sec, "/a"))
	// exit lost; pid 7 comes back
	c.Apply(execEv(7, 5*sec, 5*sec, "/b"))
	if p, _ := c.Lookup(7, 3*sec); p.ExePath != "/a" {
		t.Errorf("old incarnation %q", p.ExePath)
	}
	if old, _ := c.Get(Key{7, 1 * sec}); !old.Exited {
		t.Error("old incarnation still live")
	}
	if c.Stats().MissedExits != 1 {
		t.Errorf("stats %+v", c.Stats())
	}
}

func TestForkInheritsThenExecReplaces(t *testing.T) {
	c, _ := newTest(t, Config{})
	c.Apply(execEv(100, 1*sec, 1*sec, "/usr/bin/python3", "python3", "agent.py"))
	c.Apply(&sensor.ForkEvent{TGID: 101, ParentTGID: 100, StartTime: 2 * sec, ParentStartTime: 1 * sec, Ktime: 2 * sec})
	p, ok := c.Lookup(101, 2*sec)
	if !ok || p.ExePath != "/usr/bin/python3" || p.Source != SourceFork || !slices.Equal(p.Args, []string{"python3", "agent.py"}) {
		t.Fatalf("forked child: %+v", p)
	}
	// exec twice: identity follows the latest image
	for _, e := range []*sensor.ExecEvent{
		execEv(101, 2*sec, 3*sec, "/bin/sh", "sh", "-c", "curl x"),
		execEv(101, 2*sec, 4*sec, "/usr/bin/curl", "curl", "x"),
	} {
		e.PPID = 100
		c.Apply(e)
	}
	p, _ = c.Lookup(101, 5*sec)
	if p.ExePath != "/usr/bin/curl" || p.Execs != 2 || p.Source != SourceExec {
		t.Fatalf("after execs: %+v", p)
	}
	if !slices.Equal(p.Ancestry, []string{"/usr/bin/python3"}) {
		t.Errorf("ancestry %q", p.Ancestry)
	}
}

func TestThreadExecKeepsProcessKey(t *testing.T) {
	// A non-leader thread (tid 302) of 300 execs: the kernel reports tgid
	// 300 with the leader's start time, so it is the same process.
	c, _ := newTest(t, Config{})
	c.Apply(execEv(300, 1*sec, 1*sec, "/usr/bin/node", "node"))
	ev := execEv(300, 1*sec, 2*sec, "/usr/bin/git", "git", "push")
	ev.PID = 302
	c.Apply(ev)
	if c.Len() != 1 {
		t.Fatalf("len %d", c.Len())
	}
	p, _ := c.Lookup(300, 3*sec)
	if p.ExePath != "/usr/bin/git" || p.Execs != 2 {
		t.Errorf("%+v", p)
	}
}

func TestAncestryDepthAndParentIncarnation(t *testing.T) {
	c, _ := newTest(t, Config{AncestryDepth: 3})
	// chain 10 <- 11 <- 12 <- 13 <- 14 (parent <- child)
	c.Apply(execEv(10, 1*sec, 1*sec, "/p10"))
	for i := uint32(11); i <= 14; i++ {
		s := uint64(i) * sec
		c.Apply(&sensor.ForkEvent{TGID: i, ParentTGID: i - 1, StartTime: s, ParentStartTime: uint64(i-1) * sec, Ktime: s})
		e := execEv(i, s, s, "/p"+string(rune('0'+i-10)))
		e.PPID = i - 1
		c.Apply(e)
	}
	p, _ := c.Lookup(14, 0)
	if want := []string{"/p3", "/p2", "/p1"}; !slices.Equal(p.Ancestry, want) {
		t.Errorf("ancestry %q, want %q", p.Ancestry, want)
	}
	// pid 13 dies and is reused: 14's ancestry must still name the
	// incarnation that was alive when 14 started.
	c.Apply(&sensor.ExitEvent{TGID: 13, StartTime: 13 * sec, Ktime: 20 * sec})
	c.Apply(execEv(13, 21*sec, 21*sec, "/intruder"))
	p, _ = c.Lookup(14, 0)
	if p.Ancestry[0] != "/p3" {
		t.Errorf("ancestry borrowed a reused pid: %q", p.Ancestry)
	}
}

// TestAncestryFollowsChanges: the ancestry a lookup found is kept for the
// next, and every change the walk depends on is seen: an ancestor's exec,
// an ancestor swept, and a hash worker's path.
func TestAncestryFollowsChanges(t *testing.T) {
	c, clk := newTest(t, Config{ExitGrace: time.Second})
	c.Apply(execEv(20, 1*sec, 1*sec, "/launcher"))
	c.Apply(&sensor.ForkEvent{TGID: 21, ParentTGID: 20, StartTime: 2 * sec, ParentStartTime: 1 * sec, Ktime: 2 * sec})
	e := execEv(21, 2*sec, 2*sec, "/agent")
	e.PPID = 20
	c.Apply(e)
	check := func(want ...string) {
		t.Helper()
		for range 2 { // the walk, then what it kept
			if p, _ := c.Lookup(21, 0); !slices.Equal(p.Ancestry, want) {
				t.Fatalf("ancestry %q, want %q", p.Ancestry, want)
			}
		}
	}
	check("/launcher")
	c.Apply(execEv(20, 1*sec, 3*sec, "/launcher-v2")) // the parent execs
	check("/launcher-v2")
	c.setHash(Key{20, 1 * sec}, sensor.ExeID{Ino: uint64(len("/launcher-v2")), Dev: 1 << 20}, "/opt/launcher-v2", "ab", false, HashOK)
	check("/opt/launcher-v2")
	c.Apply(&sensor.ExitEvent{TGID: 20, StartTime: 1 * sec, Ktime: 4 * sec})
	clk.t = 10 * sec
	c.Sweep(clk.t)
	check()
}

func TestBoundedEvictsExitedFirst(t *testing.T) {
	c, _ := newTest(t, Config{MaxEntries: 3, ExitGrace: time.Hour})
	c.Apply(execEv(1, 1*sec, 1*sec, "/1"))
	c.Apply(execEv(2, 2*sec, 2*sec, "/2"))
	c.Apply(&sensor.ExitEvent{TGID: 2, StartTime: 2 * sec, Ktime: 3 * sec})
	c.Apply(execEv(3, 3*sec, 3*sec, "/3"))
	c.Apply(execEv(4, 4*sec, 4*sec, "/4"))
	if c.Len() != 3 {
		t.Fatalf("len %d", c.Len())
	}
	if _, ok := c.Get(Key{2, 2 * sec}); ok {
		t.Error("exited entry kept over live ones")
	}
	c.Apply(execEv(5, 5*sec, 5*sec, "/5"))
	if c.Len() != 3 || c.Stats().EvictedLive != 1 {
		t.Errorf("len %d stats %+v", c.Len(), c.Stats())
	}
}

func TestArgsJSON(t *testing.T) {
	c, _ := newTest(t, Config{})
	ev := execEv(9, sec, sec, "/bin/echo", "echo", "caf\xe9", "ok\xff\xfe", "ünï")
	ev.ArgsTruncated = true
	c.Apply(ev)
	p, _ := c.Lookup(9, 0)
	b, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	var back Process
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	want := []string{"echo", `caf\xe9`, `ok\xff\xfe`, "ünï" + TruncatedMarker}
	if !slices.Equal(back.Args, want) || !back.ArgsTruncated {
		t.Errorf("args %q truncated %v, want %q", back.Args, back.ArgsTruncated, want)
	}
}

func FuzzSanitizeArg(f *testing.F) {
	f.Add("plain")
	f.Add("caf\xe9")
	f.Add("\xf0\x9f\x98")
	f.Fuzz(func(t *testing.T, s string) {
		out := sanitizeArg(s)
		if !utf8.ValidString(out) {
			t.Fatalf("invalid output %q", out)
		}
		if utf8.ValidString(s) && out != s {
			t.Fatalf("valid input changed: %q -> %q", s, out)
		}
	})
}

func TestLookupWaitCatchesUp(t *testing.T) {
	c, _ := newTest(t, Config{})
	c.Apply(execEv(1, sec, sec, "/init"))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	got := make(chan Process, 1)
	go func() {
		p, _ := c.LookupWait(ctx, 42, 10*sec)
		got <- p
	}()
	c.Apply(&sensor.ForkEvent{TGID: 42, ParentTGID: 1, StartTime: 9 * sec, ParentStartTime: sec, Ktime: 9 * sec})
	if p := <-got; p.TGID != 42 || p.ExePath != "/init" {
		t.Fatalf("got %+v", p)
	}
	// Once events past at are in, a miss is final, not a wait.
	c.Apply(execEv(2, 20*sec, 20*sec, "/x"))
	if _, ok := c.LookupWait(ctx, 43, 15*sec); ok || ctx.Err() != nil {
		t.Fatal("LookupWait waited for a process that cannot come")
	}
}

// fakeProc builds a /proc-shaped tree for seeding tests.
func fakeProc(t *testing.T, root string, pid int, stat, status, cmdline, cgroup, exe string) {
	dir := filepath.Join(root, strconv.Itoa(pid))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, body := range map[string]string{"stat": stat, "status": status, "cmdline": cmdline, "cgroup": cgroup} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if exe != "" {
		if err := os.Symlink(exe, filepath.Join(dir, "exe")); err != nil {
			t.Fatal(err)
		}
	}
}

const cid = "3c5f2ba6d2d1a6a7d5e8b0f2a9f6b1c4d7e0a3b6c9d2e5f8a1b4c7d0e3f6a9b2"

func TestSeedAndExitMatchesCoarseStart(t *testing.T) {
	root := t.TempDir()
	bin := filepath.Join(t.TempDir(), "agent bin")
	if err := os.WriteFile(bin, []byte("#!/bin/true\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	// start 12345 ticks = 123.45 s; comm with spaces and parens
	stat := "4242 (my (weird) agent) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 12345 1000 100 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0\n"
	fakeProc(t, root, 4242, stat, "Name:\tagent\nUid:\t1000\t1000\t1000\t1000\nGid:\t100\t100\t100\t100\n",
		"agent\x00--flag\x00", "0::/system.slice/docker-"+cid+".scope\n", bin)
	c, _ := newTest(t, Config{ProcRoot: root})
	if n := c.Seed(); n != 1 {
		t.Fatalf("seeded %d", n)
	}
	p, ok := c.Lookup(4242, 200*sec)
	if !ok || p.PPID != 1 || p.UID != 1000 || p.GID != 100 || p.ExePath != bin ||
		!slices.Equal(p.Args, []string{"agent", "--flag"}) || p.Container.ContainerID != cid || p.Source != SourceProc {
		t.Fatalf("seeded %+v", p)
	}
	// The kernel's exact start (123.456789 s) must match the 10 ms one.
	exact := 123456789000 * uint64(time.Nanosecond)
	c.Apply(&sensor.ExitEvent{TGID: 4242, StartTime: exact, Ktime: 300 * sec, Status: 0})
	if p, _ := c.Get(Key{4242, 12345 * nsPerTick}); !p.Exited {
		t.Fatalf("exit did not match seeded entry: %+v", p)
	}
	// Seeding hashed the file (no live process: via the path, inode checked).
	waitHash(t, c, Key{4242, 12345 * nsPerTick})
}

func waitHash(t *testing.T, c *Cache, k Key) Process {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if p, ok := c.Get(k); ok && p.HashState != HashPending {
			return p
		}
		time.Sleep(time.Millisecond)
	}
	t.Fatal("hash never finished")
	return Process{}
}

func TestHashViaPathAndCache(t *testing.T) {
	c, _ := newTest(t, Config{})
	bin := filepath.Join(t.TempDir(), "tool")
	if err := os.WriteFile(bin, []byte("hello"), 0o755); err != nil {
		t.Fatal(err)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(bin, &st); err != nil {
		t.Fatal(err)
	}
	id := sensor.ExeIDOf(&st)
	ev := execEv(77, sec, sec, bin, "tool")
	ev.Exe = id
	c.Apply(ev)
	p := waitHash(t, c, Key{77, sec})
	const want = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
	if p.HashState != HashOK || p.ExeSHA256 != want {
		t.Fatalf("hash %q %q", p.HashState, p.ExeSHA256)
	}
	// Deleted and process gone: no way to read it, marked unavailable.
	os.Remove(bin)
	ev = execEv(78, 2*sec, 2*sec, bin, "tool")
	ev.Exe = sensor.ExeID{Ino: st.Ino + 1, Dev: id.Dev}
	c.Apply(ev)
	if p := waitHash(t, c, Key{78, 2 * sec}); p.HashState != HashUnavailable || p.ExeSHA256 != "" {
		t.Fatalf("deleted: %+v", p)
	}
}

func TestHashLiveProcessExe(t *testing.T) {
	// Our own process: /proc/self/exe is readable while we live.
	c, _ := newTest(t, Config{ProcRoot: "/proc"})
	var st syscall.Stat_t
	if err := syscall.Stat("/proc/self/exe", &st); err != nil {
		t.Fatal(err)
	}
	pid := uint32(os.Getpid())
	ev := execEv(pid, sec, sec, "relative/name", "x")
	ev.Exe = sensor.ExeIDOf(&st)
	c.Apply(ev)
	p := waitHash(t, c, Key{pid, sec})
	self, _ := os.Executable()
	if p.HashState != HashOK || len(p.ExeSHA256) != 64 || p.ExePath != self {
		t.Fatalf("%+v (self %s)", p, self)
	}
}
