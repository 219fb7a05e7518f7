package session

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"

	v1 "github.com/agentfence/agentfence/api/v1"
	"github.com/agentfence/agentfence/audit"
	"github.com/agentfence/agentfence/config"
	"github.com/agentfence/agentfence/enforcer"
	"github.com/agentfence/agentfence/scope"
)

// Narrow replaces the scope of session id with a narrower one. Every new
// rule must lie within one current rule. Child sessions are clipped to the
// new scope, and connections the new scope no longer allows are destroyed.
func (r *Registry) Narrow(id string, req v1.NarrowRequest, caller Caller) (v1.Session, error) {
	r.begin()
	defer r.end()
	e, err := r.authorize(id, caller)
	if err != nil {
		return v1.Session{}, err
	}
	rules, entries, err := parseScope("scope", req.Scope, r.cfg.MaxRules)
	if err != nil {
		return v1.Session{}, err
	}
	if i := scope.Within(rules, e.rules); i >= 0 {
		return v1.Session{}, invalid(fmt.Sprintf("scope[%d]", i), "%s is not within the current scope: a scope can only be narrowed", rules[i])
	}
	if err := r.narrow(e, rules, entries, caller.ID); err != nil {
		return v1.Session{}, err
	}
	r.persist()
	return e.public(), nil
}

func (r *Registry) narrow(e *entry, rules []scope.Rule, entries []scope.Entry, actor string) error {
	// Overwrite in place first, then delete what is gone: every state in
	// between is narrower than the old scope and wider than the new one.
	if err := r.kernel.WriteScope(e.slot, e.gen, entries); err != nil {
		return kernelError(err)
	}
	if err := r.kernel.WriteNames(e.slot, e.gen, rules); err != nil {
		return kernelError(err)
	}
	var gone []scope.Entry
	for _, old := range e.compiled() {
		if !slices.ContainsFunc(entries, func(n scope.Entry) bool { return n.Prefix == old.Prefix }) {
			gone = append(gone, old)
		}
	}
	var goneNames []scope.Rule
	for _, old := range e.rules {
		if old.Host != "" && !slices.ContainsFunc(rules, func(n scope.Rule) bool { return n.Host == old.Host && n.Wildcard == old.Wildcard }) {
			goneNames = append(goneNames, old)
		}
	}
	if err := errors.Join(r.kernel.DeleteScope(e.slot, gone), r.kernel.DeleteNames(e.slot, goneNames)); err != nil {
		return kernelError(err)
	}
	r.write(func() { e.rules = rules })
	if err := errors.Join(r.hook(e, r.hostnameHooks(e)), r.hookRoot()); err != nil {
		r.log.Error("hostname programs after narrowing", "session", e.ID, "err", err)
	}
	r.touch(e)
	r.lifecycle(e, "narrowed", actor, "")
	for _, c := range r.children(e.ID) {
		if c.MCPServer != "" {
			continue // the opener's grant, not part of e's scope
		}
		clipped := scope.Intersect(c.rules, rules)
		ce, err := scope.Compile(clipped)
		if err == nil {
			err = r.narrow(c, clipped, ce, actor)
		}
		if err != nil {
			r.log.Error("clip child session", "session", c.ID, "err", err)
			r.revoke(c, actor, "parent narrowed")
		}
	}
	learned := r.learned(e)
	r.destroy(e, "narrowed", func(c Conn) bool { return !admits(rules, learned, c) })
	return nil
}

// admits reports whether an outbound rule admits the member connection c.
func admits(rules []scope.Rule, learned map[netip.Addr][]string, c Conn) bool {
	proto := scope.ProtoTCP
	if c.Proto == "udp" {
		proto = scope.ProtoUDP
	}
	return scope.Admits(rules, scope.Flow{Proto: proto, Remote: c.Remote, Names: learned[c.Remote.Addr()],
		Exe: func() string { return exeOf(c.PID) }})
}

// learned maps the addresses learned for a session to the names they were
// learned for. A name the daemon cannot name is left out, so its
// connections count as not admitted.
func (r *Registry) learned(e *entry) map[netip.Addr][]string {
	addrs, err := r.kernel.Learned(e.slot, e.gen)
	if err != nil {
		r.log.Error("read learned addresses", "session", e.ID, "err", err)
	}
	out := map[netip.Addr][]string{}
	for _, a := range addrs {
		for _, h := range a.Names {
			if name := r.kernel.Hostname(e.slot, h); name != "" {
				out[a.Addr.Unmap()] = append(out[a.Addr.Unmap()], name)
			}
		}
	}
	return out
}

