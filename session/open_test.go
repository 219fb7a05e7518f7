package session

import (
	"fmt"
	"maps"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	v1 "github.com/agentfence/agentfence/api/v1"
	"github.com/agentfence/agentfence/audit"
	"github.com/agentfence/agentfence/config"
	"github.com/agentfence/agentfence/enforcer"
	"github.com/agentfence/agentfence/scope"
)

func TestOpenValidation(t *testing.T) {
	manyLabels := map[string]string{}
	for i := range maxLabels + 1 {
		manyLabels[fmt.Sprintf("k%d", i)] = "v"
	}
	tooManyRules := make([]string, 33) // testConfig: MaxRules 32
	for i := range tooManyRules {
		tooManyRules[i] = fmt.Sprintf("10.0.%d.0/24", i)
	}
	// 17 rules that all cover 10.0.0.1: more than one trie entry can hold.
	crowded := []string{"10.0.0.1"}
	for i := range scope.MaxPortRules {
		crowded = append(crowded, fmt.Sprintf("10.0.0.0/%d", 16+i))
	}
	ok := func(mod func(*v1.OpenRequest)) v1.OpenRequest {
		r := v1.OpenRequest{Intent: "fetch the nightly report", Scope: []string{"10.0.0.0/8:443", "api.example.com:443"}}
		mod(&r)
		return r
	}
	cases := []struct {
		name  string
		req   v1.OpenRequest
		code  v1.Code
		field string
	}{
		{"empty intent", ok(func(r *v1.OpenRequest) { r.Intent = "" }), v1.CodeInvalid, "intent"},
		{"whitespace intent", ok(func(r *v1.OpenRequest) { r.Intent = " \t\n " }), v1.CodeInvalid, "intent"},
		{"oversize intent", ok(func(r *v1.OpenRequest) { r.Intent = strings.Repeat("x", maxIntentBytes+1) }), v1.CodeInvalid, "intent"},
		{"invalid utf-8 intent", ok(func(r *v1.OpenRequest) { r.Intent = "report \xff\xfe" }), v1.CodeInvalid, "intent"},
		{"unknown mode", ok(func(r *v1.OpenRequest) { r.Mode = "block" }), v1.CodeInvalid, "mode"},
		{"ttl not a duration", ok(func(r *v1.OpenRequest) { r.TTL = "soon" }), v1.CodeInvalid, "ttl"},
		{"ttl without unit", ok(func(r *v1.OpenRequest) { r.TTL = "30" }), v1.CodeInvalid, "ttl"},
		{"ttl zero", ok(func(r *v1.OpenRequest) { r.TTL = "0s" }), v1.CodeInvalid, "ttl"},
		{"ttl negative", ok(func(r *v1.OpenRequest) { r.TTL = "-5m" }), v1.CodeInvalid, "ttl"},
		{"ttl above max", ok(func(r *v1.OpenRequest) { r.TTL = "24h0m1s" }), v1.CodeInvalid, "ttl"},
		{"bad rule", ok(func(r *v1.OpenRequest) { r.Scope = []string{"10.0.0.0/8:443", "ftp://10.0.0.1"} }), v1.CodeInvalid, "scope[1]"},
		{"host bits set", ok(func(r *v1.OpenRequest) { r.Scope = []string{"10.0.0.1/8"} }), v1.CodeInvalid, "scope[0]"},
		{"in: on a hostname", ok(func(r *v1.OpenRequest) { r.Scope = []string{"in:api.example.com:443"} }), v1.CodeInvalid, "scope[0]"},
		{"empty rule", ok(func(r *v1.OpenRequest) { r.Scope = []string{"1.1.1.1", "  "} }), v1.CodeInvalid, "scope[1]"},
		{"too many rules", ok(func(r *v1.OpenRequest) { r.Scope = tooManyRules }), v1.CodeInvalid, "scope"},
		{"too many rules cover one address", ok(func(r *v1.OpenRequest) { r.Scope = crowded }), v1.CodeInvalid, "scope"},
		{"unknown origin kind", ok(func(r *v1.OpenRequest) { r.Origin = &v1.Origin{Kind: "robot", Principal: "x"} }), v1.CodeInvalid, "origin.kind"},
		{"empty origin kind", ok(func(r *v1.OpenRequest) { r.Origin = &v1.Origin{Principal: "x"} }), v1.CodeInvalid, "origin.kind"},
		{"empty principal", ok(func(r *v1.OpenRequest) { r.Origin = &v1.Origin{Kind: "human", Principal: " "} }), v1.CodeInvalid, "origin.principal"},
		{"control char principal", ok(func(r *v1.OpenRequest) { r.Origin = &v1.Origin{Kind: "schedule", Principal: "a\x1bb"} }), v1.CodeInvalid, "origin.principal"},
		{"invalid spiffe id", ok(func(r *v1.OpenRequest) { r.Agent = &v1.Agent{ID: "agent-7", Name: "x"} }), v1.CodeInvalid, "agent.id"},
		{"spiffe id wrong scheme", ok(func(r *v1.OpenRequest) { r.Agent = &v1.Agent{ID: "https://example.org/agent"} }), v1.CodeInvalid, "agent.id"},
		{"agent name control char", ok(func(r *v1.OpenRequest) { r.Agent = &v1.Agent{Name: "a\x00"} }), v1.CodeInvalid, "agent.name"},
		{"agent owner too long", ok(func(r *v1.OpenRequest) { r.Agent = &v1.Agent{Owner: strings.Repeat("o", maxTextBytes+1)} }), v1.CodeInvalid, "agent.owner"},
		{"too many labels", ok(func(r *v1.OpenRequest) { r.Labels = manyLabels }), v1.CodeInvalid, "labels"},
		{"control char in label value", ok(func(r *v1.OpenRequest) { r.Labels = map[string]string{"team": "a\nb"} }), v1.CodeInvalid, "labels.team"},
		{"DEL in label value", ok(func(r *v1.OpenRequest) { r.Labels = map[string]string{"team": "a\x7f"} }), v1.CodeInvalid, "labels.team"},
		{"control char in label key", ok(func(r *v1.OpenRequest) { r.Labels = map[string]string{"te\tam": "x"} }), v1.CodeInvalid, "labels key"},
		{"empty label key", ok(func(r *v1.OpenRequest) { r.Labels = map[string]string{"": "x"} }), v1.CodeInvalid, "labels key"},
		{"unknown parent", ok(func(r *v1.OpenRequest) { r.Parent = "s-nope" }), v1.CodeInvalid, "parent"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, nil)
			_, err := e.r.Open(tc.req, admin)
			wantErr(t, err, tc.code, tc.field)
			if w := writes(e.j.since(0)); len(w) != 0 {
				t.Errorf("rejected Open wrote %v", opNames(w))
			}
			if live := e.cg.live(t); len(live) != 0 {
				t.Errorf("rejected Open created cgroups %v", live)
			}
			if l := e.r.List(Filter{}); len(l) != 0 {
				t.Errorf("rejected Open listed %v", ids(l))
			}
			if n := len(e.recs.all()); n != 0 {
				t.Errorf("rejected Open emitted %d records", n)
			}
		})
	}
}

