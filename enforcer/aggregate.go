package enforcer

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
)

// Repeats of an allowed connect or send, the same session, process,
// destination, protocol and rule, are counted in the kernel instead of
// each becoming an event (bpf/gate.c, aggregated): the first of a window is
// emitted at once, and FlushRepeats turns the rest into one Event whose
// Count says how many decisions it stands for.

// FlushRepeats ends the current window and hands what the kernel counted
// in it to emit, one Event per key with at least one repeat. It swaps the
// map the programs count into and waits for every program running to
// finish before it reads the one left, so no count is lost or read twice.
// synced, if not nil, is called between the swap and the reading: a
// caller that waits there for its ring reader has emitted each key's first
// decision before its repeats. Called once per window by one goroutine. A
// gate loaded without aggregation counts nothing, but pins it adopted may
// hold what the gate before it counted.
func (g *Gate) FlushRepeats(synced func(), emit func(Event)) error {
	inner := [2]*ebpf.Map{g.objs.AggA, g.objs.AggB}
	cur := g.aggCurrent
	next := cur ^ 1
	if err := g.objs.AggCurrent.Set(next); err != nil {
		return fmt.Errorf("enforcer: swap the repeat maps: %w", err)
	}
	// The kernel waits, on an update of a map of maps, for every program
	// running to finish (synchronize_rcu): those that read agg_current
	// before the swap are done counting into inner[cur] once it returns.
	if err := g.objs.AggMaps.Update(next, inner[next], ebpf.UpdateAny); err != nil {
		return fmt.Errorf("enforcer: wait for the programs counting repeats: %w", err)
	}
	g.aggCurrent = next
	if synced != nil {
		synced()
	}
	return drainRepeats(inner[cur], emit)
}

// drainRepeats empties m, which no program writes any more, and emits its
// repeats.
func drainRepeats(m *ebpf.Map, emit func(Event)) error {
	keys := make([]gateAggKey, batchSize)
	vals := make([]gateAggVal, batchSize)
	var cursor ebpf.MapBatchCursor
	for {
		n, err := m.BatchLookupAndDelete(&cursor, keys, vals, nil)
		for i := range n {
			if vals[i].Count > 0 {
				emit(repeatEvent(&keys[i], &vals[i]))
			}
		}
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("enforcer: read the repeats: %w", err)
		}
	}
}

// repeatEvent is the Event of a key's repeats: timed by the first and
// the latest, otherwise as the decision emitted before them.
func repeatEvent(k *gateAggKey, v *gateAggVal) Event {
	return Event{
		BootNS: v.FirstNs, LastNS: v.LastNs, Count: v.Count,
		CgroupID: k.CgroupId, Slot: k.SessionSlot, Gen: k.SessionGen,
		PID: k.Pid, TID: v.Tid, UID: v.Uid, GID: v.Gid, Comm: cString(v.Comm[:]),
		Hook: Hook(k.Hook), Verdict: VerdictAllowed, Reason: ReasonRule, Protocol: k.Protocol,
		Dest:     addrPort(k.Family, k.Addr, k.Port),
		Rule:     ruleIndex(k.Rule),
		ViaName:  v.NameFlags&uint32(gateAfEventNameFlagAF_EVENT_VIA_NAME) != 0,
		NameHash: k.NameHash,
	}
}
