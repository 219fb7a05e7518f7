// Package scope parses egress scope rules and compiles them into the shape
// the kernel's LPM tries need.
package scope

import (
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"strconv"
	"strings"
)

// Protocol bits, as the kernel stores them.
const (
	ProtoTCP uint8 = 1
	ProtoUDP uint8 = 2
	ProtoAny       = ProtoTCP | ProtoUDP
)

// Rule is one scope rule:
//
//	[essential,][exe=/abs/path,][tcp://|udp://]ADDR[/PREFIX][:PORT[-PORT]]
//	[essential,][exe=/abs/path,][tcp://|udp://][*.]HOSTNAME[:PORT[-PORT]]
//	in:[essential,][tcp://|udp://]ADDR[/PREFIX][:PORT[-PORT]]
//
// IPv6 addresses go in brackets: [::1]:9000, [fd00::]/8:443. No port means
// any port; no scheme means TCP and UDP. Options come before the destination,
// separated by commas, so the destination never needs quoting.
//
// A hostname rule (api.stripe.com:443) admits the addresses the kernel learns
// from DNS answers for that name (see docs/hostnames.md). Names are
// case-insensitive and a trailing dot is ignored; IDNA names are given in
// their punycode form (xn--...). A wildcard *.slack.com matches exactly one
// more label: a.slack.com, not slack.com and not a.b.slack.com.
//
// An inbound rule (in:tcp://10.0.0.0/8:8080) turns the meaning around: the
// address is the peers that may reach a member, and the port is the
// member's own local port, which it may then bind (docs/sessions.md,
// Inbound). It names addresses only: a peer arrives with an address, never
// with a name the kernel could check. It takes no exe=: a packet arrives
// with no process, so the kernel could check the executable only at bind,
// and a socket bound by one executable is used by any process holding it.
type Rule struct {
	// In makes this an inbound rule: Prefix is the peers, the ports are
	// local. An inbound rule never admits anything outbound, and an
	// outbound rule nothing inbound.
	In     bool
	Prefix netip.Prefix // IPv4-mapped IPv6 is stored as IPv4; invalid for hostname rules
	// Host is the lowercased hostname without a trailing dot; for a wildcard
	// rule it is the suffix after "*.". Empty for address rules.
	Host string
	// Wildcard makes Host match any name with exactly one more label.
	Wildcard bool
	Protos   uint8
	PortLo   uint16
	PortHi   uint16
	// Essential rules still match when the session is quarantined.
	Essential bool
	// Exe restricts the rule to processes running this executable (an
	// absolute path, resolved to device and inode when the scope is written).
	Exe string
}

// ErrHostname is wrapped by errors for destinations that look like a
// hostname but are not a valid one.
var ErrHostname = errors.New("invalid hostname")

// MaxHostLen is the longest hostname a rule may name (presentation form,
// without the trailing dot).
const MaxHostLen = 253

// Parse parses one rule. Errors name the offending part.
func Parse(text string) (Rule, error) {
	r := Rule{Protos: ProtoAny, PortLo: 1, PortHi: 65535}
	s := strings.TrimSpace(text)
	if s == "" {
		return Rule{}, errors.New("empty rule")
	}
	s, r.In = strings.CutPrefix(s, "in:")
	for {
		head, rest, ok := strings.Cut(s, ",")
		if !ok {
			break
		}
		switch {
		case head == "essential":
			r.Essential = true
		case strings.HasPrefix(head, "exe=") && r.In:
			return Rule{}, fmt.Errorf("rule %q: exe= is not supported on in: rules (a received packet has no process to check)", text)
		case strings.HasPrefix(head, "exe="):
			p := strings.TrimPrefix(head, "exe=")
			if !filepath.IsAbs(p) || filepath.Clean(p) != p {
				return Rule{}, fmt.Errorf("rule %q: exe=%q must be a clean absolute path", text, p)
			}
			r.Exe = p
		case strings.HasPrefix(head, "sha256="):
			// The kernel knows an executable by device and inode at exec
			// time; its hash is only known later, in user space, so a hash
			// rule could not decide the first connect after an exec.
			return Rule{}, fmt.Errorf("rule %q: sha256= rules are not supported: name the executable with exe=PATH", text)
		default:
			return Rule{}, fmt.Errorf("rule %q: unknown option %q (want essential or exe=PATH)", text, head)
		}
		s = rest
	}
	if strings.HasPrefix(s, "in:") {
		return Rule{}, fmt.Errorf("rule %q: in: must come before the options (in:essential,...)", text)
	}

	switch {
	case strings.HasPrefix(s, "tcp://"):
		r.Protos, s = ProtoTCP, s[len("tcp://"):]
	case strings.HasPrefix(s, "udp://"):
		r.Protos, s = ProtoUDP, s[len("udp://"):]
	case strings.Contains(s, "://"):
		return Rule{}, fmt.Errorf("rule %q: unknown scheme %q (want tcp:// or udp://)", text, s[:strings.Index(s, "://")])
	}

	addr, port, err := splitAddrPort(s)
	if err != nil {
		return Rule{}, fmt.Errorf("rule %q: %w", text, err)
	}
	if !strings.HasPrefix(s, "[") && isHostLike(addr) {
		if r.In {
			return Rule{}, fmt.Errorf("rule %q: in: rules name peers by address (%q is a hostname): a peer's name is not known when its packet arrives", text, addr)
		}
		if r.Host, r.Wildcard, err = parseHost(addr); err != nil {
			return Rule{}, fmt.Errorf("rule %q: %w", text, err)
		}
	} else if r.Prefix, err = parsePrefix(addr); err != nil {
		return Rule{}, fmt.Errorf("rule %q: %w", text, err)
	}
	if port != "" {
		if r.PortLo, r.PortHi, err = parsePorts(port); err != nil {
			return Rule{}, fmt.Errorf("rule %q: %w", text, err)
		}
	}
	return r, nil
}

