package session

import (
	"maps"
	"net/netip"
	"os"
	"reflect"
	"slices"
	"testing"
	"time"

	v1 "github.com/agentfence/agentfence/api/v1"
	"github.com/agentfence/agentfence/audit"
	"github.com/agentfence/agentfence/enforcer"
	"github.com/agentfence/agentfence/internal/privdrop"
	"github.com/agentfence/agentfence/scope"
)

func conn(pid int, proto, remote string) Conn {
	return Conn{PID: pid, Proto: proto, Remote: netip.MustParseAddrPort(remote)}
}

func rules(t testing.TB, texts ...string) []scope.Rule {
	t.Helper()
	out := make([]scope.Rule, len(texts))
	for i, s := range texts {
		r, err := scope.Parse(s)
		if err != nil {
			t.Fatal(err)
		}
		out[i] = r
	}
	return out
}

func TestNarrowRejectsWidening(t *testing.T) {
	e := newEnv(t, nil)
	s := e.open(t, req("x", "10.0.0.0/8:1-1000", "api.example.com:443"), admin)
	for i, tc := range []struct {
		scope []string
		field string
	}{
		{[]string{"10.0.0.0/8"}, "scope[0]"},
		{[]string{"10.1.0.0/16:443", "192.168.0.0/16:443"}, "scope[1]"},
		{[]string{"*.example.com:443"}, "scope[0]"},
		{[]string{"api.example.com:443", "bad rule"}, "scope[1]"},
	} {
		mark, sk := e.j.len(), e.sk.n()
		_, err := e.r.Narrow(s.ID, v1.NarrowRequest{Scope: tc.scope}, admin)
		wantErr(t, err, v1.CodeInvalid, tc.field)
		if w := writes(e.j.since(mark)); len(w) != 0 {
			t.Errorf("%d: rejected narrow wrote %v", i, opNames(w))
		}
		if e.sk.n() != sk {
			t.Errorf("%d: rejected narrow destroyed connections", i)
		}
	}
	if g := e.get(t, s.ID); !slices.Equal(g.Scope, []string{"10.0.0.0/8:1-1000", "api.example.com:443"}) {
		t.Errorf("scope changed to %q", g.Scope)
	}
	if got := e.recs.lifecycle(s.ID); !slices.Equal(got, []string{"opened"}) {
		t.Errorf("lifecycle = %v", got)
	}
	_, err := e.r.Narrow("s-nope", v1.NarrowRequest{}, admin)
	wantErr(t, err, v1.CodeNotFound, "id")
}

