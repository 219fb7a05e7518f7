package enforcer

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/agentfence/agentfence/internal/cgroupv2"
	"github.com/agentfence/agentfence/internal/kerneltest"
	"github.com/agentfence/agentfence/internal/privtest"
	"github.com/agentfence/agentfence/internal/ringreader"
	"github.com/agentfence/agentfence/scope"
)

func TestMain(m *testing.M) {
	kerneltest.MaybeRunProbe()
	os.Exit(m.Run())
}

type fixture struct {
	g    *Gate
	base string

	mu     sync.Mutex
	events []Event
	cond   *sync.Cond
}

// rootGate loads the gate at the cgroup v2 root (without root or cgroup v2
// the test skips, or fails under CI) and closes it when the test ends.
func rootGate(tb testing.TB, opts Options) (*Gate, string) {
	tb.Helper()
	privtest.RequireRoot(tb)
	root, err := cgroupv2.Root()
	if err != nil {
		privtest.Unavailable(tb, err.Error())
	}
	opts.CgroupRoot = root
	g, err := Load(opts)
	if err != nil {
		tb.Fatalf("load gate: %+v", err)
	}
	tb.Cleanup(func() { g.Close() })
	return g, root
}

// newFixture loads the gate with opts for test t; the test's cgroups go
// under the fixture's base.
func newFixture(t *testing.T, opts Options) *fixture {
	t.Helper()
	g, root := rootGate(t, opts)
	f := &fixture{g: g, base: filepath.Join(root, "agentfence-test", fmt.Sprintf("%d-%s", os.Getpid(), sanitize(t.Name())))}
	f.cond = sync.NewCond(&f.mu)
	t.Cleanup(func() { os.Remove(f.base); os.Remove(filepath.Dir(f.base)) })
	return f
}

func setup(t *testing.T) *fixture {
	t.Helper()
	return setupWith(t, Options{})
}

// setupWith is setup with the gate loaded with opts, its events collected.
func setupWith(t *testing.T, opts Options) *fixture {
	t.Helper()
	f := newFixture(t, opts)
	rd, err := ringreader.New(f.g.Events(), 10*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		rd.Run(ctx, func(raw []byte) {
			ev, err := DecodeEvent(raw)
			if err != nil {
				t.Errorf("decode: %v", err)
				return
			}
			f.mu.Lock()
			f.events = append(f.events, ev)
			f.cond.Broadcast()
			f.mu.Unlock()
		})
	}()
	t.Cleanup(func() { cancel(); <-done })
	return f
}

func sanitize(s string) string {
	b := []byte(s)
	for i, c := range b {
		if c == '/' || c == ' ' {
			b[i] = '_'
		}
	}
	return string(b)
}

type sessionSpec struct {
	slot    uint32
	gen     uint64
	rules   []string
	mode    Mode
	expires uint64
	parent  string // cgroup path to create the session cgroup under; "" = fixture base
	name    string
	dns     scope.DNSMode
}

// session creates a cgroup, writes the scope and session and binds them, as
// the registry does, and undoes it all when the test ends.
func (f *fixture) session(t *testing.T, s sessionSpec) string {
	t.Helper()
	if s.gen == 0 {
		s.gen = 1
	}
	if s.name == "" {
		s.name = fmt.Sprintf("slot%d", s.slot)
	}
	dir := s.parent
	if dir == "" {
		dir = f.base
	}
	path := filepath.Join(dir, s.name)
	if err := os.MkdirAll(path, 0o755); err != nil {
		t.Fatal(err)
	}
	id, err := cgroupv2.ID(path)
	if err != nil {
		t.Fatal(err)
	}
	var rules []scope.Rule
	for _, text := range s.rules {
		r, err := scope.Parse(text)
		if err != nil {
			t.Fatalf("parse %q: %v", text, err)
		}
		rules = append(rules, r)
	}
	entries, err := scope.Compile(rules)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.g.WriteScope(s.slot, s.gen, entries); err != nil {
		t.Fatal(err)
	}
	if err := f.g.PutSession(s.slot, SessionState{Gen: s.gen, State: StateActive, Mode: s.mode, ExpiresNS: s.expires, DNS: s.dns}); err != nil {
		t.Fatal(err)
	}
	if err := f.g.BindCgroup(id, s.slot, s.gen); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		f.g.UnbindCgroup(id)
		f.g.DeleteScope(s.slot, entries)
		f.g.PutSession(s.slot, SessionState{Gen: s.gen})
		cgroupv2.Manager{}.Destroy(path)
	})
	return path
}

