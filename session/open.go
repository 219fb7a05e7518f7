package session

import (
	"fmt"
	"maps"

	v1 "github.com/agentfence/agentfence/api/v1"
	"github.com/agentfence/agentfence/config"
	"github.com/agentfence/agentfence/credential"
	"github.com/agentfence/agentfence/enforcer"
	"github.com/agentfence/agentfence/scope"
)

// Open validates req, writes the session (and a session for each MCP
// server it declares) to the kernel and returns it. On any error
// everything written is removed again and the session does not exist.
//
// A caller that is itself a session member may only open a child of its
// own session: scope within its own, expiry no later, enforce mode if its
// own is enforced.
func (r *Registry) Open(req v1.OpenRequest, caller Caller) (v1.Session, error) {
	o, err := r.check(req, caller)
	if err != nil {
		return v1.Session{}, err
	}
	r.begin()
	defer r.end()
	if a := req.Agent; a != nil && r.retired[a.ID] {
		return v1.Session{}, forbidden("agent.id", "agent %s is retired", a.ID)
	}
	now := r.now()
	expires := now.Add(o.ttl)
	member := r.memberOf(caller)
	parentID := req.Parent
	if member != nil {
		if parentID == "" {
			parentID = member.ID
		}
		if parentID != member.ID && !r.descendantOf(parentID, member.ID) {
			return v1.Session{}, forbidden("parent", "a session member may only open children of its own session %s", member.ID)
		}
		// What a member opens, the agent in it decided: the origin says
		// so and cannot be claimed to be a person or a schedule.
		if req.Origin == nil {
			o.origin = v1.Origin{Kind: v1.OriginAgent, Principal: parentID}
		} else if o.origin.Kind != v1.OriginAgent {
			return v1.Session{}, invalid("origin.kind", "a session opened from inside session %s has origin agent", member.ID)
		}
	}
	var parent *entry
	if parentID != "" {
		parent = r.byID[parentID]
		switch {
		case parent == nil:
			return v1.Session{}, invalid("parent", "no session %q", parentID)
		case parent.State != v1.StateActive || !now.Before(parent.ExpiresAt):
			return v1.Session{}, invalid("parent", "session %s is %s", parentID, stateAt(parent.State, parent.ExpiresAt, now))
		}
		if i := scope.Within(o.rules, parent.rules); i >= 0 {
			return v1.Session{}, invalid(fmt.Sprintf("scope[%d]", i), "%s is not within the parent's scope", o.rules[i])
		}
		if expires.After(parent.ExpiresAt) {
			expires = parent.ExpiresAt
		}
		if parent.Mode == v1.ModeEnforce && o.mode == v1.ModeAudit {
			return v1.Session{}, invalid("mode", "audit mode would widen an enforced parent")
		}
		if pd := parent.dnsMode(); !o.dns.Within(pd) {
			if req.DNS != "" {
				return v1.Session{}, invalid("dns", "dns %s would widen the parent's dns %s", o.dns, pd)
			}
			o.dns = pd
		}
		if pc := parent.credentialsMode(); !o.creds.Within(pc) {
			if req.Credentials != "" {
				return v1.Session{}, invalid("credentials", "credentials %s would widen the parent's %s", o.creds, pc)
			}
			o.creds = pc
		}
		if o.origin.Kind == v1.OriginAgent && o.origin.Principal != parent.ID {
			return v1.Session{}, invalid("origin.principal", "an agent-originated child names its parent %s", parent.ID)
		}
	}
	if need := 1 + len(o.mcp); len(r.free) < need { // the session and its servers' sessions
		return v1.Session{}, &v1.Error{Code: v1.CodeCapacity, Message: fmt.Sprintf("%d of %d session slots are free, %d needed", len(r.free), len(r.gens)-1, need)}
	}
	e := &entry{Session: v1.Session{Version: v1.ModelVersion, ID: newID(), Intent: o.intent, Origin: o.origin, Agent: req.Agent,
		Mode: o.mode, TTL: expires.Sub(now).String(), CreatedAt: now, ExpiresAt: expires,
		Parent: parentID, Labels: maps.Clone(req.Labels), KeptCaps: o.caps, DNS: string(o.dns), Credentials: string(o.creds), OpenedBy: caller.ID, State: v1.StateActive},
		rules: o.rules, mcp: o.mcp}
	for _, s := range o.mcp {
		e.MCP = append(e.MCP, s.decl)
	}
	owner := -1
	if member != nil && caller.UID > 0 {
		owner = caller.UID
	}
	if err := r.install(e, o.entries, parent, owner); err != nil {
		return v1.Session{}, err
	}
	// Each declared server gets a session of its own below e, with the
	// scope the opener gave it (docs/mcp.md).
	for _, s := range o.mcp {
		srv := &entry{Session: e.Session, rules: s.rules}
		srv.ID, srv.Parent, srv.MCPServer, srv.MCP = newID(), e.ID, s.decl.Name, nil
		srv.Intent = fmt.Sprintf("MCP server %s of session %s", s.decl.Name, e.ID)
		srv.Labels, srv.KeptCaps = nil, nil
		if err := r.install(srv, s.entries, e, -1); err != nil {
			var closed []*entry
			r.teardown(e, &closed)
			r.persist()
			return v1.Session{}, err
		}
	}
	if len(o.mcp) > 0 {
		r.write(func() { r.linkServers(e) })
	}
	r.persist()
	r.lifecycle(e, "opened", caller.ID, "")
	for _, c := range r.children(e.ID) {
		r.lifecycle(c, "opened", caller.ID, "")
	}
	return e.public(), nil
}