func splitAddrPort(s string) (addr, port string, err error) {
	if strings.HasPrefix(s, "[") {
		end := strings.Index(s, "]")
		if end < 0 {
			return "", "", errors.New("missing ] after IPv6 address")
		}
		addr, rest := s[1:end], s[end+1:]
		if strings.HasPrefix(rest, "/") {
			bits, after, _ := strings.Cut(rest[1:], ":")
			addr += "/" + bits
			if strings.Contains(rest[1:], ":") {
				return addr, after, requirePort(after)
			}
			return addr, "", nil
		}
		if rest == "" {
			return addr, "", nil
		}
		if !strings.HasPrefix(rest, ":") {
			return "", "", fmt.Errorf("unexpected %q after IPv6 address", rest)
		}
		return addr, rest[1:], requirePort(rest[1:])
	}
	if strings.Count(s, ":") > 1 {
		return "", "", errors.New("IPv6 addresses must be in brackets, e.g. [::1]:443")
	}
	addr, port, found := strings.Cut(s, ":")
	if found {
		return addr, port, requirePort(port)
	}
	return addr, "", nil
}

func requirePort(p string) error {
	if p == "" {
		return errors.New("empty port after ':'")
	}
	return nil
}

func parsePrefix(s string) (netip.Prefix, error) {
	if s == "" {
		return netip.Prefix{}, errors.New("missing address")
	}
	addrPart, bitsPart, hasBits := strings.Cut(s, "/")
	a, err := netip.ParseAddr(addrPart)
	if err != nil {
		if looksLikeHostname(addrPart) {
			return netip.Prefix{}, fmt.Errorf("%q: %w", addrPart, ErrHostname)
		}
		return netip.Prefix{}, fmt.Errorf("bad address %q", addrPart)
	}
	if a.Zone() != "" {
		return netip.Prefix{}, fmt.Errorf("address %q: zones are not allowed", addrPart)
	}
	bits := a.BitLen()
	if hasBits {
		n, err := strconv.Atoi(bitsPart)
		if err != nil || n < 0 || n > a.BitLen() || bitsPart != strconv.Itoa(n) {
			return netip.Prefix{}, fmt.Errorf("bad prefix length %q for %s (0-%d)", bitsPart, addrPart, a.BitLen())
		}
		bits = n
	}
	if a.Is4In6() {
		if bits < 96 {
			return netip.Prefix{}, fmt.Errorf("IPv4-mapped prefix %s/%d is shorter than /96", addrPart, bits)
		}
		a, bits = a.Unmap(), bits-96
	}
	p := netip.PrefixFrom(a, bits)
	if p.Masked() != p {
		return netip.Prefix{}, fmt.Errorf("%s has host bits set (did you mean %s?)", s, p.Masked())
	}
	return p, nil
}

