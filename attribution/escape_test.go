package attribution

import (
	"context"
	"net/netip"
	"slices"
	"testing"

	"github.com/agentfence/agentfence/audit"
	"github.com/agentfence/agentfence/enforcer"
	"github.com/agentfence/agentfence/internal/boottime"
	"github.com/agentfence/agentfence/sensor"
	"github.com/agentfence/agentfence/sensor/proccache"
)

// cgroupNames is a process cache that knows only cgroup paths.
type cgroupNames map[uint64]string

func (cgroupNames) LookupWait(context.Context, uint32, uint64) (proccache.Process, bool) {
	return proccache.Process{}, false
}
func (c cgroupNames) Lookup(tgid uint32, at uint64) (proccache.Process, bool) {
	return c.LookupWait(context.Background(), tgid, at)
}
func (cgroupNames) WaitFor(context.Context, uint64) bool { return true }
func (c cgroupNames) CgroupPath(id uint64) (string, bool) {
	p, ok := c[id]
	return p, ok
}

// TestEscapeRecord: an escape reported on the gate's ring becomes a
// flagged escape record of the member's session, naming what was tried,
// where to and by whom, and the registry is told when the member left the
// session's cgroup (session.TestEscapedMember: what it does then).
func TestEscapeRecord(t *testing.T) {
	ss := newSessions()
	s := ss.add(t, 3, 7, attribution("s-1", "sync"), "tcp://127.0.0.1:8080", "api.example.com:443")
	const member, mover = 4242, 77
	j := &Joiner{Sessions: ss, Clock: boottime.NewClock(), Processes: cgroupNames{1: "/"}}
	base := enforcer.Event{BootNS: boottime.Now(), CgroupID: 1, Slot: 3, Gen: 7, PID: member, TID: member,
		UID: 0, Comm: "sh", Hook: enforcer.Hook(sensor.HookEscape), Reason: enforcer.Reason(sensor.EscapeCgroupMove),
		NameHash: member, Rule: enforcer.NoRule}

	rec := j.Record(base)
	if rec.Kind != audit.KindEscape || rec.Session == nil || rec.Session.ID != s.Session.ID || rec.Destination != nil {
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

	// Refusals at the LSM hooks: the reason says why, the socket's record
	// where it led.
	for _, c := range []struct {
		kind     sensor.EscapeKind
		how      uint8
		dest     string
		escape   audit.Escape
		reason   string
		wantDest *audit.Destination
	}{
		{sensor.EscapePtrace, uint8(sensor.PtraceOutsideSession), "", audit.Escape{What: "ptrace", Via: "attach", TargetPID: 5000}, audit.ReasonOutsideSession, nil},
		{sensor.EscapePtrace, uint8(sensor.PtraceServersSession), "", audit.Escape{What: "ptrace", Via: "attach", TargetPID: 5000}, audit.ReasonLaunchesMCPServers, nil},
		{sensor.EscapePtrace, uint8(sensor.PtraceTraceme), "", audit.Escape{What: "ptrace", Via: "traceme", TargetPID: 5000}, audit.ReasonLaunchesMCPServers, nil},
		{sensor.EscapeSocketReceive, 6, "127.0.0.2:18443", audit.Escape{What: "socket_receive"}, audit.ReasonLaunchesMCPServers,
			&audit.Destination{IP: "127.0.0.2", Port: 18443, Protocol: "tcp"}},
		{sensor.EscapeSocketReceive, 17, "0.0.0.0:0", audit.Escape{What: "socket_receive"}, audit.ReasonLaunchesMCPServers, nil},
	} {
		ev := base
		ev.Reason, ev.Protocol, ev.NameHash, ev.Verdict = enforcer.Reason(c.kind), c.how, 5000, enforcer.VerdictDenied
		if c.kind == sensor.EscapeSocketReceive {
			ev.NameHash = 0
		}
		if c.dest != "" {
			ev.Dest = netip.MustParseAddrPort(c.dest)
		}
		rec := j.Record(ev)
		if *rec.Escape != c.escape || *rec.Outcome != (audit.Outcome{Verdict: audit.VerdictDenied, Reason: c.reason, Errno: "EPERM"}) {
			t.Errorf("%s %d: escape %+v outcome %+v", c.kind, c.how, rec.Escape, rec.Outcome)
		}
		if (rec.Destination == nil) != (c.wantDest == nil) || c.wantDest != nil && *rec.Destination != *c.wantDest {
			t.Errorf("%s %d: destination %+v, want %+v", c.kind, c.how, rec.Destination, c.wantDest)
		}
	}

	// A cgroup move and a clone into another cgroup leave the session's
	// cgroup; a new network namespace and the refusals do not.
	if want := [][2]uint64{{3, 7}, {3, 7}, {3, 7}}; !slices.Equal(ss.escaped, want) {
		t.Errorf("registry told of escapes %v, want %v (the two moves and the clone)", ss.escaped, want)
	}
}
