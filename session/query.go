package session

import (
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	v1 "github.com/agentfence/agentfence/api/v1"
	"github.com/agentfence/agentfence/audit"
	"github.com/agentfence/agentfence/credential"
	"github.com/agentfence/agentfence/enforcer"
	"github.com/agentfence/agentfence/scope"
)

// place is where the kernel puts a process: its pid binding, if any, and
// its cgroup. Finding it takes system calls, so it is found before the
// index is read.
type place struct {
	slot   uint32
	gen    uint64
	bound  bool
	cgroup string // absolute; "" if unknown
}

func (r *Registry) locate(pid int) place {
	var p place
	if pid <= 0 {
		return p
	}
	p.slot, p.gen, p.bound = r.kernel.PidBinding(uint32(pid))
	p.cgroup, _ = r.cgroups.Of(pid)
	return p
}

// lookup returns the session of a process at p, as the kernel decides: a
// pid binding first, then the deepest session cgroup. The caller holds mu
// or turn.
func (r *Registry) lookup(p place) *entry {
	if p.bound {
		if e := r.bySlot[p.slot]; e != nil && e.gen == p.gen {
			return e
		}
	}
	for c := p.cgroup; c != "" && c != "/" && c != "."; c = filepath.Dir(c) {
		if e := r.byCgroup[c]; e != nil {
			return e
		}
	}
	return nil
}

// memberOf returns the session the caller's process belongs to, if any.
// Only a change calls it: it makes system calls with the index readable.
func (r *Registry) memberOf(c Caller) *entry { return r.lookup(r.locate(c.PID)) }

// MemberOf returns the id of the session pid belongs to.
func (r *Registry) MemberOf(pid int) (string, bool) {
	p := r.locate(pid)
	r.mu.RLock()
	defer r.mu.RUnlock()
	if e := r.lookup(p); e != nil {
		return e.ID, true
	}
	return "", false
}

// descendantOf reports whether session id lies below ancestor, for what
// ancestor's members may do to it. An MCP server's session (and what lies
// below it) is nobody's descendant: it holds a scope the agent's session
// does not, and a member that could bind into it, open under it or narrow
// it would take or tamper with that scope (docs/mcp.md).
func (r *Registry) descendantOf(id, ancestor string) bool {
	for range len(r.byID) + 1 {
		e := r.byID[id]
		if e == nil || e.Parent == "" || e.MCPServer != "" {
			return false
		}
		if e.Parent == ancestor {
			return true
		}
		id = e.Parent
	}
	return false
}

// visible reports whether a caller that is a member of session m (nil: no
// member) may see or act on session id: outside sessions, every session;
// inside, its own and its descendants.
func (r *Registry) visible(m *entry, id string) bool {
	return m == nil || m.ID == id || r.descendantOf(id, m.ID)
}

// authorize finds session id and checks that caller may act on it. Only a
// change calls it.
func (r *Registry) authorize(id string, caller Caller) (*entry, error) {
	return r.find(id, r.memberOf(caller))
}

func (r *Registry) find(id string, m *entry) (*entry, error) {
	e := r.byID[id]
	if e == nil {
		return nil, notFound(id)
	}
	if !r.visible(m, id) {
		return nil, forbidden("id", "a member of session %s may not act on session %s", m.ID, id)
	}
	return e, nil
}