func TestNarrow(t *testing.T) {
	e := newEnv(t, nil)
	p := e.open(t, req("parent", "10.0.0.0/8:1-1000", "192.168.0.0/16:53", "api.example.com:443", "old.example.com"), admin)
	c := e.open(t, v1.OpenRequest{Intent: "child", Scope: []string{"10.0.0.0/8:400-500", "192.168.1.0/24:53", "old.example.com:443"}, Parent: p.ID}, admin)
	ep, ec := e.entry(t, p.ID), e.entry(t, c.ID)
	e.cg.setProcs(p.Binding.Cgroup, 111, 112)
	e.cg.setProcs(c.Binding.Cgroup, 113)
	e.sk.conns = []Conn{
		conn(111, "tcp", "10.1.2.3:443"),   // kept
		conn(111, "tcp", "10.1.2.3:80"),    // port gone
		conn(112, "tcp", "10.2.0.1:443"),   // prefix gone
		conn(112, "udp", "10.1.2.3:443"),   // udp is still allowed
		conn(112, "udp", "192.168.0.1:53"), // rule gone
		conn(113, "tcp", "10.1.9.9:443"),   // child member, kept
		conn(113, "tcp", "10.3.0.1:450"),   // child member, clipped away
	}
	mark, sk := e.j.len(), e.sk.n()
	s, err := e.r.Narrow(p.ID, v1.NarrowRequest{Scope: []string{"10.1.0.0/16:443"}}, admin)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(s.Scope, []string{"10.1.0.0/16:443"}) {
		t.Errorf("scope = %q", s.Scope)
	}
	if g := e.get(t, c.ID); !slices.Equal(g.Scope, []string{"10.1.0.0/16:443"}) {
		t.Errorf("child scope = %q, want it clipped to [10.1.0.0/16:443]", g.Scope)
	}

	// Per session: write the new scope, then delete what is gone.
	ops := writes(e.j.since(mark))
	// Without hostname rules left, the parent's cgroup needs the hostname
	// programs no more (the child's was never hooked: it is below).
	want := []string{"WriteScope", "WriteNames", "DeleteScope", "DeleteNames", "UnhookHostnames", "WriteScope", "WriteNames", "DeleteScope", "DeleteNames"}
	if got := opNames(ops); !slices.Equal(got, want) {
		t.Fatalf("narrow ops = %v, want %v", got, want)
	}
	if ops[4].Path != p.Binding.Cgroup {
		t.Errorf("unhooked %s, want the parent's cgroup", ops[4].Path)
	}
	ops = slices.Delete(ops, 4, 5)
	for i, o := range ops {
		slot, gen := ep.slot, ep.gen
		if i >= 4 {
			slot, gen = ec.slot, ec.gen
		}
		if o.Slot != slot || (o.Name[:5] == "Write" && o.Gen != gen) {
			t.Errorf("%s wrote slot %d gen %d, want %d/%d", o.Name, o.Slot, o.Gen, slot, gen)
		}
	}
	check := func(o op, prefixes, hosts []string) {
		t.Helper()
		if !slices.Equal(o.Prefixes, prefixes) || !slices.Equal(o.Hosts, hosts) {
			t.Errorf("%s: prefixes %v hosts %v, want %v %v", o.Name, o.Prefixes, o.Hosts, prefixes, hosts)
		}
	}
	check(ops[0], []string{"10.1.0.0/16"}, nil)
	check(ops[1], nil, nil)
	check(ops[2], []string{"10.0.0.0/8", "192.168.0.0/16"}, nil)
	check(ops[3], nil, []string{"api.example.com", "old.example.com"})
	check(ops[4], []string{"10.1.0.0/16"}, nil)
	check(ops[6], []string{"10.0.0.0/8", "192.168.1.0/24"}, nil)
	check(ops[7], nil, []string{"old.example.com"})
	if got := e.k.scopeOf(ep.slot); !slices.Equal(got, []string{"10.1.0.0/16"}) {
		t.Errorf("kernel scope of parent = %v", got)
	}
	if got := e.k.namesOf(ep.slot); len(got) != 0 {
		t.Errorf("kernel names of parent = %v", got)
	}
	if got := e.k.scopeOf(ec.slot); !slices.Equal(got, []string{"10.1.0.0/16"}) {
		t.Errorf("kernel scope of child = %v", got)
	}
	if got := e.k.namesOf(ec.slot); len(got) != 0 {
		t.Errorf("kernel names of child = %v", got)
	}
	if en := e.k.entries[ep.slot][netip.MustParsePrefix("10.1.0.0/16")]; len(en.Rules) != 1 || en.Rules[0] != (scope.PortRule{Index: 0, Lo: 443, Hi: 443, Protos: scope.ProtoAny}) {
		t.Errorf("kernel entry = %+v", en)
	}

	// Connections: the child is clipped (and its connections destroyed)
	// before the parent's are.
	calls := e.sk.callsSince(sk)
	if len(calls) != 2 {
		t.Fatalf("%d Destroy calls, want 2 (child, parent)", len(calls))
	}
	if !slices.Equal(calls[0].pids, []int{113}) || !slices.Equal(calls[1].pids, []int{111, 112, 113}) {
		t.Errorf("Destroy pids = %v, %v", calls[0].pids, calls[1].pids)
	}
	pm := calls[1].match
	for _, tc := range []struct {
		c    Conn
		kill bool
	}{
		{conn(111, "tcp", "10.1.2.3:443"), false},
		{conn(111, "udp", "10.1.255.255:443"), false},
		{conn(111, "tcp", "10.1.2.3:444"), true},
		{conn(111, "tcp", "10.1.2.3:80"), true},
		{conn(112, "tcp", "10.2.0.1:443"), true},
		{conn(112, "udp", "192.168.0.1:53"), true},
		{conn(112, "tcp", "[fd00::1]:443"), true},
	} {
		if got := pm(tc.c); got != tc.kill {
			t.Errorf("parent match(%v) = %v, want %v", tc.c, got, tc.kill)
		}
	}
	var gotDestroyed []string
	for _, rec := range e.recs.destroyed(p.ID) {
		if rec.Outcome.Verdict != audit.VerdictDestroyed || rec.Outcome.Reason != "narrowed" {
			t.Errorf("destroy record outcome = %+v", rec.Outcome)
		}
		gotDestroyed = append(gotDestroyed, rec.Destination.Protocol+" "+rec.Destination.IP)
	}
	if want := []string{"tcp 10.1.2.3", "tcp 10.2.0.1", "udp 192.168.0.1"}; !slices.Equal(gotDestroyed, want) {
		t.Errorf("parent destroyed %v, want %v", gotDestroyed, want)
	}
	if got := e.recs.destroyed(c.ID); len(got) != 1 || got[0].Destination.IP != "10.3.0.1" || got[0].Process.PID != 113 {
		t.Errorf("child destroyed %+v", got)
	}
	for _, id := range []string{p.ID, c.ID} {
		if rec := e.recs.find(t, id, "narrowed"); rec.Actor != admin.ID {
			t.Errorf("narrowed actor = %q", rec.Actor)
		}
	}
	// A later child open is checked against the narrowed scope.
	_, err = e.r.Open(v1.OpenRequest{Intent: "x", Scope: []string{"10.0.0.0/8:443"}, Parent: p.ID}, admin)
	wantErr(t, err, v1.CodeInvalid, "scope[0]")
}

