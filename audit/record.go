// Package audit defines the audit record every decision becomes and the
// writers that carry records to their destinations.
package audit

import "time"

// SchemaVersion is bumped whenever a member is renamed or its meaning changes.
// Adding members does not bump it.
const SchemaVersion = "2"

// Kinds of record.
const (
	KindConnect = "connect"
	KindSendmsg = "sendmsg"
	KindExec    = "exec"
	KindSession = "session"
	KindDNS     = "dns"
	KindGap     = "gap"
	// KindDestroy is a connection of a session member destroyed because
	// the session was revoked, expired, narrowed or quarantined.
	KindDestroy = "destroy"
	// KindSocket is a socket a session member may not create: raw, an inet
	// protocol other than TCP and UDP, or a family other than unix,
	// netlink and inet (socket says which).
	KindSocket = "socket"
	// KindEscape is an attempt by a session member to leave its session,
	// for example by moving to another cgroup. The member stays in its
	// session; the record says what was tried (escape.what).
	KindEscape = "escape"
	// KindBind is a member binding a port (refused unless an in: rule
	// names it).
	KindBind = "bind"
	// KindInbound is a peer's attempt to reach a member (a TCP handshake
	// or a UDP datagram) that the member's scope does not admit. source
	// is the peer, destination the member's address and port.
	KindInbound = "inbound"
	// KindMCP is the judgement of a member's exec of a declared MCP
	// server's executable (docs/mcp.md): verdict allowed when it is the
	// server and now runs in the server's session (mcp.session); flagged,
	// with the reason (identity_mismatch, injection, writable_by_agent),
	// when it is not and stays under the agent's scope.
	KindMCP = "mcp"
	// KindHTTP is an HTTP call a session member made over TLS, read at
	// the TLS library (docs/audit.md "HTTP calls"): http says what was
	// asked and answered, credential which credential went with it.
	KindHTTP = "http"
	// KindTLSUncovered is a member's executable that speaks TLS through a
	// stack the probes do not read (tls.library, tls.uncovered says why):
	// its calls have no http records. One per executable and daemon run.
	KindTLSUncovered = "tls_uncovered"
	// KindAgent is a step of an agent's lifecycle that changed what this
	// node enforces: event retired, with the actor who retired it and
	// outcome.reason the transition's reason (docs/kubernetes.md).
	KindAgent = "agent"
)

// Kinds are the kinds of record this build writes.
var Kinds = []string{KindConnect, KindSendmsg, KindExec, KindSession, KindDNS, KindGap, KindDestroy, KindSocket,
	KindEscape, KindBind, KindInbound, KindMCP, KindHTTP, KindTLSUncovered, KindAgent}

// ReasonHeldByMCPServer is the reason of a member's denied connect or
// send that a declared MCP server of its session may make (outcome.held_by
// names the server): the agent tried the direct route around it.
const ReasonHeldByMCPServer = "held_by_mcp_server"

// ReasonCredentialOutsideHolder is the reason of a flagged http record:
// the call carried a registered credential (docs/audit.md, "Credential
// holders") from a process that is not one of its holder's executables.
const ReasonCredentialOutsideHolder = "credential_outside_holder"

// ReasonCredentialUnregistered is the reason of a flagged http record of
// a registered-only session: the call carried a credential no registered
// holder owns.
const ReasonCredentialUnregistered = "credential_unregistered"

// Reasons of refused escapes (kind escape, what ptrace or socket_receive):
// the other process is outside the member's session, or the session
// launches MCP servers, whose members may not ptrace at all nor receive
// inet sockets (docs/threat-model.md, routes 25 and 30).
const (
	ReasonOutsideSession     = "outside_session"
	ReasonLaunchesMCPServers = "launches_mcp_servers"
)

// Verdicts.
const (
	VerdictAllowed   = "allowed"
	VerdictDenied    = "denied"
	VerdictWouldDeny = "would_deny"
	VerdictDestroyed = "destroyed"
	// VerdictFlagged: the kernel saw the act and did not stop it, and the
	// act changed nothing for the gate (an escape attempt).
	VerdictFlagged = "flagged"
	// VerdictDetected: the kernel saw the act only after it happened (a
	// socket no hook could refuse); the session's drift action followed.
	VerdictDetected = "detected"
)

