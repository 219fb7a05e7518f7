package enforcer

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/agentfence/agentfence/internal/kerneltest"
)

// decisionsOf sums what the events of pid stand for: one decision each,
// or Count for a flushed aggregate.
func (f *fixture) decisionsOf(pid int) (events, decisions uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, ev := range f.events {
		if int(ev.PID) != pid {
			continue
		}
		events++
		decisions += max(ev.Count, 1)
	}
	return events, decisions
}

// waitEvents waits until the ring has brought n events of pid.
func (f *fixture) waitEvents(t *testing.T, pid, n int) {
	t.Helper()
	have := 0
	f.waitFor(t, func() string { return fmt.Sprintf("%d events from pid %d, want %d", have, pid, n) }, func() bool {
		have = 0
		for _, ev := range f.events {
			if int(ev.PID) == pid {
				have++
			}
		}
		return have >= n
	})
}

// flush ends the window and keeps the repeats among the fixture's events.
func (f *fixture) flush(t *testing.T) []Event {
	t.Helper()
	var got []Event
	if err := f.g.FlushRepeats(nil, func(ev Event) { got = append(got, ev) }); err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	f.events = append(f.events, got...)
	f.mu.Unlock()
	return got
}

// TestAggregateRepeats: the first allowed connect to a destination is an
// event at once; its repeats become one event at the flush whose count
// makes the sum exact; denials are never folded; the next window starts
// afresh.
func TestAggregateRepeats(t *testing.T) {
	f := setupWith(t, Options{Aggregate: true})
	allowed := kerneltest.Listen(t, "tcp4", "127.0.0.1:0")
	other := kerneltest.Listen(t, "tcp4", "127.0.0.1:0")
	cg := f.session(t, sessionSpec{slot: 5, gen: 3, rules: []string{"tcp://" + allowed.String()}})
	before, err := f.g.Stats()
	if err != nil {
		t.Fatal(err)
	}
	f.flush(t) // a window of this test's own

	var ops []kerneltest.Op
	for range 20 {
		ops = append(ops, kerneltest.Connect{Addr: allowed})
	}
	for range 3 {
		ops = append(ops, kerneltest.Connect{Addr: other})
	}
	res := kerneltest.Run(t, cg, kerneltest.Options{}, ops...)
	pid := res[0].PID
	for i, r := range res {
		if want := map[bool]string{true: "ok", false: "EPERM"}[i < 20]; r.Outcome() != want {
			t.Fatalf("connect %d: %s, want %s", i, r.Outcome(), want)
		}
	}
	first := f.waitEvent(t, pid, func(e Event) bool { return e.Dest == allowed })
	f.waitEvents(t, pid, 1+3)

	repeats := f.flush(t)
	if len(repeats) != 1 {
		t.Fatalf("%d aggregates, want 1: %+v", len(repeats), repeats)
	}
	r := repeats[0]
	if r.Count != 19 || r.Dest != allowed || int(r.PID) != pid || r.Slot != 5 || r.Gen != 3 || r.Rule != 0 ||
		r.Verdict != VerdictAllowed || r.Reason != ReasonRule || r.Hook != HookConnect4 || r.Protocol != 6 || r.Comm != first.Comm {
		t.Errorf("aggregate %+v, want 19 repeats of %+v", r, first)
	}
	if r.BootNS < first.BootNS || r.LastNS < r.BootNS {
		t.Errorf("aggregate from %d to %d, the first decision at %d", r.BootNS, r.LastNS, first.BootNS)
	}
	events, decisions := f.decisionsOf(pid)
	if events != 1+3+1 || decisions != 23 {
		t.Errorf("%d events standing for %d decisions, want 5 for 23", events, decisions)
	}
	after, err := f.g.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if got := after.Allowed - before.Allowed; got != 20 {
		t.Errorf("the kernel counted %d allowed decisions, want 20", got)
	}
	if got := f.flush(t); len(got) != 0 {
		t.Errorf("a window with nothing in it flushed %+v", got)
	}

	// A new window: the next connect is an event of its own.
	res = kerneltest.Run(t, cg, kerneltest.Options{}, kerneltest.Connect{Addr: allowed}, kerneltest.Connect{Addr: allowed})
	f.waitEvents(t, res[0].PID, 1)
	if got := f.flush(t); len(got) != 1 || got[0].Count != 1 || int(got[0].PID) != res[0].PID {
		t.Errorf("second window flushed %+v, want one repeat of pid %d", got, res[0].PID)
	}
}

