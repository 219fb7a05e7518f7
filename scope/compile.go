package scope

import (
	"fmt"
	"net/netip"
	"slices"
)

// MaxPortRules is how many rules may cover one address: the kernel keeps the
// rules of every covering prefix in the longest prefix's trie entry.
const MaxPortRules = 16

// PortRule is a port/protocol condition attached to a trie entry; Index is
// the rule's position in the scope, reported back in kernel events.
type PortRule struct {
	Index     uint16
	Lo, Hi    uint16
	Protos    uint8
	Essential bool
	Exe       string
	In        bool // an in: rule: Lo-Hi are the member's local ports
}

// Entry is one LPM trie entry: a prefix and the rules of every scope rule
// whose prefix contains it, of both directions (the kernel matches only the
// direction it judges).
//
// The entry with no (invalid) Prefix is the session's bind entry: the port
// rules of every in: rule, whatever their peers. The kernel consults it when
// a member binds a port; a session without in: rules has none, so binding
// any nonzero port is refused.
type Entry struct {
	Prefix netip.Prefix
	Rules  []PortRule
}

// IsBind reports whether e is the bind entry.
func (e Entry) IsBind() bool { return !e.Prefix.IsValid() }

// Compile turns a scope into trie entries; hostname rules are skipped (they
// are written with enforcer's WriteNames). Indexes stay positions in rules. Because an LPM lookup returns only
// the longest matching prefix, each entry carries the port rules of all the
// shorter prefixes that contain it as well as its own.
func Compile(rules []Rule) ([]Entry, error) {
	if len(rules) >= 0xffff {
		return nil, fmt.Errorf("scope has %d rules; at most %d", len(rules), 0xfffe)
	}
	var prefixes []netip.Prefix
	for _, r := range rules {
		if r.Host != "" {
			continue // hostname rules are learned in the kernel, not compiled
		}
		if !slices.Contains(prefixes, r.Prefix) {
			prefixes = append(prefixes, r.Prefix)
		}
	}
	entries := make([]Entry, 0, len(prefixes))
	for _, p := range prefixes {
		e := Entry{Prefix: p}
		for i, r := range rules {
			if r.Host != "" {
				continue
			}
			if r.Prefix.Addr().Is4() != p.Addr().Is4() || r.Prefix.Bits() > p.Bits() || !r.Prefix.Contains(p.Addr()) {
				continue
			}
			e.Rules = append(e.Rules, r.PortRule(i))
		}
		if len(e.Rules) > MaxPortRules {
			return nil, fmt.Errorf("%d rules cover %s; at most %d may cover one address", len(e.Rules), p, MaxPortRules)
		}
		entries = append(entries, e)
	}
	var bind Entry
	for i, r := range rules {
		if r.In {
			bind.Rules = append(bind.Rules, r.PortRule(i))
		}
	}
	if len(bind.Rules) > MaxPortRules {
		return nil, fmt.Errorf("%d in: rules; at most %d", len(bind.Rules), MaxPortRules)
	}
	if len(bind.Rules) > 0 {
		entries = append(entries, bind)
	}
	return entries, nil
}

// PortRule is r's port/protocol condition, for the rule at index i of its
// scope.
func (r Rule) PortRule(i int) PortRule {
	return PortRule{Index: uint16(i), Lo: r.PortLo, Hi: r.PortHi, Protos: r.Protos, Essential: r.Essential, Exe: r.Exe, In: r.In}
}
