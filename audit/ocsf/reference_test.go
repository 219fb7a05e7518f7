package ocsf

// The encoder as it was before the hand-written one (git history of
// ocsf.go): the same mapping with an allocation per object, serialized by
// encoding/json reflection. It is the reference Append and Event must match
// byte for byte and value for value, and BenchmarkEncodeOCSFReference
// measures it. Do not change it to follow ocsf.go; a deliberate change of
// output changes both.

import (
	"bytes"
	"encoding/json"
	"path"
	"strconv"
	"strings"

	"github.com/agentfence/agentfence/audit"
)

// referenceAppend is Append as it was: reflection over the Event with HTML
// escaping off and the json.Encoder's trailing newline dropped.
func referenceAppend(e Encoder, dst []byte, r *audit.Record) ([]byte, error) {
	ev := refEncoder(e).Event(r)
	return referenceAppendEvent(dst, &ev)
}

func referenceAppendEvent(dst []byte, ev *Event) ([]byte, error) {
	buf := bytes.NewBuffer(dst)
	enc := json.NewEncoder(buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(ev); err != nil {
		return dst, err
	}
	out := buf.Bytes()
	return out[:len(out)-1], nil // drop Encoder's newline
}

type refEncoder Encoder

// Event maps r to its OCSF event, one allocation per object.
func (e refEncoder) Event(r *audit.Record) Event {
	ev := Event{
		Time: r.Time.UnixMilli(),
		Metadata: Metadata{
			Version: SchemaVersion,
			Product: Product{Name: ProductName, VendorName: VendorName, Version: e.ProductVersion},
			LogName: "audit",
		},
	}
	if r.Seq != 0 {
		ev.Metadata.Sequence = r.Seq
		ev.Metadata.UID = r.Host + ":" + strconv.FormatUint(r.Seq, 10)
	}
	if r.Session != nil {
		ev.Metadata.CorrelationUID = r.Session.ID
	}
	ev.Unmapped = &Unmapped{Agentfence: AgentfenceData{Schema: r.Schema, Kind: r.Kind, Seq: r.Seq, PrevHash: r.PrevHash, Event: r.Event}}
	u := &ev.Unmapped.Agentfence
	if r.Host != "" {
		ev.Device = &Device{TypeID: 0, Type: "Unknown", Hostname: r.Host}
	}
	if s := r.Session; s != nil {
		u.Intent, u.SessionMode, u.ParentSession = s.Intent, s.Mode, s.Parent
	}
	if o := r.Origin; o != nil {
		u.OriginKind, u.OriginPrincipal = o.Kind, o.Principal
	}
	if a := r.Agent; a != nil {
		u.AgentVersion, u.AgentOwner = a.Version, a.Owner
	}
	if p := r.Process; p != nil {
		g := p.GID
		u.GID, u.PPID, u.CgroupID, u.Cgroup = &g, p.PPID, p.CgroupID, p.Cgroup
	}
	if o := r.Outcome; o != nil {
		u.Verdict, u.Reason, u.Errno = o.Verdict, o.Reason, o.Errno
	}

	switch r.Kind {
	case audit.KindConnect, audit.KindSendmsg, audit.KindSocket, audit.KindDestroy, audit.KindBind, audit.KindInbound:
		e.network(&ev, r)
	case audit.KindDNS:
		e.dns(&ev, r)
	case audit.KindExec:
		e.exec(&ev, r)
	case audit.KindSession:
		e.session(&ev, r)
	case audit.KindGap:
		e.gap(&ev, r)
	case audit.KindEscape:
		e.escape(&ev, r)
	default:
		// An unknown kind from a newer daemon still reaches the SIEM as
		// an Event Log Activity "Other" rather than being dropped.
		e.classify(&ev, catSystem, ClassEventLogActivity, activityOther, "Other", sevInformational)
		ev.Actor = refActor(r, refProcessOf(r.Process))
	}
	if r.Process != nil && (r.Process.ContainerID != "" || r.Process.PodUID != "") {
		// process.container is defined by the container profile.
		ev.Metadata.Profiles = append(ev.Metadata.Profiles, "container")
	}
	return ev
}

func (e refEncoder) classify(ev *Event, cat, class, activity int, activityName string, sev int) {
	ev.CategoryUID, ev.CategoryName = cat, categoryNames[cat]
	ev.ClassUID, ev.ClassName = class, classNames[class]
	ev.ActivityID, ev.ActivityName = activity, activityName
	ev.TypeUID = class*100 + activity
	ev.TypeName = classNames[class] + ": " + activityName
	ev.SeverityID, ev.Severity = sev, severityNames[sev]
}

// verdict fills the security_control profile (action, disposition) and the
// status from the outcome, and returns the severity it implies.
func refVerdict(ev *Event, o *audit.Outcome) int {
	ev.Metadata.Profiles = append(ev.Metadata.Profiles, "security_control")
	act, disp, sev := 0, 0, sevInformational
	actName, dispName := "Unknown", "Unknown"
	if o != nil {
		switch o.Verdict {
		case audit.VerdictAllowed:
			act, actName, disp, dispName = actionAllowed, "Allowed", dispAllowed, "Allowed"
			ev.StatusID, ev.Status = statusSuccess, "Success"
		case audit.VerdictDenied, audit.VerdictDestroyed:
			act, actName, disp, dispName, sev = actionDenied, "Denied", dispBlocked, "Blocked", sevMedium
			ev.StatusID, ev.Status = statusFailure, "Failure"
		case audit.VerdictWouldDeny:
			// Audit mode: the traffic went through, the policy flagged it.
			act, actName, disp, dispName, sev = actionAllowed, "Allowed", dispDetected, "Detected", sevLow
			ev.StatusID, ev.Status = statusSuccess, "Success"
		case audit.VerdictFlagged, audit.VerdictDetected:
			act, actName, disp, dispName, sev = actionAllowed, "Allowed", dispDetected, "Detected", sevHigh
			ev.StatusID, ev.Status = statusSuccess, "Success"
		}
		ev.StatusCode, ev.StatusDetail = o.Errno, o.Reason
		if o.Rule != "" {
			ev.FirewallRule = &Rule{Name: o.Rule}
		}
	}
	ev.ActionID, ev.Action = &act, actName
	ev.DispositionID, ev.Disposition = &disp, dispName
	return sev
}

func (e refEncoder) network(ev *Event, r *audit.Record) {
	activity, name := 1, "Open"
	switch {
	case r.Kind == audit.KindDestroy:
		activity, name = 3, "Reset"
	case r.Kind == audit.KindSendmsg:
		activity, name = 6, "Traffic"
	case r.Outcome != nil && r.Outcome.Verdict == audit.VerdictDenied:
		activity, name = 5, "Refuse"
	}
	sev := refVerdict(ev, r.Outcome)
	e.classify(ev, catNetwork, ClassNetworkActivity, activity, name, sev)
	ev.Metadata.Profiles = append(ev.Metadata.Profiles, "host")
	ev.Actor = refActor(r, refProcessOf(r.Process))
	ev.DstEndpoint = &Endpoint{}
	if d := r.Destination; d != nil {
		ev.DstEndpoint = &Endpoint{IP: d.IP, Port: d.Port, Hostname: d.Hostname}
		ev.ConnectionInfo = refConnInfo(d.Protocol)
	}
	if s := r.Source; s != nil {
		ev.SrcEndpoint = &Endpoint{IP: s.IP, Port: s.Port}
		if ev.ConnectionInfo != nil {
			ev.ConnectionInfo.DirectionID, ev.ConnectionInfo.Direction = 1, "Inbound"
		}
	}
	if s := r.Socket; s != nil {
		if ev.Unmapped == nil {
			ev.Unmapped = &Unmapped{}
		}
		ss := *s
		ev.Unmapped.Agentfence.Socket = &ss
		if ev.DstEndpoint.IP == "" {
			ev.DstEndpoint.Name = s.Family
		}
	}
	ev.Message = refMessage(r)
}

func (e refEncoder) dns(ev *Event, r *audit.Record) {
	sev := refVerdict(ev, r.Outcome)
	e.classify(ev, catNetwork, ClassDNSActivity, 1, "Query", sev)
	ev.Metadata.Profiles = append(ev.Metadata.Profiles, "host")
	ev.Actor = refActor(r, refProcessOf(r.Process))
	if d := r.Destination; d != nil {
		if d.Hostname != "" {
			ev.Query = &DNSQuery{Hostname: d.Hostname}
		}
		if d.IP != "" {
			ev.DstEndpoint = &Endpoint{IP: d.IP, Port: d.Port}
		}
		ev.ConnectionInfo = refConnInfo(d.Protocol)
	}
	if q := r.Query; q != nil {
		ev.Query = &DNSQuery{Hostname: q.Name, Type: q.Type}
	}
	ev.Message = refMessage(r)
}

func (e refEncoder) exec(ev *Event, r *audit.Record) {
	activity, name := 1, "Launch"
	if r.Process != nil && r.Process.ExitCode != nil {
		activity, name = 2, "Terminate"
		ev.ExitCode = r.Process.ExitCode
	}
	sev := sevInformational
	if r.Outcome != nil {
		sev = refVerdict(ev, r.Outcome)
	}
	e.classify(ev, catSystem, ClassProcessActivity, activity, name, sev)
	ev.Metadata.Profiles = append(ev.Metadata.Profiles, "host")
	ev.Process = refProcessOf(r.Process)
	if ev.Process == nil {
		ev.Process = &Process{}
	}
	// The actor of a launch is the parent that called execve.
	var parent *Process
	if r.Process != nil && r.Process.PPID != 0 {
		parent = &Process{PID: r.Process.PPID}
	}
	ev.Actor = refActor(r, parent)
	if ev.Actor == nil {
		// Actor is required; without a known parent the process itself
		// is the best answer to "who acted".
		ev.Actor = &Actor{Process: ev.Process}
	}
	if ev.Device == nil {
		ev.Device = &Device{Type: "Unknown"}
	}
	ev.Message = refMessage(r)
}

func (e refEncoder) session(ev *Event, r *audit.Record) {
	a, ok := sessionActivities[r.Event]
	if !ok {
		a.id, a.name = activityOther, r.Event
		if a.name == "" {
			a.name = "Other"
		}
	}
	sev := sevInformational
	if r.Event == "quarantined" || r.Event == "revoked" {
		sev = sevMedium
	}
	e.classify(ev, catIAM, ClassEntityManagement, a.id, a.name, sev)
	ev.Entity = &ManagedEntity{Type: "Intent Session"}
	if s := r.Session; s != nil {
		ev.Entity.UID, ev.Entity.Name = s.ID, s.Intent
		if s.Mode != "" || s.Parent != "" || len(s.KeptCaps) > 0 || s.DNS != "" || len(s.GateCaps) > 0 {
			ev.Entity.Data = &SessionData{Mode: s.Mode, Parent: s.Parent, KeptCaps: s.KeptCaps, DNS: s.DNS, GateCaps: s.GateCaps}
		}
	}
	ev.Actor = refActor(r, refProcessOf(r.Process))
	if r.Actor != "" {
		if ev.Actor == nil {
			ev.Actor = &Actor{}
		}
		ev.Actor.User = &User{Name: r.Actor}
	}
	ev.StatusID, ev.Status = statusSuccess, "Success"
	ev.Message = refMessage(r)
}

func (e refEncoder) gap(ev *Event, r *audit.Record) {
	e.classify(ev, catSystem, ClassEventLogActivity, activityOther, "Records Lost", sevHigh)
	ev.StatusID, ev.Status = statusFailure, "Failure"
	ev.LogName = "audit"
	if g := r.Gap; g != nil {
		ev.LogProvider = g.Source
		ev.StatusDetail = "lost " + strconv.FormatUint(g.Count, 10) + " records"
		gg := *g
		ev.Unmapped.Agentfence.Gap = &gg
	}
	ev.Message = refMessage(r)
}

func (e refEncoder) escape(ev *Event, r *audit.Record) {
	sev := refVerdict(ev, r.Outcome)
	e.classify(ev, catSystem, ClassProcessActivity, activityOther, "Other", sev)
	ev.Metadata.Profiles = append(ev.Metadata.Profiles, "host")
	ev.Process = refProcessOf(r.Process)
	if ev.Process == nil {
		ev.Process = &Process{}
	}
	by := ev.Process
	if x := r.Escape; x != nil {
		if x.ByPID != 0 {
			by = &Process{PID: x.ByPID}
		}
		xx := *x
		ev.Unmapped.Agentfence.Escape = &xx
	}
	ev.Actor = refActor(r, by)
	if ev.Device == nil {
		ev.Device = &Device{Type: "Unknown"}
	}
	ev.Message = refMessage(r)
}

func refActor(r *audit.Record, p *Process) *Actor {
	a := &Actor{Process: p}
	if s := r.Session; s != nil {
		a.Session = &Session{UID: s.ID}
		if r.Origin != nil {
			a.Session.Issuer = r.Origin.Principal
		}
	}
	if ag := r.Agent; ag != nil {
		a.AppName, a.AppUID = ag.Name, ag.ID
	}
	if a.Process == nil && a.Session == nil && a.AppName == "" && a.AppUID == "" {
		return nil
	}
	return a
}

func refProcessOf(p *audit.Process) *Process {
	if p == nil {
		return nil
	}
	out := &Process{
		PID: p.PID, TID: p.TID, Name: p.Comm,
		User:    &User{UID: strconv.FormatUint(uint64(p.UID), 10)},
		Lineage: p.Ancestry,
	}
	if len(p.Argv) > 0 {
		out.CmdLine = strings.Join(p.Argv, " ")
	}
	if p.Exe != "" {
		out.File = &File{Name: path.Base(p.Exe), Path: p.Exe, TypeID: 1, Type: "Regular File"}
		if p.SHA256 != "" {
			out.File.Hashes = []Fingerprint{{AlgorithmID: 3, Algorithm: "SHA-256", Value: p.SHA256}}
		}
	}
	if p.PPID != 0 {
		out.ParentProcess = &Process{PID: p.PPID}
	}
	if p.ContainerID != "" || p.PodUID != "" {
		out.Container = &Container{UID: p.ContainerID, PodUUID: p.PodUID}
	}
	return out
}

func refConnInfo(proto string) *ConnectionInfo {
	ci := &ConnectionInfo{DirectionID: 2, Direction: "Outbound", ProtocolName: proto}
	switch proto {
	case "tcp":
		ci.ProtocolNum = 6
	case "udp":
		ci.ProtocolNum = 17
	}
	return ci
}

// message is a short human summary; SIEM list views show it first. It is
// built by appending because fmt here costs a third of the encoding time.
func refMessage(r *audit.Record) string {
	b := make([]byte, 0, 128)
	b = append(b, r.Kind...)
	if r.Outcome != nil {
		b = append(b, ' ')
		b = append(b, r.Outcome.Verdict...)
	}
	if r.Event != "" {
		b = append(b, ' ')
		b = append(b, r.Event...)
	}
	if p := r.Process; p != nil {
		b = append(b, " by "...)
		b = append(b, p.Comm...)
		b = append(b, '[')
		b = strconv.AppendUint(b, uint64(p.PID), 10)
		b = append(b, ']')
	}
	if s := r.Source; s != nil {
		b = append(b, " from "...)
		b = append(b, s.IP...)
		b = append(b, ':')
		b = strconv.AppendUint(b, uint64(s.Port), 10)
	}
	if d := r.Destination; d != nil {
		b = append(b, " to "...)
		if d.Hostname != "" {
			b = append(b, d.Hostname...)
			b = append(b, ' ')
		}
		b = append(b, d.IP...)
		b = append(b, ':')
		b = strconv.AppendUint(b, uint64(d.Port), 10)
	}
	if s := r.Session; s != nil {
		b = append(b, " session "...)
		b = append(b, s.ID...)
	}
	if g := r.Gap; g != nil {
		b = append(b, " source "...)
		b = append(b, g.Source...)
		b = append(b, " lost "...)
		b = strconv.AppendUint(b, g.Count, 10)
	}
	if s := r.Socket; s != nil {
		b = append(b, " socket "...)
		b = append(b, s.Family...)
		b = append(b, '/')
		b = append(b, s.Type...)
	}
	if x := r.Escape; x != nil {
		b = append(b, ' ')
		b = append(b, x.What...)
		if x.Cgroup != "" {
			b = append(b, " into "...)
			b = append(b, x.Cgroup...)
		}
	}
	return string(b)
}
