package attribution

import (
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/agentfence/agentfence/audit"
	"github.com/agentfence/agentfence/enforcer"
	"github.com/agentfence/agentfence/internal/privdrop"
	"github.com/agentfence/agentfence/scope"
)

// ModelVersion is the version of the session JSON model (docs/sessions.md).
const ModelVersion = 1

// Origin is what triggered a session.
type Origin struct {
	Kind      string `json:"kind"`      // human, schedule or agent
	Principal string `json:"principal"` // alice@example.com, nightly-report, or the upstream session id
}

// Agent identifies the agent instance that runs in the session.
type Agent struct {
	ID      string `json:"id,omitempty"` // SPIFFE ID
	Name    string `json:"name,omitempty"`
	Version string `json:"version,omitempty"`
	Owner   string `json:"owner,omitempty"`
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
	// ContainerCgroup is the cgroup that container was found in.
	ContainerCgroup string `json:"container_cgroup,omitempty"`
	// GateCaps are the bound processes (a bound pid, or those in the
	// container when it was bound) that held capabilities `agentfence run`
	// would have dropped: nothing took them away (docs/threat-model.md).
	GateCaps []audit.HeldCaps `json:"gate_caps,omitempty"`
}

// Session is an intent session (model version 1).
type Session struct {
	Version   int               `json:"version"`
	ID        string            `json:"id"`
	Intent    string            `json:"intent"`
	Origin    Origin            `json:"origin"`
	Agent     *Agent            `json:"agent,omitempty"`
	Scope     []string          `json:"scope"`
	Mode      string            `json:"mode"`
	TTL       string            `json:"ttl"`
	CreatedAt time.Time         `json:"created_at"`
	ExpiresAt time.Time         `json:"expires_at"`
	Binding   Binding           `json:"binding"`
	Parent    string            `json:"parent,omitempty"`
	Labels    map[string]string `json:"labels,omitempty"`
	KeptCaps  []string          `json:"kept_caps,omitempty"` // of privdrop.Gate, left to the command by `agentfence run --keep-cap`, as the opener says
	// DNS is what members may ask a resolver (docs/hostnames.md, "DNS
	// modes"). A session restored from state written before dns modes
	// existed reads as any, what it was opened with.
	DNS        scope.DNSMode `json:"dns,omitempty"`
	OpenedBy   string        `json:"opened_by"`
	State      string        `json:"state"` // active, quarantined, revoked, expired
	Violations uint32        `json:"violations"`
}

// Session states.
const (
	StateActive      = "active"
	StateQuarantined = "quarantined"
	StateRevoked     = "revoked"
	StateExpired     = "expired"
)

// OpenRequest asks for a new session: the JSON body of the open call.
type OpenRequest struct {
	Intent string            `json:"intent"`
	Origin *Origin           `json:"origin,omitempty"`
	Agent  *Agent            `json:"agent,omitempty"`
	Scope  []string          `json:"scope"`
	Mode   string            `json:"mode,omitempty"` // enforce (default) or audit
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
}

// BindRequest binds processes to a session.
type BindRequest struct {
	PID         uint32 `json:"pid,omitempty"`
	ContainerID string `json:"container_id,omitempty"`
}

// NarrowRequest replaces a session's scope with a narrower one.
type NarrowRequest struct {
	Scope []string `json:"scope"`
}

// Error is a request error with a stable code and the field it concerns.
type Error struct {
	Code    string `json:"code"`
	Field   string `json:"field,omitempty"`
	Message string `json:"message"`
}

func (e *Error) Error() string {
	if e.Field != "" {
		return e.Field + ": " + e.Message
	}
	return e.Message
}

// Error codes (stable; clients may match on them).
const (
	CodeInvalid      = "invalid_request"
	CodeNotFound     = "not_found"
	CodeConflict     = "conflict"
	CodeForbidden    = "forbidden"
	CodeCapacity     = "capacity"
	CodeKernel       = "kernel_error"
	CodeUnauthorized = "unauthorized"
)

func invalid(field, format string, args ...any) *Error {
	return &Error{Code: CodeInvalid, Field: field, Message: fmt.Sprintf(format, args...)}
}

func forbidden(field, format string, args ...any) *Error {
	return &Error{Code: CodeForbidden, Field: field, Message: fmt.Sprintf(format, args...)}
}

func notFound(id string) *Error {
	return &Error{Code: CodeNotFound, Field: "id", Message: fmt.Sprintf("no session %q", id)}
}

// IsNotFound reports whether err says a session does not exist.
func IsNotFound(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.Code == CodeNotFound
}

const (
	maxIntentBytes = 4096
	maxTextBytes   = 256
	maxLabels      = 64
)

func checkText(field, s string, required bool) error {
	switch {
	case required && strings.TrimSpace(s) == "":
		return invalid(field, "is required")
	case len(s) > maxTextBytes:
		return invalid(field, "is %d bytes; at most %d", len(s), maxTextBytes)
	case !utf8.ValidString(s):
		return invalid(field, "is not valid UTF-8")
	case strings.ContainsFunc(s, func(r rune) bool { return r < 0x20 || r == 0x7f }):
		return invalid(field, "contains control characters")
	}
	return nil
}

