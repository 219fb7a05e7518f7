// Package ocsf maps audit records to OCSF events of one pinned schema
// version. The mapping is documented in docs/audit.md; this file is its
// only implementation.
package ocsf

import (
	"bytes"
	"encoding/json"
	"path"
	"strconv"
	"strings"

	"github.com/agentfence/agentfence/audit"
)

// SchemaVersion is the OCSF version every event claims in
// metadata.version. Changing it means re-checking the required-attribute
// lists in ocsf_test.go against that version of the schema.
const SchemaVersion = "1.3.0"

// Product identity in metadata.product.
const (
	ProductName = "agentfence"
	VendorName  = "agentfence"
)

// Class, category and enum values from OCSF 1.3.0.
const (
	catSystem  = 1
	catIAM     = 3
	catNetwork = 4

	ClassProcessActivity  = 1007
	ClassEventLogActivity = 1008
	ClassEntityManagement = 3004
	ClassNetworkActivity  = 4001
	ClassDNSActivity      = 4003

	sevInformational = 1
	sevLow           = 2
	sevMedium        = 3
	sevHigh          = 4

	actionAllowed = 1
	actionDenied  = 2

	dispAllowed  = 1
	dispBlocked  = 2
	dispDetected = 15

	statusSuccess = 1
	statusFailure = 2

	activityOther = 99
)

var (
	severityNames = map[int]string{0: "Unknown", 1: "Informational", 2: "Low", 3: "Medium", 4: "High", 5: "Critical", 6: "Fatal", 99: "Other"}
	classNames    = map[int]string{
		ClassProcessActivity: "Process Activity", ClassEventLogActivity: "Event Log Activity",
		ClassEntityManagement: "Entity Management", ClassNetworkActivity: "Network Activity",
		ClassDNSActivity: "DNS Activity",
	}
	categoryNames = map[int]string{catSystem: "System Activity", catIAM: "Identity & Access Management", catNetwork: "Network Activity"}
)

// sessionActivities maps session lifecycle events to Entity Management
// activities: the intent session is the managed entity.
var sessionActivities = map[string]struct {
	id   int
	name string
}{
	"opened":      {1, "Create"},
	"bound":       {6, "Enroll"},
	"narrowed":    {3, "Update"},
	"quarantined": {12, "Suspend"},
	"revoked":     {9, "Disable"},
	"expired":     {11, "Deactivate"},
	"closed":      {4, "Delete"},
}

// Event is an OCSF 1.3.0 event restricted to the attributes agentfence
// fills. Field order follows no rule but JSON object order is irrelevant
// to OCSF consumers.
type Event struct {
	ActivityID     int             `json:"activity_id"`
	ActivityName   string          `json:"activity_name,omitempty"`
	CategoryUID    int             `json:"category_uid"`
	CategoryName   string          `json:"category_name,omitempty"`
	ClassUID       int             `json:"class_uid"`
	ClassName      string          `json:"class_name,omitempty"`
	TypeUID        int             `json:"type_uid"`
	TypeName       string          `json:"type_name,omitempty"`
	Time           int64           `json:"time"`
	SeverityID     int             `json:"severity_id"`
	Severity       string          `json:"severity,omitempty"`
	Message        string          `json:"message,omitempty"`
	StatusID       int             `json:"status_id,omitempty"`
	Status         string          `json:"status,omitempty"`
	StatusCode     string          `json:"status_code,omitempty"`
	StatusDetail   string          `json:"status_detail,omitempty"`
	ActionID       *int            `json:"action_id,omitempty"`
	Action         string          `json:"action,omitempty"`
	DispositionID  *int            `json:"disposition_id,omitempty"`
	Disposition    string          `json:"disposition,omitempty"`
	Metadata       Metadata        `json:"metadata"`
	Actor          *Actor          `json:"actor,omitempty"`
	Device         *Device         `json:"device,omitempty"`
	Process        *Process        `json:"process,omitempty"`
	ExitCode       *int            `json:"exit_code,omitempty"`
	DstEndpoint    *Endpoint       `json:"dst_endpoint,omitempty"`
	ConnectionInfo *ConnectionInfo `json:"connection_info,omitempty"`
	Query          *DNSQuery       `json:"query,omitempty"`
	Entity         *ManagedEntity  `json:"entity,omitempty"`
	FirewallRule   *Rule           `json:"firewall_rule,omitempty"`
	LogProvider    string          `json:"log_provider,omitempty"`
	LogName        string          `json:"log_name,omitempty"`
	Unmapped       *Unmapped       `json:"unmapped,omitempty"`
}

