package session

import (
	v1 "github.com/agentfence/agentfence/api/v1"
	"github.com/agentfence/agentfence/audit"
	"github.com/agentfence/agentfence/config"
	"github.com/agentfence/agentfence/enforcer"
)

// Drift counts rec against its session's violation budget when it is a
// violation only user space sees: an http record flagged for its
// credential (credential_outside_holder, credential_unregistered), known
// once the call is parsed. The session is quarantined, as the kernel would,
// once the kernel's count and these together exceed the budget.
//
// The kernel compares its own count alone, so a violation it counted (a
// denial, an escape) is checked here too for a session with flagged
// credentials; its drift action then follows the record by the pipeline's
// delay instead of at once.
func (r *Registry) Drift(rec audit.Record) {
	if rec.Session == nil || rec.Outcome == nil {
		return
	}
	credential := rec.Kind == audit.KindHTTP && rec.Outcome.Verdict == audit.VerdictFlagged
	if !credential {
		switch rec.Outcome.Verdict {
		case audit.VerdictDenied, audit.VerdictWouldDeny, audit.VerdictFlagged:
		default:
			return
		}
		r.mu.RLock()
		e := r.byID[rec.Session.ID]
		none := e == nil || e.flagged == 0
		r.mu.RUnlock()
		if none {
			return // the kernel's own check is the whole check
		}
	}
	r.begin()
	defer r.end()
	e := r.byID[rec.Session.ID]
	if e == nil || e.closed || e.State != v1.StateActive {
		return
	}
	if credential {
		r.write(func() { e.flagged++ })
		r.touch(e)
		defer r.persist()
	}
	st, err := r.kernel.Session(e.slot)
	if err != nil || st.Gen != e.gen || st.State != enforcer.StateActive ||
		r.cfg.DriftAction == config.DriftNone || st.Violations+e.flagged <= r.cfg.ViolationBudget {
		return // a quarantine by the kernel comes with its own event
	}
	if err := r.kernel.SetState(e.slot, e.gen, enforcer.StateQuarantined); err != nil {
		r.log.Error("quarantine on flagged credentials", "session", e.ID, "err", err)
		return
	}
	r.quarantined(e, "agentfenced")
}