// Record is one audit record. Nested objects answer the five attribution
// questions (agent, session, origin, scope via outcome.rule, outcome) plus the
// process and the destination. Pointers are nil when the record kind does not
// carry that part.
type Record struct {
	Schema   string    `json:"schema"`
	Seq      uint64    `json:"seq,omitempty"`
	PrevHash string    `json:"prev_hash,omitempty"`
	Time     time.Time `json:"time"`
	// Count, FirstTime and LastTime are set on a record that stands for
	// several allowed decisions of one session, process, destination,
	// protocol and rule (audit.aggregate_window): how many, the first and
	// the latest (Time is LastTime). A record without a count is one
	// decision.
	Count       uint64       `json:"count,omitempty"`
	FirstTime   *time.Time   `json:"first_time,omitempty"`
	LastTime    *time.Time   `json:"last_time,omitempty"`
	Kind        string       `json:"kind"`
	Host        string       `json:"host,omitempty"`
	Session     *Session     `json:"session,omitempty"`
	Agent       *Agent       `json:"agent,omitempty"`
	Origin      *Origin      `json:"origin,omitempty"`
	Process     *Process     `json:"process,omitempty"`
	Destination *Destination `json:"destination,omitempty"`
	// Source is the peer of an inbound record.
	Source  *Destination `json:"source,omitempty"`
	Outcome *Outcome     `json:"outcome,omitempty"`
	Gap     *Gap         `json:"gap,omitempty"`
	Escape  *Escape      `json:"escape,omitempty"`
	Socket  *Socket      `json:"socket,omitempty"`
	// Query is a member's DNS query its session's dns mode refused (kind
	// dns, outcome.reason dns_name_unscoped, dns_none or dns_malformed);
	// destination is then the resolver it was sent to.
	Query *Query `json:"query,omitempty"`
	// MCP is the MCP server the process runs as (its session is the
	// server's), or, on kind mcp records, the server a launch was judged
	// against.
	MCP *MCP `json:"mcp,omitempty"`
	// HTTP, TLS and Credential describe a kind http record's call.
	HTTP       *HTTP       `json:"http,omitempty"`
	TLS        *TLS        `json:"tls,omitempty"`
	Credential *Credential `json:"credential,omitempty"`
	// Pod is the Kubernetes pod the acting process runs in, where its node
	// follows the cluster and has the pod (docs/kubernetes.md).
	Pod *Pod `json:"pod,omitempty"`
	// Event names the lifecycle step for kind=session records
	// (opened, bound, narrowed, quarantined, revoked, expired, closed).
	Event string `json:"event,omitempty"`
	// Actor is who caused a lifecycle step (the authenticated API caller).
	Actor string `json:"actor,omitempty"`
}

// Session is the intent session the acting process belonged to.
type Session struct {
	ID     string `json:"id"`
	Intent string `json:"intent"`
	Mode   string `json:"mode,omitempty"`
	Parent string `json:"parent,omitempty"`
	// KeptCaps are the capabilities the session's launcher left to its
	// command (`agentfence run --keep-cap`); set on kind=session records.
	KeptCaps []string `json:"kept_caps,omitempty"`
	// DNS is the session's dns mode (any, scoped, none); set on
	// kind=session records.
	DNS string `json:"dns,omitempty"`
	// Credentials is the session's credentials mode (any,
	// registered-only); set on kind=session records.
	Credentials string `json:"credentials,omitempty"`
	// GateCaps are the processes bound to the session (by pid or with a
	// container) that held capabilities of that set when bound; set on
	// kind=session records.
	GateCaps []HeldCaps `json:"gate_caps,omitempty"`
}

// Query is the question of a refused DNS query, as the member sent it.
type Query struct {
	// Name is sanitised: at most 64 bytes of printable ASCII, labels
	// joined by dots, any other byte (and a dot or backslash inside a
	// label) written \DDD. It is what the member asked, not a hostname.
	Name string `json:"name"`
	// Truncated: the name went on past what Name shows.
	Truncated bool `json:"truncated,omitempty"`
	// Type is the question type (A, AAAA, TXT, ... or TYPEn); empty when
	// the question could not be read.
	Type string `json:"type,omitempty"`
}