type Metadata struct {
	Version        string   `json:"version"`
	Product        Product  `json:"product"`
	Profiles       []string `json:"profiles,omitempty"`
	UID            string   `json:"uid,omitempty"`
	Sequence       uint64   `json:"sequence,omitempty"`
	CorrelationUID string   `json:"correlation_uid,omitempty"`
	LogName        string   `json:"log_name,omitempty"`
}

type Product struct {
	Name       string `json:"name"`
	VendorName string `json:"vendor_name"`
	Version    string `json:"version,omitempty"`
}

type Actor struct {
	AppName string   `json:"app_name,omitempty"`
	AppUID  string   `json:"app_uid,omitempty"`
	Process *Process `json:"process,omitempty"`
	Session *Session `json:"session,omitempty"`
	User    *User    `json:"user,omitempty"`
}

type Session struct {
	UID    string `json:"uid"`
	Issuer string `json:"issuer,omitempty"`
}

type User struct {
	UID  string `json:"uid,omitempty"`
	Name string `json:"name,omitempty"`
}

type Device struct {
	TypeID   int    `json:"type_id"`
	Type     string `json:"type,omitempty"`
	Hostname string `json:"hostname,omitempty"`
}

type Process struct {
	PID           uint32     `json:"pid,omitempty"`
	TID           uint32     `json:"tid,omitempty"`
	Name          string     `json:"name,omitempty"`
	CmdLine       string     `json:"cmd_line,omitempty"`
	File          *File      `json:"file,omitempty"`
	User          *User      `json:"user,omitempty"`
	ParentProcess *Process   `json:"parent_process,omitempty"`
	Lineage       []string   `json:"lineage,omitempty"`
	Container     *Container `json:"container,omitempty"`
}

type File struct {
	Name   string        `json:"name"`
	TypeID int           `json:"type_id"`
	Type   string        `json:"type,omitempty"`
	Path   string        `json:"path,omitempty"`
	Hashes []Fingerprint `json:"hashes,omitempty"`
}

type Fingerprint struct {
	AlgorithmID int    `json:"algorithm_id"`
	Algorithm   string `json:"algorithm,omitempty"`
	Value       string `json:"value"`
}

type Container struct {
	UID     string `json:"uid,omitempty"`
	PodUUID string `json:"pod_uuid,omitempty"`
}

type Endpoint struct {
	IP       string `json:"ip,omitempty"`
	Port     uint16 `json:"port,omitempty"`
	Hostname string `json:"hostname,omitempty"`
}

type ConnectionInfo struct {
	DirectionID  int    `json:"direction_id"`
	Direction    string `json:"direction,omitempty"`
	ProtocolName string `json:"protocol_name,omitempty"`
	ProtocolNum  int    `json:"protocol_num,omitempty"`
}

type DNSQuery struct {
	Hostname string `json:"hostname"`
}

type ManagedEntity struct {
	UID  string       `json:"uid"`
	Name string       `json:"name,omitempty"`
	Type string       `json:"type,omitempty"`
	Data *SessionData `json:"data,omitempty"`
}

type SessionData struct {
	Mode   string `json:"mode,omitempty"`
	Parent string `json:"parent,omitempty"`
}

type Rule struct {
	Name string `json:"name,omitempty"`
	Desc string `json:"desc,omitempty"`
}

// Unmapped carries what OCSF 1.3.0 has no place for, under one vendor key
// so it never collides with another producer's unmapped data.
type Unmapped struct {
	Agentfence AgentfenceData `json:"agentfence"`
}

