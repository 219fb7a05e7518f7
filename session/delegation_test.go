package session

import (
	"path/filepath"
	"slices"
	"testing"
	"time"

	v1 "github.com/agentfence/agentfence/api/v1"
)

// delegation is a parent session A opened by an admin, an unrelated session
// B, and an agent caller whose process runs in A's cgroup.
type delegation struct {
	*env
	a, b  v1.Session
	agent Caller
}

func newDelegation(t *testing.T) *delegation {
	e := newEnv(t, nil)
	d := &delegation{env: e}
	d.a = e.open(t, v1.OpenRequest{Intent: "triage", TTL: "1h", Scope: []string{"10.0.0.0/8:1-1000", "api.example.com:443", "*.slack.com:443"}}, admin)
	d.b = e.open(t, req("unrelated", "0.0.0.0/0"), admin)
	d.agent = Caller{ID: "uid:1000", PID: 5000, UID: 1000}
	e.cg.setOf(d.agent.PID, d.a.Binding.Cgroup)
	return d
}

func TestMemberOf(t *testing.T) {
	d := newDelegation(t)
	if id, ok := d.r.MemberOf(d.agent.PID); !ok || id != d.a.ID {
		t.Fatalf("MemberOf(agent) = %q %v, want %s", id, ok, d.a.ID)
	}
	// A process in a cgroup below the session's is a member too.
	d.cg.setOf(5001, filepath.Join(d.a.Binding.Cgroup, "worker", "leaf"))
	if id, ok := d.r.MemberOf(5001); !ok || id != d.a.ID {
		t.Errorf("MemberOf(nested) = %q %v, want %s", id, ok, d.a.ID)
	}
	if _, ok := d.r.MemberOf(admin.PID); ok {
		t.Error("admin is a member")
	}
	if _, ok := d.r.MemberOf(0); ok {
		t.Error("pid 0 is a member")
	}
	// A pid binding wins over the cgroup.
	eb := d.entry(t, d.b.ID)
	d.k.BindPid(5001, eb.slot, eb.gen)
	if id, _ := d.r.MemberOf(5001); id != d.b.ID {
		t.Errorf("MemberOf(pid-bound) = %q, want %s", id, d.b.ID)
	}
	// A stale pid binding (older generation) is ignored.
	d.k.BindPid(5001, eb.slot, eb.gen-1)
	if id, _ := d.r.MemberOf(5001); id != d.a.ID {
		t.Errorf("MemberOf(stale pid binding) = %q, want the cgroup's session %s", id, d.a.ID)
	}
}

func TestDelegatedOpen(t *testing.T) {
	d := newDelegation(t)
	mark := d.j.len()
	c := d.open(t, v1.OpenRequest{Intent: "read one channel", Scope: []string{"10.1.0.0/16:443", "team.slack.com:443"}, TTL: "5m"}, d.agent)
	if c.Parent != d.a.ID {
		t.Errorf("parent = %q, want the caller's session %s", c.Parent, d.a.ID)
	}
	if filepath.Dir(c.Binding.Cgroup) != d.a.Binding.Cgroup {
		t.Errorf("child cgroup %s is not below the parent's %s", c.Binding.Cgroup, d.a.Binding.Cgroup)
	}
	if owner := d.cg.owners[c.Binding.Cgroup]; owner != d.agent.UID {
		t.Errorf("child cgroup owner = %d, want the member's uid %d", owner, d.agent.UID)
	}
	if owner := d.cg.owners[d.a.Binding.Cgroup]; owner != -1 {
		t.Errorf("admin-opened cgroup owner = %d, want -1", owner)
	}
	if c.OpenedBy != d.agent.ID || c.ExpiresAt.Sub(c.CreatedAt) != 5*time.Minute {
		t.Errorf("child = %+v", c)
	}
	if got := opNames(writes(d.j.since(mark))); !slices.Equal(got, []string{"WriteScope", "WriteNames", "PutSession", "cgroups.Create", "BindCgroup"}) {
		// No HookHostnames: the child's cgroup is below its parent's, which
		// is hooked for the parent's hostname rules.
		t.Errorf("child writes = %v", got)
	}

	// An explicit parent that is the caller's own descendant is fine.
	g := d.open(t, v1.OpenRequest{Intent: "grandchild", Scope: []string{"10.1.2.0/24:443"}, Parent: c.ID}, d.agent)
	if g.Parent != c.ID || filepath.Dir(g.Binding.Cgroup) != c.Binding.Cgroup {
		t.Errorf("grandchild = parent %q cgroup %s", g.Parent, g.Binding.Cgroup)
	}
	// An agent-originated child names its parent.
	ag := d.open(t, v1.OpenRequest{Intent: "sub-agent", Origin: &v1.Origin{Kind: "agent", Principal: d.a.ID}}, d.agent)
	if ag.Origin.Kind != "agent" || ag.Parent != d.a.ID {
		t.Errorf("agent-originated child = %+v", ag)
	}
}

