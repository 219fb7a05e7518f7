package sink

import (
	"hash/maphash"
	"sync/atomic"

	"github.com/agentfence/agentfence/audit"
)

// A process's argv and ancestry are the largest part of a record, and they
// are the same on every record of the process. Schema 2 writes them once
// per process and sink: a record carries them when some sink that takes it
// has not had them for its pid (or had others: it exec'd, or the pid was
// reused), and leaves them out when every such sink has (docs/audit.md,
// "Process details"). Exec and mcp records, which are about the command
// line, always carry them. The line is one for every sink, so a sink that
// had them may get them again; one that never had them always does.

// described is what a sink has had of processes' details: their hash by
// pid. Its map is owned by emit (under emitMu); the writer sets forget when
// the sink loses records, which may have been the ones with the details.
type described struct {
	byPID  map[uint32]uint64
	forget atomic.Bool
}

// maxDescribed bounds a sink's map (about 40 bytes an entry); when it is
// full it starts over, which only costs records that carry details again.
const maxDescribed = 1 << 14

// detailed reports whether the details of r's process go on the record,
// and notes them as had by every sink that takes r (takes, in p.sinks'
// order).
func (p *Pipeline) detailed(r *audit.Record, takes []bool) bool {
	pr := r.Process
	var h maphash.Hash
	h.SetSeed(p.seed)
	for _, list := range [2][]string{pr.Argv, pr.Ancestry} {
		for _, s := range list {
			h.WriteString(s)
			h.WriteByte(0)
		}
		h.WriteByte(1)
	}
	sum := h.Sum64()
	full := false
	for i, s := range p.sinks {
		if !takes[i] {
			continue
		}
		d := &s.described
		if d.forget.Swap(false) || len(d.byPID) >= maxDescribed {
			clear(d.byPID)
		}
		if d.byPID[pr.PID] != sum {
			d.byPID[pr.PID] = sum
			full = true
		}
	}
	return full || r.Kind == audit.KindExec || r.Kind == audit.KindMCP
}

// slim leaves r's process details out unless a sink needs them. r's
// Process may be shared with the caller: it is copied into it, not
// changed.
func (p *Pipeline) slim(r *audit.Record, it *item) {
	if r.Process == nil || len(r.Process.Argv)+len(r.Process.Ancestry) == 0 || p.detailed(r, it.takes) {
		return
	}
	it.proc = *r.Process
	it.proc.Argv, it.proc.Ancestry = nil, nil
	r.Process = &it.proc
}
