// Package ocsf maps audit records to OCSF events of one pinned schema
// version. The mapping is documented in docs/audit.md; this file is its
// only implementation. encode.go serializes the resulting Event to JSON.
package ocsf

import (
	"path"
	"slices"
	"strconv"
	"strings"
	"sync"

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
	ClassHTTPActivity     = 4002
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
		ClassHTTPActivity: "HTTP Activity", ClassDNSActivity: "DNS Activity",
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

// agentRetired is the activity of an agent's retirement: its identity
// disabled, for good.
var agentRetired = sessionActivities["revoked"]

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
	StartTime      int64           `json:"start_time,omitempty"`
	EndTime        int64           `json:"end_time,omitempty"`
	Duration       int64           `json:"duration,omitempty"`
	Count          uint64          `json:"count,omitempty"`
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
	SrcEndpoint    *Endpoint       `json:"src_endpoint,omitempty"`
	ConnectionInfo *ConnectionInfo `json:"connection_info,omitempty"`
	HTTPRequest    *HTTPRequest    `json:"http_request,omitempty"`
	HTTPResponse   *HTTPResponse   `json:"http_response,omitempty"`
	Traffic        *NetworkTraffic `json:"traffic,omitempty"`
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
	UID          string   `json:"uid,omitempty"`
	PodUUID      string   `json:"pod_uuid,omitempty"`
	Orchestrator string   `json:"orchestrator,omitempty"`
	Labels       []string `json:"labels,omitempty"` // the pod's, as key=value, sorted
}

// PodData is what OCSF 1.3.0's container has no member for: the pod's
// name, namespace, service account and node.
type PodData struct {
	Namespace      string `json:"namespace,omitempty"`
	Name           string `json:"name,omitempty"`
	ServiceAccount string `json:"service_account,omitempty"`
	Node           string `json:"node,omitempty"`
}

type Endpoint struct {
	IP       string `json:"ip,omitempty"`
	Port     uint16 `json:"port,omitempty"`
	Hostname string `json:"hostname,omitempty"`
	Name     string `json:"name,omitempty"`
}

type ConnectionInfo struct {
	DirectionID  int    `json:"direction_id"`
	Direction    string `json:"direction,omitempty"`
	ProtocolName string `json:"protocol_name,omitempty"`
	ProtocolNum  int    `json:"protocol_num,omitempty"`
}

type DNSQuery struct {
	Hostname string `json:"hostname"`
	Type     string `json:"type,omitempty"`
}

type ManagedEntity struct {
	UID  string       `json:"uid"`
	Name string       `json:"name,omitempty"`
	Type string       `json:"type,omitempty"`
	Data *SessionData `json:"data,omitempty"`
}