func TestDelegatedOpenRejected(t *testing.T) {
	cases := []struct {
		name  string
		req   v1.OpenRequest
		code  v1.Code
		field string
	}{
		{"unrelated parent", v1.OpenRequest{Intent: "x", Parent: "B"}, v1.CodeForbidden, "parent"},
		{"unknown parent", v1.OpenRequest{Intent: "x", Parent: "s-nope"}, v1.CodeForbidden, "parent"},
		{"wider address rule", v1.OpenRequest{Intent: "x", Scope: []string{"10.0.0.0/8:443", "192.168.0.0/16"}}, v1.CodeInvalid, "scope[1]"},
		{"wider port range", v1.OpenRequest{Intent: "x", Scope: []string{"10.0.0.0/8:999-1001"}}, v1.CodeInvalid, "scope[0]"},
		{"whole prefix", v1.OpenRequest{Intent: "x", Scope: []string{"10.1.0.0/16:443", "0.0.0.0/0:443"}}, v1.CodeInvalid, "scope[1]"},
		{"other hostname", v1.OpenRequest{Intent: "x", Scope: []string{"api.example.com:443", "evil.example.com:443"}}, v1.CodeInvalid, "scope[1]"},
		{"address for a hostname", v1.OpenRequest{Intent: "x", Scope: []string{"api.example.com"}}, v1.CodeInvalid, "scope[0]"},
		{"two-label wildcard", v1.OpenRequest{Intent: "x", Scope: []string{"a.b.slack.com:443"}}, v1.CodeInvalid, "scope[0]"},
		{"in: rule under out rules", v1.OpenRequest{Intent: "x", Scope: []string{"10.0.0.0/8:443", "in:10.0.0.0/8:443"}}, v1.CodeInvalid, "scope[1]"},
		{"audit under enforce", v1.OpenRequest{Intent: "x", Mode: "audit", Scope: []string{"10.0.0.0/8:443"}}, v1.CodeInvalid, "mode"},
		{"agent origin naming another session", v1.OpenRequest{Intent: "x", Origin: &v1.Origin{Kind: "agent", Principal: "B"}}, v1.CodeInvalid, "origin.principal"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			d := newDelegation(t)
			if tc.req.Parent == "B" {
				tc.req.Parent = d.b.ID
			}
			if tc.req.Origin != nil && tc.req.Origin.Principal == "B" {
				tc.req.Origin.Principal = d.b.ID
			}
			mark, live := d.j.len(), len(d.cg.live(t))
			_, err := d.r.Open(tc.req, d.agent)
			wantErr(t, err, tc.code, tc.field)
			if w := writes(d.j.since(mark)); len(w) != 0 {
				t.Errorf("rejected Open wrote %v", opNames(w))
			}
			if n := len(d.cg.live(t)); n != live {
				t.Errorf("rejected Open created a cgroup")
			}
			if n := len(d.r.List(Filter{})); n != 2 {
				t.Errorf("%d sessions listed, want 2", n)
			}
		})
	}
}

