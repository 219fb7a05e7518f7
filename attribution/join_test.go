package attribution

import (
	"context"
	"net/netip"
	"reflect"
	"testing"
	"time"

	"github.com/agentfence/agentfence/audit"
	"github.com/agentfence/agentfence/enforcer"
	"github.com/agentfence/agentfence/internal/boottime"
	"github.com/agentfence/agentfence/sensor/cgroupmeta"
	"github.com/agentfence/agentfence/sensor/proccache"
	"github.com/agentfence/agentfence/session"
)

type names map[uint64]string

func (n names) Hostname(slot uint32, hash uint64) string { return n[hash] }

func (n names) LearnedNames(uint32, uint64, netip.Addr) []string { return nil }

// learned is a Names whose sessions learned addresses for names.
type learned map[learnedKey][]string

type learnedKey struct {
	slot uint32
	gen  uint64
	addr netip.Addr
}

func (learned) Hostname(uint32, uint64) string { return "" }

func (l learned) LearnedNames(slot uint32, gen uint64, addr netip.Addr) []string {
	return l[learnedKey{slot, gen, addr}]
}

func TestJoinerRecord(t *testing.T) {
	ss := newSessions()
	s := ss.add(t, 3, 7, session.Attribution{Session: audit.Session{ID: "s-1", Intent: "pull metrics", Mode: "enforce"},
		Origin: &audit.Origin{Kind: "schedule", Principal: "nightly"},
		Agent:  &audit.Agent{ID: "spiffe://example.org/agent/7", Name: "metrics-bot", Version: "1.2", Owner: "sre"}},
		"tcp://127.0.0.1:8080", "udp://10.0.0.0/8:53", "api.example.com:443")
	j := &Joiner{Sessions: ss, Clock: boottime.NewClock(), Names: names{42: "api.example.com"}}
	const cgroupID = 4711

	base := enforcer.Event{BootNS: boottime.Now(), CgroupID: cgroupID, Slot: 3, Gen: 7, PID: 10, TID: 11, UID: 1000, GID: 1000,
		Comm: "curl", Hook: enforcer.HookConnect4, Protocol: 6, Dest: netip.MustParseAddrPort("127.0.0.1:8080")}

	allowed := base
	allowed.Verdict, allowed.Reason, allowed.Rule = enforcer.VerdictAllowed, enforcer.ReasonRule, 0
	rec := j.Record(allowed)
	if rec.Schema != audit.SchemaVersion || rec.Kind != audit.KindConnect {
		t.Errorf("schema %q kind %q", rec.Schema, rec.Kind)
	}
	if !near(rec.Time, time.Now(), time.Second) {
		t.Errorf("time = %s, now is %s", rec.Time, time.Now())
	}
	if rec.Time.Location() != time.UTC {
		t.Errorf("time is not UTC: %s", rec.Time.Location())
	}
	if rec.Session == nil || !reflect.DeepEqual(*rec.Session, s.Session) || s.Session.ID != "s-1" {
		t.Errorf("session = %+v", rec.Session)
	}
	if rec.Agent == nil || *rec.Agent != (audit.Agent{ID: "spiffe://example.org/agent/7", Name: "metrics-bot", Version: "1.2", Owner: "sre"}) {
		t.Errorf("agent = %+v", rec.Agent)
	}
	if rec.Origin == nil || *rec.Origin != (audit.Origin{Kind: "schedule", Principal: "nightly"}) {
		t.Errorf("origin = %+v", rec.Origin)
	}
	if *rec.Outcome != (audit.Outcome{Verdict: audit.VerdictAllowed, Rule: "tcp://127.0.0.1:8080"}) {
		t.Errorf("outcome = %+v", rec.Outcome)
	}
	if *rec.Destination != (audit.Destination{IP: "127.0.0.1", Port: 8080, Protocol: "tcp"}) {
		t.Errorf("destination = %+v", rec.Destination)
	}
	if p := rec.Process; p.PID != 10 || p.TID != 11 || p.UID != 1000 || p.GID != 1000 || p.Comm != "curl" || p.CgroupID != cgroupID {
		t.Errorf("process = %+v", rec.Process)
	}

	denied := base
	denied.Hook, denied.Protocol, denied.Dest = enforcer.HookSendmsg4, 17, netip.MustParseAddrPort("192.168.1.20:53")
	denied.Verdict, denied.Reason, denied.Rule = enforcer.VerdictDenied, enforcer.ReasonNoRule, enforcer.NoRule
	rec = j.Record(denied)
	if rec.Kind != audit.KindSendmsg || *rec.Outcome != (audit.Outcome{Verdict: audit.VerdictDenied, Reason: "no_rule", Errno: "EPERM"}) {
		t.Errorf("denied: kind %q outcome %+v", rec.Kind, rec.Outcome)
	}
	if *rec.Destination != (audit.Destination{IP: "192.168.1.20", Port: 53, Protocol: "udp"}) {
		t.Errorf("denied destination = %+v", rec.Destination)
	}

	audited := base
	audited.Verdict, audited.Reason, audited.Rule = enforcer.VerdictWouldDeny, enforcer.ReasonExpired, enforcer.NoRule
	audited.Hook, audited.Dest = enforcer.HookConnect6, netip.MustParseAddrPort("[2001:db8::1]:443")
	rec = j.Record(audited)
	if *rec.Outcome != (audit.Outcome{Verdict: audit.VerdictWouldDeny, Reason: "expired"}) {
		t.Errorf("would_deny outcome = %+v", rec.Outcome)
	}
	if rec.Destination.IP != "2001:db8::1" || rec.Kind != audit.KindConnect {
		t.Errorf("v6 destination = %+v", rec.Destination)
	}

	viaName := base
	viaName.Verdict, viaName.Rule, viaName.ViaName, viaName.NameHash = enforcer.VerdictAllowed, 2, true, 42
	viaName.Dest = netip.MustParseAddrPort("93.184.216.34:443")
	rec = j.Record(viaName)
	if rec.Destination.Hostname != "api.example.com" || rec.Outcome.Rule != "api.example.com:443" {
		t.Errorf("via name: destination %+v outcome %+v", rec.Destination, rec.Outcome)
	}

	sock := base
	sock.Hook, sock.Dest, sock.Protocol = enforcer.HookSockCreate, netip.AddrPort{}, 255
	sock.Verdict, sock.Reason, sock.Rule = enforcer.VerdictDenied, enforcer.ReasonSocketType, enforcer.NoRule
	rec = j.Record(sock)
	if rec.Kind != audit.KindSocket || *rec.Destination != (audit.Destination{Protocol: "ip-255"}) || rec.Outcome.Reason != "socket_type" {
		t.Errorf("socket: kind %q destination %+v outcome %+v", rec.Kind, rec.Destination, rec.Outcome)
	}

	// Repeats flushed as one event: a record with their count, timed from
	// the first to the latest.
	repeats := allowed
	repeats.Count, repeats.LastNS = 19, allowed.BootNS+uint64(time.Second)
	rec = j.Record(repeats)
	if rec.Count != 19 || rec.FirstTime == nil || rec.LastTime == nil || rec.LastTime.Sub(*rec.FirstTime) != time.Second ||
		!rec.Time.Equal(*rec.LastTime) || rec.Outcome.Rule != "tcp://127.0.0.1:8080" {
		t.Errorf("repeats: count %d from %v to %v at %v, outcome %+v", rec.Count, rec.FirstTime, rec.LastTime, rec.Time, rec.Outcome)
	}
	if one := j.Record(allowed); one.Count != 0 || one.FirstTime != nil || one.LastTime != nil {
		t.Errorf("a single decision carries count %d from %v to %v", one.Count, one.FirstTime, one.LastTime)
	}

	// An out-of-range rule index names no rule.
	bad := allowed
	bad.Rule = 99
	if rec := j.Record(bad); rec.Outcome.Rule != "" {
		t.Errorf("rule 99 = %q", rec.Outcome.Rule)
	}
}