type SessionData struct {
	Mode     string           `json:"mode,omitempty"`
	Parent   string           `json:"parent,omitempty"`
	KeptCaps []string         `json:"kept_caps,omitempty"`
	DNS      string           `json:"dns,omitempty"`
	GateCaps []audit.HeldCaps `json:"gate_caps,omitempty"`
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
	HeldBy          string       `json:"held_by,omitempty"`
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
	Pod             *PodData     `json:"pod,omitempty"`
	Gap             *audit.Gap   `json:"gap,omitempty"`
	Destination     *Destination `json:"destination,omitempty"`
	// Escape is what a member tried to leave its session with (kind
	// escape); OCSF 1.3.0 has no object for a cgroup.
	Escape *audit.Escape `json:"escape,omitempty"`
	// Socket is a member's socket of a family no cgroup hook judges (kind
	// socket): OCSF's connection_info has no socket family or layer.
	Socket *audit.Socket `json:"socket,omitempty"`
	// MCP is the MCP server the acting process runs as, or the one a
	// launch was judged against (kind mcp): OCSF 1.3.0 knows no MCP
	// server.
	MCP *audit.MCP `json:"mcp,omitempty"`
	// TLS, Credential, HTTPPartial and QueryHash are what OCSF 1.3.0's
	// http_request has no member for (kind http). The query hash is not
	// url.query_string: a SIEM would take it for the query itself.
	TLS         *audit.TLS        `json:"tls,omitempty"`
	Credential  *audit.Credential `json:"credential,omitempty"`
	HTTPPartial bool              `json:"http_partial,omitempty"`
	QueryHash   string            `json:"query_hash,omitempty"`
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

// Append appends the JSON encoding of r's OCSF event to dst. The bytes are
// those encoding/json writes for Event with HTML escaping off, produced by
// the hand-written appendEvent (encode.go) from an Event mapped into pooled
// storage; the error is always nil and is kept for callers written against
// the reflection encoder.
func (e Encoder) Append(dst []byte, r *audit.Record) ([]byte, error) {
	sc := scratchPool.Get().(*scratch)
	e.fill(sc, r)
	dst = appendEvent(dst, &sc.ev)
	*sc = scratch{} // drop references to r's strings before pooling
	scratchPool.Put(sc)
	return dst, nil
}

// Event maps r to its OCSF event.
func (e Encoder) Event(r *audit.Record) Event {
	sc := new(scratch)
	e.fill(sc, r)
	return sc.ev
}

// scratch holds an Event and every object it can point to, so mapping a
// record costs no allocation per object: Event takes a fresh one, Append
// one from scratchPool. Each object is used at most once per event.
type scratch struct {
	ev           Event
	unmapped     Unmapped
	device       Device
	actor        Actor
	actorSession Session
	actorUser    User
	proc         Process // processOf
	procUser     User
	procFile     File
	procHash     [1]Fingerprint
	procParent   Process
	procCtr      Container
	pod          PodData
	podLabels    []string
	execParent   Process // actor.process of an exec, or of an escape made by another process
	endpoint     Endpoint
	srcEndpoint  Endpoint // the peer of an inbound record
	conn         ConnectionInfo
	query        DNSQuery
	entity       ManagedEntity
	entityData   SessionData
	rule         Rule
	gap          audit.Gap
	escape       audit.Escape
	socket       audit.Socket
	mcp          audit.MCP
	httpReq      HTTPRequest
	url          URL
	httpResp     HTTPResponse
	traffic      NetworkTraffic
	tls          audit.TLS
	credential   audit.Credential
	gid          uint32
	act, disp    int
	profiles     [3]string
}

var scratchPool = sync.Pool{New: func() any { return new(scratch) }}

// addProfile appends to metadata.profiles, backed by sc.profiles.
func addProfile(sc *scratch, p string) {
	m := &sc.ev.Metadata
	if m.Profiles == nil {
		m.Profiles = sc.profiles[:0]
	}
	m.Profiles = append(m.Profiles, p)
}

// fill maps r into sc.ev; sc must be zero.
func (e Encoder) fill(sc *scratch, r *audit.Record) {
	ev := &sc.ev
	ev.Time = r.Time.UnixMilli()
	if r.Count > 0 && r.FirstTime != nil && r.LastTime != nil {
		ev.Count, ev.StartTime, ev.EndTime = r.Count, r.FirstTime.UnixMilli(), r.LastTime.UnixMilli()
	}
	ev.Metadata = Metadata{
		Version: SchemaVersion,
		Product: Product{Name: ProductName, VendorName: VendorName, Version: e.ProductVersion},
		LogName: "audit",
	}
	if r.Seq != 0 {
		ev.Metadata.Sequence = r.Seq
		ev.Metadata.UID = metadataUID(r.Host, r.Seq)
	}
	if r.Session != nil {
		ev.Metadata.CorrelationUID = r.Session.ID
	}
	sc.unmapped.Agentfence = AgentfenceData{Schema: r.Schema, Kind: r.Kind, Seq: r.Seq, PrevHash: r.PrevHash, Event: r.Event}
	ev.Unmapped = &sc.unmapped
	u := &sc.unmapped.Agentfence
	if r.Host != "" {
		sc.device = Device{TypeID: 0, Type: "Unknown", Hostname: r.Host}
		ev.Device = &sc.device
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
		sc.gid = p.GID
		u.GID, u.PPID, u.CgroupID, u.Cgroup = &sc.gid, p.PPID, p.CgroupID, p.Cgroup
	}
	if o := r.Outcome; o != nil {
		u.Verdict, u.Reason, u.Errno, u.HeldBy = o.Verdict, o.Reason, o.Errno, o.HeldBy
	}
	if m := r.MCP; m != nil {
		sc.mcp = *m
		u.MCP = &sc.mcp
	}

	switch r.Kind {
	case audit.KindConnect, audit.KindSendmsg, audit.KindSocket, audit.KindDestroy, audit.KindBind, audit.KindInbound:
		network(sc, r)
	case audit.KindDNS:
		dns(sc, r)
	case audit.KindExec:
		exec(sc, r)
	case audit.KindSession:
		session(sc, r)
	case audit.KindGap:
		gap(sc, r)
	case audit.KindEscape:
		escape(sc, r)
	case audit.KindMCP:
		mcp(sc, r)
	case audit.KindHTTP:
		http(sc, r)
	case audit.KindTLSUncovered:
		tlsUncovered(sc, r)
	case audit.KindAgent:
		agent(sc, r)
	default:
		// An unknown kind from a newer daemon still reaches the SIEM as
		// an Event Log Activity "Other" rather than being dropped.
		classify(ev, catSystem, ClassEventLogActivity, activityOther, "Other", sevInformational)
		ev.Actor = actor(sc, r, processOf(sc, r.Process))
	}
	if r.Process != nil && (r.Process.ContainerID != "" || r.Process.PodUID != "") {
		// process.container is defined by the container profile.
		addProfile(sc, "container")
		if p := r.Pod; p != nil {
			// processOf filled sc.procCtr from r.Process, for the actor's
			// process or the event's.
			sc.procCtr.Orchestrator = "Kubernetes"
			sc.podLabels = sc.podLabels[:0]
			for k, v := range p.Labels {
				sc.podLabels = append(sc.podLabels, k+"="+v)
			}
			if len(sc.podLabels) > 0 {
				slices.Sort(sc.podLabels)
				sc.procCtr.Labels = sc.podLabels
			}
		}
	}
	if p := r.Pod; p != nil {
		sc.pod = PodData{Namespace: p.Namespace, Name: p.Name, ServiceAccount: p.ServiceAccount, Node: p.Node}
		sc.unmapped.Agentfence.Pod = &sc.pod
	}
}

// metadataUID is "<host>:<seq>".
func metadataUID(host string, seq uint64) string {
	var b [64]byte
	return string(strconv.AppendUint(append(append(b[:0], host...), ':'), seq, 10))
}

func classify(ev *Event, cat, class, activity int, activityName string, sev int) {
	ev.CategoryUID, ev.CategoryName = cat, categoryNames[cat]
	ev.ClassUID, ev.ClassName = class, classNames[class]
	ev.ActivityID, ev.ActivityName = activity, activityName
	ev.TypeUID = class*100 + activity
	ev.TypeName = typeName(class, activityName)
	ev.SeverityID, ev.Severity = sev, severityNames[sev]
}

// typeNames holds "<class name>: <activity name>" for the activities the
// mapping uses, so the common types cost no concatenation.
var typeNames = func() map[string]string {
	m := map[string]string{}
	add := func(class int, names ...string) {
		for _, n := range names {
			m[classNames[class]+": "+n] = classNames[class] + ": " + n
		}
	}
	add(ClassNetworkActivity, "Open", "Traffic", "Refuse")
	add(ClassDNSActivity, "Query")
	add(ClassHTTPActivity, httpActivityNames[:]...)
	add(ClassHTTPActivity, "PATCH") // the commonest method 1.3.0 has no activity for
	add(ClassProcessActivity, "Launch", "Terminate", "Other")
	add(ClassEventLogActivity, "Other", "Records Lost")
	add(ClassEntityManagement, "Other")
	for _, a := range sessionActivities {
		add(ClassEntityManagement, a.name)
	}
	return m
}()

func typeName(class int, activityName string) string {
	var b [96]byte
	key := append(append(append(b[:0], classNames[class]...), ": "...), activityName...)
	if s, ok := typeNames[string(key)]; ok { // no allocation for the lookup
		return s
	}
	return string(key)
}

// verdict fills the security_control profile (action, disposition) and the
// status from the outcome, and returns the severity it implies.
func verdict(sc *scratch, o *audit.Outcome) int {
	ev := &sc.ev
	addProfile(sc, "security_control")
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
		case audit.VerdictFlagged:
			// An escape attempt, or an exec of a declared MCP server's
			// executable that is not the server: the act happened and
			// changed nothing for the gate (the process keeps its
			// session), and it is how an agent would try to take
			// another scope.
			act, actName, disp, dispName, sev = actionAllowed, "Allowed", dispDetected, "Detected", sevHigh
			ev.StatusID, ev.Status = statusSuccess, "Success"
		case audit.VerdictDetected:
			// A socket no hook could refuse: it was made, and the drift
			// action followed.
			act, actName, disp, dispName, sev = actionAllowed, "Allowed", dispDetected, "Detected", sevHigh
			ev.StatusID, ev.Status = statusSuccess, "Success"
		}
		ev.StatusCode, ev.StatusDetail = o.Errno, o.Reason
		if o.Rule != "" {
			sc.rule = Rule{Name: o.Rule}
			ev.FirewallRule = &sc.rule
		}
	}
	sc.act, sc.disp = act, disp
	ev.ActionID, ev.Action = &sc.act, actName
	ev.DispositionID, ev.Disposition = &sc.disp, dispName
	return sev
}

