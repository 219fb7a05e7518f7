// Package v1 is the local API's wire format (docs/sessions.md): the
// requests, the session as callers see it, and the errors. It uses the
// standard library only, so that a client (the agentfence CLI, a launcher)
// links none of the daemon's kernel code.
package v1

import (
	"errors"
	"time"
)

// DefaultSocket is where agentfenced listens unless told otherwise.
const DefaultSocket = "/run/agentfence/api.sock"

// ModelVersion is the version of the session JSON model.
const ModelVersion = 1

// Mode says whether the kernel refuses what a session's scope does not
// allow (enforce) or only records it (audit).
type Mode string

// Session modes.
const (
	ModeEnforce Mode = "enforce"
	ModeAudit   Mode = "audit"
)

// State is where a session is in its life.
type State string

// Session states.
const (
	StateActive      State = "active"
	StateQuarantined State = "quarantined"
	StateRevoked     State = "revoked"
	StateExpired     State = "expired"
)

// OriginKind says what triggered a session.
type OriginKind string

// Origin kinds.
const (
	OriginHuman    OriginKind = "human"
	OriginSchedule OriginKind = "schedule"
	OriginAgent    OriginKind = "agent"
)

// Origin is what triggered a session.
type Origin struct {
	Kind      OriginKind `json:"kind"`
	Principal string     `json:"principal"` // alice@example.com, nightly-report, or the upstream session id
}

// Agent identifies the agent instance that runs in the session.
type Agent struct {
	ID      string `json:"id,omitempty"` // SPIFFE ID
	Name    string `json:"name,omitempty"`
	Version string `json:"version,omitempty"`
	Owner   string `json:"owner,omitempty"`
}

// HeldCaps is a bound process that holds capabilities `agentfence run`
// would have dropped.
type HeldCaps struct {
	PID  uint32   `json:"pid"`
	Caps []string `json:"caps"`
}

// Binding says which processes are members of the session.
type Binding struct {
	// Cgroup is the session's own cgroup: everything started in it (or in
	// a cgroup below it) is a member.
	Cgroup string `json:"cgroup"`
	// PIDs are processes bound later; they and the processes they fork
	// afterwards are members, wherever their cgroup is.
	PIDs []uint32 `json:"pids,omitempty"`
	// ContainerID is a container whose cgroup is bound.
	ContainerID string `json:"container_id,omitempty"`
	// PodUID is a Kubernetes pod whose cgroup is bound.
	PodUID string `json:"pod_uid,omitempty"`
	// ContainerCgroup is the cgroup that container, or pod, was found in.
	ContainerCgroup string `json:"container_cgroup,omitempty"`
	// GateCaps are the bound processes (a bound pid, or those in the
	// container when it was bound) that held capabilities of the gate set:
	// nothing took them away (docs/threat-model.md).
	GateCaps []HeldCaps `json:"gate_caps,omitempty"`
}

// Session is an intent session (model version 1).
type Session struct {
	Version   int               `json:"version"`
	ID        string            `json:"id"`
	Intent    string            `json:"intent"`
	Origin    Origin            `json:"origin"`
	Agent     *Agent            `json:"agent,omitempty"`
	Scope     []string          `json:"scope"`
	Mode      Mode              `json:"mode"`
	TTL       string            `json:"ttl"`
	CreatedAt time.Time         `json:"created_at"`
	ExpiresAt time.Time         `json:"expires_at"`
	Binding   Binding           `json:"binding"`
	Parent    string            `json:"parent,omitempty"`
	Labels    map[string]string `json:"labels,omitempty"`
	// KeptCaps are the capabilities of the gate set that `agentfence run
	// --keep-cap` left to the command, as the opener says.
	KeptCaps []string `json:"kept_caps,omitempty"`
	// DNS is what members may ask a resolver: any, scoped or none
	// (docs/hostnames.md, "DNS modes"). A session restored from state
	// written before dns modes existed reads as any, what it was opened
	// with.
	DNS string `json:"dns,omitempty"`
	// Credentials is what credentials members may send: any, or
	// registered-only (docs/audit.md, "Credential holders").
	Credentials string `json:"credentials,omitempty"`
	OpenedBy    string `json:"opened_by"`
	State       State  `json:"state"`
	Violations  uint32 `json:"violations"`
	// MCP are the servers the session's members may launch, as declared
	// and resolved; each runs in a session of its own, a child of this one
	// that names it in MCPServer.
	MCP       []MCPServer `json:"mcp,omitempty"`
	MCPServer string      `json:"mcp_server,omitempty"`
	// TLSUncovered are the executables members ran whose TLS the probes
	// cannot read (docs/audit.md, "tls_uncovered"): their calls have no
	// http records. At most MaxTLSUncovered; the audit trail has them all.
	TLSUncovered []TLSUncovered `json:"tls_uncovered,omitempty"`
}

