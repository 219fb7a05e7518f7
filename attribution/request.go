package attribution

import (
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/agentfence/agentfence/enforcer"
	"github.com/agentfence/agentfence/scope"
)

// OpenRequest asks for a new session. It is the JSON body of the open call.
type OpenRequest struct {
	Intent string   `json:"intent"`
	Mode   string   `json:"mode,omitempty"` // enforce (default) or audit
	TTL    string   `json:"ttl,omitempty"`  // Go duration; default from config
	Allow  []string `json:"allow"`
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

// Error codes.
const (
	CodeInvalid      = "invalid_request"
	CodeNotFound     = "not_found"
	CodeCapacity     = "capacity"
	CodeKernel       = "kernel_error"
	CodeUnauthorized = "unauthorized"
)

func invalid(field, format string, args ...any) *Error {
	return &Error{Code: CodeInvalid, Field: field, Message: fmt.Sprintf(format, args...)}
}

const maxIntentBytes = 4096

// validated is an OpenRequest checked and compiled.
type validated struct {
	intent  string
	mode    enforcer.Mode
	ttl     time.Duration
	rules   []scope.Rule
	entries []scope.Entry
}

func (r *Registry) validate(req OpenRequest) (validated, error) {
	var v validated
	v.intent = strings.TrimSpace(req.Intent)
	switch {
	case v.intent == "":
		return v, invalid("intent", "is required: say why this session exists")
	case len(v.intent) > maxIntentBytes:
		return v, invalid("intent", "is %d bytes; at most %d", len(v.intent), maxIntentBytes)
	case !utf8.ValidString(v.intent):
		return v, invalid("intent", "is not valid UTF-8")
	}
	switch req.Mode {
	case "", "enforce":
		v.mode = enforcer.ModeEnforce
	case "audit":
		v.mode = enforcer.ModeAudit
	default:
		return v, invalid("mode", "unknown mode %q (want enforce or audit)", req.Mode)
	}
	v.ttl = r.cfg.DefaultTTL
	if req.TTL != "" {
		d, err := time.ParseDuration(req.TTL)
		if err != nil {
			return v, invalid("ttl", "%q is not a duration (e.g. 30m, 2h)", req.TTL)
		}
		if d <= 0 {
			return v, invalid("ttl", "%s must be positive", req.TTL)
		}
		if d > r.cfg.MaxTTL {
			return v, invalid("ttl", "%s is above the maximum %s", req.TTL, r.cfg.MaxTTL)
		}
		v.ttl = d
	}
	if len(req.Allow) > r.cfg.MaxRules {
		return v, invalid("allow", "%d rules; at most %d", len(req.Allow), r.cfg.MaxRules)
	}
	for i, text := range req.Allow {
		rule, err := scope.Parse(text)
		if err != nil {
			return v, invalid(fmt.Sprintf("allow[%d]", i), "%v", err)
		}
		v.rules = append(v.rules, rule)
	}
	entries, err := scope.Compile(v.rules)
	if err != nil {
		return v, invalid("allow", "%v", err)
	}
	v.entries = entries
	return v, nil
}

// IsNotFound reports whether err says a session does not exist.
func IsNotFound(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.Code == CodeNotFound
}
