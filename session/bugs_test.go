package session

// Regression tests for bugs the first unit tests found in the registry.

import (
	"os"
	"testing"
	"time"

	v1 "github.com/agentfence/agentfence/api/v1"
	"github.com/agentfence/agentfence/internal/boottime"
)

// registry.go Bind: the conflict check (the pid's session m != e) runs
// before the "a member may only move its own processes into a narrower
// session" check, so the move it describes is always a conflict.
func TestBugMemberMovesOwnProcessIntoChild(t *testing.T) {
	e := newEnv(t, nil)
	a := e.open(t, req("a", "10.0.0.0/8"), admin)
	c := e.open(t, v1.OpenRequest{Intent: "c", Scope: []string{"10.1.0.0/16"}, Parent: a.ID}, admin)
	self := os.Getpid()
	e.cg.setOf(self, a.Binding.Cgroup)
	m := Caller{ID: "m", PID: self, UID: 1000}
	if _, err := e.r.Bind(c.ID, v1.BindRequest{PID: uint32(self)}, m); err != nil {
		t.Fatalf("member moving its own process into its child: %v", err)
	}
	if id, _ := e.r.MemberOf(self); id != c.ID {
		t.Errorf("process is in %s, want the child %s", id, c.ID)
	}
}

// registry.go allows: an address-less (hostname) rule makes allows return
// true for every connection, whatever its address, port or protocol.
func TestBugNarrowKeepsEverythingWithAHostnameRule(t *testing.T) {
	e := newEnv(t, nil)
	s := e.open(t, req("x", "10.0.0.0/8", "api.example.com:443"), admin)
	sk := e.sk.n()
	if _, err := e.r.Narrow(s.ID, v1.NarrowRequest{Scope: []string{"api.example.com:443"}}, admin); err != nil {
		t.Fatal(err)
	}
	match := e.sk.callsSince(sk)[0].match
	for _, c := range []Conn{conn(1, "tcp", "10.0.0.5:22"), conn(1, "udp", "10.0.0.5:443")} {
		if !match(c) {
			t.Errorf("%v is kept; no rule of [api.example.com:443] can admit port %d/%s", c, c.Remote.Port(), c.Proto)
		}
	}
}

func TestBugQuarantineKeepsEverythingWithAnEssentialHostname(t *testing.T) {
	e := newEnv(t, nil)
	s := e.open(t, req("x", "0.0.0.0/0", "essential,tcp://updates.example.com:443"), admin)
	en := e.entry(t, s.ID)
	sk := e.sk.n()
	e.r.Quarantined(en.slot, en.gen)
	if match := e.sk.callsSince(sk)[0].match; !match(conn(1, "tcp", "1.1.1.1:22")) {
		t.Error("1.1.1.1:22 kept by the essential rule tcp://updates.example.com:443")
	}
}

// registry.go Reap: only sessions with no parent are closed, so an expired
// or revoked child of a live parent keeps its slot until the parent closes.
func TestBugReapNeverClosesChildren(t *testing.T) {
	e := newEnv(t, nil)
	p := e.open(t, req("p", "10.0.0.0/8"), admin)
	c := e.open(t, v1.OpenRequest{Intent: "c", TTL: "1m", Parent: p.ID}, admin)
	r := e.open(t, v1.OpenRequest{Intent: "r", Parent: p.ID}, admin)
	if _, err := e.r.Revoke(r.ID, admin); err != nil {
		t.Fatal(err)
	}
	e.r.Reap(c.ExpiresAt.Add(time.Second))
	for _, id := range []string{c.ID, r.ID} {
		if _, err := e.r.Get(id, admin); !v1.IsNotFound(err) {
			t.Errorf("child %s without members not reaped: %v", id, err)
		}
	}
}