// waitFor waits until done, called with f.mu held, says so; what says
// what was missing when it never does.
func (f *fixture) waitFor(t *testing.T, what func() string, done func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	timer := time.AfterFunc(10*time.Second, func() { f.mu.Lock(); f.cond.Broadcast(); f.mu.Unlock() })
	defer timer.Stop()
	f.mu.Lock()
	defer f.mu.Unlock()
	for !done() {
		if time.Now().After(deadline) {
			t.Fatal(what())
		}
		f.cond.Wait()
	}
}

// waitEvent waits for an event from pid matching match.
func (f *fixture) waitEvent(t *testing.T, pid int, match func(Event) bool) Event {
	t.Helper()
	var found Event
	f.waitFor(t, func() string {
		return fmt.Sprintf("no matching event from pid %d; have %d events: %+v", pid, len(f.events), f.events)
	}, func() bool {
		for _, ev := range f.events {
			if int(ev.PID) == pid && match(ev) {
				found = ev
				return true
			}
		}
		return false
	})
	return found
}

func expect(t *testing.T, got []kerneltest.Result, want ...string) {
	t.Helper()
	for i, w := range want {
		if got[i].Outcome() != w {
			t.Errorf("probe %d: got %s, want %s", i, got[i].Outcome(), w)
		}
	}
}

func TestConnectAllowedAndDenied(t *testing.T) {
	f := setup(t)
	allowed := kerneltest.Listen(t, "tcp4", "127.0.0.1:0")
	other := kerneltest.Listen(t, "tcp4", "127.0.0.1:0")
	cg := f.session(t, sessionSpec{slot: 3, gen: 7, rules: []string{"tcp://" + allowed.String()}})

	res := kerneltest.Run(t, cg, kerneltest.Options{}, kerneltest.Connect{Addr: allowed}, kerneltest.Connect{Addr: other})
	expect(t, res, "ok", "EPERM")

	ev := f.waitEvent(t, res[0].PID, func(e Event) bool { return e.Dest == allowed })
	if ev.Verdict != VerdictAllowed || ev.Rule != 0 || ev.Slot != 3 || ev.Gen != 7 || ev.Hook != HookConnect4 || ev.Protocol != 6 {
		t.Errorf("allowed event: %+v", ev)
	}
	ev = f.waitEvent(t, res[1].PID, func(e Event) bool { return e.Dest == other })
	// The probe's connect runs on whichever thread the Go runtime picks:
	// the thread id is recorded, and need not be the process's own.
	if ev.Verdict != VerdictDenied || ev.Rule != NoRule || ev.Reason != ReasonNoRule || ev.PID != uint32(res[1].PID) || ev.TID == 0 {
		t.Errorf("denied event: %+v", ev)
	}
	if ev.UID != 0 || ev.Comm == "" || ev.CgroupID == 0 || ev.BootNS == 0 {
		t.Errorf("denied event lacks identity: %+v", ev)
	}

	// The test process is in no session: the same destination is fine.
	expect(t, kerneltest.Run(t, "", kerneltest.Options{}, kerneltest.Connect{Addr: other}), "ok")
	st, err := f.g.Stats()
	if err != nil || st.Allowed < 1 || st.Denied < 1 || st.Lost != 0 {
		t.Errorf("stats %+v, %v", st, err)
	}
}