func TestOpenDefaults(t *testing.T) {
	e := newEnv(t, nil)
	before := time.Now()
	s := e.open(t, v1.OpenRequest{Intent: "  summarise tickets  ", Scope: []string{"tcp://10.0.0.0/8:443", "udp://[fd00::]/8:53"},
		Labels: map[string]string{"team": "support"}}, admin)
	if s.Intent != "summarise tickets" {
		t.Errorf("intent = %q, want trimmed", s.Intent)
	}
	if s.Origin != (v1.Origin{Kind: "human", Principal: admin.ID}) {
		t.Errorf("origin = %+v, want human/%s", s.Origin, admin.ID)
	}
	// Address rules only, no dns asked for: scoped, the safe default.
	if s.Mode != "enforce" || s.State != v1.StateActive || s.Version != v1.ModelVersion || s.OpenedBy != admin.ID || scope.DNSMode(s.DNS) != scope.DNSScoped {
		t.Errorf("session = %+v", s)
	}
	if !strings.HasPrefix(s.ID, "s-") || len(s.ID) != 2+32 {
		t.Errorf("id = %q", s.ID)
	}
	if d := s.ExpiresAt.Sub(s.CreatedAt); d != time.Hour || s.TTL != "1h0m0s" {
		t.Errorf("ttl = %s / %s, want the default 1h", d, s.TTL)
	}
	if !near(s.CreatedAt, before, time.Second) {
		t.Errorf("created_at = %s, now is %s", s.CreatedAt, before)
	}
	if want := []string{"tcp://10.0.0.0/8:443", "udp://[fd00::]/8:53"}; !slices.Equal(s.Scope, want) {
		t.Errorf("scope = %q, want %q", s.Scope, want)
	}
	if filepath.Dir(s.Binding.Cgroup) != e.cg.base {
		t.Errorf("cgroup %s not under the base %s", s.Binding.Cgroup, e.cg.base)
	}
	en := e.entry(t, s.ID)
	ks := e.k.session(en.slot)
	want := enforcer.SessionState{Gen: en.gen, ExpiresNS: e.clock.Boot(s.ExpiresAt), State: enforcer.StateActive,
		Mode: enforcer.ModeEnforce, Budget: 100, QuarantineOnBudget: true, DNS: scope.DNSScoped}
	if ks != want {
		t.Errorf("kernel session = %+v, want %+v", ks, want)
	}
	if got := e.k.scopeOf(en.slot); !slices.Equal(got, []string{"10.0.0.0/8", "fd00::/8"}) {
		t.Errorf("kernel scope = %v", got)
	}
	if got := e.recs.lifecycle(s.ID); !slices.Equal(got, []string{"opened"}) {
		t.Errorf("lifecycle = %v", got)
	}
	if rec := e.recs.find(t, s.ID, "opened"); rec.Actor != admin.ID || rec.Origin.Kind != "human" {
		t.Errorf("opened record = %+v", rec)
	}
	// The returned session is a copy.
	s.Scope[0], s.Labels["team"] = "changed", "changed"
	if g := e.get(t, s.ID); g.Scope[0] != "tcp://10.0.0.0/8:443" || g.Labels["team"] != "support" {
		t.Errorf("Open returned the registry's own slices: %+v", g)
	}

	a := e.open(t, v1.OpenRequest{Intent: "x", Mode: "audit", TTL: "90s", Scope: []string{"1.1.1.1:53"},
		Origin: &v1.Origin{Kind: "schedule", Principal: "nightly"}, Agent: &v1.Agent{ID: "spiffe://example.org/agent/7", Name: "bot"}}, admin)
	if a.Mode != "audit" || a.TTL != "1m30s" || a.Origin.Kind != "schedule" || a.Agent.ID != "spiffe://example.org/agent/7" {
		t.Errorf("audit session = %+v", a)
	}
	if ks := e.k.session(e.entry(t, a.ID).slot); ks.Mode != enforcer.ModeAudit {
		t.Errorf("kernel mode = %d, want audit", ks.Mode)
	}
	if ttl := e.open(t, v1.OpenRequest{Intent: "x", TTL: "24h"}, admin); ttl.ExpiresAt.Sub(ttl.CreatedAt) != 24*time.Hour {
		t.Errorf("ttl at the maximum was not accepted as is: %s", ttl.TTL)
	}
}

