package scope

import "fmt"

// DNSMode is what a session's members may ask a resolver
// (docs/hostnames.md, "DNS modes"). The kernel judges the question name of
// every DNS query a member sends, whatever the destination.
type DNSMode string

const (
	// DNSAny lets every query through: any name reaches the resolver.
	DNSAny DNSMode = "any"
	// DNSScoped lets through only queries whose question name a hostname
	// rule of the session covers (exact, or a wildcard one label deep).
	// With no hostname rules, no query leaves.
	DNSScoped DNSMode = "scoped"
	// DNSNone lets no query leave.
	DNSNone DNSMode = "none"
)

// DefaultDNSMode is the mode of a session that names none: scoped, with or
// without hostname rules, so a resolver in scope is never a channel unless
// the opener says so with DNSAny.
const DefaultDNSMode = DNSScoped

// ParseDNSMode parses a mode; "" is DefaultDNSMode. The error names the
// value and the modes there are.
func ParseDNSMode(s string) (DNSMode, error) {
	switch m := DNSMode(s); m {
	case "":
		return DefaultDNSMode, nil
	case DNSAny, DNSScoped, DNSNone:
		return m, nil
	}
	return "", fmt.Errorf("unknown dns mode %q (want any, scoped or none)", s)
}

// rank orders the modes from strictest to widest.
func (m DNSMode) rank() int {
	switch m {
	case DNSNone:
		return 0
	case DNSScoped:
		return 1
	case DNSAny:
		return 2
	}
	return -1
}

// Within reports whether m lets through no more than parent does
// (none < scoped < any), as a delegated session's mode must. A scoped child
// of a scoped parent asks only for its own hostnames, which lie within the
// parent's. Unknown modes are within nothing.
func (m DNSMode) Within(parent DNSMode) bool {
	return m.rank() >= 0 && parent.rank() >= 0 && m.rank() <= parent.rank()
}