// TestAggregateFullMap: once the window's map holds AF_AGG_ENTRIES keys, a
// new key is emitted every time: a flood of distinct destinations loses
// nothing.
func TestAggregateFullMap(t *testing.T) {
	f := setupWith(t, Options{Aggregate: true})
	cg := f.session(t, sessionSpec{slot: 6, rules: []string{"udp://127.0.0.1"}})
	f.flush(t)
	entries := int(f.g.objs.AggA.MaxEntries())
	// Each of entries+500 ports twice: the first entries ports are
	// remembered and their second datagram counted; the 500 after them
	// find the map full, and both their datagrams are events.
	ports := entries + 500
	res := kerneltest.Run(t, cg, kerneltest.Options{}, kerneltest.Flood{Addr: netip.MustParseAddrPort("127.0.0.1:20000"), N: 2 * ports, Ports: ports})
	if res[0].Outcome() != "ok" {
		t.Fatalf("flood: %s", res[0].Outcome())
	}
	pid := res[0].PID
	f.waitEvents(t, pid, entries+2*500)
	repeats := f.flush(t)
	events, decisions := f.decisionsOf(pid)
	if decisions != uint64(2*ports) {
		t.Errorf("%d events stand for %d decisions, want %d", events, decisions, 2*ports)
	}
	if len(repeats) != entries || events != uint64(entries+2*500+len(repeats)) {
		t.Errorf("%d aggregates and %d events, want %d aggregates and %d events", len(repeats), events, entries, entries+2*500+entries)
	}
	st, err := f.g.Stats()
	if err != nil || st.Lost != 0 {
		t.Errorf("stats %+v, %v: the ring lost events", st, err)
	}
}

// TestRepeatsAdoptedWithThePins: repeats a pinned gate counted after its
// loader went away (a daemon killed) are flushed by the next loader, both
// those counted before and those counted while no loader ran.
func TestRepeatsAdoptedWithThePins(t *testing.T) {
	root, pins := pinSetup(t)
	g, err := Load(Options{CgroupRoot: root, PinPath: pins, Aggregate: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := Uninstall(pins); err != nil {
			t.Error(err)
		}
	})
	allowed := kerneltest.Listen(t, "tcp4", "127.0.0.1:0")
	cg := filepath.Join(root, "agentfence-test-pin-repeats")
	if err := os.Mkdir(cg, 0o755); err != nil {
		t.Fatal(err)
	}
	defer os.Remove(cg)
	bindCgroupSession(t, g, cg, 2, "tcp://"+allowed.String())
	connects := func(n int) {
		var ops []kerneltest.Op
		for range n {
			ops = append(ops, kerneltest.Connect{Addr: allowed})
		}
		for i, res := range kerneltest.Run(t, cg, kerneltest.Options{}, ops...) {
			if res.Outcome() != "ok" {
				t.Fatalf("connect %d: %s", i, res.Outcome())
			}
		}
	}
	connects(10) // one event, nine repeats
	g.Close()
	connects(5) // another process: an event (to the pinned ring) and four repeats, with no loader
	g2, err := Load(Options{CgroupRoot: root, PinPath: pins, Aggregate: true})
	if err != nil {
		t.Fatal(err)
	}
	defer g2.Close()
	var repeats uint64
	for range 2 { // both windows
		if err := g2.FlushRepeats(nil, func(ev Event) {
			if ev.Dest == allowed {
				repeats += ev.Count
			}
		}); err != nil {
			t.Fatal(err)
		}
	}
	if repeats != 9+4 {
		t.Errorf("the next loader flushed %d repeats, want 13", repeats)
	}
}
