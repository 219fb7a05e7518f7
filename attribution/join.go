// Package attribution joins kernel events with the process that caused
// them and the session it ran in, into audit records.
package attribution

import (
	"context"
	"net/netip"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/agentfence/agentfence/audit"
	"github.com/agentfence/agentfence/enforcer"
	"github.com/agentfence/agentfence/internal/boottime"
	"github.com/agentfence/agentfence/scope"
	"github.com/agentfence/agentfence/sensor"
	"github.com/agentfence/agentfence/sensor/proccache"
	"github.com/agentfence/agentfence/session"
)

// Processes resolves a process as it was at a boot-clock time.
type Processes interface {
	// Lookup does not wait: the process as the cache has it now.
	Lookup(tgid uint32, at uint64) (proccache.Process, bool)
	LookupWait(ctx context.Context, tgid uint32, at uint64) (proccache.Process, bool)
	WaitFor(ctx context.Context, at uint64) bool
}

// Sessions is what the joiner asks of the session registry
// (session.Registry).
type Sessions interface {
	// Resolve finds the session that held slot with generation gen, open
	// or recently closed.
	// The attribution is shared: callers must not modify it.
	Resolve(slot uint32, gen uint64) (*session.Attribution, bool)
	// SessionOf finds the session of a process by its pid binding or its
	// cgroup path (relative to the cgroup root).
	SessionOf(tgid uint32, cgroupPath string, cgroupID, at uint64) (session.Attribution, bool)
	// Escaped is told that a member of the session left its cgroup.
	Escaped(slot uint32, gen uint64)
}

// Joiner turns kernel events into audit records: the event, the process
// that caused it and the session it ran in.
type Joiner struct {
	Sessions  Sessions
	Clock     *boottime.Clock
	Processes Processes // nil: records carry only what the event has
	// Wait bounds how long a record waits for the process cache to catch up
	// with the exec of a process it has not seen yet.
	Wait time.Duration
	// Names turns the name hashes of hostname decisions into names, and
	// names the addresses a session learned (nil: records carry no
	// destination.hostname, and a denial is held by a server's hostname
	// rule only through the names it carries).
	Names Names
	// Redact replaces the credentials in an exec event's argv, used when
	// the process cache (which redacts its own) has not got the process
	// (nil keeps argv whole).
	Redact func(args []string) []string
	// Pods names the Kubernetes pod of a pod UID, nil when the node does
	// not know it (nil: records carry only the UID).
	Pods func(uid string) *audit.Pod
}

// Names is what the joiner asks of the gate's hostname state
// (enforcer.Gate).
type Names interface {
	Hostname(slot uint32, hash uint64) string
	LearnedNames(slot uint32, gen uint64, addr netip.Addr) []string
}

func reason(r enforcer.Reason) string {
	if r == enforcer.ReasonRule {
		return ""
	}
	return enforcer.ReasonString(r)
}

// parts are what a gate event's record points to.
type parts struct {
	proc    audit.Process
	outcome audit.Outcome
	dest    audit.Destination
}