// registry.go Reap: members(e) counts only the root's own members, but
// teardown closes the descendants too, removing their pid bindings.
func TestBugReapClosesDescendantsThatHaveMembers(t *testing.T) {
	e := newEnv(t, nil)
	p := e.open(t, req("p", "10.0.0.0/8"), admin)
	c := e.open(t, v1.OpenRequest{Intent: "c", Parent: p.ID}, admin)
	self := uint32(os.Getpid())
	if _, err := e.r.Bind(c.ID, v1.BindRequest{PID: self}, admin); err != nil {
		t.Fatal(err)
	}
	if _, err := e.r.Revoke(p.ID, admin); err != nil {
		t.Fatal(err)
	}
	e.r.Reap(time.Now())
	if _, ok := e.k.pids[self]; !ok {
		t.Error("the member of the revoked child lost its pid binding (it now runs unconfined)")
	}
	if _, err := e.r.Get(c.ID, admin); err != nil {
		t.Errorf("child with a member reaped: %v", err)
	}
}

// registry.go Reap: the state file is written only when something closed,
// so an expiry is lost on restart (and recorded and acted on again).
func TestBugReapDoesNotPersistExpiry(t *testing.T) {
	e := stateEnv(t)
	s := e.open(t, v1.OpenRequest{Intent: "x", TTL: "1m"}, admin)
	e.cg.setProcs(s.Binding.Cgroup, 300)
	e.r.Reap(s.ExpiresAt.Add(time.Second))
	if st := readState(t, e.cfg.StateFile); st.Sessions[0].State != v1.StateExpired {
		t.Errorf("persisted state %q, want expired", st.Sessions[0].State)
	}
}

// state.go Restore: a session the kernel lost is rewritten at the kernel
// slot's generation + 1, which after the kernel lost its maps is 1, not a
// generation newer than the one the session had.
func TestBugRestoreRewriteReusesGeneration(t *testing.T) {
	e := stateEnv(t)
	for range 2 {
		s := e.open(t, req("churn"), admin)
		if err := e.r.Close(s.ID, admin); err != nil {
			t.Fatal(err)
		}
	}
	a := e.open(t, req("a", "10.0.0.0/8"), admin)
	old := e.entry(t, a.ID).gen // 3
	r2 := e.registry(newFakeKernel(&journal{}))
	if _, rewritten, err := r2.Restore(); err != nil || rewritten != 1 {
		t.Fatalf("Restore: %d %v", rewritten, err)
	}
	e.r = r2
	if gen := e.entry(t, a.ID).gen; gen <= old {
		t.Errorf("rewritten at gen %d, not newer than its old gen %d", gen, old)
	}
}

// clock.go Boot: a wall time before this boot underflows to a huge uint64;
// Restore rewrites such an expiry as practically never.
func TestBugRestoreExpiryBeforeBoot(t *testing.T) {
	e := stateEnv(t)
	a := e.open(t, req("a", "10.0.0.0/8"), admin)
	st := readState(t, e.cfg.StateFile)
	st.Sessions[0].ExpiresAt = e.clock.Wall(0).Add(-time.Hour) // expired before this boot
	writeState(t, e.cfg.StateFile, st)
	k2 := newFakeKernel(&journal{})
	r2 := e.registry(k2)
	if _, rewritten, err := r2.Restore(); err != nil || rewritten != 1 {
		t.Fatalf("Restore: %d %v", rewritten, err)
	}
	e.r = r2
	if ns := k2.session(e.entry(t, a.ID).slot).ExpiresNS; ns > boottime.Now() {
		t.Errorf("kernel expiry %d is in the future (now %d) for a session that expired before boot", ns, boottime.Now())
	}
}

// registry.go authorize/Close: docs/sessions.md lets members "narrow or
// revoke their own session and its descendants, and close descendants",
// but authorize admits a member's own session for Close too. A pid-bound
// member that closes its own session is not killed (only the cgroup is):
// its binding is removed and it runs unconfined.
func TestBugMemberClosesOwnSession(t *testing.T) {
	e := newEnv(t, nil)
	a := e.open(t, req("a", "10.0.0.0/8"), admin)
	self := uint32(os.Getpid())
	if _, err := e.r.Bind(a.ID, v1.BindRequest{PID: self}, admin); err != nil {
		t.Fatal(err)
	}
	m := Caller{ID: "m", PID: int(self), UID: 1000}
	wantErr(t, e.r.Close(a.ID, m), v1.CodeForbidden, "id")
	if _, ok := e.k.pids[self]; !ok {
		t.Error("the member's pid binding is gone: it runs unconfined")
	}
}