func exeOf(pid int) string {
	p, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	return p
}

// Revoke ends a session's network access at once: the kernel denies its
// members everything and their open connections are destroyed; child
// sessions are revoked too. The members keep running.
func (r *Registry) Revoke(id string, caller Caller) (v1.Session, error) {
	r.begin()
	defer r.end()
	e, err := r.authorize(id, caller)
	if err != nil {
		return v1.Session{}, err
	}
	if err := r.revoke(e, caller.ID, "revoked"); err != nil {
		return v1.Session{}, err
	}
	r.persist()
	return e.public(), nil
}

func (r *Registry) revoke(e *entry, actor, reason string) error {
	for _, c := range r.children(e.ID) {
		r.revoke(c, actor, "parent revoked")
	}
	if e.State == v1.StateRevoked {
		return nil
	}
	if err := r.kernel.SetState(e.slot, e.gen, enforcer.StateRevoked); err != nil {
		return kernelError(err)
	}
	r.write(func() { e.State = v1.StateRevoked })
	r.touch(e)
	r.lifecycle(e, "revoked", actor, reason)
	r.destroy(e, "revoked", nil)
	return nil
}

// destroy destroys the member connections match selects (nil: all) and
// records each.
func (r *Registry) destroy(e *entry, reason string, match func(Conn) bool) {
	if r.sockets == nil {
		return
	}
	conns, err := r.sockets.Destroy(r.members(e), match)
	if err != nil {
		r.log.Error("destroy connections", "session", e.ID, "err", err)
	}
	now := r.now()
	for _, c := range conns {
		rec := baseRecord(e, now, audit.KindDestroy)
		rec.Process = &audit.Process{PID: uint32(c.PID)}
		rec.Destination = &audit.Destination{IP: c.Remote.Addr().String(), Port: c.Remote.Port(), Protocol: c.Proto}
		rec.Outcome = &audit.Outcome{Verdict: audit.VerdictDestroyed, Reason: reason}
		r.out.add(rec)
	}
}

// Quarantined handles the kernel's report that a session used up its
// violation budget: it records the fact and, with the kill drift action,
// kills the session's members.
func (r *Registry) Quarantined(slot uint32, gen uint64) {
	r.begin()
	defer r.end()
	e := r.bySlot[slot]
	if e == nil || e.gen != gen || e.State != v1.StateActive {
		return
	}
	r.quarantined(e, "kernel")
}

// quarantined applies the drift action to a session the kernel has
// quarantined, on actor's word.
func (r *Registry) quarantined(e *entry, actor string) {
	r.write(func() { e.State = v1.StateQuarantined })
	r.touch(e)
	r.lifecycle(e, "quarantined", actor, fmt.Sprintf("more than %d violations", r.cfg.ViolationBudget))
	switch r.cfg.DriftAction {
	case config.DriftKill:
		for _, cg := range []string{e.Binding.Cgroup, e.Binding.ContainerCgroup} {
			if cg != "" {
				r.cgroups.Kill(cg)
			}
		}
		r.cgroups.KillPIDs(r.boundPids(e))
		r.lifecycle(e, "killed", actor, "drift action kill")
	default:
		var essential []scope.Rule
		for _, rule := range e.rules {
			if rule.Essential {
				essential = append(essential, rule)
			}
		}
		learned := r.learned(e)
		r.destroy(e, "quarantined", func(c Conn) bool { return !admits(essential, learned, c) })
	}
	r.persist()
}

// Escaped handles an escape record: a member of the session in slot/gen
// left its cgroup and stays a member by pid. A session with hostname rules
// then needs the hostname programs at the root, where the member's packets
// pass now.
func (r *Registry) Escaped(slot uint32, gen uint64) {
	r.begin()
	defer r.end()
	e := r.bySlot[slot]
	if e == nil || e.gen != gen || e.escaped {
		return
	}
	e.escaped = true
	if needsRoot(e) {
		if err := r.hookRoot(); err != nil {
			r.log.Error("hostname programs for an escaped member", "session", e.ID, "err", err)
		}
	}
}
