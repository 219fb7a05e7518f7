package attribution

import (
	"strconv"

	"github.com/agentfence/agentfence/audit"
	"github.com/agentfence/agentfence/enforcer"
)

// Joiner turns kernel decisions into audit records.
type Joiner struct {
	Registry *Registry
	Clock    *Clock
}

var reasons = map[enforcer.Reason]string{
	enforcer.ReasonNoRule:      "no_rule",
	enforcer.ReasonExpired:     "expired",
	enforcer.ReasonRevoked:     "revoked",
	enforcer.ReasonQuarantined: "quarantined",
	enforcer.ReasonSocketType:  "socket_type",
}

// Record joins one gate event with its session.
func (j *Joiner) Record(ev enforcer.Event) audit.Record {
	rec := audit.Record{
		Schema: audit.SchemaVersion,
		Time:   j.Clock.Wall(ev.BootNS),
		Kind:   kindOf(ev.Hook),
		Process: &audit.Process{PID: ev.PID, TID: ev.TID, UID: ev.UID, GID: ev.GID, Comm: ev.Comm,
			CgroupID: ev.CgroupID},
		Outcome: &audit.Outcome{Verdict: verdictName(ev.Verdict), Reason: reasons[ev.Reason]},
	}
	if ev.Verdict == enforcer.VerdictDenied {
		rec.Outcome.Errno = "EPERM"
	}
	if ev.Dest.IsValid() {
		rec.Destination = &audit.Destination{IP: ev.Dest.Addr().String(), Port: ev.Dest.Port(), Protocol: protoName(ev.Protocol)}
	} else if ev.Hook == enforcer.HookSockCreate {
		rec.Destination = &audit.Destination{Protocol: protoName(ev.Protocol)}
	}
	s, ok := j.Registry.resolve(ev.Slot, ev.Gen)
	if !ok {
		// The kernel attributed it to a session this daemon does not know
		// (e.g. opened by an earlier daemon): keep the kernel's identity.
		rec.Session = &audit.Session{ID: "unknown"}
		return rec
	}
	rec.Session = &audit.Session{ID: s.id, Intent: s.intent, Mode: s.mode}
	if ev.Rule >= 0 && ev.Rule < len(s.rules) {
		rec.Outcome.Rule = s.rules[ev.Rule].String()
	}
	return rec
}

func kindOf(h enforcer.Hook) string {
	switch h {
	case enforcer.HookConnect4, enforcer.HookConnect6:
		return audit.KindConnect
	case enforcer.HookSendmsg4, enforcer.HookSendmsg6:
		return audit.KindSendmsg
	default:
		return "socket"
	}
}

func verdictName(v enforcer.Verdict) string {
	switch v {
	case enforcer.VerdictAllowed:
		return audit.VerdictAllowed
	case enforcer.VerdictDenied:
		return audit.VerdictDenied
	default:
		return audit.VerdictWouldDeny
	}
}

func protoName(p uint8) string {
	switch p {
	case 6:
		return "tcp"
	case 17:
		return "udp"
	default:
		return "ip-" + strconv.Itoa(int(p))
	}
}