func TestUDPSendmsg(t *testing.T) {
	f := setup(t)
	cg := f.session(t, sessionSpec{slot: 4, rules: []string{"udp://127.0.0.53:53"}})
	res := kerneltest.Run(t, cg, kerneltest.Options{},
		kerneltest.SendUDP{Addr: netip.MustParseAddrPort("127.0.0.53:53")}, kerneltest.SendUDP{Addr: netip.MustParseAddrPort("127.0.0.53:54")}, kerneltest.SendUDP{Addr: netip.MustParseAddrPort("127.0.0.9:53")}, kerneltest.Connect{Addr: netip.MustParseAddrPort("127.0.0.53:53")}, kerneltest.ConnectUDP{Addr: netip.MustParseAddrPort("127.0.0.9:53")})
	expect(t, res, "ok", "EPERM", "EPERM", "EPERM", "EPERM")
	ev := f.waitEvent(t, res[1].PID, func(e Event) bool { return e.Dest.Port() == 54 })
	if ev.Hook != HookSendmsg4 || ev.Protocol != 17 || ev.Verdict != VerdictDenied {
		t.Errorf("sendmsg event: %+v", ev)
	}
}

func TestIPv6AndMapped(t *testing.T) {
	f := setup(t)
	v6 := kerneltest.Listen(t, "tcp6", "[::1]:0")
	v4 := kerneltest.Listen(t, "tcp4", "127.0.0.1:0")
	v4other := kerneltest.Listen(t, "tcp4", "127.0.0.1:0")
	cg := f.session(t, sessionSpec{slot: 5, rules: []string{
		fmt.Sprintf("[::1]:%d", v6.Port()),
		fmt.Sprintf("127.0.0.1:%d", v4.Port()),
	}})
	mapped := func(ap netip.AddrPort) netip.AddrPort {
		return netip.AddrPortFrom(netip.AddrFrom16(ap.Addr().As16()), ap.Port())
	}
	res := kerneltest.Run(t, cg, kerneltest.Options{},
		kerneltest.Connect{Addr: v6},
		kerneltest.Connect{Addr: netip.AddrPortFrom(netip.IPv6Loopback(), v4.Port())}, // right port, wrong family's address
		kerneltest.Connect{Addr: mapped(v4), V6: true},                                // ::ffff:127.0.0.1 judged as 127.0.0.1
		kerneltest.Connect{Addr: mapped(v4other), V6: true},                           // and denied as the IPv4 address would be
		kerneltest.SendUDP{Addr: netip.MustParseAddrPort("[::2]:53"), V6: true},
	)
	expect(t, res, "ok", "EPERM", "ok", "EPERM", "EPERM")
	ev := f.waitEvent(t, res[3].PID, func(e Event) bool { return e.Dest.Port() == v4other.Port() })
	if ev.Hook != HookConnect6 || !ev.Dest.Addr().Is4() || ev.Dest.Addr() != v4other.Addr() {
		t.Errorf("mapped connect event should carry the IPv4 address: %+v", ev)
	}
}