type AgentfenceData struct {
	Schema          string       `json:"schema"`
	Kind            string       `json:"kind"`
	Seq             uint64       `json:"seq,omitempty"`
	PrevHash        string       `json:"prev_hash,omitempty"`
	Verdict         string       `json:"verdict,omitempty"`
	Reason          string       `json:"reason,omitempty"`
	Errno           string       `json:"errno,omitempty"`
	Event           string       `json:"event,omitempty"`
	Intent          string       `json:"intent,omitempty"`
	SessionMode     string       `json:"session_mode,omitempty"`
	ParentSession   string       `json:"parent_session,omitempty"`
	OriginKind      string       `json:"origin_kind,omitempty"`
	OriginPrincipal string       `json:"origin_principal,omitempty"`
	AgentVersion    string       `json:"agent_version,omitempty"`
	AgentOwner      string       `json:"agent_owner,omitempty"`
	GID             *uint32      `json:"gid,omitempty"`
	PPID            uint32       `json:"ppid,omitempty"`
	CgroupID        uint64       `json:"cgroup_id,omitempty"`
	Cgroup          string       `json:"cgroup,omitempty"`
	Gap             *audit.Gap   `json:"gap,omitempty"`
	Destination     *Destination `json:"destination,omitempty"`
}

// Destination repeats the record's destination when the OCSF class has no
// endpoint for it (for example the protocol of a DNS query).
type Destination struct {
	Protocol string `json:"protocol,omitempty"`
}

// Encoder turns records into OCSF events. ProductVersion is the agentfence
// build version reported in metadata.product.version.
type Encoder struct {
	ProductVersion string
}

// Append appends the JSON encoding of r's OCSF event to dst.
func (e Encoder) Append(dst []byte, r *audit.Record) ([]byte, error) {
	ev := e.Event(r)
	buf := bytes.NewBuffer(dst)
	enc := json.NewEncoder(buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(&ev); err != nil {
		return dst, err
	}
	out := buf.Bytes()
	return out[:len(out)-1], nil // drop Encoder's newline
}

// Event maps r to its OCSF event.
func (e Encoder) Event(r *audit.Record) Event {
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
	case audit.KindConnect, audit.KindSendmsg:
		e.network(&ev, r)
	case audit.KindDNS:
		e.dns(&ev, r)
	case audit.KindExec:
		e.exec(&ev, r)
	case audit.KindSession:
		e.session(&ev, r)
	case audit.KindGap:
		e.gap(&ev, r)
	default:
		// An unknown kind from a newer daemon still reaches the SIEM as
		// an Event Log Activity "Other" rather than being dropped.
		e.classify(&ev, catSystem, ClassEventLogActivity, activityOther, "Other", sevInformational)
		ev.Actor = actor(r, processOf(r.Process))
	}
	if r.Process != nil && (r.Process.ContainerID != "" || r.Process.PodUID != "") {
		// process.container is defined by the container profile.
		ev.Metadata.Profiles = append(ev.Metadata.Profiles, "container")
	}
	return ev
}

func (e Encoder) classify(ev *Event, cat, class, activity int, activityName string, sev int) {
	ev.CategoryUID, ev.CategoryName = cat, categoryNames[cat]
	ev.ClassUID, ev.ClassName = class, classNames[class]
	ev.ActivityID, ev.ActivityName = activity, activityName
	ev.TypeUID = class*100 + activity
	ev.TypeName = classNames[class] + ": " + activityName
	ev.SeverityID, ev.Severity = sev, severityNames[sev]
}