func network(sc *scratch, r *audit.Record) {
	ev := &sc.ev
	activity, name := 1, "Open"
	switch {
	case r.Kind == audit.KindDestroy:
		activity, name = 3, "Reset" // the daemon reset a live connection
	case r.Kind == audit.KindSendmsg:
		activity, name = 6, "Traffic"
	case r.Outcome != nil && r.Outcome.Verdict == audit.VerdictDenied:
		activity, name = 5, "Refuse" // the connection (or socket) never opened
	}
	sev := verdict(sc, r.Outcome)
	classify(ev, catNetwork, ClassNetworkActivity, activity, name, sev)
	addProfile(sc, "host")
	ev.Actor = actor(sc, r, processOf(sc, r.Process))
	ev.DstEndpoint = &sc.endpoint
	if d := r.Destination; d != nil {
		sc.endpoint = Endpoint{IP: d.IP, Port: d.Port, Hostname: d.Hostname}
		ev.ConnectionInfo = connInfo(sc, d.Protocol)
	}
	if s := r.Source; s != nil {
		sc.srcEndpoint = Endpoint{IP: s.IP, Port: s.Port}
		ev.SrcEndpoint = &sc.srcEndpoint
		if ev.ConnectionInfo != nil {
			ev.ConnectionInfo.DirectionID, ev.ConnectionInfo.Direction = 1, "Inbound"
		}
	}
	if s := r.Socket; s != nil {
		sc.socket = *s
		sc.unmapped.Agentfence.Socket = &sc.socket
		// No address: what it would reach is the socket's family (OCSF
		// wants the endpoint named somehow).
		if sc.endpoint.IP == "" {
			sc.endpoint.Name = s.Family
		}
	}
	ev.Message = message(r)
}