func TestJoinerUnknownSession(t *testing.T) {
	ss := newSessions()
	ss.add(t, 3, 7, attribution("s-1", "x"), "10.0.0.0/8")
	j := &Joiner{Sessions: ss, Clock: boottime.NewClock()}
	for _, at := range []struct {
		slot uint32
		gen  uint64
	}{{3, 8}, {4, 7}, {0, 0}} {
		ev := enforcer.Event{BootNS: boottime.Now(), Slot: at.slot, Gen: at.gen, Hook: enforcer.HookConnect4, Protocol: 6,
			Verdict: enforcer.VerdictDenied, Reason: enforcer.ReasonNoRule, Rule: 0, Dest: netip.MustParseAddrPort("10.0.0.1:80")}
		rec := j.Record(ev)
		if rec.Session == nil || !reflect.DeepEqual(*rec.Session, audit.Session{ID: "unknown"}) || rec.Agent != nil || rec.Origin != nil || rec.Outcome.Rule != "" {
			t.Errorf("slot %d gen %d: session %+v agent %+v origin %+v rule %q", at.slot, at.gen, rec.Session, rec.Agent, rec.Origin, rec.Outcome.Rule)
		}
	}
}

func TestJoinerHostRecord(t *testing.T) {
	ss := newSessions()
	s := ss.add(t, 3, 7, attribution("s-1", "x"), "api.example.com:443")
	en := struct {
		slot uint32
		gen  uint64
	}{3, 7}
	j := &Joiner{Sessions: ss, Clock: boottime.NewClock(), Names: names{7: "api.example.com"}}
	learned := j.HostRecord(enforcer.HostEvent{BootNS: boottime.Now(), Slot: en.slot, Gen: en.gen, Kind: enforcer.HostDNSLearned,
		Name: "api.example.com", Addr: netip.MustParseAddr("::ffff:93.184.216.34"), Verdict: enforcer.VerdictAllowed, Rule: 0})
	if learned.Kind != audit.KindDNS || learned.Destination.IP != "93.184.216.34" || learned.Outcome.Reason != "learned" ||
		learned.Session.ID != s.Session.ID || learned.Outcome.Rule != "api.example.com:443" {
		t.Errorf("learned = %+v %+v %+v", learned.Kind, learned.Destination, learned.Outcome)
	}
	sni := j.HostRecord(enforcer.HostEvent{BootNS: boottime.Now(), Slot: en.slot, Gen: en.gen, Kind: enforcer.HostSNI, Port: 443, NameHash: 7,
		Verdict: enforcer.VerdictDenied, Reason: enforcer.ReasonSNIMismatch, Rule: enforcer.NoRule})
	if sni.Kind != audit.KindConnect || *sni.Destination != (audit.Destination{Hostname: "api.example.com", Protocol: "tcp", Port: 443}) ||
		sni.Outcome.Reason != "sni_mismatch" || sni.Outcome.Errno != "" {
		t.Errorf("sni = %+v %+v %+v", sni.Kind, sni.Destination, sni.Outcome)
	}
}

