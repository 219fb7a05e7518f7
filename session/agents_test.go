package session

import (
	"testing"

	v1 "github.com/agentfence/agentfence/api/v1"
	"github.com/agentfence/agentfence/audit"
)

// TestRetireAgent: retiring an agent revokes each of its sessions (children
// with them) and no other, records the retirement once with its actor, and
// refuses the agent's new sessions, after a restart too.
func TestRetireAgent(t *testing.T) {
	e := stateEnv(t)
	x := &v1.Agent{ID: "spiffe://example.org/agent/x", Name: "x", Version: "1.0", Owner: "team-a"}
	withAgent := func(intent string, a *v1.Agent) v1.OpenRequest {
		r := req(intent, "10.0.0.0/8")
		r.Agent = a
		return r
	}
	a1 := e.open(t, withAgent("a1", x), admin)
	a2 := e.open(t, withAgent("a2", x), admin)
	b := e.open(t, withAgent("b", &v1.Agent{ID: "spiffe://example.org/agent/y"}), admin)
	none := e.open(t, req("none", "10.0.0.0/8"), admin)

	_, err := e.r.RetireAgent(audit.Agent{Name: "x"}, "alice", "")
	wantErr(t, err, v1.CodeInvalid, "agent.id")

	n, err := e.r.RetireAgent(audit.Agent{ID: x.ID, Name: "x", Owner: "team-a"}, "alice", "end of life")
	if err != nil || n != 2 {
		t.Fatalf("retire: %d, %v", n, err)
	}
	for id, want := range map[string]v1.State{a1.ID: v1.StateRevoked, a2.ID: v1.StateRevoked, b.ID: v1.StateActive, none.ID: v1.StateActive} {
		if got := e.get(t, id).State; got != want {
			t.Errorf("session %s: %s, want %s", id, got, want)
		}
	}
	var agentRecs []audit.Record
	for _, r := range e.recs.all() {
		if r.Kind == audit.KindAgent {
			agentRecs = append(agentRecs, r)
		}
	}
	if len(agentRecs) != 1 || agentRecs[0].Event != "retired" || agentRecs[0].Actor != "alice" || agentRecs[0].Agent.ID != x.ID ||
		agentRecs[0].Outcome == nil || agentRecs[0].Outcome.Reason != "end of life" {
		t.Errorf("agent records %+v", agentRecs)
	}
	if r := e.recs.find(t, a1.ID, "revoked"); r.Actor != "alice" || r.Outcome.Reason != "agent retired" {
		t.Errorf("revoked record %+v %+v", r, r.Outcome)
	}

	mark := e.j.len()
	_, err = e.r.Open(withAgent("again", x), admin)
	wantErr(t, err, v1.CodeForbidden, "agent.id")
	if w := writes(e.j.since(mark)); len(w) != 0 {
		t.Errorf("a refused open wrote %v", opNames(w))
	}
	recs := len(e.recs.all())
	if n, err := e.r.RetireAgent(audit.Agent{ID: x.ID}, "bob", ""); n != 0 || err != nil || len(e.recs.all()) != recs {
		t.Errorf("retiring again: %d, %v, %d new records", n, err, len(e.recs.all())-recs)
	}

	r2 := e.registry(e.k)
	if _, _, err := r2.Restore(); err != nil {
		t.Fatal(err)
	}
	_, err = r2.Open(withAgent("after restart", x), admin)
	wantErr(t, err, v1.CodeForbidden, "agent.id")
	if _, err := r2.Open(withAgent("other agent", &v1.Agent{ID: "spiffe://example.org/agent/y"}), admin); err != nil {
		t.Errorf("another agent's session after restart: %v", err)
	}
}