// parseScope parses rule texts; errors name the field and index.
func parseScope(field string, texts []string, maxRules int) ([]scope.Rule, []scope.Entry, error) {
	if len(texts) > maxRules {
		return nil, nil, invalid(field, "%d rules; at most %d", len(texts), maxRules)
	}
	rules := make([]scope.Rule, 0, len(texts))
	for i, text := range texts {
		r, err := scope.Parse(text)
		if err != nil {
			return nil, nil, invalid(fmt.Sprintf("%s[%d]", field, i), "%v", err)
		}
		rules = append(rules, r)
	}
	entries, err := scope.Compile(rules)
	if err != nil {
		return nil, nil, invalid(field, "%v", err)
	}
	return rules, entries, nil
}

// opening is an OpenRequest checked against the config, not yet against
// the caller or the parent.
type opening struct {
	req     OpenRequest
	intent  string
	origin  Origin
	mode    enforcer.Mode
	ttl     time.Duration
	rules   []scope.Rule
	entries []scope.Entry
	caps    []string // KeptCaps, canonical and in privdrop.Gate's order
	dns     scope.DNSMode
}

func (r *Registry) check(req OpenRequest, caller Caller) (opening, error) {
	o := opening{req: req, intent: strings.TrimSpace(req.Intent)}
	switch {
	case o.intent == "":
		return o, invalid("intent", "is required: say why this session exists")
	case len(o.intent) > maxIntentBytes:
		return o, invalid("intent", "is %d bytes; at most %d", len(o.intent), maxIntentBytes)
	case !utf8.ValidString(o.intent):
		return o, invalid("intent", "is not valid UTF-8")
	}
	if req.Origin == nil {
		// Nobody said what triggered it: the authenticated caller did.
		o.origin = Origin{Kind: "human", Principal: caller.ID}
	} else {
		o.origin = *req.Origin
		switch o.origin.Kind {
		case "human", "schedule", "agent":
		default:
			return o, invalid("origin.kind", "unknown kind %q (want human, schedule or agent)", o.origin.Kind)
		}
		if err := checkText("origin.principal", o.origin.Principal, true); err != nil {
			return o, err
		}
	}
	if a := req.Agent; a != nil {
		if a.ID != "" {
			if _, err := spiffeid.FromString(a.ID); err != nil {
				return o, invalid("agent.id", "%q is not a SPIFFE ID: %v", a.ID, err)
			}
		}
		for field, v := range map[string]string{"agent.name": a.Name, "agent.version": a.Version, "agent.owner": a.Owner} {
			if err := checkText(field, v, false); err != nil {
				return o, err
			}
		}
	}
	if len(req.Labels) > maxLabels {
		return o, invalid("labels", "%d labels; at most %d", len(req.Labels), maxLabels)
	}
	for k, v := range req.Labels {
		if err := checkText("labels key", k, true); err != nil {
			return o, err
		}
		if err := checkText("labels."+k, v, false); err != nil {
			return o, err
		}
	}
	switch req.Mode {
	case "", "enforce":
		o.mode = enforcer.ModeEnforce
	case "audit":
		o.mode = enforcer.ModeAudit
	default:
		return o, invalid("mode", "unknown mode %q (want enforce or audit)", req.Mode)
	}
	o.ttl = r.cfg.DefaultTTL
	if req.TTL != "" {
		d, err := time.ParseDuration(req.TTL)
		switch {
		case err != nil:
			return o, invalid("ttl", "%q is not a duration (e.g. 30m, 2h)", req.TTL)
		case d <= 0:
			return o, invalid("ttl", "%s must be positive", req.TTL)
		case d > r.cfg.MaxTTL:
			return o, invalid("ttl", "%s is above the maximum %s", req.TTL, r.cfg.MaxTTL)
		}
		o.ttl = d
	}
	var err error
	if o.dns, err = scope.ParseDNSMode(req.DNS); err != nil {
		return o, invalid("dns", "%v", err)
	}
	if o.caps, err = keptCaps(req.KeptCaps); err != nil {
		return o, err
	}
	o.rules, o.entries, err = parseScope("scope", req.Scope, r.cfg.MaxRules)
	return o, err
}

// keptCaps checks capability names and returns them canonical, once each,
// in the order of privdrop.Gate.
func keptCaps(names []string) ([]string, error) {
	var keep []privdrop.Cap
	for i, n := range names {
		c, err := privdrop.Parse(n)
		if err != nil {
			return nil, invalid(fmt.Sprintf("kept_caps[%d]", i), "%v", err)
		}
		if !privdrop.InGate(c) {
			return nil, invalid(fmt.Sprintf("kept_caps[%d]", i), "%s is not one that agentfence run drops (%s)",
				c, strings.Join(privdrop.Names(privdrop.Gate), ", "))
		}
		keep = append(keep, c)
	}
	return privdrop.Names(privdrop.Kept(keep)), nil
}

func texts(rules []scope.Rule) []string {
	out := make([]string, len(rules))
	for i, r := range rules {
		out[i] = r.String()
	}
	return out
}