// A member's denial to where a declared MCP server of its session may go
// is the headline record of the direct route: reason held_by_mcp_server
// and the server's name. The server's own records name it.
func TestJoinerMCPServers(t *testing.T) {
	ss := newSessions()
	tickets := audit.MCP{Server: "tickets", Session: "srv-1", Serves: "s-1", Exe: "/usr/bin/node", Script: "/srv/mcp/tickets/server.mjs"}
	srv := ss.add(t, 4, 9, session.Attribution{Session: audit.Session{ID: "srv-1", Intent: "MCP server tickets of session s-1", Parent: "s-1"},
		MCP: &tickets}, "tcp://127.0.0.2:18443", "api.tickets.example:443")
	agent := attribution("s-1", "triage")
	agent.Servers = []session.Server{{Name: "tickets", Slot: 4, Gen: 9, Rules: srv.Rules}}
	ss.add(t, 3, 7, agent, "tcp://127.0.0.1:8080")
	api := netip.MustParseAddrPort("203.0.113.9:443")
	j := &Joiner{Sessions: ss, Clock: boottime.NewClock(),
		Names: learned{{4, 9, api.Addr()}: {"api.tickets.example"}}}

	denial := func(dest string, reason enforcer.Reason) enforcer.Event {
		return enforcer.Event{BootNS: boottime.Now(), Slot: 3, Gen: 7, PID: 10, Hook: enforcer.HookConnect4, Protocol: 6,
			Dest: netip.MustParseAddrPort(dest), Verdict: enforcer.VerdictDenied, Reason: reason, Rule: enforcer.NoRule}
	}
	for _, tc := range []struct {
		name   string
		ev     enforcer.Event
		reason string
		heldBy string
	}{
		{"the server's address", denial("127.0.0.2:18443", enforcer.ReasonNoRule), audit.ReasonHeldByMCPServer, "tickets"},
		{"an address the server learned for its hostname rule", denial(api.String(), enforcer.ReasonNoRule), audit.ReasonHeldByMCPServer, "tickets"},
		{"another port", denial("127.0.0.2:18444", enforcer.ReasonNoRule), "no_rule", ""},
		{"nowhere the server may go", denial("127.0.0.3:18443", enforcer.ReasonNoRule), "no_rule", ""},
		{"denied for another reason", denial("127.0.0.2:18443", enforcer.ReasonExpired), "expired", ""},
	} {
		rec := j.Record(tc.ev)
		if rec.Outcome.Reason != tc.reason || rec.Outcome.HeldBy != tc.heldBy || rec.Outcome.Errno != "EPERM" {
			t.Errorf("%s: outcome %+v, want reason %q held_by %q", tc.name, rec.Outcome, tc.reason, tc.heldBy)
		}
		if rec.MCP != nil {
			t.Errorf("%s: the agent's record names a server it does not run as: %+v", tc.name, rec.MCP)
		}
	}
	// An allowed connect of the agent's is not held by anyone.
	allowed := denial("127.0.0.1:8080", enforcer.ReasonRule)
	allowed.Verdict, allowed.Rule = enforcer.VerdictAllowed, 0
	if rec := j.Record(allowed); rec.Outcome.Reason != "" || rec.Outcome.HeldBy != "" {
		t.Errorf("allowed: outcome %+v", rec.Outcome)
	}

	// The server's own connect.
	own := denial("127.0.0.2:18443", enforcer.ReasonRule)
	own.Slot, own.Gen, own.Verdict, own.Rule = 4, 9, enforcer.VerdictAllowed, 0
	rec := j.Record(own)
	if rec.MCP == nil || *rec.MCP != tickets || rec.Session.ID != "srv-1" || rec.Outcome.Rule != "tcp://127.0.0.2:18443" {
		t.Errorf("server's connect: session %+v mcp %+v outcome %+v", rec.Session, rec.MCP, rec.Outcome)
	}
}