// install writes a new session e to the kernel in a free slot and adds it
// to the index. The kernel state is written scope first, then the session,
// then the binding, so a member is never live without its scope; on error
// everything written is removed again.
func (r *Registry) install(e *entry, entries []scope.Entry, parent *entry, owner int) error {
	slot := r.free[len(r.free)-1]
	e.slot, e.gen = slot, r.gens[slot]+1
	if err := r.writePolicy(e, entries); err != nil {
		return err
	}
	if err := r.kernel.PutSession(slot, r.kernelState(e)); err != nil {
		r.deletePolicy(e)
		return kernelError(err)
	}
	undo := func() {
		r.kernel.PutSession(slot, enforcer.SessionState{Gen: e.gen, State: enforcer.StateFree})
		r.deletePolicy(e)
	}
	parentCgroup := ""
	if parent != nil {
		parentCgroup = parent.Binding.Cgroup
	}
	path, cgid, err := r.cgroups.Create(parentCgroup, e.ID, owner)
	if err != nil {
		undo()
		return kernelError(err)
	}
	if err := r.kernel.BindCgroup(cgid, slot, e.gen); err != nil {
		r.cgroups.Destroy(path)
		undo()
		return kernelError(err)
	}
	e.Binding.Cgroup, e.cgroupID = path, cgid
	if err := r.hook(e, r.hostnameHooks(e)); err != nil {
		r.hook(e, nil)
		r.kernel.UnbindCgroup(cgid)
		r.cgroups.Destroy(path)
		undo()
		return kernelError(err)
	}
	r.write(func() {
		r.free = r.free[:len(r.free)-1]
		r.gens[slot] = e.gen
		r.add(e)
	})
	return nil
}

// writePolicy writes a session's address rules (entries, compiled from
// e.rules) and hostname rules; on error neither is left in the kernel.
func (r *Registry) writePolicy(e *entry, entries []scope.Entry) error {
	if err := r.kernel.WriteScope(e.slot, e.gen, entries); err != nil {
		return kernelError(err)
	}
	if err := r.kernel.WriteNames(e.slot, e.gen, e.rules); err != nil {
		r.kernel.DeleteScope(e.slot, entries)
		return kernelError(err)
	}
	return nil
}

// compiled returns the trie entries of e's address rules. They are
// compiled again when needed (to rewrite or delete them) rather than kept:
// they follow from the rules, and keeping them cost ~190 of the ~1,170
// bytes of a two-rule session.
func (e *entry) compiled() []scope.Entry {
	// The rules compiled when the session accepted them; Compile is
	// deterministic, so it cannot fail now.
	entries, _ := scope.Compile(e.rules)
	return entries
}

// kernelState is the gate's copy of an active session.
func (r *Registry) kernelState(e *entry) enforcer.SessionState {
	mode := enforcer.ModeEnforce
	if e.Mode == v1.ModeAudit {
		mode = enforcer.ModeAudit
	}
	return enforcer.SessionState{Gen: e.gen, ExpiresNS: r.clock.Boot(e.ExpiresAt), State: enforcer.StateActive, Mode: mode,
		Budget: r.cfg.ViolationBudget, QuarantineOnBudget: r.cfg.DriftAction != config.DriftNone,
		KillOnDrift: r.cfg.DriftAction == config.DriftKill, LaunchesServers: len(e.MCP) > 0, DNS: e.dnsMode()}
}

// credentialsMode is the session's credentials mode (any when none was
// recorded: state written before the mode existed).
func (e *entry) credentialsMode() credential.Mode {
	if e.Credentials == "" {
		return credential.ModeAny
	}
	return credential.Mode(e.Credentials)
}

// dnsMode is the session's dns mode; one restored from state written
// before dns modes has none recorded and keeps what it was opened with.
func (e *entry) dnsMode() scope.DNSMode {
	if e.DNS == "" {
		return scope.DNSAny
	}
	return scope.DNSMode(e.DNS)
}

// add puts e in the index; the caller holds mu.
func (r *Registry) add(e *entry) {
	r.touch(e)
	r.byID[e.ID], r.bySlot[e.slot], r.byCgroup[e.Binding.Cgroup] = e, e, e
	if e.Binding.ContainerCgroup != "" {
		r.byCgroup[e.Binding.ContainerCgroup] = e
	}
}