func dns(sc *scratch, r *audit.Record) {
	ev := &sc.ev
	sev := verdict(sc, r.Outcome)
	classify(ev, catNetwork, ClassDNSActivity, 1, "Query", sev)
	addProfile(sc, "host")
	ev.Actor = actor(sc, r, processOf(sc, r.Process))
	if d := r.Destination; d != nil {
		if d.Hostname != "" {
			sc.query = DNSQuery{Hostname: d.Hostname}
			ev.Query = &sc.query
		}
		if d.IP != "" {
			sc.endpoint = Endpoint{IP: d.IP, Port: d.Port}
			ev.DstEndpoint = &sc.endpoint
		}
		ev.ConnectionInfo = connInfo(sc, d.Protocol)
	}
	if q := r.Query; q != nil {
		// A refused query: what was asked, not a destination host.
		sc.query = DNSQuery{Hostname: q.Name, Type: q.Type}
		ev.Query = &sc.query
	}
	ev.Message = message(r)
}

func exec(sc *scratch, r *audit.Record) {
	ev := &sc.ev
	activity, name := 1, "Launch"
	if r.Process != nil && r.Process.ExitCode != nil {
		activity, name = 2, "Terminate"
		ev.ExitCode = r.Process.ExitCode
	}
	sev := sevInformational
	if r.Outcome != nil {
		sev = verdict(sc, r.Outcome)
	}
	launch(sc, r, activity, name, sev)
}