func TestRuleShapes(t *testing.T) {
	f := setup(t)
	cases := []struct {
		rule  string
		probe kerneltest.Op
		want  string
	}{
		{"127.0.0.0/8", kerneltest.Connect{Addr: netip.MustParseAddrPort("127.1.2.3:1")}, "ECONNREFUSED"}, // allowed: nothing listens there
		{"127.0.0.0/8", kerneltest.SendUDP{Addr: netip.MustParseAddrPort("127.1.2.3:9")}, "ok"},
		{"127.0.0.0/8", kerneltest.Connect{Addr: netip.MustParseAddrPort("10.255.255.1:1")}, "EPERM"},
		{"127.0.0.1:1000-2000", kerneltest.Connect{Addr: netip.MustParseAddrPort("127.0.0.1:1000")}, "ECONNREFUSED"},
		{"127.0.0.1:1000-2000", kerneltest.Connect{Addr: netip.MustParseAddrPort("127.0.0.1:2000")}, "ECONNREFUSED"},
		{"127.0.0.1:1000-2000", kerneltest.Connect{Addr: netip.MustParseAddrPort("127.0.0.1:2001")}, "EPERM"},
		{"127.0.0.1:1000-2000", kerneltest.Connect{Addr: netip.MustParseAddrPort("127.0.0.1:999")}, "EPERM"},
		{"tcp://127.0.0.1", kerneltest.SendUDP{Addr: netip.MustParseAddrPort("127.0.0.1:5")}, "EPERM"},
		{"udp://127.0.0.1", kerneltest.SendUDP{Addr: netip.MustParseAddrPort("127.0.0.1:5")}, "ok"},
		{"udp://127.0.0.1", kerneltest.Connect{Addr: netip.MustParseAddrPort("127.0.0.1:5")}, "EPERM"},
		{"[::1]/128:7", kerneltest.Connect{Addr: netip.MustParseAddrPort("[::1]:7")}, "ECONNREFUSED"},
		{"[::]/0", kerneltest.SendUDP{Addr: netip.MustParseAddrPort("[::2]:7")}, "ok"},
		{"0.0.0.0/0:443", kerneltest.SendUDP{Addr: netip.MustParseAddrPort("127.9.9.9:443")}, "ok"},
		{"0.0.0.0/0:443", kerneltest.SendUDP{Addr: netip.MustParseAddrPort("127.9.9.9:444")}, "EPERM"},
	}
	for i, c := range cases {
		t.Run(fmt.Sprintf("%d", i), func(t *testing.T) {
			cg := f.session(t, sessionSpec{slot: uint32(100 + i), rules: []string{c.rule}})
			if got := kerneltest.Run(t, cg, kerneltest.Options{}, c.probe)[0].Outcome(); got != c.want {
				t.Errorf("rule %q, %T%+v: got %s, want %s", c.rule, c.probe, c.probe, got, c.want)
			}
		})
	}
}

// Covering rules: the longest prefix carries the port rules of the shorter
// ones that contain it.
func TestOverlappingPrefixes(t *testing.T) {
	f := setup(t)
	cg := f.session(t, sessionSpec{slot: 6, rules: []string{"udp://127.0.0.0/8:53", "udp://127.0.0.0/24:80", "udp://127.0.0.7:9"}})
	res := kerneltest.Run(t, cg, kerneltest.Options{}, kerneltest.SendUDP{Addr: netip.MustParseAddrPort("127.0.0.7:53")}, kerneltest.SendUDP{Addr: netip.MustParseAddrPort("127.0.0.7:80")}, kerneltest.SendUDP{Addr: netip.MustParseAddrPort("127.0.0.7:9")}, kerneltest.SendUDP{Addr: netip.MustParseAddrPort("127.0.0.7:10")}, kerneltest.SendUDP{Addr: netip.MustParseAddrPort("127.0.1.1:80")}, kerneltest.SendUDP{Addr: netip.MustParseAddrPort("127.0.1.1:53")})
	expect(t, res, "ok", "ok", "ok", "EPERM", "EPERM", "ok")
	ev := f.waitEvent(t, res[1].PID, func(e Event) bool { return e.Dest.Port() == 80 })
	if ev.Rule != 1 {
		t.Errorf("port 80 should be attributed to rule 1, got %d", ev.Rule)
	}
}