func TestNarrowKernelErrorChangesNothingVisible(t *testing.T) {
	e := newEnv(t, nil)
	s := e.open(t, req("x", "10.0.0.0/8", "192.168.0.0/16"), admin)
	e.k.failNext("WriteScope")
	_, err := e.r.Narrow(s.ID, v1.NarrowRequest{Scope: []string{"10.0.0.0/8"}}, admin)
	wantErr(t, err, v1.CodeKernel, "")
	if g := e.get(t, s.ID); len(g.Scope) != 2 {
		t.Errorf("scope after failed narrow = %q", g.Scope)
	}
	if got := e.k.scopeOf(e.entry(t, s.ID).slot); len(got) != 2 {
		t.Errorf("kernel scope after failed narrow = %v", got)
	}
}

func TestRevoke(t *testing.T) {
	e := newEnv(t, nil)
	p := e.open(t, req("parent", "10.0.0.0/8"), admin)
	c := e.open(t, v1.OpenRequest{Intent: "child", Scope: []string{"10.1.0.0/16"}, Parent: p.ID}, admin)
	other := e.open(t, req("other", "10.0.0.0/8"), admin)
	ep, ec := e.entry(t, p.ID), e.entry(t, c.ID)
	e.cg.setProcs(p.Binding.Cgroup, 200)
	e.sk.conns = []Conn{conn(200, "tcp", "10.0.0.1:443"), conn(200, "udp", "10.9.9.9:53")}
	sk := e.sk.n()

	s, err := e.r.Revoke(p.ID, admin)
	if err != nil {
		t.Fatal(err)
	}
	if s.State != v1.StateRevoked {
		t.Errorf("state = %s", s.State)
	}
	for _, en := range []*entry{ep, ec} {
		if ks := e.k.session(en.slot); ks.State != enforcer.StateRevoked || ks.Gen != en.gen {
			t.Errorf("kernel slot %d = %+v, want revoked", en.slot, ks)
		}
	}
	if ks := e.k.session(e.entry(t, other.ID).slot); ks.State != enforcer.StateActive {
		t.Errorf("unrelated session revoked too")
	}
	if rec := e.recs.find(t, p.ID, "revoked"); rec.Actor != admin.ID || rec.Outcome == nil || rec.Outcome.Reason != "revoked" {
		t.Errorf("revoked record = %+v", rec)
	}
	if rec := e.recs.find(t, c.ID, "revoked"); rec.Actor != admin.ID || rec.Outcome.Reason != "parent revoked" {
		t.Errorf("child revoked record = %+v %+v", rec, rec.Outcome)
	}
	calls := e.sk.callsSince(sk)
	if len(calls) != 2 {
		t.Fatalf("%d Destroy calls, want 2", len(calls))
	}
	for _, call := range calls {
		for _, cn := range []Conn{conn(1, "tcp", "10.0.0.1:443"), conn(1, "udp", "1.1.1.1:53"), conn(1, "tcp", "[::1]:22")} {
			if !call.match(cn) {
				t.Errorf("revoke match(%v) = false, want every connection", cn)
			}
		}
	}
	if got := e.recs.destroyed(p.ID); len(got) != 2 || got[0].Outcome.Reason != "revoked" {
		t.Errorf("destroy records = %+v", got)
	}
	// Still listed, as revoked.
	if got := ids(e.r.List(Filter{State: v1.StateRevoked})); !slices.Equal(got, sortedIDs(p.ID, c.ID)) {
		t.Errorf("revoked sessions listed: %v", got)
	}
	// Revoking again changes nothing.
	mark := e.j.len()
	if _, err := e.r.Revoke(p.ID, admin); err != nil {
		t.Fatal(err)
	}
	if w := writes(e.j.since(mark)); len(w) != 0 {
		t.Errorf("second revoke wrote %v", opNames(w))
	}
	// A revoked session takes no new members and no children.
	_, err = e.r.Bind(p.ID, v1.BindRequest{PID: uint32(os.Getpid())}, admin)
	wantErr(t, err, v1.CodeInvalid, "id")
	_, err = e.r.Open(v1.OpenRequest{Intent: "x", Parent: p.ID}, admin)
	wantErr(t, err, v1.CodeInvalid, "parent")

	// Reap leaves it while it has members, closes it when they are gone.
	e.r.Reap(time.Now())
	if _, err := e.r.Get(p.ID, admin); err != nil {
		t.Fatalf("revoked session with members reaped: %v", err)
	}
	e.cg.setProcs(p.Binding.Cgroup)
	e.r.Reap(time.Now())
	for _, id := range []string{p.ID, c.ID} {
		if _, err := e.r.Get(id, admin); !v1.IsNotFound(err) {
			t.Errorf("Get(%s) after reap: %v", id, err)
		}
		if rec := e.recs.find(t, id, "closed"); rec.Actor != "agentfenced (no members left)" {
			t.Errorf("closed actor = %q", rec.Actor)
		}
	}
	if got := ids(e.r.List(Filter{})); !slices.Equal(got, []string{other.ID}) {
		t.Errorf("left: %v", got)
	}
	if ks := e.k.session(ep.slot); ks.State != enforcer.StateFree {
		t.Errorf("reaped slot = %+v", ks)
	}
}

