package session

import (
	"slices"

	v1 "github.com/agentfence/agentfence/api/v1"
	"github.com/agentfence/agentfence/audit"
)

// NoteUncovered adds the executable of a tls_uncovered record to its
// session's list, once, so that `session show` says which of a session's
// calls the http records cannot include. Other records are ignored.
func (r *Registry) NoteUncovered(rec audit.Record) {
	if rec.Kind != audit.KindTLSUncovered || rec.Session == nil || rec.Process == nil || rec.TLS == nil {
		return
	}
	u := v1.TLSUncovered{Exe: rec.Process.Exe, Library: rec.TLS.Library, Reason: rec.TLS.Uncovered, Time: rec.Time}
	r.begin()
	defer r.end()
	e := r.byID[rec.Session.ID]
	if e == nil || e.closed || len(e.TLSUncovered) >= v1.MaxTLSUncovered ||
		slices.ContainsFunc(e.TLSUncovered, func(o v1.TLSUncovered) bool { return o.Exe == u.Exe }) {
		return
	}
	r.write(func() { e.TLSUncovered = append(e.TLSUncovered, u) })
	r.touch(e)
	r.persist()
}