// MaxTLSUncovered bounds Session.TLSUncovered: a member can run any number
// of distinct executables.
const MaxTLSUncovered = 32

// TLSUncovered is an executable whose TLS stack is not probed.
type TLSUncovered struct {
	Exe     string    `json:"exe"`
	Library string    `json:"library"` // the stack: go, gnutls, ...
	Reason  string    `json:"reason"`
	Time    time.Time `json:"time"` // its first run in the session
}

// OpenRequest asks for a new session: the JSON body of the open call.
type OpenRequest struct {
	Intent string            `json:"intent"`
	Origin *Origin           `json:"origin,omitempty"`
	Agent  *Agent            `json:"agent,omitempty"`
	Scope  []string          `json:"scope"`
	Mode   Mode              `json:"mode,omitempty"` // enforce (default) or audit
	TTL    string            `json:"ttl,omitempty"`  // Go duration; default from config
	Parent string            `json:"parent,omitempty"`
	Labels map[string]string `json:"labels,omitempty"`
	// KeptCaps names the capabilities of the gate set the launcher leaves
	// to the command (CAP_NET_RAW or net_raw).
	KeptCaps []string `json:"kept_caps,omitempty"`
	// DNS is the dns mode: any, scoped (the default) or none. A child's
	// may not be wider than its parent's; left out, a child takes the
	// default or its parent's, whichever is stricter.
	DNS string `json:"dns,omitempty"`
	// Credentials is any (the default) or registered-only: a member's
	// call carrying a credential no registered holder owns is flagged. A
	// child of a registered-only parent is registered-only.
	Credentials string `json:"credentials,omitempty"`
	// MCP declares the MCP servers the session's members may launch, each
	// with its own scope (docs/mcp.md).
	MCP []MCPServer `json:"mcp,omitempty"`
}

// MCPServer is an MCP server a session's members may launch over stdio. A
// member's exec becomes the server only if it is what was declared: the
// same executable and script, and nothing that injects code into it.
type MCPServer struct {
	Name string `json:"name"`
	// Command is the command line as it will be executed: an absolute
	// executable, or a name on the daemon's PATH, then its arguments. For
	// an interpreter the first argument that is not an option is the
	// script, which must be an absolute path.
	Command []string `json:"command"`
	// ScriptSHA256 pins the script's content (hex), checked at open and
	// at every launch.
	ScriptSHA256 string `json:"script_sha256,omitempty"`
	// Scope is the server's own scope; it need not lie within the
	// session's: the opener, not the agent, grants it.
	Scope []string `json:"scope"`
	// Exe and Script are what the daemon resolved Command to (answers only).
	Exe    string `json:"exe,omitempty"`
	Script string `json:"script,omitempty"`
}

// BindRequest binds processes to a session.
type BindRequest struct {
	PID         uint32 `json:"pid,omitempty"`
	ContainerID string `json:"container_id,omitempty"`
	// PodUID binds a Kubernetes pod's cgroup: every container of the pod,
	// and those it restarts, are members.
	PodUID string `json:"pod_uid,omitempty"`
}

// NarrowRequest replaces a session's scope with a narrower one.
type NarrowRequest struct {
	Scope []string `json:"scope"`
}

// Code is a stable error code; clients may match on it.
type Code string

// Error codes.
const (
	CodeInvalid      Code = "invalid_request"
	CodeNotFound     Code = "not_found"
	CodeConflict     Code = "conflict"
	CodeForbidden    Code = "forbidden"
	CodeCapacity     Code = "capacity"
	CodeKernel       Code = "kernel_error"
	CodeUnauthorized Code = "unauthorized"
	CodeInternal     Code = "internal"
)

// Error is a request error with a stable code and the field it concerns.
type Error struct {
	Code    Code   `json:"code"`
	Field   string `json:"field,omitempty"`
	Message string `json:"message"`
}

func (e *Error) Error() string {
	if e.Field != "" {
		return e.Field + ": " + e.Message
	}
	return e.Message
}

// IsNotFound reports whether err says a session does not exist.
func IsNotFound(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.Code == CodeNotFound
}