// HeldCaps is a process and the capabilities of the gate set (those
// `agentfence run` drops) in its permitted set.
type HeldCaps struct {
	PID  uint32   `json:"pid"`
	Caps []string `json:"caps"`
}

// Agent is the agent instance that runs the session.
type Agent struct {
	ID      string `json:"id,omitempty"` // SPIFFE ID
	Name    string `json:"name,omitempty"`
	Version string `json:"version,omitempty"`
	Owner   string `json:"owner,omitempty"`
}

// Pod is a Kubernetes pod as its node's informers have it. Records share
// one Pod per pod: never modify one.
type Pod struct {
	UID            string `json:"uid"`
	Namespace      string `json:"namespace,omitempty"`
	Name           string `json:"name,omitempty"`
	ServiceAccount string `json:"service_account,omitempty"`
	Node           string `json:"node,omitempty"`
	// Labels are the pod's labels that kubernetes.record_labels names.
	Labels map[string]string `json:"labels,omitempty"`
}

// Origin is what triggered the session.
type Origin struct {
	Kind      string `json:"kind"` // human, schedule, agent
	Principal string `json:"principal,omitempty"`
}

// Process is the process that acted, as the kernel saw it.
type Process struct {
	PID         uint32   `json:"pid"`
	TID         uint32   `json:"tid,omitempty"`
	PPID        uint32   `json:"ppid,omitempty"`
	UID         uint32   `json:"uid"`
	GID         uint32   `json:"gid"`
	Comm        string   `json:"comm"`
	Exe         string   `json:"exe,omitempty"`
	SHA256      string   `json:"sha256,omitempty"`
	Argv        []string `json:"argv,omitempty"`
	CgroupID    uint64   `json:"cgroup_id,omitempty"`
	Cgroup      string   `json:"cgroup,omitempty"`
	ContainerID string   `json:"container_id,omitempty"`
	PodUID      string   `json:"pod_uid,omitempty"`
	Ancestry    []string `json:"ancestry,omitempty"`
	ExitCode    *int     `json:"exit_code,omitempty"`
}

// Destination is where the process tried to send traffic.
type Destination struct {
	IP       string `json:"ip"`
	Port     uint16 `json:"port"`
	Protocol string `json:"protocol"` // tcp, udp
	Hostname string `json:"hostname,omitempty"`
}

// Socket is a member's socket of a family no cgroup hook judges (kind
// socket, outcome.reason socket_family).
type Socket struct {
	Family   string `json:"family"` // packet, xdp, vsock, ... or family_N
	Type     string `json:"type"`   // raw, dgram, stream, seqpacket, ... or type_N
	Protocol int    `json:"protocol"`
	// RefusedBy is the layer that refused it: bpf_lsm, fmod_ret (the same
	// check without the BPF LSM, bpf/boundary.c), seccomp (the filter
	// `agentfence run` installs) or kernel (for example for lack of
	// CAP_NET_RAW). Empty when the socket was created (verdict detected).
	RefusedBy string `json:"refused_by,omitempty"`
}

// Outcome is what the kernel decided and why.
type Outcome struct {
	Verdict string `json:"verdict"`
	// Rule is the scope rule text that matched; empty when none did.
	Rule string `json:"rule,omitempty"`
	// Reason explains a denial that is not simply "no rule matched"
	// (expired, quarantined, socket_type, sni_mismatch, ...).
	Reason string `json:"reason,omitempty"`
	Errno  string `json:"errno,omitempty"`
	// Suppressed, on an inbound record, counts the session's inbound
	// refusals since its previous inbound record that were not recorded
	// one by one (at most 32 are, per second and session).
	Suppressed uint32 `json:"suppressed,omitempty"`
	// HeldBy, on a denial with reason held_by_mcp_server, is the declared
	// MCP server whose scope admits what the member tried.
	HeldBy string `json:"held_by,omitempty"`
}

// MCP is an MCP server a session declared, as the daemon resolved it.
type MCP struct {
	Server string `json:"server"`
	// Session is the server's own session; Serves the session that
	// declared it (the agent's).
	Session string `json:"session,omitempty"`
	Serves  string `json:"serves,omitempty"`
	// Exe and Script are the files the server runs (Script empty for a
	// native server); ScriptSHA256 the hash the opener pinned, if any.
	Exe          string `json:"exe,omitempty"`
	Script       string `json:"script,omitempty"`
	ScriptSHA256 string `json:"script_sha256,omitempty"`
}