func TestOpenDriftActionNoneDisablesKernelQuarantine(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.DriftAction = "none"; c.ViolationBudget = 7 })
	s := e.open(t, req("x", "1.1.1.1"), admin)
	ks := e.k.session(e.entry(t, s.ID).slot)
	if ks.QuarantineOnBudget || ks.Budget != 7 {
		t.Errorf("kernel session = %+v, want budget 7 without quarantine", ks)
	}
}

func TestOpenWriteOrder(t *testing.T) {
	e := newEnv(t, nil)
	s := e.open(t, req("x", "10.0.0.0/8:443", "api.example.com:443", "*.slack.com"), admin)
	en := e.entry(t, s.ID)
	w := writes(e.j.since(0))
	// The hostname programs are hooked to the cgroup once it is bound,
	// before the open returns and a member can start.
	if got, want := opNames(w), []string{"WriteScope", "WriteNames", "PutSession", "cgroups.Create", "BindCgroup", "HookHostnames"}; !slices.Equal(got, want) {
		t.Fatalf("write order = %v, want %v", got, want)
	}
	if w[5].Path != s.Binding.Cgroup {
		t.Errorf("hostname programs hooked to %q, want the session cgroup %s", w[5].Path, s.Binding.Cgroup)
	}
	for _, o := range []op{w[0], w[1], w[2], w[4]} {
		if o.Slot != en.slot || o.Gen != en.gen {
			t.Errorf("%s wrote slot %d gen %d, want %d/%d", o.Name, o.Slot, o.Gen, en.slot, en.gen)
		}
	}
	if w[2].State != enforcer.StateActive {
		t.Errorf("PutSession state = %d", w[2].State)
	}
	if !slices.Equal(w[0].Prefixes, []string{"10.0.0.0/8"}) || !slices.Equal(w[1].Hosts, []string{"api.example.com", "*.slack.com"}) {
		t.Errorf("scope %v names %v", w[0].Prefixes, w[1].Hosts)
	}
	id, err := inode(s.Binding.Cgroup)
	if err != nil {
		t.Fatal(err)
	}
	if w[4].ID != id {
		t.Errorf("bound cgroup id %d, the cgroup's id is %d", w[4].ID, id)
	}
	if en.slot != 1 || en.gen != 1 {
		t.Errorf("first session got slot %d gen %d, want 1/1 (slot 0 is never used)", en.slot, en.gen)
	}
}