// verdict fills the security_control profile (action, disposition) and the
// status from the outcome, and returns the severity it implies.
func verdict(ev *Event, o *audit.Outcome) int {
	ev.Metadata.Profiles = append(ev.Metadata.Profiles, "security_control")
	act, disp, sev := 0, 0, sevInformational
	actName, dispName := "Unknown", "Unknown"
	if o != nil {
		switch o.Verdict {
		case audit.VerdictAllowed:
			act, actName, disp, dispName = actionAllowed, "Allowed", dispAllowed, "Allowed"
			ev.StatusID, ev.Status = statusSuccess, "Success"
		case audit.VerdictDenied:
			act, actName, disp, dispName, sev = actionDenied, "Denied", dispBlocked, "Blocked", sevMedium
			ev.StatusID, ev.Status = statusFailure, "Failure"
		case audit.VerdictWouldDeny:
			// Audit mode: the traffic went through, the policy flagged it.
			act, actName, disp, dispName, sev = actionAllowed, "Allowed", dispDetected, "Detected", sevLow
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

func (e Encoder) network(ev *Event, r *audit.Record) {
	activity, name := 1, "Open"
	if r.Kind == audit.KindSendmsg {
		activity, name = 6, "Traffic"
	} else if r.Outcome != nil && r.Outcome.Verdict == audit.VerdictDenied {
		activity, name = 5, "Refuse" // the connection never opened
	}
	sev := verdict(ev, r.Outcome)
	e.classify(ev, catNetwork, ClassNetworkActivity, activity, name, sev)
	ev.Metadata.Profiles = append(ev.Metadata.Profiles, "host")
	ev.Actor = actor(r, processOf(r.Process))
	ev.DstEndpoint = &Endpoint{}
	if d := r.Destination; d != nil {
		ev.DstEndpoint = &Endpoint{IP: d.IP, Port: d.Port, Hostname: d.Hostname}
		ev.ConnectionInfo = connInfo(d.Protocol)
	}
	ev.Message = message(r)
}

func (e Encoder) dns(ev *Event, r *audit.Record) {
	sev := verdict(ev, r.Outcome)
	e.classify(ev, catNetwork, ClassDNSActivity, 1, "Query", sev)
	ev.Metadata.Profiles = append(ev.Metadata.Profiles, "host")
	ev.Actor = actor(r, processOf(r.Process))
	if d := r.Destination; d != nil {
		if d.Hostname != "" {
			ev.Query = &DNSQuery{Hostname: d.Hostname}
		}
		if d.IP != "" {
			ev.DstEndpoint = &Endpoint{IP: d.IP, Port: d.Port}
		}
		ev.ConnectionInfo = connInfo(d.Protocol)
	}
	ev.Message = message(r)
}

func (e Encoder) exec(ev *Event, r *audit.Record) {
	activity, name := 1, "Launch"
	if r.Process != nil && r.Process.ExitCode != nil {
		activity, name = 2, "Terminate"
		ev.ExitCode = r.Process.ExitCode
	}
	sev := sevInformational
	if r.Outcome != nil {
		sev = verdict(ev, r.Outcome)
	}
	e.classify(ev, catSystem, ClassProcessActivity, activity, name, sev)
	ev.Metadata.Profiles = append(ev.Metadata.Profiles, "host")
	ev.Process = processOf(r.Process)
	if ev.Process == nil {
		ev.Process = &Process{}
	}
	// The actor of a launch is the parent that called execve.
	var parent *Process
	if r.Process != nil && r.Process.PPID != 0 {
		parent = &Process{PID: r.Process.PPID}
	}
	ev.Actor = actor(r, parent)
	if ev.Actor == nil {
		// Actor is required; without a known parent the process itself
		// is the best answer to "who acted".
		ev.Actor = &Actor{Process: ev.Process}
	}
	if ev.Device == nil {
		ev.Device = &Device{Type: "Unknown"}
	}
	ev.Message = message(r)
}

func (e Encoder) session(ev *Event, r *audit.Record) {
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
		if s.Mode != "" || s.Parent != "" {
			ev.Entity.Data = &SessionData{Mode: s.Mode, Parent: s.Parent}
		}
	}
	ev.Actor = actor(r, processOf(r.Process))
	if r.Actor != "" {
		if ev.Actor == nil {
			ev.Actor = &Actor{}
		}
		ev.Actor.User = &User{Name: r.Actor}
	}
	ev.StatusID, ev.Status = statusSuccess, "Success"
	ev.Message = message(r)
}

func (e Encoder) gap(ev *Event, r *audit.Record) {
	e.classify(ev, catSystem, ClassEventLogActivity, activityOther, "Records Lost", sevHigh)
	ev.StatusID, ev.Status = statusFailure, "Failure"
	ev.LogName = "audit"
	if g := r.Gap; g != nil {
		ev.LogProvider = g.Source
		ev.StatusDetail = "lost " + strconv.FormatUint(g.Count, 10) + " records"
		gg := *g
		ev.Unmapped.Agentfence.Gap = &gg
	}
	ev.Message = message(r)
}

func actor(r *audit.Record, p *Process) *Actor {
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

func processOf(p *audit.Process) *Process {
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

func connInfo(proto string) *ConnectionInfo {
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
func message(r *audit.Record) string {
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
	return string(b)
}
