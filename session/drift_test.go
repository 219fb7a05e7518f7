package session

import (
	"testing"

	v1 "github.com/agentfence/agentfence/api/v1"
	"github.com/agentfence/agentfence/audit"
	"github.com/agentfence/agentfence/config"
	"github.com/agentfence/agentfence/enforcer"
)

func outcomeRecord(s v1.Session, kind, verdict, reason string) audit.Record {
	return audit.Record{Kind: kind, Session: &audit.Session{ID: s.ID},
		Outcome: &audit.Outcome{Verdict: verdict, Reason: reason}}
}

// A flagged credential counts against the violation budget as a denial
// does: the session shows it among its violations, and once the kernel's
// count and the flagged calls together pass the budget the session is
// quarantined, whichever of the two came last. The count survives a
// restart.
func TestDriftCountsFlaggedCredentials(t *testing.T) {
	e := stateEnv(t)
	e.cfg.ViolationBudget = 3
	e.r = e.registry(e.k)
	s := e.open(t, req("x", "essential,udp://10.0.0.53:53", "0.0.0.0/0"), admin)
	en := e.entry(t, s.ID)
	flagged := outcomeRecord(s, audit.KindHTTP, audit.VerdictFlagged, audit.ReasonCredentialOutsideHolder)

	// Records that are no violation, or that the kernel counted while no
	// credential was flagged, leave everything as it was.
	mark := e.j.len()
	e.r.Drift(outcomeRecord(s, audit.KindConnect, audit.VerdictDenied, "no_rule"))
	e.r.Drift(outcomeRecord(s, audit.KindHTTP, audit.VerdictAllowed, ""))
	if got := e.get(t, s.ID); got.Violations != 0 || len(writes(e.j.since(mark))) != 0 {
		t.Fatalf("violations %d, writes %v", got.Violations, opNames(writes(e.j.since(mark))))
	}

	e.r.Drift(flagged)
	e.r.Drift(flagged)
	if got := e.get(t, s.ID); got.Violations != 2 || got.State != v1.StateActive {
		t.Fatalf("after two flagged calls: %d violations, %s", got.Violations, got.State)
	}
	// The kernel counted two denials: 4 > 3, found when the next denial's
	// record comes.
	ks := e.k.session(en.slot)
	ks.Violations = 2
	e.k.sessions[en.slot] = ks
	e.r.Drift(outcomeRecord(s, audit.KindConnect, audit.VerdictDenied, "no_rule"))
	if got := e.get(t, s.ID); got.State != v1.StateQuarantined || got.Violations != 4 {
		t.Fatalf("over the budget: %s with %d violations", got.State, got.Violations)
	}
	if e.k.session(en.slot).State != enforcer.StateQuarantined {
		t.Error("the kernel's session is not quarantined")
	}
	if rec := e.recs.find(t, s.ID, "quarantined"); rec.Actor != "agentfenced" || rec.Outcome.Reason != "more than 3 violations" {
		t.Errorf("quarantined record = %+v", rec)
	}
	// Quarantined already: further flags change nothing.
	e.r.Drift(flagged)
	if got := e.get(t, s.ID); got.Violations != 4 {
		t.Errorf("a quarantined session counted on: %d", got.Violations)
	}

	// Restarted, the daemon remembers the flagged calls.
	r2 := e.registry(e.k)
	if _, _, err := r2.Restore(); err != nil {
		t.Fatal(err)
	}
	if got, err := r2.Get(s.ID, admin); err != nil || got.Violations != 4 {
		t.Errorf("after restart: %d violations, %v", got.Violations, err)
	}
}

// With the flagged call last: the budget is checked on the flag itself.
// With drift action none, nothing is quarantined.
func TestDriftFlagLast(t *testing.T) {
	for _, action := range []string{"quarantine", "none"} {
		e := newEnv(t, func(c *Config) { c.ViolationBudget = 1; c.DriftAction = config.DriftAction(action) })
		s := e.open(t, req("x", "0.0.0.0/0"), admin)
		en := e.entry(t, s.ID)
		ks := e.k.session(en.slot)
		ks.Violations = 1
		e.k.sessions[en.slot] = ks
		e.r.Drift(outcomeRecord(s, audit.KindHTTP, audit.VerdictFlagged, audit.ReasonCredentialUnregistered))
		want := v1.StateQuarantined
		if action == "none" {
			want = v1.StateActive
		}
		if got := e.get(t, s.ID); got.State != want || got.Violations != 2 {
			t.Errorf("drift action %s: %s with %d violations, want %s", action, got.State, got.Violations, want)
		}
	}
}
