package scope

import (
	"net/netip"
	"slices"
)

// The algebra of scopes: whether one lies within another (a child session,
// a narrowing), the part of one another allows (a parent narrowed under its
// children), and whether a scope admits a connection that already exists
// (the sockets a narrowing or a quarantine must end). The kernel judges new
// connections itself, from Compile's entries.

// Within returns the index of the first rule of child that no single rule
// of parent covers, or -1 when child lies within parent.
func Within(child, parent []Rule) int {
	for i, c := range child {
		if !slices.ContainsFunc(parent, func(p Rule) bool { return p.Covers(c) }) {
			return i
		}
	}
	return -1
}

// Intersect clips rules to what parent allows: each rule is kept where a
// parent rule covers it, and otherwise replaced by its overlaps with the
// parent's rules. The result is always Within parent.
func Intersect(rules, parent []Rule) []Rule {
	var out []Rule
	for _, r := range rules {
		if Within([]Rule{r}, parent) < 0 {
			out = append(out, r)
			continue
		}
		for _, p := range parent {
			if x, ok := overlap(r, p); ok {
				out = append(out, x)
			}
		}
	}
	return out
}

// overlap is what r and p both admit, as one rule, if that is not empty.
func overlap(r, p Rule) (Rule, bool) {
	x := r
	switch {
	case r.In != p.In:
		return Rule{}, false // an in: rule never widens an outbound scope, nor the reverse
	case r.Host != "" || p.Host != "":
		switch {
		case r.Host == "" || p.Host == "":
			return Rule{}, false
		case r.Host == p.Host && r.Wildcard == p.Wildcard:
		case p.Wildcard && !r.Wildcard && p.MatchesName(r.Host):
		case r.Wildcard && !p.Wildcard && r.MatchesName(p.Host):
			x.Host, x.Wildcard = p.Host, false
		default:
			return Rule{}, false
		}
	case r.Prefix.Addr().Is4() != p.Prefix.Addr().Is4():
		return Rule{}, false
	case p.Prefix.Bits() <= r.Prefix.Bits() && p.Prefix.Contains(r.Prefix.Addr()):
	case r.Prefix.Bits() <= p.Prefix.Bits() && r.Prefix.Contains(p.Prefix.Addr()):
		x.Prefix = p.Prefix
	default:
		return Rule{}, false
	}
	x.Protos &= p.Protos
	x.PortLo, x.PortHi = max(r.PortLo, p.PortLo), min(r.PortHi, p.PortHi)
	if p.Exe != "" {
		if r.Exe != "" && r.Exe != p.Exe {
			return Rule{}, false
		}
		x.Exe = p.Exe
	}
	return x, x.Protos != 0 && x.PortLo <= x.PortHi
}

// Flow is an outbound connection that exists, as Admits judges it.
type Flow struct {
	Proto  uint8 // ProtoTCP or ProtoUDP
	Remote netip.AddrPort
	// Names are the hostnames the kernel learned Remote's address for.
	Names []string
	// Exe returns the connecting process's executable; it is called only
	// when a rule names one.
	Exe func() string
}

// Admits reports whether an outbound rule admits f. A hostname rule admits
// it when its address was learned for a name the rule matches. in: rules
// are not consulted: a Flow carries no local port to judge.
func Admits(rules []Rule, f Flow) bool {
	for _, r := range rules {
		if r.In || r.Protos&f.Proto == 0 || f.Remote.Port() < r.PortLo || f.Remote.Port() > r.PortHi {
			continue
		}
		if r.Exe != "" && (f.Exe == nil || f.Exe() != r.Exe) {
			continue
		}
		if r.Host != "" {
			if slices.ContainsFunc(f.Names, r.MatchesName) {
				return true
			}
			continue
		}
		if r.Prefix.Contains(f.Remote.Addr()) {
			return true
		}
	}
	return false
}