// Record joins one gate event with its process and session. An escape
// reported by the process programs on the gate's ring (sensor.HookEscape)
// becomes an escape record.
func (j *Joiner) Record(ev enforcer.Event) audit.Record {
	if uint8(ev.Hook) == sensor.HookEscape {
		return j.escapeRecord(ev)
	}
	// The record's parts in one allocation: four apiece were a third of
	// the record path's allocations (BenchmarkRecordPath).
	pt := &parts{
		proc:    audit.Process{PID: ev.PID, TID: ev.TID, UID: ev.UID, GID: ev.GID, Comm: ev.Comm, CgroupID: ev.CgroupID},
		outcome: audit.Outcome{Verdict: verdictName(ev.Verdict), Reason: reason(ev.Reason)},
	}
	rec := audit.Record{
		Schema:  audit.SchemaVersion,
		Time:    j.Clock.Wall(ev.BootNS),
		Kind:    kindOf(ev.Hook),
		Process: &pt.proc,
		Outcome: &pt.outcome,
	}
	if ev.Count > 0 {
		first, last := rec.Time, j.Clock.Wall(ev.LastNS)
		rec.Count, rec.FirstTime, rec.LastTime, rec.Time = ev.Count, &first, &last, last
	}
	if ev.Verdict == enforcer.VerdictDenied && !ev.Hook.Inbound() {
		rec.Outcome.Errno = "EPERM" // a refused inbound packet is dropped: nobody sees an errno
	}
	if ev.Hook.Inbound() {
		proto := protoName(ev.Protocol)
		rec.Source = &audit.Destination{IP: ev.Dest.Addr().String(), Port: ev.Dest.Port(), Protocol: proto}
		rec.Destination = &audit.Destination{IP: ev.Local.Addr().String(), Port: ev.Local.Port(), Protocol: proto}
		rec.Outcome.Suppressed = ev.Suppressed
	} else if ev.Dest.IsValid() {
		pt.dest = audit.Destination{IP: ev.Dest.Addr().String(), Port: ev.Dest.Port(), Protocol: protoName(ev.Protocol)}
		rec.Destination = &pt.dest
		if ev.ViaName && j.Names != nil {
			rec.Destination.Hostname = j.Names.Hostname(ev.Slot, ev.NameHash)
		}
	} else if ev.Hook == enforcer.HookSockCreate {
		rec.Destination = &audit.Destination{Protocol: protoName(ev.Protocol)}
	}
	if ev.Socket != nil {
		socketOutcome(&rec, ev)
	}
	rec.Pod = j.fillProcess(rec.Process, ev.PID, ev.BootNS)
	s, ok := j.attribute(&rec, ev.Slot, ev.Gen, ev.Rule)
	// A denial for want of a rule, to where a declared server may go, is
	// the agent taking the direct route around its server.
	if ok && len(s.Servers) > 0 && ev.Verdict != enforcer.VerdictAllowed && ev.Reason == enforcer.ReasonNoRule &&
		(rec.Kind == audit.KindConnect || rec.Kind == audit.KindSendmsg) && rec.Destination != nil {
		if name := j.heldBy(s.Servers, ev, rec.Destination.Hostname); name != "" {
			rec.Outcome.Reason, rec.Outcome.HeldBy = audit.ReasonHeldByMCPServer, name
		}
	}
	return rec
}

// heldBy names the declared MCP server of the member's session whose scope
// admits the destination the member was denied. A server's hostname rule
// admits it by the names the server's session learned for the address, or
// the name the denial carries.
func (j *Joiner) heldBy(servers []session.Server, ev enforcer.Event, hostname string) string {
	f := scope.Flow{Proto: scope.ProtoTCP, Remote: ev.Dest}
	if ev.Protocol == unix.IPPROTO_UDP {
		f.Proto = scope.ProtoUDP
	}
	for _, s := range servers {
		f.Names = nil
		if j.Names != nil {
			f.Names = j.Names.LearnedNames(s.Slot, s.Gen, ev.Dest.Addr())
		}
		if hostname != "" {
			f.Names = append(f.Names, hostname)
		}
		if scope.Admits(s.Rules, f) {
			return s.Name
		}
	}
	return ""
}

