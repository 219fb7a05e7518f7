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
//
// IPv6 addresses go in brackets: [::1]:9000, [fd00::]/8:443. No port means
// any port; no scheme means TCP and UDP. Options come before the destination,
// separated by commas, so the destination never needs quoting.
type Rule struct {
	Prefix netip.Prefix // IPv4-mapped IPv6 is stored as IPv4
	Protos uint8
	PortLo uint16
	PortHi uint16
	// Essential rules still match when the session is quarantined.
	Essential bool
	// Exe restricts the rule to processes running this executable (an
	// absolute path, resolved to device and inode when the scope is written).
	Exe string
}

// ErrHostname is returned for rules that name a host instead of an address.
var ErrHostname = errors.New("hostname rules are not supported yet: give an IP address or CIDR")

// Parse parses one rule. Errors name the offending part.
func Parse(text string) (Rule, error) {
	r := Rule{Protos: ProtoAny, PortLo: 1, PortHi: 65535}
	s := strings.TrimSpace(text)
	if s == "" {
		return Rule{}, errors.New("empty rule")
	}
	for {
		head, rest, ok := strings.Cut(s, ",")
		if !ok {
			break
		}
		switch {
		case head == "essential":
			r.Essential = true
		case strings.HasPrefix(head, "exe="):
			p := strings.TrimPrefix(head, "exe=")
			if !filepath.IsAbs(p) || filepath.Clean(p) != p {
				return Rule{}, fmt.Errorf("rule %q: exe=%q must be a clean absolute path", text, p)
			}
			r.Exe = p
		default:
			return Rule{}, fmt.Errorf("rule %q: unknown option %q (want essential or exe=PATH)", text, head)
		}
		s = rest
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
	if r.Prefix, err = parsePrefix(addr); err != nil {
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
	if r.PortLo != 1 || r.PortHi != 65535 {
		b.WriteString(":" + strconv.Itoa(int(r.PortLo)))
		if r.PortHi != r.PortLo {
			b.WriteString("-" + strconv.Itoa(int(r.PortHi)))
		}
	}
	return b.String()
}

// Covers reports whether every destination r admits is also admitted by o,
// ignoring the essential flag. It is how a child session's scope is checked
// against its parent's.
func (r Rule) Covers(o Rule) bool {
	return o.Protos&r.Protos == o.Protos &&
		r.Prefix.Bits() <= o.Prefix.Bits() && r.Prefix.Contains(o.Prefix.Addr()) &&
		r.PortLo <= o.PortLo && o.PortHi <= r.PortHi &&
		(r.Exe == "" || r.Exe == o.Exe)
}