func TestOpenRollback(t *testing.T) {
	for _, step := range []string{"WriteScope", "WriteNames", "PutSession", "cgroups.Create", "BindCgroup"} {
		t.Run(step, func(t *testing.T) {
			e := newEnv(t, nil)
			if m, ok := strings.CutPrefix(step, "cgroups."); ok {
				e.cg.failNext(m)
			} else {
				e.k.failNext(step)
			}
			_, err := e.r.Open(req("x", "10.0.0.0/8:443", "192.168.0.0/16", "api.example.com:443"), admin)
			wantErr(t, err, v1.CodeKernel, "")
			e.k.assertClean(t)
			if live := e.cg.live(t); len(live) != 0 {
				t.Errorf("cgroups left: %v", live)
			}
			if l := e.r.List(Filter{}); len(l) != 0 {
				t.Errorf("listed after failed open: %v", ids(l))
			}
			if n := len(e.recs.all()); n != 0 {
				t.Errorf("failed open emitted %d records", n)
			}
			// Nothing is undone before it was done, and the failing step
			// is the last thing tried before the undo.
			ops := writes(e.j.since(0))
			failed := slices.IndexFunc(ops, func(o op) bool { return o.Failed })
			if failed < 0 || ops[failed].Name != step {
				t.Fatalf("ops = %v, want a failed %s", opNames(ops), step)
			}
			// The slot is free again: the next open takes slot 1.
			s := e.open(t, req("x", "10.0.0.0/8:443"), admin)
			if en := e.entry(t, s.ID); en.slot != 1 {
				t.Errorf("slot %d after a failed open, want 1 again", en.slot)
			}
			if got := e.k.scopeOf(1); !slices.Equal(got, []string{"10.0.0.0/8"}) {
				t.Errorf("kernel scope after reopen = %v", got)
			}
		})
	}
}

func TestCapacity(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.MaxSessions = 2 })
	a := e.open(t, req("a"), admin)
	e.open(t, req("b"), admin)
	mark := e.j.len()
	_, err := e.r.Open(req("c"), admin)
	wantErr(t, err, v1.CodeCapacity, "")
	if w := writes(e.j.since(mark)); len(w) != 0 {
		t.Errorf("capacity error wrote %v", opNames(w))
	}
	if err := e.r.Close(a.ID, admin); err != nil {
		t.Fatal(err)
	}
	e.open(t, req("c"), admin)
}

func TestGenerations(t *testing.T) {
	e := newEnv(t, nil)
	a := e.open(t, req("first", "10.0.0.0/8", "api.example.com:443"), admin)
	ea := e.entry(t, a.ID)
	slot, gen := ea.slot, ea.gen
	if err := e.r.Close(a.ID, admin); err != nil {
		t.Fatal(err)
	}
	if _, err := e.r.Get(a.ID, admin); !v1.IsNotFound(err) {
		t.Errorf("Get after close: %v, want not found", err)
	}
	e.k.assertClean(t)
	if ks := e.k.session(slot); ks.Gen != gen || ks.State != enforcer.StateFree {
		t.Errorf("closed slot = %+v, want free at gen %d", ks, gen)
	}
	b := e.open(t, req("second", "192.168.0.0/16"), admin)
	eb := e.entry(t, b.ID)
	if eb.slot != slot || eb.gen != gen+1 {
		t.Fatalf("reopened slot %d gen %d, want %d/%d", eb.slot, eb.gen, slot, gen+1)
	}
	if got := opNames(writes(e.j.since(0))); !slices.Contains(got, "PurgeLearned") {
		t.Errorf("close did not purge learned addresses: %v", got)
	}
	// Without hostname rules there is nothing learned to purge.
	mark := e.j.len()
	if err := e.r.Close(b.ID, admin); err != nil {
		t.Fatal(err)
	}
	if got := opNames(writes(e.j.since(mark))); slices.Contains(got, "PurgeLearned") {
		t.Errorf("closing an address-only session walked the learned table: %v", got)
	}

	old, ok := e.r.resolve(slot, gen)
	if !ok || old.Session.ID != a.ID || old.Session.Intent != "first" || old.Rules[0].String() != "10.0.0.0/8" {
		t.Errorf("resolve(old gen) = %+v %v, want the closed session %s", old, ok, a.ID)
	}
	cur, ok := e.r.resolve(slot, gen+1)
	if !ok || cur.Session.ID != b.ID || cur.Rules[0].String() != "192.168.0.0/16" {
		t.Errorf("resolve(new gen) = %+v %v, want %s", cur, ok, b.ID)
	}
	if _, ok := e.r.resolve(slot, gen+2); ok {
		t.Error("resolve(future gen) found a session")
	}
	if _, ok := e.r.resolve(slot+1, 1); ok {
		t.Error("resolve(unused slot) found a session")
	}
}