// socketOutcome fills a record of a socket of a family no cgroup hook
// judges: which layer refused it, or, for one that was created, verdict
// detected (the kernel applied the session's drift action).
func socketOutcome(rec *audit.Record, ev enforcer.Event) {
	s := ev.Socket
	rec.Socket = &audit.Socket{Family: enforcer.FamilyName(s.Family), Type: enforcer.SocketTypeName(s.Type),
		Protocol: s.Protocol}
	switch {
	case ev.Hook == enforcer.HookLSMSocket || ev.Hook == enforcer.HookFmodSocket:
		rec.Socket.RefusedBy = string(enforcer.FamiliesLSM)
		if ev.Hook == enforcer.HookFmodSocket {
			rec.Socket.RefusedBy = string(enforcer.FamiliesFmodRet)
		}
		if ev.Verdict != enforcer.VerdictDenied {
			rec.Socket.RefusedBy = "" // audit mode: it was let through
		}
	case s.Result >= 0:
		rec.Outcome.Verdict = audit.VerdictDetected
	default:
		errno := syscall.Errno(-s.Result)
		rec.Outcome.Errno = unix.ErrnoName(errno)
		// `agentfence run`'s filter answers EAFNOSUPPORT; the kernel says
		// EPERM (no CAP_NET_RAW) or, for a family it lacks, the same.
		rec.Socket.RefusedBy = "kernel"
		if errno == unix.EAFNOSUPPORT {
			rec.Socket.RefusedBy = "seccomp"
		}
	}
}

// escapeRecord is the record of a member's attempt to leave its session
// (sensor/escape.go says what the event carries). The member stayed in
// its session; when it left the session's cgroup the registry is told, so
// that it looks for the member outside it from now on.
func (j *Joiner) escapeRecord(ev enforcer.Event) audit.Record {
	kind := sensor.EscapeKind(ev.Reason)
	x := &audit.Escape{What: kind.String()}
	other := uint32(ev.NameHash)
	switch kind {
	case sensor.EscapeNetns:
		x.NetNS, x.Via = ev.CgroupID, sensor.NetnsVia(ev.Protocol).String()
	case sensor.EscapePtrace:
		x.TargetPID, x.Via = other, sensor.PtraceHow(ev.Protocol).Via()
	case sensor.EscapeSocketReceive:
	default:
		x.CgroupID = ev.CgroupID
		if cp, ok := j.Processes.(interface{ CgroupPath(uint64) (string, bool) }); ok {
			x.Cgroup, _ = cp.CgroupPath(ev.CgroupID)
		}
		if kind == sensor.EscapeCloneIntoCgroup {
			x.ChildPID = other
		} else if other != ev.PID {
			x.ByPID = other
		}
	}
	rec := audit.Record{Schema: audit.SchemaVersion, Time: j.Clock.Wall(ev.BootNS), Kind: audit.KindEscape,
		Process: &audit.Process{PID: ev.PID, TID: ev.TID, UID: ev.UID, GID: ev.GID, Comm: ev.Comm},
		Escape:  x,
		Outcome: &audit.Outcome{Verdict: audit.VerdictFlagged, Reason: "still_member"}}
	if kind == sensor.EscapePtrace || kind == sensor.EscapeSocketReceive {
		// Refused (or, in audit mode, let through) at the LSM hook: the
		// member never held the other process, or the socket.
		reason := audit.ReasonLaunchesMCPServers
		if kind == sensor.EscapePtrace && sensor.PtraceHow(ev.Protocol) == sensor.PtraceOutsideSession {
			reason = audit.ReasonOutsideSession
		}
		rec.Outcome = &audit.Outcome{Verdict: verdictName(ev.Verdict), Reason: reason}
		if ev.Verdict == enforcer.VerdictDenied {
			rec.Outcome.Errno = "EPERM"
		}
	}
	if kind == sensor.EscapeSocketReceive && ev.Dest.IsValid() && !ev.Dest.Addr().IsUnspecified() {
		rec.Destination = &audit.Destination{IP: ev.Dest.Addr().String(), Port: ev.Dest.Port(), Protocol: protoName(ev.Protocol)}
	}
	rec.Pod = j.fillProcess(rec.Process, ev.PID, ev.BootNS)
	j.attribute(&rec, ev.Slot, ev.Gen, enforcer.NoRule)
	if kind == sensor.EscapeCgroupMove || kind == sensor.EscapeCloneIntoCgroup {
		// Only these leave the session's cgroup.
		j.Sessions.Escaped(ev.Slot, ev.Gen)
	}
	return rec
}

