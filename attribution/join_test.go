package attribution

import (
	"net/netip"
	"reflect"
	"testing"
	"time"

	"github.com/agentfence/agentfence/audit"
	"github.com/agentfence/agentfence/enforcer"
	"github.com/agentfence/agentfence/internal/boottime"
	"github.com/agentfence/agentfence/session"
)

type names map[uint64]string

func (n names) Hostname(slot uint32, hash uint64) string { return n[hash] }

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
