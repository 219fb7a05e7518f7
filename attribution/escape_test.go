package attribution

import (
	"context"
	"slices"
	"testing"

	"github.com/agentfence/agentfence/audit"
	"github.com/agentfence/agentfence/enforcer"
	"github.com/agentfence/agentfence/sensor"
	"github.com/agentfence/agentfence/sensor/proccache"
)

// cgroupNames is a process cache that knows only cgroup paths.
type cgroupNames map[uint64]string

func (cgroupNames) LookupWait(context.Context, uint32, uint64) (proccache.Process, bool) {
	return proccache.Process{}, false
}
func (cgroupNames) WaitFor(context.Context, uint64) bool { return true }
func (c cgroupNames) CgroupPath(id uint64) (string, bool) {
	p, ok := c[id]
	return p, ok
}

// TestEscapeRecord: an escape reported on the gate's ring becomes a
// flagged escape record of the member's session, naming what was tried,
// where to and by whom; the session's hostname programs move to the root,
// where the member's packets pass now, and closing the session kills the
// member outside its cgroup.
func TestEscapeRecord(t *testing.T) {
	e := newEnv(t, nil)
	s := e.open(t, OpenRequest{Intent: "sync", Scope: []string{"tcp://127.0.0.1:8080", "api.example.com:443"}}, admin)
	en := e.entry(t, s.ID)
	// What the process programs do in the kernel: the member is bound by
	// pid, so it is still found after it left the cgroup.
	const member, mover = 4242, 77
	if err := e.k.BindPid(member, en.slot, en.gen); err != nil {
		t.Fatal(err)
	}
	j := &Joiner{Registry: e.r, Clock: e.clock, Processes: cgroupNames{1: "/"}}
	base := enforcer.Event{BootNS: BootNS(), CgroupID: 1, Slot: en.slot, Gen: en.gen, PID: member, TID: member,
		UID: 0, Comm: "sh", Hook: enforcer.Hook(sensor.HookEscape), Reason: enforcer.Reason(sensor.EscapeCgroupMove),
		NameHash: member, Rule: enforcer.NoRule}

	rec := j.Record(base)
	if rec.Kind != audit.KindEscape || rec.Session == nil || rec.Session.ID != s.ID || rec.Destination != nil {
		t.Fatalf("record: %+v", rec)
	}
	if *rec.Escape != (audit.Escape{What: "cgroup_move", Cgroup: "/", CgroupID: 1}) {
		t.Errorf("escape = %+v", rec.Escape)
	}
	if *rec.Outcome != (audit.Outcome{Verdict: audit.VerdictFlagged, Reason: "still_member"}) {
		t.Errorf("outcome = %+v", rec.Outcome)
	}
	if p := rec.Process; p.PID != member || p.Comm != "sh" {
		t.Errorf("process = %+v", p)
	}
	if e.k.hooks[e.cfg.CgroupRoot] != 1 {
		t.Errorf("hostname hooks %v: want the root hooked once a member left the session cgroup", e.k.hooks)
	}

	byOther := base
	byOther.NameHash, byOther.CgroupID = mover, 99
	if rec := j.Record(byOther); *rec.Escape != (audit.Escape{What: "cgroup_move", CgroupID: 99, ByPID: mover}) {
		t.Errorf("moved by another process, to a cgroup that is gone: %+v", rec.Escape)
	}
	clone := base
	clone.Reason, clone.NameHash = enforcer.Reason(sensor.EscapeCloneIntoCgroup), 5000
	if rec := j.Record(clone); *rec.Escape != (audit.Escape{What: "clone_into_cgroup", Cgroup: "/", CgroupID: 1, ChildPID: 5000}) {
		t.Errorf("clone: %+v", rec.Escape)
	}

	netns := base
	netns.Reason, netns.CgroupID, netns.NameHash = enforcer.Reason(sensor.EscapeNetns), 4026532999, 4026531840
	netns.Protocol = uint8(sensor.NetnsViaUnshare)
	if rec := j.Record(netns); *rec.Escape != (audit.Escape{What: "netns", NetNS: 4026532999, Via: "unshare"}) {
		t.Errorf("netns: %+v", rec.Escape)
	}

	if err := e.r.Close(s.ID, admin); err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(e.cg.killedPIDs, member) {
		t.Errorf("killed %v at close, want the escaped member %d", e.cg.killedPIDs, member)
	}
	if _, _, ok := e.k.PidBinding(member); ok {
		t.Error("the escaped member's binding outlived the session")
	}
	if len(e.k.hooks) != 0 {
		t.Errorf("hooks left after close: %v", e.k.hooks)
	}
}
