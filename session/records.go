package session

import (
	"maps"
	"slices"
	"sync"
	"time"

	v1 "github.com/agentfence/agentfence/api/v1"
	"github.com/agentfence/agentfence/audit"
	"github.com/agentfence/agentfence/internal/boottime"
)

// outbox hands the records changes make to Emit, in the order they were
// made, without holding a lock across Emit (which blocks while the audit
// queue is full). A change queues its records; whoever finishes a change
// first delivers everything queued, later changes' records included, and
// the others wait until theirs are out: a change's records reach the trail
// before its caller goes on, so the event reader's next record cannot
// overtake a "quarantined" and an agent's first connect cannot overtake its
// session's "opened".
type outbox struct {
	emit func(audit.Record)

	mu         sync.Mutex // guards the fields below; never held across emit
	delivered  sync.Cond  // broadcast after each batch
	queue      []audit.Record
	spare      []audit.Record // the last batch's array, reused for the next queue
	queued     uint64         // records ever queued
	done       uint64         // records ever delivered
	delivering bool
}

func (o *outbox) add(rec audit.Record) {
	o.mu.Lock()
	o.queue = append(o.queue, rec)
	o.queued++
	o.mu.Unlock()
}

// flush returns once every record queued before the call is delivered.
func (o *outbox) flush() {
	o.mu.Lock()
	defer o.mu.Unlock()
	for target := o.queued; o.done < target; {
		if o.delivering {
			o.delivered.Wait()
			continue
		}
		o.deliverBatch()
	}
}

// deliverBatch emits the queue with o.mu released. The deferred bookkeeping
// runs even if emit panics, so one bad record cannot wedge every change
// after it.
func (o *outbox) deliverBatch() {
	o.delivering = true
	batch := o.queue
	o.queue = o.spare[:0]
	o.mu.Unlock()
	defer func() {
		clear(batch) // the records are the sink's now
		o.mu.Lock()
		o.spare = batch
		o.done += uint64(len(batch))
		o.delivering = false
		o.delivered.Broadcast()
	}()
	for _, rec := range batch {
		o.emit(rec)
	}
}

// begin starts a change (see Registry.turn); end finishes it and delivers
// its records.
func (r *Registry) begin() { r.turn.Lock() }

func (r *Registry) end() {
	r.turn.Unlock()
	r.out.flush()
}

// write makes a change's write to the index or an entry visible to the
// readers (see Registry.mu).
func (r *Registry) write(f func()) {
	r.mu.Lock()
	f()
	r.version++ // the cached attributions are stale (resolve)
	r.mu.Unlock()
}

func (r *Registry) now() time.Time { return r.clock.Wall(boottime.Now()) }

func baseRecord(e *entry, t time.Time, kind string) audit.Record {
	a := e.attribution()
	return audit.Record{Schema: audit.SchemaVersion, Time: t, Kind: kind, Session: &a.Session, Origin: a.Origin, Agent: a.Agent, MCP: a.MCP}
}

// lifecycle queues a session record; the change that calls it delivers it.
func (r *Registry) lifecycle(e *entry, event, actor, reason string) {
	rec := baseRecord(e, r.now(), audit.KindSession)
	rec.Event, rec.Actor = event, actor
	rec.Session.KeptCaps = e.KeptCaps // never changed in place
	rec.Session.GateCaps = auditCaps(e.Binding.GateCaps)
	rec.Session.DNS = string(e.dnsMode())
	rec.Session.Credentials = string(e.credentialsMode())
	if reason != "" {
		rec.Outcome = &audit.Outcome{Reason: reason}
	}
	r.out.add(rec)
}

func auditCaps(held []v1.HeldCaps) []audit.HeldCaps {
	if len(held) == 0 {
		return nil
	}
	out := make([]audit.HeldCaps, len(held))
	for i, h := range held {
		out[i] = audit.HeldCaps{PID: h.PID, Caps: h.Caps}
	}
	return out
}

// public is the session as callers see it. Its scope texts are rendered
// from the rules here rather than kept beside them (~90 bytes a session).
func (e *entry) public() v1.Session {
	s := e.Session
	s.Scope = texts(e.rules)
	s.Labels = maps.Clone(e.Labels)
	s.KeptCaps = slices.Clone(e.KeptCaps)
	s.Binding.PIDs = slices.Clone(e.Binding.PIDs)
	s.Binding.GateCaps = slices.Clone(e.Binding.GateCaps)
	s.TLSUncovered = slices.Clone(e.TLSUncovered)
	if e.Agent != nil {
		a := *e.Agent
		s.Agent = &a
	}
	return s
}