// mcp maps the judgement of a member's exec of a declared MCP server's
// executable to a Launch of the exec'd process, as exec does: the launch
// is what was judged, and the verdict (allowed: it is the server;
// flagged: it is not, outcome.reason says why) fits the security_control
// profile like any other. Not activity 4 Inject, though one reason is
// injection: OCSF means a process injecting into another, and an
// injecting variable is part of the launch. Not a Detection Finding
// either: an allowed launch finds nothing. The server is in
// unmapped.agentfence.mcp.
func mcp(sc *scratch, r *audit.Record) {
	launch(sc, r, 1, "Launch", verdict(sc, r.Outcome))
}

// launch fills a Process Activity about r's process as launched by its
// parent.
func launch(sc *scratch, r *audit.Record, activity int, name string, sev int) {
	ev := &sc.ev
	classify(ev, catSystem, ClassProcessActivity, activity, name, sev)
	addProfile(sc, "host")
	ev.Process = processOf(sc, r.Process)
	if ev.Process == nil {
		ev.Process = &sc.proc // empty
	}
	// The actor of a launch is the parent that called execve.
	var parent *Process
	if r.Process != nil && r.Process.PPID != 0 {
		sc.execParent = Process{PID: r.Process.PPID}
		parent = &sc.execParent
	}
	ev.Actor = actor(sc, r, parent)
	if ev.Actor == nil {
		// Actor is required; without a known parent the process itself
		// is the best answer to "who acted".
		sc.actor = Actor{Process: ev.Process}
		ev.Actor = &sc.actor
	}
	if ev.Device == nil {
		sc.device = Device{Type: "Unknown"}
		ev.Device = &sc.device
	}
	ev.Message = message(r)
}

func session(sc *scratch, r *audit.Record) {
	ev := &sc.ev
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
	classify(ev, catIAM, ClassEntityManagement, a.id, a.name, sev)
	sc.entity = ManagedEntity{Type: "Intent Session"}
	ev.Entity = &sc.entity
	if s := r.Session; s != nil {
		sc.entity.UID, sc.entity.Name = s.ID, s.Intent
		if s.Mode != "" || s.Parent != "" || len(s.KeptCaps) > 0 || s.DNS != "" || len(s.GateCaps) > 0 {
			sc.entityData = SessionData{Mode: s.Mode, Parent: s.Parent, KeptCaps: s.KeptCaps, DNS: s.DNS, GateCaps: s.GateCaps}
			sc.entity.Data = &sc.entityData
		}
	}
	lifecycleActor(sc, r)
	ev.StatusID, ev.Status = statusSuccess, "Success"
	ev.Message = message(r)
}

// lifecycleActor fills the actor of a lifecycle record: the process, if
// any, and the user who made the change (record.actor).
func lifecycleActor(sc *scratch, r *audit.Record) {
	ev := &sc.ev
	ev.Actor = actor(sc, r, processOf(sc, r.Process))
	if r.Actor != "" {
		if ev.Actor == nil {
			ev.Actor = &sc.actor // empty
		}
		sc.actorUser = User{Name: r.Actor}
		ev.Actor.User = &sc.actorUser
	}
}

// agent maps a kind agent record, an agent's identity retired, as the
// Entity Management of an entity of type Agent: its SPIFFE ID and name.
func agent(sc *scratch, r *audit.Record) {
	ev := &sc.ev
	id, name := activityOther, "Other"
	if r.Event == "retired" {
		id, name = agentRetired.id, agentRetired.name
	}
	classify(ev, catIAM, ClassEntityManagement, id, name, sevMedium)
	sc.entity = ManagedEntity{Type: "Agent"}
	if a := r.Agent; a != nil {
		sc.entity.UID, sc.entity.Name = a.ID, a.Name
	}
	ev.Entity = &sc.entity
	lifecycleActor(sc, r)
	ev.StatusID, ev.Status = statusSuccess, "Success"
	ev.Message = message(r)
}