func (r *Registry) children(id string) []*entry {
	var out []*entry
	for _, e := range r.byID {
		if e.Parent == id {
			out = append(out, e)
		}
	}
	slices.SortFunc(out, func(a, b *entry) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// snap is a session copied out of the index, for the kernel's live
// counters to be added without the lock.
type snap struct {
	v1.Session
	slot    uint32
	gen     uint64
	flagged uint32
}

func (e *entry) snap() snap {
	return snap{Session: e.public(), slot: e.slot, gen: e.gen, flagged: e.flagged}
}

// Get returns one session.
func (r *Registry) Get(id string, caller Caller) (v1.Session, error) {
	p := r.locate(caller.PID)
	r.mu.RLock()
	e, err := r.find(id, r.lookup(p))
	var s snap
	if err == nil {
		s = e.snap()
	}
	r.mu.RUnlock()
	if err != nil {
		return v1.Session{}, err
	}
	return r.live(s, r.now()), nil
}

// Filter selects sessions in List; empty fields match everything.
type Filter struct {
	State  v1.State
	Origin v1.OriginKind
	Agent  string // agent id or name
	Parent string
	Label  string // key=value
	Caller *Caller
}

// List returns the open sessions that match f, oldest first. A caller
// inside a session sees only its session and its descendants.
func (r *Registry) List(f Filter) []v1.Session {
	var p place
	if f.Caller != nil {
		p = r.locate(f.Caller.PID)
	}
	r.mu.RLock()
	member := r.lookup(p)
	snaps := make([]snap, 0, len(r.byID))
	for _, e := range r.byID {
		if r.visible(member, e.ID) {
			snaps = append(snaps, e.snap())
		}
	}
	r.mu.RUnlock()
	lk, lv, _ := strings.Cut(f.Label, "=")
	now := r.now()
	out := []v1.Session{}
	for _, sn := range snaps {
		s := r.live(sn, now)
		switch {
		case f.State != "" && s.State != f.State:
		case f.Origin != "" && s.Origin.Kind != f.Origin:
		case f.Agent != "" && (s.Agent == nil || (s.Agent.ID != f.Agent && s.Agent.Name != f.Agent)):
		case f.Parent != "" && s.Parent != f.Parent:
		case f.Label != "" && s.Labels[lk] != lv:
		default:
			out = append(out, s)
		}
	}
	slices.SortFunc(out, func(a, b v1.Session) int { return a.CreatedAt.Compare(b.CreatedAt) })
	return out
}

// Len is the number of sessions the registry holds (open, or ended and
// not yet reaped).
func (r *Registry) Len() int {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return len(r.byID)
}

// StateCounts counts the open sessions by state, as List reports them. It
// is for the metrics scrape, which would otherwise copy every session.
func (r *Registry) StateCounts() map[v1.State]int {
	type slotState struct {
		slot       uint32
		gen        uint64
		state      v1.State
		violations uint32
		expiresAt  time.Time
	}
	r.mu.RLock()
	states := make([]slotState, 0, len(r.byID))
	for _, e := range r.byID {
		states = append(states, slotState{e.slot, e.gen, e.State, e.Violations, e.ExpiresAt})
	}
	r.mu.RUnlock()
	now := r.now()
	out := map[v1.State]int{}
	for _, s := range states {
		state, _ := r.liveState(s.slot, s.gen, s.state, s.violations, s.expiresAt, now)
		out[state]++
	}
	return out
}

// live is the session with its state and violation count as the kernel
// has them now: a quarantine shows before its event has been handled.
func (r *Registry) live(s snap, now time.Time) v1.Session {
	out := s.Session
	out.State, out.Violations = r.liveState(s.slot, s.gen, s.State, s.Violations, s.ExpiresAt, now)
	out.Violations += s.flagged
	return out
}

func (r *Registry) liveState(slot uint32, gen uint64, state v1.State, violations uint32, expiresAt, now time.Time) (v1.State, uint32) {
	if st, err := r.kernel.Session(slot); err == nil && st.Gen == gen {
		violations = st.Violations
		if st.State == enforcer.StateQuarantined && state == v1.StateActive {
			state = v1.StateQuarantined
		}
	}
	return stateAt(state, expiresAt, now), violations
}

// stateAt is a session's state at now: an active session past its expiry
// is expired before the reaper records it.
func stateAt(state v1.State, expiresAt, now time.Time) v1.State {
	if state == v1.StateActive && !now.Before(expiresAt) {
		return v1.StateExpired
	}
	return state
}

// Attribution is what the joiner needs of a session for a record.
type Attribution struct {
	Session audit.Session
	Origin  *audit.Origin
	Agent   *audit.Agent
	Rules   []scope.Rule
	// MCP is the server a server's session runs (nil for others).
	MCP *audit.MCP
	// Servers are the MCP servers the session declares, to name the one
	// whose scope holds what a member was denied.
	Servers []Server
	// Credentials is the session's credentials mode.
	Credentials credential.Mode

	// names are the texts of the rules records named, when the
	// attribution is a shared one (Resolve).
	names *sync.Map
}

// Shared makes a into an attribution that records share, as Resolve returns
// them: it keeps the names of its rules (RuleName).
func Shared(a Attribution) *Attribution {
	a.names = new(sync.Map)
	return &a
}

// RuleName is the text of rule i, kept for the next record when the
// attribution is shared: a rule's String per record was a tenth of the
// record path's allocations (BenchmarkRecordPath). Only rules that
// matched are kept, so a session of a thousand rules costs what it uses.
func (a *Attribution) RuleName(i int) string {
	if a.names == nil {
		return a.Rules[i].String()
	}
	if v, ok := a.names.Load(i); ok {
		return v.(string)
	}
	name := a.Rules[i].String()
	a.names.Store(i, name)
	return name
}

// Server is a declared MCP server's session as the joiner needs it.
type Server struct {
	Name  string
	Slot  uint32
	Gen   uint64
	Rules []scope.Rule
}

// attribution is called with mu or turn held: it reads the servers'
// entries.
func (e *entry) attribution() Attribution {
	a := Attribution{Session: audit.Session{ID: e.ID, Intent: e.Intent, Mode: string(e.Mode), Parent: e.Parent},
		Origin: &audit.Origin{Kind: string(e.Origin.Kind), Principal: e.Origin.Principal}, Rules: e.rules, MCP: e.server,
		Credentials: e.credentialsMode()}
	if e.Agent != nil {
		a.Agent = &audit.Agent{ID: e.Agent.ID, Name: e.Agent.Name, Version: e.Agent.Version, Owner: e.Agent.Owner}
	}
	for _, c := range e.servers {
		a.Servers = append(a.Servers, Server{Name: c.MCPServer, Slot: c.slot, Gen: c.gen, Rules: c.rules})
	}
	return a
}

// Resolve finds the session that held slot with generation gen, open or
// recently closed. The attribution is shared by every record of the
// session until the registry changes: callers must not modify it.
func (r *Registry) Resolve(slot uint32, gen uint64) (*Attribution, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.resolve(slot, gen)
}

// cachedAttribution is an entry's attribution as of a registry version.
type cachedAttribution struct {
	version uint64
	Attribution
}

func (r *Registry) resolve(slot uint32, gen uint64) (*Attribution, bool) {
	if slot == enforcer.HoldSlot && gen == enforcer.HoldGen {
		return &holdAttribution, true
	}
	e := r.bySlot[slot]
	if e == nil || e.gen != gen {
		e = nil
		for i := len(r.recent) - 1; i >= 0; i-- {
			if c := r.recent[i]; c.slot == slot && c.gen == gen {
				e = c
				break
			}
		}
	}
	if e == nil {
		return nil, false
	}
	// Built once per session and change, not per record: it was the
	// largest allocation of the record path (BenchmarkRecordPath).
	if c := e.cached.Load(); c != nil && c.version == r.version {
		return &c.Attribution, true
	}
	c := &cachedAttribution{version: r.version, Attribution: *Shared(e.attribution())}
	e.cached.Store(c)
	return &c.Attribution, true
}

// SessionOf finds the session of a process from its pid binding, its
// cgroup path (relative to the cgroup root, as the process cache has it)
// or, when the path could not be resolved, its cgroup's id, as of boot
// time at, the event's. A session closed since at still counts, by the
// cgroup: a member that execs and exits just before its session is closed
// (`agentfence run` closes it as soon as its command exits) is often read
// after the close, its pid binding and its cgroup gone with it.
func (r *Registry) SessionOf(tgid uint32, cgroupPath string, cgroupID, at uint64) (Attribution, bool) {
	var p place
	p.slot, p.gen, p.bound = r.kernel.PidBinding(tgid)
	if cgroupPath != "" {
		p.cgroup = filepath.Join(r.cfg.CgroupRoot, cgroupPath)
	}
	in := func(e *entry) bool {
		if p.cgroup == "" {
			return cgroupID != 0 && (cgroupID == e.cgroupID || cgroupID == e.containerCgroups)
		}
		return within(p.cgroup, e.Binding.Cgroup) || within(p.cgroup, e.Binding.ContainerCgroup)
	}
	r.mu.RLock()
	defer r.mu.RUnlock()
	if e := r.lookup(p); e != nil {
		return e.attribution(), true
	}
	if p.cgroup == "" && cgroupID != 0 {
		for _, e := range r.bySlot {
			if in(e) {
				return e.attribution(), true
			}
		}
	}
	for i := len(r.recent) - 1; i >= 0; i-- {
		if e := r.recent[i]; e.closedAt > at && in(e) {
			return e.attribution(), true
		}
	}
	return Attribution{}, false
}

// within says whether cgroup is dir or below it.
func within(cgroup, dir string) bool {
	return dir != "" && (cgroup == dir || strings.HasPrefix(cgroup, dir+"/"))
}