func TestRecentClosedIsBounded(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.MaxSessions = 1 })
	var first v1.Session
	for i := range recentClosed + 1 {
		s := e.open(t, req("x"), admin)
		if i == 0 {
			first = s
		}
		if err := e.r.Close(s.ID, admin); err != nil {
			t.Fatal(err)
		}
	}
	if len(e.r.recent) != recentClosed {
		t.Errorf("recent holds %d, want %d", len(e.r.recent), recentClosed)
	}
	if _, ok := e.r.resolve(1, 1); ok {
		t.Errorf("the oldest closed session %s is still resolvable", first.ID)
	}
	if a, ok := e.r.resolve(1, recentClosed+1); !ok || a.Session.Intent != "x" {
		t.Error("the newest closed session is not resolvable")
	}
}

func TestCloseTeardown(t *testing.T) {
	e := newEnv(t, nil)
	p := e.open(t, req("parent", "10.0.0.0/8", "api.example.com:443"), admin)
	c := e.open(t, v1.OpenRequest{Intent: "child", Scope: []string{"10.1.0.0/16"}, Parent: p.ID}, admin)
	if filepath.Dir(c.Binding.Cgroup) != p.Binding.Cgroup {
		t.Fatalf("child cgroup %s not below %s", c.Binding.Cgroup, p.Binding.Cgroup)
	}
	mark := e.j.len()
	if err := e.r.Close(p.ID, admin); err != nil {
		t.Fatal(err)
	}
	e.k.assertClean(t)
	if live := e.cg.live(t); len(live) != 0 {
		t.Errorf("cgroups left: %v", live)
	}
	if l := e.r.List(Filter{}); len(l) != 0 {
		t.Errorf("listed after close: %v", ids(l))
	}
	// Each session is revoked before its cgroup goes, and freed last.
	ops := writes(e.j.since(mark))
	names := opNames(ops)
	if names[0] != "SetState" || ops[0].State != enforcer.StateRevoked || names[len(names)-1] != "PutSession" {
		t.Errorf("teardown order = %v", names)
	}
	for _, id := range []string{c.ID, p.ID} {
		if got := e.recs.lifecycle(id); !slices.Equal(got, []string{"opened", "closed"}) {
			t.Errorf("%s lifecycle = %v", id, got)
		}
		if rec := e.recs.find(t, id, "closed"); rec.Actor != admin.ID {
			t.Errorf("closed actor = %q", rec.Actor)
		}
	}
	// The child is closed (and recorded) before its parent.
	all := e.recs.all()
	ci := slices.IndexFunc(all, func(r0 audit.Record) bool { return r0.Event == "closed" && r0.Session.ID == c.ID })
	pi := slices.IndexFunc(all, func(r0 audit.Record) bool { return r0.Event == "closed" && r0.Session.ID == p.ID })
	if ci < 0 || pi < 0 || ci > pi {
		t.Errorf("closed records: child at %d, parent at %d", ci, pi)
	}
	if err := e.r.Close(p.ID, admin); !v1.IsNotFound(err) {
		t.Errorf("second close: %v, want not found", err)
	}
}

func TestCloseWaitsForEventSync(t *testing.T) {
	e := newEnv(t, nil)
	s := e.open(t, req("x"), admin)
	synced := false
	e.r.SetEventSync(func() {
		synced = true
		if got := e.recs.lifecycle(s.ID); slices.Contains(got, "closed") {
			t.Error("closed record written before the event sync")
		}
	})
	if err := e.r.Close(s.ID, admin); err != nil {
		t.Fatal(err)
	}
	if !synced {
		t.Error("Close did not call the event sync")
	}
}