func gap(sc *scratch, r *audit.Record) {
	ev := &sc.ev
	classify(ev, catSystem, ClassEventLogActivity, activityOther, "Records Lost", sevHigh)
	ev.StatusID, ev.Status = statusFailure, "Failure"
	ev.LogName = "audit"
	if g := r.Gap; g != nil {
		ev.LogProvider = g.Source
		ev.StatusDetail = "lost " + strconv.FormatUint(g.Count, 10) + " records"
		sc.gap = *g
		sc.unmapped.Agentfence.Gap = &sc.gap
	}
	ev.Message = message(r)
}

// escape maps a member's attempt to leave its session to a Process
// Activity "Other" of the member: the actor is the process that moved it,
// or the member itself; what it tried is in unmapped.agentfence.escape.
func escape(sc *scratch, r *audit.Record) {
	ev := &sc.ev
	sev := verdict(sc, r.Outcome)
	classify(ev, catSystem, ClassProcessActivity, activityOther, "Other", sev)
	addProfile(sc, "host")
	ev.Process = processOf(sc, r.Process)
	if ev.Process == nil {
		ev.Process = &sc.proc // empty
	}
	by := ev.Process
	if e := r.Escape; e != nil {
		if e.ByPID != 0 {
			sc.execParent = Process{PID: e.ByPID}
			by = &sc.execParent
		}
		sc.escape = *e
		sc.unmapped.Agentfence.Escape = &sc.escape
	}
	ev.Actor = actor(sc, r, by)
	if ev.Device == nil {
		sc.device = Device{Type: "Unknown"}
		ev.Device = &sc.device
	}
	ev.Message = message(r)
}

// actor fills sc.actor; it returns nil when there is nothing to say.
func actor(sc *scratch, r *audit.Record, p *Process) *Actor {
	a := &sc.actor
	a.Process = p
	if s := r.Session; s != nil {
		sc.actorSession = Session{UID: s.ID}
		a.Session = &sc.actorSession
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

// processOf fills sc.proc and its objects from p, or returns nil.
func processOf(sc *scratch, p *audit.Process) *Process {
	if p == nil {
		return nil
	}
	sc.procUser = User{UID: strconv.FormatUint(uint64(p.UID), 10)}
	sc.proc = Process{
		PID: p.PID, TID: p.TID, Name: p.Comm,
		User:    &sc.procUser,
		Lineage: p.Ancestry,
	}
	out := &sc.proc
	if len(p.Argv) > 0 {
		out.CmdLine = strings.Join(p.Argv, " ")
	}
	if p.Exe != "" {
		sc.procFile = File{Name: path.Base(p.Exe), Path: p.Exe, TypeID: 1, Type: "Regular File"}
		out.File = &sc.procFile
		if p.SHA256 != "" {
			sc.procHash[0] = Fingerprint{AlgorithmID: 3, Algorithm: "SHA-256", Value: p.SHA256}
			out.File.Hashes = sc.procHash[:]
		}
	}
	if p.PPID != 0 {
		sc.procParent = Process{PID: p.PPID}
		out.ParentProcess = &sc.procParent
	}
	if p.ContainerID != "" || p.PodUID != "" {
		sc.procCtr = Container{UID: p.ContainerID, PodUUID: p.PodUID}
		out.Container = &sc.procCtr
	}
	return out
}

func connInfo(sc *scratch, proto string) *ConnectionInfo {
	sc.conn = ConnectionInfo{DirectionID: 2, Direction: "Outbound", ProtocolName: proto}
	ci := &sc.conn
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
	b := make([]byte, 0, 256) // on the stack; an http call's line passes 128 bytes
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
	if h := r.HTTP; h != nil {
		b = appendHTTPMessage(b, h, r.Credential)
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
	if e := r.Escape; e != nil {
		b = append(b, ' ')
		b = append(b, e.What...)
		if e.Cgroup != "" {
			b = append(b, " into "...)
			b = append(b, e.Cgroup...)
		}
	}
	if m := r.MCP; m != nil {
		b = append(b, " server "...)
		b = append(b, m.Server...)
	}
	return string(b)
}