func TestExpiry(t *testing.T) {
	e := newEnv(t, nil)
	s := e.open(t, v1.OpenRequest{Intent: "short", TTL: "1m", Scope: []string{"10.0.0.0/8"}}, admin)
	en := e.entry(t, s.ID)
	e.cg.setProcs(s.Binding.Cgroup, 300)
	e.sk.conns = []Conn{conn(300, "tcp", "10.0.0.1:443")}
	if ks := e.k.session(en.slot); ks.ExpiresNS != e.clock.Boot(s.ExpiresAt) {
		t.Errorf("kernel expiry %d, want %d", ks.ExpiresNS, e.clock.Boot(s.ExpiresAt))
	}

	e.r.Reap(s.ExpiresAt.Add(-time.Second))
	if got := e.recs.lifecycle(s.ID); slices.Contains(got, "expired") {
		t.Fatalf("expired before its time: %v", got)
	}
	sk := e.sk.n()
	e.r.Reap(s.ExpiresAt.Add(time.Second))
	if g := e.get(t, s.ID); g.State != v1.StateExpired {
		t.Errorf("state = %s, want expired", g.State)
	}
	if rec := e.recs.find(t, s.ID, "expired"); rec.Actor != "kernel" {
		t.Errorf("expired actor = %q", rec.Actor)
	}
	calls := e.sk.callsSince(sk)
	if len(calls) != 1 || !slices.Equal(calls[0].pids, []int{300}) || !calls[0].match(conn(300, "tcp", "10.0.0.1:443")) {
		t.Fatalf("Destroy calls = %+v", calls)
	}
	if got := e.recs.destroyed(s.ID); len(got) != 1 || got[0].Outcome.Reason != "expired" {
		t.Errorf("destroy records = %+v", got)
	}
	// Once recorded, not again.
	e.r.Reap(s.ExpiresAt.Add(2 * time.Second))
	if got := e.recs.lifecycle(s.ID); !slices.Equal(got, []string{"opened", "expired"}) {
		t.Errorf("lifecycle = %v", got)
	}
	// With no members left it is closed.
	e.cg.setProcs(s.Binding.Cgroup)
	e.r.Reap(s.ExpiresAt.Add(3 * time.Second))
	if got := e.recs.lifecycle(s.ID); !slices.Equal(got, []string{"opened", "expired", "closed"}) {
		t.Errorf("lifecycle = %v", got)
	}
	e.k.assertClean(t)
}

func TestExpiredShownBeforeReap(t *testing.T) {
	e := newEnv(t, nil)
	s := e.open(t, v1.OpenRequest{Intent: "short", TTL: "1ns"}, admin)
	time.Sleep(time.Millisecond)
	if g := e.get(t, s.ID); g.State != v1.StateExpired {
		t.Errorf("state = %s, want expired (computed from the clock)", g.State)
	}
	_, err := e.r.Open(v1.OpenRequest{Intent: "x", Parent: s.ID}, admin)
	wantErr(t, err, v1.CodeInvalid, "parent")
}