func TestDescendantsStayInSession(t *testing.T) {
	f := setup(t)
	other := kerneltest.Listen(t, "tcp4", "127.0.0.1:0")
	cg := f.session(t, sessionSpec{slot: 8, rules: []string{"udp://127.0.0.53:53"}})
	for _, o := range []kerneltest.Options{{Depth: 1}, {Depth: 2}, {Depth: 2, Detach: true}} {
		res := kerneltest.Run(t, cg, o, kerneltest.Connect{Addr: other})
		expect(t, res, "EPERM")
		ev := f.waitEvent(t, res[0].PID, func(Event) bool { return true })
		if ev.Slot != 8 {
			t.Errorf("%+v: event slot %d", o, ev.Slot)
		}
	}
	// A child cgroup of the session cgroup is still in the session: moving
	// into a sub-cgroup is no way out.
	sub := filepath.Join(cg, "escape")
	if err := os.Mkdir(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	defer os.Remove(sub)
	expect(t, kerneltest.Run(t, sub, kerneltest.Options{}, kerneltest.Connect{Addr: other}, kerneltest.SendUDP{Addr: netip.MustParseAddrPort("127.0.0.53:53")}), "EPERM", "ok")
}

func TestDeepestSessionWins(t *testing.T) {
	f := setup(t)
	outer := f.session(t, sessionSpec{slot: 9, rules: []string{"udp://127.0.0.1:1"}})
	inner := f.session(t, sessionSpec{slot: 10, rules: []string{"udp://127.0.0.1:2"}, parent: outer, name: "inner"})
	expect(t, kerneltest.Run(t, inner, kerneltest.Options{}, kerneltest.SendUDP{Addr: netip.MustParseAddrPort("127.0.0.1:1")}, kerneltest.SendUDP{Addr: netip.MustParseAddrPort("127.0.0.1:2")}), "EPERM", "ok")
	expect(t, kerneltest.Run(t, outer, kerneltest.Options{}, kerneltest.SendUDP{Addr: netip.MustParseAddrPort("127.0.0.1:1")}, kerneltest.SendUDP{Addr: netip.MustParseAddrPort("127.0.0.1:2")}), "ok", "EPERM")
}

func TestExpiry(t *testing.T) {
	f := setup(t)
	ln := kerneltest.Listen(t, "tcp4", "127.0.0.1:0")
	now := bootNS()
	expired := f.session(t, sessionSpec{slot: 11, rules: []string{ln.String()}, expires: now - 1})
	res := kerneltest.Run(t, expired, kerneltest.Options{}, kerneltest.Connect{Addr: ln})
	expect(t, res, "EPERM")
	if ev := f.waitEvent(t, res[0].PID, func(Event) bool { return true }); ev.Reason != ReasonExpired {
		t.Errorf("reason %d, want expired", ev.Reason)
	}

	// A session that expires while it runs: allowed before, denied after,
	// with nobody in userspace doing anything at the expiry.
	// The window must outlast starting the probe: 300 ms natively, longer
	// under emulation (make vmtest), where a process takes that to start.
	for i, window := range []time.Duration{300 * time.Millisecond, 3 * time.Second, 30 * time.Second} {
		deadline := bootNS() + uint64(window)
		live := f.session(t, sessionSpec{slot: 12 + uint32(i), rules: []string{ln.String()}, expires: deadline})
		before := kerneltest.Run(t, live, kerneltest.Options{}, kerneltest.Connect{Addr: ln})
		if bootNS() > deadline {
			continue // the probe ran past the window: its answer says nothing
		}
		expect(t, before, "ok")
		for bootNS() <= deadline {
			time.Sleep(time.Duration(deadline-bootNS()) + time.Millisecond)
		}
		expect(t, kerneltest.Run(t, live, kerneltest.Options{}, kerneltest.Connect{Addr: ln}), "EPERM")
		return
	}
	t.Fatal("no window was long enough to start a probe before the session expired")
}

func TestAuditMode(t *testing.T) {
	f := setup(t)
	ln := kerneltest.Listen(t, "tcp4", "127.0.0.1:0")
	cg := f.session(t, sessionSpec{slot: 13, rules: []string{"udp://127.0.0.53:53"}, mode: ModeAudit})
	res := kerneltest.Run(t, cg, kerneltest.Options{}, kerneltest.Connect{Addr: ln})
	expect(t, res, "ok")
	ev := f.waitEvent(t, res[0].PID, func(Event) bool { return true })
	if ev.Verdict != VerdictWouldDeny || ev.Reason != ReasonNoRule {
		t.Errorf("audit event: %+v", ev)
	}
}

func TestRawSocketsAndFastOpen(t *testing.T) {
	f := setup(t)
	ln := kerneltest.Listen(t, "tcp4", "127.0.0.1:0")
	other := kerneltest.Listen(t, "tcp4", "127.0.0.1:0")
	cg := f.session(t, sessionSpec{slot: 14, rules: []string{ln.String()}})
	res := kerneltest.Run(t, cg, kerneltest.Options{}, kerneltest.RawICMP, kerneltest.FastOpen{Addr: other})
	expect(t, res, "EPERM", "EPERM")
	if ev := f.waitEvent(t, res[0].PID, func(e Event) bool { return e.Hook == HookSockCreate }); ev.Reason != ReasonSocketType {
		t.Errorf("raw socket event: %+v", ev)
	}
	// Outside a session, raw sockets still work (the test runs as root).
	expect(t, kerneltest.Run(t, "", kerneltest.Options{}, kerneltest.RawICMP), "ok")
}

// A binding that names an older generation of a slot is ignored, and scope
// entries of an older generation do not match a reused slot.
func TestStaleGeneration(t *testing.T) {
	f := setup(t)
	ln := kerneltest.Listen(t, "tcp4", "127.0.0.1:0")
	cg := f.session(t, sessionSpec{slot: 15, gen: 1, rules: []string{ln.String()}})
	id, _ := cgroupv2.ID(cg)
	// Slot 15 is reused by generation 2 with an empty scope; the old scope
	// entries are still in the trie.
	if err := f.g.PutSession(15, SessionState{Gen: 2, State: StateActive}); err != nil {
		t.Fatal(err)
	}
	expect(t, kerneltest.Run(t, cg, kerneltest.Options{}, kerneltest.Connect{Addr: ln}), "ok") // stale binding: unmanaged
	if err := f.g.BindCgroup(id, 15, 2); err != nil {
		t.Fatal(err)
	}
	expect(t, kerneltest.Run(t, cg, kerneltest.Options{}, kerneltest.Connect{Addr: ln}), "EPERM") // gen 1 scope does not apply
}

// The kernel quarantines a session itself once its denials exceed the
// budget: from then on only essential rules match.
func TestQuarantineAfterBudget(t *testing.T) {
	f := setup(t)
	mcp := kerneltest.Listen(t, "tcp4", "127.0.0.1:0")
	api := kerneltest.Listen(t, "tcp4", "127.0.0.1:0")
	other := kerneltest.Listen(t, "tcp4", "127.0.0.1:0")
	cg := f.session(t, sessionSpec{slot: 16, rules: []string{"essential,tcp://" + mcp.String(), "tcp://" + api.String()}})
	if err := f.g.PutSession(16, SessionState{Gen: 1, State: StateActive, Budget: 2, QuarantineOnBudget: true}); err != nil {
		t.Fatal(err)
	}
	// Two violations are within the budget; the third quarantines.
	res := kerneltest.Run(t, cg, kerneltest.Options{}, kerneltest.Connect{Addr: api}, kerneltest.Connect{Addr: other}, kerneltest.Connect{Addr: other},
		kerneltest.Connect{Addr: api}, kerneltest.Connect{Addr: other}, kerneltest.Connect{Addr: api}, kerneltest.Connect{Addr: mcp})
	expect(t, res, "ok", "EPERM", "EPERM", "ok", "EPERM", "EPERM", "ok")
	st, err := f.g.Session(16)
	if err != nil || st.State != StateQuarantined || st.Violations != 4 {
		t.Errorf("session after the budget: %+v %v", st, err)
	}
	var quarantining int
	f.waitEvent(t, res[0].PID, func(e Event) bool { return e.Reason == ReasonQuarantined })
	f.mu.Lock()
	for _, e := range f.events {
		if e.QuarantinedNow {
			quarantining++
		}
	}
	f.mu.Unlock()
	if quarantining != 1 {
		t.Errorf("%d events reported the quarantine, want exactly 1", quarantining)
	}
}