// attribute fills the session, agent, origin, the server a server's
// process runs as, and the matched rule.
func (j *Joiner) attribute(rec *audit.Record, slot uint32, gen uint64, rule int) (*session.Attribution, bool) {
	s, ok := j.Sessions.Resolve(slot, gen)
	if !ok {
		// A session this daemon does not know (its state was lost): say
		// so rather than guess.
		rec.Session = &audit.Session{ID: "unknown"}
		return s, false
	}
	rec.Session, rec.Agent, rec.Origin, rec.MCP = &s.Session, s.Agent, s.Origin, s.MCP
	if rule >= 0 && rule < len(s.Rules) && rec.Outcome != nil {
		rec.Outcome.Rule = s.RuleName(rule)
	}
	return s, true
}

// HostRecord turns a hostname event into a record: a DNS answer learned
// for an allowed name or refused for a name outside the scope, or a
// member's query refused by the session's dns mode (kind dns), or a TLS
// connection dropped by the SNI check (kind connect).
func (j *Joiner) HostRecord(ev enforcer.HostEvent) audit.Record {
	rec := audit.Record{Schema: audit.SchemaVersion, Time: j.Clock.Wall(ev.BootNS), Kind: audit.KindDNS,
		Process: &audit.Process{PID: ev.PID, UID: ev.UID, GID: ev.GID, Comm: ev.Comm, CgroupID: ev.CgroupID},
		Outcome: &audit.Outcome{Verdict: verdictName(ev.Verdict), Reason: reason(ev.Reason)}}
	dst := &audit.Destination{Hostname: ev.Name, Protocol: "udp"}
	if ev.Addr.IsValid() {
		dst.IP = ev.Addr.Unmap().String()
	}
	switch ev.Kind {
	case enforcer.HostDNSLearned:
		// destination is the learned address; the answer itself passed.
		rec.Outcome.Reason = "learned"
	case enforcer.HostDNSUnscoped:
		dst.Port = ev.Port // the resolver
	case enforcer.HostDNSQuery:
		// destination is the resolver; the name goes in query, as
		// asked: it is not a host anyone reached.
		dst.Hostname, dst.Port, dst.Protocol = "", ev.Port, protoName(ev.Protocol)
		rec.Query = &audit.Query{Name: ev.Name, Truncated: ev.NameTruncated}
		if ev.QType != 0 { // 0: the question could not be read
			rec.Query.Type = qtypeName(ev.QType)
		}
		if ev.Verdict == enforcer.VerdictDenied && ev.Protocol == unix.IPPROTO_UDP {
			// A dropped datagram fails its send; a dropped TCP
			// segment only stalls the stream.
			rec.Outcome.Errno = "EPERM"
		}
	case enforcer.HostSNI:
		rec.Kind, dst.Protocol, dst.Port = audit.KindConnect, "tcp", ev.Port
		if ev.Name == "" && j.Names != nil {
			dst.Hostname = j.Names.Hostname(ev.Slot, ev.NameHash)
		}
	}
	rec.Destination = dst
	rec.Pod = j.fillProcess(rec.Process, ev.PID, ev.BootNS)
	j.attribute(&rec, ev.Slot, ev.Gen, ev.Rule)
	return rec
}

// ExecRecord returns the exec record of a session member, or false when the
// process is in no session.
func (j *Joiner) ExecRecord(ev *sensor.ExecEvent) (audit.Record, bool) {
	p := &audit.Process{PID: ev.TGID, TID: ev.PID, PPID: ev.PPID, UID: ev.UID, GID: ev.GID, CgroupID: ev.CgroupID,
		Exe: ev.Filename}
	pod := j.fillProcess(p, ev.TGID, ev.Ktime)
	p.Comm = filepath.Base(p.Exe)
	s, ok := j.Sessions.SessionOf(ev.TGID, p.Cgroup, ev.CgroupID, ev.Ktime)
	if !ok {
		return audit.Record{}, false
	}
	if p.Argv == nil {
		p.Argv = ev.Args
		if j.Redact != nil {
			p.Argv = j.Redact(p.Argv)
		}
	}
	return audit.Record{Schema: audit.SchemaVersion, Time: j.Clock.Wall(ev.Ktime), Kind: audit.KindExec,
		Session: &s.Session, Agent: s.Agent, Origin: s.Origin, MCP: s.MCP, Process: p, Pod: pod}, true
}