func TestLaunchRecord(t *testing.T) {
	exec := audit.Record{Schema: audit.SchemaVersion, Time: time.Now(), Kind: audit.KindExec,
		Session: &audit.Session{ID: "s-1"}, Process: &audit.Process{PID: 10, Exe: "/usr/bin/node", Argv: []string{"node", "server.mjs"}}}
	bound := session.Launch{MCP: audit.MCP{Server: "tickets", Session: "srv-1", Serves: "s-1"}}
	rec := LaunchRecord(exec, bound)
	if rec.Kind != audit.KindMCP || *rec.MCP != bound.MCP || *rec.Outcome != (audit.Outcome{Verdict: audit.VerdictAllowed}) ||
		rec.Session.ID != "s-1" || rec.Process.PID != 10 {
		t.Errorf("bound: %+v mcp %+v outcome %+v", rec, rec.MCP, rec.Outcome)
	}
	refused := session.Launch{MCP: audit.MCP{Server: "tickets", Serves: "s-1"}, Reason: session.LaunchInjection}
	rec = LaunchRecord(exec, refused)
	if *rec.Outcome != (audit.Outcome{Verdict: audit.VerdictFlagged, Reason: "injection"}) || rec.MCP.Session != "" {
		t.Errorf("refused: mcp %+v outcome %+v", rec.MCP, rec.Outcome)
	}
	if exec.Kind != audit.KindExec || exec.MCP != nil || exec.Outcome != nil {
		t.Errorf("the exec record changed: %+v", exec)
	}
}

// inPod is a process cache whose every process runs in pod uid.
type inPod string

func (p inPod) LookupWait(context.Context, uint32, uint64) (proccache.Process, bool) {
	return proccache.Process{Container: cgroupmeta.Meta{PodUID: string(p)}}, true
}
func (p inPod) Lookup(tgid uint32, at uint64) (proccache.Process, bool) {
	return p.LookupWait(context.Background(), tgid, at)
}
func (inPod) WaitFor(context.Context, uint64) bool { return true }

// TestJoinerPod: a record of a process in a pod the node knows names the
// pod; one the node does not know carries only the pod UID.
func TestJoinerPod(t *testing.T) {
	ss := newSessions()
	ss.add(t, 3, 7, attribution("s-1", "triage"), "tcp://127.0.0.1:8080")
	known := &audit.Pod{UID: "6f1c2a3b-4d5e-4f60-8a9b-0c1d2e3f4a5b", Namespace: "agents", Name: "triage-0", Node: "node-a"}
	j := &Joiner{Sessions: ss, Clock: boottime.NewClock(), Processes: inPod(known.UID),
		Pods: func(uid string) *audit.Pod {
			if uid == known.UID {
				return known
			}
			return nil
		}}
	ev := enforcer.Event{BootNS: boottime.Now(), Slot: 3, Gen: 7, PID: 10, Hook: enforcer.HookConnect4, Protocol: 6,
		Dest: netip.MustParseAddrPort("127.0.0.1:8080"), Verdict: enforcer.VerdictAllowed}
	if rec := j.Record(ev); rec.Pod != known || rec.Process.PodUID != known.UID {
		t.Errorf("record in a known pod: pod %+v, process %+v", rec.Pod, rec.Process)
	}
	j.Processes = inPod("00000000-0000-4000-8000-000000000000")
	if rec := j.Record(ev); rec.Pod != nil || rec.Process.PodUID == "" {
		t.Errorf("record in an unknown pod: pod %+v, process %+v", rec.Pod, rec.Process)
	}
}