func TestBindPid(t *testing.T) {
	e := newEnv(t, nil)
	a := e.open(t, req("a", "10.0.0.0/8"), admin)
	b := e.open(t, req("b", "10.0.0.0/8"), admin)
	ea, eb := e.entry(t, a.ID), e.entry(t, b.ID)
	self := uint32(os.Getpid())

	mark := e.j.len()
	_, err := e.r.Bind(a.ID, v1.BindRequest{PID: 4_000_000_000}, admin)
	wantErr(t, err, v1.CodeInvalid, "pid")
	_, err = e.r.Bind(a.ID, v1.BindRequest{}, admin)
	wantErr(t, err, v1.CodeInvalid, "pid")
	_, err = e.r.Bind(a.ID, v1.BindRequest{PID: self, ContainerID: "0123456789ab"}, admin)
	wantErr(t, err, v1.CodeInvalid, "pid")
	_, err = e.r.Bind("s-nope", v1.BindRequest{PID: self}, admin)
	wantErr(t, err, v1.CodeNotFound, "id")
	if w := writes(e.j.since(mark)); len(w) != 0 {
		t.Errorf("rejected binds wrote %v", opNames(w))
	}

	s, err := e.r.Bind(b.ID, v1.BindRequest{PID: self}, admin)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(s.Binding.PIDs, []uint32{self}) {
		t.Errorf("pids = %v", s.Binding.PIDs)
	}
	if bnd := e.k.pids[self]; bnd != (binding{eb.slot, eb.gen}) {
		t.Errorf("kernel pid binding = %+v", bnd)
	}
	rec := e.recs.find(t, b.ID, "bound")
	if rec.Actor != admin.ID {
		t.Errorf("bound actor = %q", rec.Actor)
	}
	// What the bound process holds of the gate set is shown: all of it
	// for root (CI), nothing for a process without capabilities.
	held := heldByTest(t)
	if !reflect.DeepEqual(s.Binding.GateCaps, held) || !reflect.DeepEqual(rec.Session.GateCaps, auditCaps(held)) {
		t.Errorf("gate caps: session %+v, record %+v; want %+v", s.Binding.GateCaps, rec.Session.GateCaps, held)
	}
	// Binding again is idempotent.
	if s, err := e.r.Bind(b.ID, v1.BindRequest{PID: self}, admin); err != nil || len(s.Binding.PIDs) != 1 {
		t.Errorf("rebind: %v %v", s.Binding.PIDs, err)
	}
	// Now in b: binding it to a is a conflict.
	mark = e.j.len()
	_, err = e.r.Bind(a.ID, v1.BindRequest{PID: self}, admin)
	wantErr(t, err, v1.CodeConflict, "pid")
	if w := writes(e.j.since(mark)); len(w) != 0 {
		t.Errorf("conflicting bind wrote %v", opNames(w))
	}
	// So is a pid in a's cgroup, for b.
	delete(e.k.pids, self)
	e.cg.setOf(int(self), a.Binding.Cgroup)
	_, err = e.r.Bind(b.ID, v1.BindRequest{PID: self}, admin)
	wantErr(t, err, v1.CodeConflict, "pid")
	// Closing b drops its pid bindings.
	e.k.pids[self] = binding{eb.slot, eb.gen}
	if err := e.r.Close(b.ID, admin); err != nil {
		t.Fatal(err)
	}
	if _, ok := e.k.pids[self]; ok {
		t.Error("pid binding survives close")
	}
	_ = ea
}