func TestDelegatedOpenUnderInactiveParent(t *testing.T) {
	d := newDelegation(t)
	if _, err := d.r.Revoke(d.a.ID, admin); err != nil {
		t.Fatal(err)
	}
	_, err := d.r.Open(req("x"), d.agent)
	wantErr(t, err, v1.CodeInvalid, "parent")
}

func TestDelegatedTTLClampedToParent(t *testing.T) {
	d := newDelegation(t)
	c := d.open(t, v1.OpenRequest{Intent: "long", TTL: "20h", Scope: []string{"10.0.0.0/8:80"}}, d.agent)
	if !c.ExpiresAt.Equal(d.a.ExpiresAt) {
		t.Errorf("child expires %s, want the parent's %s", c.ExpiresAt, d.a.ExpiresAt)
	}
	if ttl, err := time.ParseDuration(c.TTL); err != nil || ttl > time.Hour || ttl <= 59*time.Minute {
		t.Errorf("child ttl = %q, want the time left of the parent", c.TTL)
	}
	if ks := d.k.session(d.entry(t, c.ID).slot); ks.ExpiresNS != d.k.session(d.entry(t, d.a.ID).slot).ExpiresNS {
		t.Errorf("kernel expiry %d differs from the parent's", ks.ExpiresNS)
	}
	// A non-member naming the parent is clamped too.
	c2 := d.open(t, v1.OpenRequest{Intent: "long", TTL: "20h", Parent: d.a.ID}, admin)
	if !c2.ExpiresAt.Equal(d.a.ExpiresAt) {
		t.Errorf("admin child expires %s, want %s", c2.ExpiresAt, d.a.ExpiresAt)
	}
}

func TestAuditUnderAuditParent(t *testing.T) {
	e := newEnv(t, nil)
	p := e.open(t, v1.OpenRequest{Intent: "p", Mode: "audit", Scope: []string{"10.0.0.0/8"}}, admin)
	c := e.open(t, v1.OpenRequest{Intent: "c", Mode: "audit", Scope: []string{"10.0.0.0/8"}, Parent: p.ID}, admin)
	if c.Mode != "audit" {
		t.Errorf("mode = %s", c.Mode)
	}
	// Enforce under an audit parent only narrows.
	e.open(t, v1.OpenRequest{Intent: "c", Scope: []string{"10.0.0.0/8"}, Parent: p.ID}, admin)
}

func TestNonMemberOpensAnything(t *testing.T) {
	d := newDelegation(t)
	s := d.open(t, v1.OpenRequest{Intent: "wide", Scope: []string{"0.0.0.0/0", "[::]/0"}, Mode: "audit", TTL: "24h"}, admin)
	if s.Parent != "" {
		t.Errorf("non-member got parent %q", s.Parent)
	}
	remote := Caller{ID: "spiffe://example.org/ci", PID: 0, UID: -1}
	if s := d.open(t, req("remote", "1.1.1.1"), remote); s.Parent != "" {
		t.Errorf("remote caller got parent %q", s.Parent)
	}
}

