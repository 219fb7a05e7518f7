package session

import (
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	v1 "github.com/agentfence/agentfence/api/v1"
	"github.com/agentfence/agentfence/credential"
	"github.com/agentfence/agentfence/internal/privdrop"
	"github.com/agentfence/agentfence/scope"
)

func invalid(field, format string, args ...any) *v1.Error {
	return &v1.Error{Code: v1.CodeInvalid, Field: field, Message: fmt.Sprintf(format, args...)}
}

func forbidden(field, format string, args ...any) *v1.Error {
	return &v1.Error{Code: v1.CodeForbidden, Field: field, Message: fmt.Sprintf(format, args...)}
}

func notFound(id string) *v1.Error {
	return &v1.Error{Code: v1.CodeNotFound, Field: "id", Message: fmt.Sprintf("no session %q", id)}
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
	req     v1.OpenRequest
	intent  string
	origin  v1.Origin
	mode    v1.Mode
	ttl     time.Duration
	rules   []scope.Rule
	entries []scope.Entry
	caps    []string // KeptCaps, canonical and in privdrop.Gate's order
	dns     scope.DNSMode
	creds   credential.Mode
	mcp     []mcpServer
}

func (r *Registry) check(req v1.OpenRequest, caller Caller) (opening, error) {
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
		o.origin = v1.Origin{Kind: v1.OriginHuman, Principal: caller.ID}
	} else {
		o.origin = *req.Origin
		switch o.origin.Kind {
		case v1.OriginHuman, v1.OriginSchedule, v1.OriginAgent:
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
	case "", v1.ModeEnforce:
		o.mode = v1.ModeEnforce
	case v1.ModeAudit:
		o.mode = v1.ModeAudit
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
	if o.creds, err = credential.ParseMode(req.Credentials); err != nil {
		return o, invalid("credentials", "%v", err)
	}
	if o.caps, err = keptCaps(req.KeptCaps); err != nil {
		return o, err
	}
	if o.rules, o.entries, err = parseScope("scope", req.Scope, r.cfg.MaxRules); err != nil {
		return o, err
	}
	o.mcp, err = checkMCP(req.MCP, r.cfg.MaxRules)
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