// LaunchRecord is the kind mcp record of a member's exec judged against a
// declared MCP server (session.Registry.Launched); exec is the exec's
// record, made before the judgement, so in the launcher's session.
func LaunchRecord(exec audit.Record, l session.Launch) audit.Record {
	rec := exec
	rec.Kind, rec.MCP = audit.KindMCP, &l.MCP
	rec.Outcome = &audit.Outcome{Verdict: audit.VerdictAllowed}
	if l.Reason != "" {
		// It stays under the launcher's scope: nothing was refused.
		rec.Outcome = &audit.Outcome{Verdict: audit.VerdictFlagged, Reason: l.Reason}
	}
	return rec
}

// fillProcess completes p from the process cache and returns the
// Kubernetes pod it runs in, if the node knows it.
func (j *Joiner) fillProcess(p *audit.Process, tgid uint32, at uint64) *audit.Pod {
	if j.Processes == nil {
		return nil
	}
	// Nearly always the cache has the process already: no timer then (a
	// context with a timeout per record was a tenth of the garbage of the
	// record path, BenchmarkRecordPath).
	pr, ok := j.Processes.Lookup(tgid, at)
	if !ok || pr.Source == proccache.SourceFork {
		ctx, cancel := context.WithTimeout(context.Background(), j.Wait)
		defer cancel()
		pr, ok = j.Processes.LookupWait(ctx, tgid, at)
		if ok && pr.Source == proccache.SourceFork && j.Processes.WaitFor(ctx, at) {
			// Found as forked from its parent, but it may have exec'd
			// since (a helper that execs, connects and exits within a
			// millisecond): look again once the cache has every event up
			// to this one.
			pr, ok = j.Processes.LookupWait(ctx, tgid, at)
		}
	}
	if !ok {
		return nil
	}
	p.PPID = pr.PPID
	if pr.ExePath != "" {
		p.Exe = pr.ExePath
	}
	if pr.HashState == proccache.HashOK {
		p.SHA256 = pr.ExeSHA256
	}
	if len(pr.Args) > 0 {
		p.Argv = pr.Args
	}
	p.Cgroup = pr.CgroupPath
	p.ContainerID = pr.Container.ContainerID
	p.PodUID = pr.Container.PodUID
	p.Ancestry = pr.Ancestry
	if p.PodUID == "" || j.Pods == nil {
		return nil
	}
	return j.Pods(p.PodUID)
}

func kindOf(h enforcer.Hook) string {
	switch h {
	case enforcer.HookConnect4, enforcer.HookConnect6:
		return audit.KindConnect
	case enforcer.HookSendmsg4, enforcer.HookSendmsg6:
		return audit.KindSendmsg
	case enforcer.HookBind4, enforcer.HookBind6:
		return audit.KindBind
	case enforcer.HookIngress4, enforcer.HookIngress6:
		return audit.KindInbound
	default:
		return audit.KindSocket
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

// qtypeName spells a DNS question type as resolvers' logs do (RFC 3597's
// TYPEn for the rest).
func qtypeName(t uint16) string {
	switch t {
	case 1:
		return "A"
	case 2:
		return "NS"
	case 5:
		return "CNAME"
	case 6:
		return "SOA"
	case 12:
		return "PTR"
	case 15:
		return "MX"
	case 16:
		return "TXT"
	case 28:
		return "AAAA"
	case 33:
		return "SRV"
	case 64:
		return "SVCB"
	case 65:
		return "HTTPS"
	case 255:
		return "ANY"
	}
	return "TYPE" + strconv.Itoa(int(t))
}