func looksLikeHostname(s string) bool {
	if s == "" || strings.ContainsAny(s, " /[]@") {
		return false
	}
	for _, c := range s {
		if !(c == '.' || c == '-' || c == '*' || c == '_' || c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z') {
			return false
		}
	}
	return strings.ContainsAny(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ*")
}

func parsePorts(s string) (lo, hi uint16, err error) {
	loS, hiS, isRange := strings.Cut(s, "-")
	if lo, err = parsePort(loS); err != nil {
		return 0, 0, err
	}
	hi = lo
	if isRange {
		if hi, err = parsePort(hiS); err != nil {
			return 0, 0, err
		}
		if hi < lo {
			return 0, 0, fmt.Errorf("port range %s is backwards", s)
		}
	}
	return lo, hi, nil
}

func parsePort(s string) (uint16, error) {
	n, err := strconv.Atoi(s)
	if err != nil || s != strconv.Itoa(n) {
		return 0, fmt.Errorf("bad port %q", s)
	}
	if n < 1 || n > 65535 {
		return 0, fmt.Errorf("port %d out of range (1-65535)", n)
	}
	return uint16(n), nil
}

// String is the canonical text of the rule; it parses back to the same rule
// and is what audit records quote as outcome.rule.
func (r Rule) String() string {
	var b strings.Builder
	if r.In {
		b.WriteString("in:")
	}
	if r.Essential {
		b.WriteString("essential,")
	}
	if r.Exe != "" {
		b.WriteString("exe=" + r.Exe + ",")
	}
	switch r.Protos {
	case ProtoTCP:
		b.WriteString("tcp://")
	case ProtoUDP:
		b.WriteString("udp://")
	}
	if r.Host != "" {
		if r.Wildcard {
			b.WriteString("*.")
		}
		b.WriteString(r.Host)
	} else {
		a := r.Prefix.Addr()
		full := r.Prefix.Bits() == a.BitLen()
		if a.Is6() {
			b.WriteString("[" + a.String() + "]")
		} else {
			b.WriteString(a.String())
		}
		if !full {
			b.WriteString("/" + strconv.Itoa(r.Prefix.Bits()))
		}
	}
	if r.PortLo != 1 || r.PortHi != 65535 {
		b.WriteString(":" + strconv.Itoa(int(r.PortLo)))
		if r.PortHi != r.PortLo {
			b.WriteString("-" + strconv.Itoa(int(r.PortHi)))
		}
	}
	return b.String()
}

// Covers reports whether every destination o admits is also admitted by r,
// ignoring the essential flag. It is how a child session's scope is checked
// against its parent's. Hostname rules cover only hostname rules (a name's
// addresses change, so no address rule covers it, and it covers no address
// rule): an exact name covers the same name, a wildcard covers the names one
// label below its suffix and the same wildcard. A rule covers only rules of
// its own direction: in: peers and ports say nothing about destinations.
func (r Rule) Covers(o Rule) bool {
	if !(r.In == o.In && o.Protos&r.Protos == o.Protos &&
		r.PortLo <= o.PortLo && o.PortHi <= r.PortHi &&
		(r.Exe == "" || r.Exe == o.Exe)) {
		return false
	}
	if r.Host != "" || o.Host != "" {
		if r.Host == "" || o.Host == "" {
			return false
		}
		if !r.Wildcard {
			return !o.Wildcard && o.Host == r.Host
		}
		if o.Wildcard {
			return o.Host == r.Host
		}
		_, suffix, ok := strings.Cut(o.Host, ".")
		return ok && suffix == r.Host
	}
	return r.Prefix.Bits() <= o.Prefix.Bits() && r.Prefix.Contains(o.Prefix.Addr())
}

// MatchesName reports whether the hostname rule r admits the name (any case,
// trailing dot ignored). Address rules match no name.
func (r Rule) MatchesName(name string) bool {
	if r.Host == "" {
		return false
	}
	name = strings.TrimSuffix(strings.ToLower(name), ".")
	if !r.Wildcard {
		return name == r.Host
	}
	first, suffix, ok := strings.Cut(name, ".")
	return ok && first != "" && suffix == r.Host
}

// isHostLike tells a hostname destination from an address: it has a letter
// or a '*' and nothing an address or CIDR would have.
func isHostLike(s string) bool {
	return !strings.Contains(s, "/") && looksLikeHostname(s) && !allDigitsLastLabel(s)
}

// allDigitsLastLabel: no top-level domain is all digits, so 999.1.1.1 is a
// bad address rather than a hostname.
func allDigitsLastLabel(s string) bool {
	s = strings.TrimSuffix(s, ".")
	if i := strings.LastIndexByte(s, '.'); i >= 0 {
		s = s[i+1:]
	}
	if s == "" {
		return false
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// parseHost validates and canonicalises a hostname or a *.suffix wildcard.
// Labels are 1-63 characters of letters, digits, '-' and '_', not starting or
// ending with '-'; at least two labels (a wildcard's suffix too); at most
// MaxHostLen characters in all.
func parseHost(s string) (host string, wildcard bool, err error) {
	s = strings.ToLower(strings.TrimSuffix(s, "."))
	if rest, ok := strings.CutPrefix(s, "*."); ok {
		wildcard, s = true, rest
	}
	if len(s) > MaxHostLen || wildcard && len(s)+2 > MaxHostLen {
		return "", false, fmt.Errorf("hostname %q: longer than %d characters: %w", s, MaxHostLen, ErrHostname)
	}
	labels := strings.Split(s, ".")
	if len(labels) < 2 {
		return "", false, fmt.Errorf("hostname %q: needs at least two labels (a fully qualified name): %w", s, ErrHostname)
	}
	for _, l := range labels {
		if l == "" || len(l) > 63 {
			return "", false, fmt.Errorf("hostname %q: label %q must be 1-63 characters: %w", s, l, ErrHostname)
		}
		if l[0] == '-' || l[len(l)-1] == '-' {
			return "", false, fmt.Errorf("hostname %q: label %q starts or ends with '-': %w", s, l, ErrHostname)
		}
		for _, c := range l {
			if !(c == '-' || c == '_' || c >= '0' && c <= '9' || c >= 'a' && c <= 'z') {
				if c == '*' {
					return "", false, fmt.Errorf("hostname %q: '*' is allowed only as the whole first label (*.example.com): %w", s, ErrHostname)
				}
				return "", false, fmt.Errorf("hostname %q: bad character %q: %w", s, c, ErrHostname)
			}
		}
	}
	if allDigitsLastLabel(s) {
		return "", false, fmt.Errorf("hostname %q: the last label is all digits: %w", s, ErrHostname)
	}
	return s, wildcard, nil
}