func TestMemberActsOnlyOnItsSubtree(t *testing.T) {
	d := newDelegation(t)
	child := d.open(t, v1.OpenRequest{Intent: "child", Scope: []string{"10.1.0.0/16:443", "api.example.com:443"}}, d.agent)
	bChild := d.open(t, v1.OpenRequest{Intent: "b's child", Scope: []string{"1.1.1.1"}, Parent: d.b.ID}, admin)

	for _, id := range []string{d.b.ID, bChild.ID} {
		mark := d.j.len()
		_, err := d.r.Get(id, d.agent)
		wantErr(t, err, v1.CodeForbidden, "id")
		_, err = d.r.Narrow(id, v1.NarrowRequest{Scope: []string{"1.1.1.1:53"}}, d.agent)
		wantErr(t, err, v1.CodeForbidden, "id")
		_, err = d.r.Revoke(id, d.agent)
		wantErr(t, err, v1.CodeForbidden, "id")
		wantErr(t, d.r.Close(id, d.agent), v1.CodeForbidden, "id")
		_, err = d.r.Bind(id, v1.BindRequest{PID: 1}, d.agent)
		wantErr(t, err, v1.CodeForbidden, "id")
		if w := writes(d.j.since(mark)); len(w) != 0 {
			t.Errorf("forbidden calls on %s wrote %v", id, opNames(w))
		}
	}
	if s := d.get(t, d.b.ID); s.State != v1.StateActive || s.Scope[0] != "0.0.0.0/0" {
		t.Errorf("sibling changed: %+v", s)
	}
	_, err := d.r.Get("s-nope", d.agent)
	wantErr(t, err, v1.CodeNotFound, "id")

	// Its own session and its children it may act on.
	if _, err := d.r.Get(d.a.ID, d.agent); err != nil {
		t.Errorf("Get own: %v", err)
	}
	if s, err := d.r.Narrow(child.ID, v1.NarrowRequest{Scope: []string{"10.1.1.0/24:443"}}, d.agent); err != nil || s.Scope[0] != "10.1.1.0/24:443" {
		t.Errorf("Narrow child: %v %v", s.Scope, err)
	}
	if s, err := d.r.Narrow(d.a.ID, v1.NarrowRequest{Scope: []string{"10.0.0.0/8:443", "api.example.com:443"}}, d.agent); err != nil || len(s.Scope) != 2 {
		t.Errorf("Narrow own: %v %v", s.Scope, err)
	}

	// A member of the child (the deepest session cgroup) may not act on
	// the parent.
	inner := Caller{ID: "uid:1001", PID: 6000, UID: 1001}
	d.cg.setOf(inner.PID, filepath.Join(child.Binding.Cgroup, "sub"))
	_, err = d.r.Get(d.a.ID, inner)
	wantErr(t, err, v1.CodeForbidden, "id")
	_, err = d.r.Open(v1.OpenRequest{Intent: "x", Parent: d.a.ID}, inner)
	wantErr(t, err, v1.CodeForbidden, "parent")
	if got := ids(d.r.List(Filter{Caller: &inner})); !slices.Equal(got, []string{child.ID}) {
		t.Errorf("child member lists %v, want only %s", got, child.ID)
	}

	if _, err := d.r.Revoke(child.ID, d.agent); err != nil {
		t.Errorf("Revoke child: %v", err)
	}
	if err := d.r.Close(child.ID, d.agent); err != nil {
		t.Errorf("Close child: %v", err)
	}
}

func TestListForMember(t *testing.T) {
	d := newDelegation(t)
	c := d.open(t, v1.OpenRequest{Intent: "child", Scope: []string{"10.1.0.0/16:443"}}, d.agent)
	g := d.open(t, v1.OpenRequest{Intent: "grandchild", Parent: c.ID}, d.agent)
	d.open(t, v1.OpenRequest{Intent: "b's child", Parent: d.b.ID}, admin)
	if got, want := ids(d.r.List(Filter{Caller: &d.agent})), sortedIDs(d.a.ID, c.ID, g.ID); !slices.Equal(got, want) {
		t.Errorf("member lists %v, want %v", got, want)
	}
	if got := ids(d.r.List(Filter{Caller: &admin})); len(got) != 5 {
		t.Errorf("admin lists %d sessions, want 5", len(got))
	}
	if got := ids(d.r.List(Filter{Caller: &d.agent, Parent: d.b.ID})); len(got) != 0 {
		t.Errorf("member sees b's children: %v", got)
	}
}