// heldByTest is what this test process holds of the gate set, as Bind
// should report it: the whole set when it runs as root.
func heldByTest(t *testing.T) []v1.HeldCaps {
	caps, err := privdrop.HeldGate(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if os.Geteuid() == 0 && len(caps) != len(privdrop.Gate) {
		t.Fatalf("root test process holds %v of the gate set", caps)
	}
	if len(caps) == 0 {
		return nil
	}
	return []v1.HeldCaps{{PID: uint32(os.Getpid()), Caps: privdrop.Names(caps)}}
}

func TestBindKernelError(t *testing.T) {
	e := newEnv(t, nil)
	a := e.open(t, req("a"), admin)
	e.k.failNext("BindPid")
	_, err := e.r.Bind(a.ID, v1.BindRequest{PID: uint32(os.Getpid())}, admin)
	wantErr(t, err, v1.CodeKernel, "")
	if g := e.get(t, a.ID); len(g.Binding.PIDs) != 0 {
		t.Errorf("pids after failed bind = %v", g.Binding.PIDs)
	}
}

func TestBindContainer(t *testing.T) {
	e := newEnv(t, nil)
	a := e.open(t, req("a", "10.0.0.0/8"), admin)
	b := e.open(t, req("b", "10.0.0.0/8"), admin)
	ea := e.entry(t, a.ID)
	const full = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	ctPath := e.cg.base + "/docker-" + full + ".scope"
	e.cg.containers[full] = container{path: ctPath, id: 77}
	e.cg.containers["fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210"] = container{path: e.cg.base + "/other.scope", id: 78}

	mark := e.j.len()
	for _, bad := range []string{"0123456789a", "0123456789AB", "0123456789abcdeg", "../../etc/x0123", " 0123456789ab"} {
		_, err := e.r.Bind(a.ID, v1.BindRequest{ContainerID: bad}, admin)
		wantErr(t, err, v1.CodeInvalid, "container_id")
	}
	_, err := e.r.Bind(a.ID, v1.BindRequest{ContainerID: "aaaaaaaaaaaa"}, admin) // valid, unknown
	wantErr(t, err, v1.CodeInvalid, "container_id")
	if w := writes(e.j.since(mark)); len(w) != 0 {
		t.Errorf("rejected binds wrote %v", opNames(w))
	}
	// Members may not bind containers.
	m := Caller{ID: "m", PID: 7000, UID: 1000}
	e.cg.setOf(m.PID, a.Binding.Cgroup)
	_, err = e.r.Bind(a.ID, v1.BindRequest{ContainerID: full[:12]}, m)
	wantErr(t, err, v1.CodeForbidden, "container_id")

	e.cg.procs[ctPath+"/init.scope"] = []int{os.Getpid()}
	s, err := e.r.Bind(a.ID, v1.BindRequest{ContainerID: full[:12]}, admin)
	if err != nil {
		t.Fatal(err)
	}
	if s.Binding.ContainerID != full[:12] || s.Binding.ContainerCgroup != ctPath {
		t.Errorf("binding = %+v", s.Binding)
	}
	if held := heldByTest(t); !reflect.DeepEqual(s.Binding.GateCaps, held) {
		t.Errorf("container's gate caps %+v, want %+v", s.Binding.GateCaps, held)
	}
	if bnd := e.k.cgroups[77]; bnd != (binding{ea.slot, ea.gen}) {
		t.Errorf("kernel container binding = %+v", bnd)
	}
	// A process in the container is a member of a.
	e.cg.setOf(7100, ctPath+"/init.scope")
	if id, ok := e.r.MemberOf(7100); !ok || id != a.ID {
		t.Errorf("container process member of %q", id)
	}
	// The same container for b: conflict; a second container for a: conflict.
	_, err = e.r.Bind(b.ID, v1.BindRequest{ContainerID: full}, admin)
	wantErr(t, err, v1.CodeConflict, "container_id")
	_, err = e.r.Bind(a.ID, v1.BindRequest{ContainerID: "fedcba987654"}, admin)
	wantErr(t, err, v1.CodeConflict, "container_id")
	// Members are counted in the container's cgroup too.
	e.cg.setProcs(ctPath, 7100)
	e.sk.conns = []Conn{conn(7100, "tcp", "10.0.0.1:22")}
	if _, err := e.r.Revoke(a.ID, admin); err != nil {
		t.Fatal(err)
	}
	if got := e.recs.destroyed(a.ID); len(got) != 1 || got[0].Process.PID != 7100 {
		t.Errorf("container member connections destroyed: %+v", got)
	}
	// Close unbinds the container cgroup.
	if err := e.r.Close(a.ID, admin); err != nil {
		t.Fatal(err)
	}
	if _, ok := e.k.cgroups[77]; ok {
		t.Error("container binding survives close")
	}
}

// TestBindPod: a pod's cgroup is bound as a container's is, and every
// container below it is a member.
func TestBindPod(t *testing.T) {
	e := newEnv(t, nil)
	a := e.open(t, req("a", "10.0.0.0/8"), admin)
	b := e.open(t, req("b", "10.0.0.0/8"), admin)
	ea := e.entry(t, a.ID)
	const uid = "6f1c2a3b-4d5e-4f60-8a9b-0c1d2e3f4a5b"
	podPath := e.cg.base + "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod6f1c2a3b_4d5e_4f60_8a9b_0c1d2e3f4a5b.slice"
	e.cg.pods[uid] = container{path: podPath, id: 91}

	mark := e.j.len()
	for _, bad := range []string{"6F1C2A3B-4D5E-4F60-8A9B-0C1D2E3F4A5B", "6f1c2a3b4d5e4f608a9b0c1d2e3f4a5b", "../../6f1c2a3b-4d5e-4f60-8a9b-0c1d2e3f4", "6f1c2a3b-4d5e-4f60-8a9b-0c1d2e3f4a5g"} {
		_, err := e.r.Bind(a.ID, v1.BindRequest{PodUID: bad}, admin)
		wantErr(t, err, v1.CodeInvalid, "pod_uid")
	}
	_, err := e.r.Bind(a.ID, v1.BindRequest{PodUID: "00000000-0000-4000-8000-000000000000"}, admin) // valid, unknown
	wantErr(t, err, v1.CodeInvalid, "pod_uid")
	_, err = e.r.Bind(a.ID, v1.BindRequest{PodUID: uid, ContainerID: "0123456789ab"}, admin)
	wantErr(t, err, v1.CodeInvalid, "pid")
	if w := writes(e.j.since(mark)); len(w) != 0 {
		t.Errorf("rejected binds wrote %v", opNames(w))
	}
	m := Caller{ID: "m", PID: 7000, UID: 1000}
	e.cg.setOf(m.PID, a.Binding.Cgroup)
	_, err = e.r.Bind(a.ID, v1.BindRequest{PodUID: uid}, m)
	wantErr(t, err, v1.CodeForbidden, "pod_uid")

	s, err := e.r.Bind(a.ID, v1.BindRequest{PodUID: uid}, admin)
	if err != nil {
		t.Fatal(err)
	}
	if s.Binding.PodUID != uid || s.Binding.ContainerCgroup != podPath || s.Binding.ContainerID != "" {
		t.Errorf("binding = %+v", s.Binding)
	}
	if bnd := e.k.cgroups[91]; bnd != (binding{ea.slot, ea.gen}) {
		t.Errorf("kernel pod binding = %+v", bnd)
	}
	// Processes of any container of the pod are members of a.
	e.cg.setOf(7100, podPath+"/cri-containerd-0123456789abcdef.scope")
	if id, ok := e.r.MemberOf(7100); !ok || id != a.ID {
		t.Errorf("pod's container process member of %q", id)
	}
	_, err = e.r.Bind(b.ID, v1.BindRequest{PodUID: uid}, admin)
	wantErr(t, err, v1.CodeConflict, "pod_uid")
	if err := e.r.Close(a.ID, admin); err != nil {
		t.Fatal(err)
	}
	if _, ok := e.k.cgroups[91]; ok {
		t.Error("pod binding survives close")
	}
}

func TestQuarantined(t *testing.T) {
	e := newEnv(t, nil)
	s := e.open(t, req("x", "essential,udp://10.0.0.53:53", "0.0.0.0/0"), admin)
	en := e.entry(t, s.ID)
	e.cg.setProcs(s.Binding.Cgroup, 400)
	e.sk.conns = []Conn{conn(400, "udp", "10.0.0.53:53"), conn(400, "tcp", "1.1.1.1:443"), conn(400, "tcp", "10.0.0.53:53")}

	// Stale generation, unknown slot: nothing happens.
	mark, recs, sk := e.j.len(), len(e.recs.all()), e.sk.n()
	e.r.Quarantined(en.slot, en.gen-1)
	e.r.Quarantined(en.slot, en.gen+1)
	e.r.Quarantined(en.slot+1, 1)
	if len(e.recs.all()) != recs || e.sk.n() != sk || len(writes(e.j.since(mark))) != 0 {
		t.Fatal("a stale quarantine report did something")
	}
	if g := e.get(t, s.ID); g.State != v1.StateActive {
		t.Fatalf("state = %s after stale reports", g.State)
	}

	e.r.Quarantined(en.slot, en.gen)
	if g := e.get(t, s.ID); g.State != v1.StateQuarantined {
		t.Errorf("state = %s", g.State)
	}
	rec := e.recs.find(t, s.ID, "quarantined")
	if rec.Actor != "kernel" || rec.Outcome == nil || rec.Outcome.Reason != "more than 100 violations" {
		t.Errorf("quarantined record = %+v", rec)
	}
	calls := e.sk.callsSince(sk)
	if len(calls) != 1 {
		t.Fatalf("%d Destroy calls", len(calls))
	}
	for _, tc := range []struct {
		c    Conn
		kill bool
	}{
		{conn(400, "udp", "10.0.0.53:53"), false}, // essential
		{conn(400, "tcp", "10.0.0.53:53"), true},  // essential is udp only
		{conn(400, "tcp", "1.1.1.1:443"), true},
	} {
		if got := calls[0].match(tc.c); got != tc.kill {
			t.Errorf("quarantine match(%v) = %v, want %v", tc.c, got, tc.kill)
		}
	}
	if len(e.cg.killed) != 0 {
		t.Errorf("quarantine action killed %v", e.cg.killed)
	}
	// Reported twice: recorded once.
	e.r.Quarantined(en.slot, en.gen)
	if n := len(slices.DeleteFunc(e.recs.lifecycle(s.ID), func(ev string) bool { return ev != "quarantined" })); n != 1 {
		t.Errorf("%d quarantined records", n)
	}
	// Quarantined sessions still take members.
	if _, err := e.r.Bind(s.ID, v1.BindRequest{PID: uint32(os.Getpid())}, admin); err != nil {
		t.Errorf("bind to quarantined: %v", err)
	}
}

func TestQuarantinedKill(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.DriftAction = "kill" })
	s := e.open(t, req("x", "0.0.0.0/0"), admin)
	en := e.entry(t, s.ID)
	sk := e.sk.n()
	// No pid bindings here: the kill action signals bound pids for real.
	e.r.Quarantined(en.slot, en.gen)
	if !slices.Equal(e.cg.killed, []string{s.Binding.Cgroup}) {
		t.Errorf("killed %v, want the session cgroup", e.cg.killed)
	}
	if got := e.recs.lifecycle(s.ID); !slices.Equal(got, []string{"opened", "quarantined", "killed"}) {
		t.Errorf("lifecycle = %v", got)
	}
	if rec := e.recs.find(t, s.ID, "killed"); rec.Actor != "kernel" || rec.Outcome.Reason != "drift action kill" {
		t.Errorf("killed record = %+v", rec)
	}
	if e.sk.n() != sk {
		t.Error("kill action also destroyed connections")
	}
}