func TestCloseAll(t *testing.T) {
	e := newEnv(t, nil)
	p := e.open(t, req("p", "10.0.0.0/8"), admin)
	e.open(t, v1.OpenRequest{Intent: "c", Scope: []string{"10.0.0.0/9"}, Parent: p.ID}, admin)
	e.open(t, req("q"), admin)
	if err := e.r.CloseAll(admin); err != nil {
		t.Fatal(err)
	}
	if l := e.r.List(Filter{}); len(l) != 0 {
		t.Errorf("left after CloseAll: %v", ids(l))
	}
	e.k.assertClean(t)
}

func TestListFilters(t *testing.T) {
	e := newEnv(t, nil)
	a := e.open(t, v1.OpenRequest{Intent: "a", Labels: map[string]string{"team": "red"}, Agent: &v1.Agent{Name: "bot"}}, admin)
	time.Sleep(time.Millisecond)
	b := e.open(t, v1.OpenRequest{Intent: "b", Origin: &v1.Origin{Kind: "schedule", Principal: "cron"}, Parent: a.ID}, admin)
	if got := ids(e.r.List(Filter{})); !slices.Equal(got, sortedIDs(a.ID, b.ID)) {
		t.Errorf("all = %v", got)
	}
	if l := e.r.List(Filter{}); l[0].ID != a.ID {
		t.Errorf("List is not oldest first")
	}
	for name, tc := range map[string]struct {
		f    Filter
		want []string
	}{
		"origin": {Filter{Origin: "schedule"}, []string{b.ID}},
		"agent":  {Filter{Agent: "bot"}, []string{a.ID}},
		"parent": {Filter{Parent: a.ID}, []string{b.ID}},
		"label":  {Filter{Label: "team=red"}, []string{a.ID}},
		"state":  {Filter{State: v1.StateRevoked}, []string{}},
	} {
		if got := ids(e.r.List(tc.f)); !slices.Equal(got, tc.want) {
			t.Errorf("%s: %v, want %v", name, got, tc.want)
		}
	}
}

// TestStateCounts: the metrics' counts agree with the states List reports,
// including a quarantine the kernel applied before its event was handled
// and an expiry not yet reaped.
func TestStateCounts(t *testing.T) {
	e := newEnv(t, nil)
	e.open(t, req("active", "10.0.0.0/8:443"), admin)
	r := e.open(t, req("revoked", "10.0.0.0/8:443"), admin)
	if _, err := e.r.Revoke(r.ID, admin); err != nil {
		t.Fatal(err)
	}
	q := e.entry(t, e.open(t, req("quarantined by the kernel", "10.0.0.0/8:443"), admin).ID)
	if err := e.k.SetState(q.slot, q.gen, enforcer.StateQuarantined); err != nil {
		t.Fatal(err)
	}
	e.open(t, v1.OpenRequest{Intent: "expired", Scope: []string{"10.0.0.0/8:443"}, TTL: "1ms"}, admin)
	time.Sleep(2 * time.Millisecond)

	want := map[v1.State]int{}
	for _, s := range e.r.List(Filter{}) {
		want[s.State]++
	}
	if len(want) != 4 {
		t.Fatalf("List states %v, want one of each", want)
	}
	if got := e.r.StateCounts(); !maps.Equal(got, want) {
		t.Errorf("StateCounts() = %v, List says %v", got, want)
	}
}

// The registry's default is every session the kernel maps hold, which
// config states and enforcer's TestSessionCapacity pins to the maps.
func TestDefaultMaxSessions(t *testing.T) {
	if got := DefaultConfig().MaxSessions; got != config.MaxSessionsLimit {
		t.Errorf("DefaultConfig().MaxSessions = %d, the kernel maps hold %d sessions", got, config.MaxSessionsLimit)
	}
	r := NewRegistry(Config{MaxSessions: config.MaxSessionsLimit + 1}, Deps{})
	if n := len(r.free); n != config.MaxSessionsLimit {
		t.Errorf("a registry asked for more than config allows has %d free slots, want %d", n, config.MaxSessionsLimit)
	}
	// The kernel's own count bounds it too: the fake's maps hold 128
	// slots, slot 0 unused.
	e := newEnv(t, func(c *Config) { c.MaxSessions = 1000 })
	if n := len(e.r.free); n != e.k.Slots()-1 {
		t.Errorf("a registry over a kernel with %d slots has %d free, want %d", e.k.Slots(), n, e.k.Slots()-1)
	}
}