// Escape is what a member tried in order to leave its session (kind
// escape).
type Escape struct {
	// What is cgroup_move (written into another cgroup's cgroup.procs or
	// cgroup.threads), clone_into_cgroup (clone3 CLONE_INTO_CGROUP),
	// netns (moved to another network namespace; Via says how), ptrace
	// (asked to attach to TargetPID, via attach, or to be traced by it,
	// via traceme: refused) or socket_receive (received an inet socket,
	// connected to the record's destination when it names one: refused).
	What string `json:"what"`
	// Cgroup is the cgroup it was moved or cloned into, relative to the
	// cgroup v2 mount ("/" is the root); empty when it could no longer be
	// named (removed before the record was made). CgroupID is its id.
	Cgroup   string `json:"cgroup,omitempty"`
	CgroupID uint64 `json:"cgroup_id,omitempty"`
	// ByPID is the process that moved the member, when not the member
	// itself; ChildPID the process a clone started.
	ByPID    uint32 `json:"by_pid,omitempty"`
	ChildPID uint32 `json:"child_pid,omitempty"`
	// NetNS is the inode number of the network namespace a netns escape
	// went to (as /proc/PID/ns/net names it: net:[NetNS]).
	NetNS uint64 `json:"netns,omitempty"`
	// Via is how a netns escape happened: clone (a child made in a new
	// namespace), unshare, setns, or exec (seen only at the exec that
	// followed, when the change itself was not); for ptrace, attach or
	// traceme.
	Via string `json:"via,omitempty"`
	// TargetPID is the process a ptrace escape tried to attach to (for
	// traceme, the parent that would have traced it).
	TargetPID uint32 `json:"target_pid,omitempty"`
}

// HTTP is one HTTP call (kind http).
type HTTP struct {
	Method string `json:"method,omitempty"`
	Host   string `json:"host,omitempty"` // Host header or :authority
	// Path is the request target without its query string; Query the
	// query's keyed hash, when the configuration keeps one.
	Path    string `json:"path,omitempty"`
	Query   string `json:"query_hash,omitempty"`
	Status  int    `json:"status,omitempty"`  // 0: no response seen
	Version string `json:"version,omitempty"` // 1.1, 2
	// RequestBytes and ResponseBytes are the body sizes.
	RequestBytes  int64 `json:"request_bytes"`
	ResponseBytes int64 `json:"response_bytes"`
	DurationMS    int64 `json:"duration_ms"`
	// Partial: the call was only partly seen (its connection was already
	// open when the probes were attached, or bytes went uncaptured), so
	// some members may be empty.
	Partial bool `json:"partial,omitempty"`
}

// TLS is where the plaintext was read.
type TLS struct {
	// Library is the TLS stack: openssl (libssl), or openssl:node (the
	// copy inside node's executable).
	Library string `json:"library"`
	// Socket is false when the library's I/O was not seen (node's memory
	// BIOs): destination then comes from the call's host only.
	Socket bool `json:"socket"`
	// Uncovered, on kind tls_uncovered, is why the stack is not read.
	Uncovered string `json:"uncovered,omitempty"`
}

// Credential is a credential that went with a call, by fingerprint only.
type Credential struct {
	// Type is bearer, basic, api_key, aws_sigv4 or other.
	Type   string `json:"type"`
	Header string `json:"header,omitempty"`
	// Fingerprint is the node-keyed HMAC of the secret (credential
	// package); KeyID an AWS access key id, which is not a secret.
	Fingerprint string `json:"fingerprint,omitempty"`
	KeyID       string `json:"key_id,omitempty"`
	// Holder is the registered holder the credential belongs to, if any.
	Holder string `json:"holder,omitempty"`
}

// Gap says that records were lost and where.
type Gap struct {
	Source   string `json:"source"` // kernel_ringbuf, spool:<sink>, ...
	Count    uint64 `json:"count"`
	FirstSeq uint64 `json:"first_seq,omitempty"`
	LastSeq  uint64 `json:"last_seq,omitempty"`
}