// A Close that fails half way leaves the sessions listed, and closing again
// finishes the job.
func TestCloseRetryAfterKernelError(t *testing.T) {
	e := newEnv(t, nil)
	p := e.open(t, req("p", "10.0.0.0/8"), admin)
	c := e.open(t, v1.OpenRequest{Intent: "c", Parent: p.ID}, admin)
	e.k.failNext("UnbindCgroup") // the child's, torn down first
	wantErr(t, e.r.Close(p.ID, admin), v1.CodeKernel, "")
	if got := ids(e.r.List(Filter{})); len(got) != 2 {
		t.Fatalf("after a failed close: %v, want both %s and %s still listed", got, p.ID, c.ID)
	}
	if got := e.recs.lifecycle(p.ID); len(got) != 1 {
		t.Errorf("failed close recorded %v", got)
	}
	if err := e.r.CloseAll(admin); err != nil {
		t.Fatal(err)
	}
	if l := e.r.List(Filter{}); len(l) != 0 {
		t.Errorf("left after CloseAll: %v", ids(l))
	}
	e.k.assertClean(t)
	if live := e.cg.live(t); len(live) != 0 {
		t.Errorf("cgroups left: %v", live)
	}
}

// The hostname programs are hooked exactly where a session with hostname
// rules has members, and nowhere once it is gone; a failed hook changes
// nothing.
func TestHostnameHooks(t *testing.T) {
	const root = "/cgroup-root"
	e := newEnv(t, func(c *Config) { c.CgroupRoot = root })
	self := uint32(os.Getpid())
	hooked := func() map[string]int {
		e.k.mu.Lock()
		defer e.k.mu.Unlock()
		return maps.Clone(e.k.hooks)
	}

	addr := e.open(t, req("addresses only", "10.0.0.0/8:443"), admin)
	if h := hooked(); len(h) != 0 {
		t.Fatalf("a session without hostname rules hooked %v", h)
	}
	e.k.failNext("HookHostnames")
	_, err := e.r.Open(req("names", "api.example.com:443"), admin)
	wantErr(t, err, v1.CodeKernel, "")
	if h := hooked(); len(h) != 0 {
		t.Fatalf("a failed open left hooks on %v", h)
	}
	if n := len(e.r.List(Filter{})); n != 1 {
		t.Fatalf("%d sessions after a failed open, want 1", n)
	}

	s := e.open(t, req("names", "10.0.0.0/8:443", "api.example.com:443"), admin)
	if h := hooked(); !maps.Equal(h, map[string]int{s.Binding.Cgroup: 1}) {
		t.Fatalf("hooked %v, want the session cgroup once", h)
	}
	e.k.failNext("HookHostnames")
	_, err = e.r.Bind(s.ID, v1.BindRequest{PID: self}, admin)
	wantErr(t, err, v1.CodeKernel, "")
	if _, ok := e.k.pids[self]; ok || len(e.get(t, s.ID).Binding.PIDs) != 0 {
		t.Errorf("a failed hook left the pid bound")
	}
	// A child with hostname rules of its own is below its parent's hook.
	child := e.open(t, v1.OpenRequest{Intent: "child", Scope: []string{"api.example.com:443"}, Parent: s.ID}, admin)
	if h := hooked(); !maps.Equal(h, map[string]int{s.Binding.Cgroup: 1}) {
		t.Fatalf("hooked %v with a child session, want only the parent's cgroup", h)
	}
	// A process bound by pid may live in any cgroup: the root is hooked,
	// and nothing else, so that no packet runs the programs twice.
	if _, err := e.r.Bind(s.ID, v1.BindRequest{PID: self}, admin); err != nil {
		t.Fatal(err)
	}
	if h := hooked(); !maps.Equal(h, map[string]int{root: 1}) {
		t.Fatalf("hooked %v, want the root alone", h)
	}
	if err := e.r.Close(child.ID, admin); err != nil {
		t.Fatal(err)
	}
	// Another hostname session opened meanwhile is under the root's hook.
	n := e.open(t, req("names again", "*.example.com:443"), admin)
	if h := hooked(); !maps.Equal(h, map[string]int{root: 1}) {
		t.Fatalf("hooked %v, want the root alone", h)
	}
	// Narrowed to addresses only, s needs no hooks; the root goes, and n
	// gets its own cgroup hooked.
	if _, err := e.r.Narrow(s.ID, v1.NarrowRequest{Scope: []string{"10.0.0.0/8:443"}}, admin); err != nil {
		t.Fatal(err)
	}
	if h := hooked(); !maps.Equal(h, map[string]int{n.Binding.Cgroup: 1}) {
		t.Fatalf("hooked %v after narrowing away s's hostname rules, want n's cgroup alone", h)
	}
	for _, id := range []string{addr.ID, s.ID, n.ID} {
		if err := e.r.Close(id, admin); err != nil {
			t.Fatal(err)
		}
	}
	e.k.assertClean(t)
}
