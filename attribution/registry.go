// Package attribution keeps the intent sessions, keeps the kernel's policy
// maps in step with them, and joins kernel events with them into audit
// records.
package attribution

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/agentfence/agentfence/audit"
	"github.com/agentfence/agentfence/enforcer"
	"github.com/agentfence/agentfence/internal/privdrop"
	"github.com/agentfence/agentfence/scope"
)

// Kernel is the part of the enforcer the registry writes policy to.
type Kernel interface {
	PutSession(slot uint32, s enforcer.SessionState) error
	Session(slot uint32) (enforcer.SessionState, error)
	SetState(slot uint32, gen uint64, st enforcer.State) error
	WriteScope(slot uint32, gen uint64, entries []scope.Entry) error
	DeleteScope(slot uint32, entries []scope.Entry) error
	// WriteNames and DeleteNames take a session's full rule list and act on
	// its hostname rules; PurgeLearned drops the addresses learned for a slot.
	WriteNames(slot uint32, gen uint64, rules []scope.Rule) error
	DeleteNames(slot uint32, rules []scope.Rule) error
	PurgeLearned(slot uint32) error
	// Learned lists the addresses learned for a session's hostname rules,
	// and Hostname names a learned name's hash.
	Learned(slot uint32, gen uint64) ([]enforcer.LearnedAddr, error)
	Hostname(slot uint32, hash uint64) string
	BindCgroup(cgroupID uint64, slot uint32, gen uint64) error
	UnbindCgroup(cgroupID uint64) error
	BindPid(tgid uint32, slot uint32, gen uint64) error
	UnbindPid(tgid uint32) error
	PidBinding(tgid uint32) (slot uint32, gen uint64, ok bool)
	PidsOf(slot uint32, gen uint64) ([]uint32, error)
	// HookHostnames and UnhookHostnames attach and detach (counted per
	// cgroup) the programs hostname rules need on a cgroup's packets;
	// PruneHostnameHooks drops what an earlier daemon attached and Restore
	// did not claim.
	HookHostnames(cgroupPath string) error
	UnhookHostnames(cgroupPath string) error
	PruneHostnameHooks() error
}

// Cgroups creates, finds and empties the cgroups sessions are bound to.
type Cgroups interface {
	// Create makes cgroup name below parent ("" = the sessions' base); a
	// non-negative owner uid is given the cgroup, so that a non-root session
	// member can start processes in its child sessions.
	Create(parent, name string, owner int) (path string, cgroupID uint64, err error)
	// Destroy kills whatever still runs in the cgroup and removes it.
	Destroy(path string) error
	// Kill kills every process in the cgroup and below.
	Kill(path string) error
	// KillPIDs kills the processes (members bound by pid).
	KillPIDs(pids []uint32)
	// Procs lists the processes in the cgroup and below.
	Procs(path string) ([]int, error)
	// Of returns the cgroup directory of pid.
	Of(pid int) (string, error)
	// FindContainer returns the cgroup of a container by (a prefix of at
	// least 12 characters of) its id.
	FindContainer(id string) (path string, cgroupID uint64, err error)
}

// Conn is a connection of a member process, for Sockets.
type Conn struct {
	PID    int
	Proto  string
	Remote netip.AddrPort
}

// Sockets destroys connections of member processes.
type Sockets interface {
	// Destroy destroys the connections of pids that match selects; a nil
	// match selects all, which lets the implementation skip listing them
	// first.
	Destroy(pids []int, match func(Conn) bool) ([]Conn, error)
}

// Config bounds what sessions may ask for.
type Config struct {
	MaxSessions int // at most the kernel's slot count
	DefaultTTL  time.Duration
	MaxTTL      time.Duration
	MaxRules    int
	// ViolationBudget is how many denials a session may have before the
	// drift action applies.
	ViolationBudget uint32
	// DriftAction is quarantine, kill or none.
	DriftAction string
	// StateFile is where sessions are kept across daemon restarts ("" = not
	// kept).
	StateFile string
	// CgroupRoot is the cgroup v2 mount point.
	CgroupRoot string
}

// DefaultConfig is what the daemon uses unless configured otherwise.
func DefaultConfig() Config {
	return Config{MaxSessions: 16384, DefaultTTL: time.Hour, MaxTTL: 24 * time.Hour, MaxRules: 4096,
		ViolationBudget: 100, DriftAction: "quarantine"}
}

// Caller is an authenticated API caller.
type Caller struct {
	// ID names the caller in opened_by and lifecycle records.
	ID string
	// PID is the caller's process for local callers, 0 for remote ones.
	PID int
	// UID is the local caller's uid, -1 for remote ones.
	UID int
}

// entry is a session with what only the registry needs.
type entry struct {
	Session
	slot             uint32
	gen              uint64
	cgroupID         uint64
	containerCgroups uint64
	rules            []scope.Rule
	hooks            []string // cgroups hooked for its hostname rules
	closed           bool
	// escaped: a member left the session's cgroup (an escape record).
	// It is still a member, by pid; its packets no longer pass the
	// session cgroup's hostname hooks.
	escaped bool
}

// Registry owns the sessions.
type Registry struct {
	cfg     Config
	kernel  Kernel
	cgroups Cgroups
	sockets Sockets
	clock   *Clock
	emit    func(audit.Record)
	sync    func()
	log     *slog.Logger

	mu       sync.Mutex
	byID     map[string]*entry
	bySlot   map[uint32]*entry
	byCgroup map[string]*entry
	free     []uint32
	gens     []uint64
	recent   []*entry // closed sessions, for late events

	// Persistence (state.go): sessions changed or gone since the last write.
	dirty       map[string]bool
	gone        []string
	snapshotted bool
	journal     *os.File // open for appending between snapshots
	journalSize int

	rootHooked bool // the hostname programs watch the root (see hostnameHooks)
}

const recentClosed = 1024

// Deps are the registry's collaborators.
type Deps struct {
	Kernel  Kernel
	Cgroups Cgroups
	Sockets Sockets
	Clock   *Clock
	// Emit receives lifecycle and connection-destroyed records.
	Emit func(audit.Record)
	Log  *slog.Logger
}

// NewRegistry makes a registry with no sessions; call Restore to adopt the
// ones a previous daemon left.
func NewRegistry(cfg Config, d Deps) *Registry {
	if cfg.MaxSessions <= 0 || cfg.MaxSessions > 16384 {
		cfg.MaxSessions = 16384
	}
	if d.Log == nil {
		d.Log = slog.New(slog.DiscardHandler)
	}
	if d.Emit == nil {
		d.Emit = func(audit.Record) {}
	}
	r := &Registry{cfg: cfg, kernel: d.Kernel, cgroups: d.Cgroups, sockets: d.Sockets, clock: d.Clock, emit: d.Emit, log: d.Log,
		byID: map[string]*entry{}, bySlot: map[uint32]*entry{}, byCgroup: map[string]*entry{}, gens: make([]uint64, cfg.MaxSessions), dirty: map[string]bool{}}
	r.rebuildFree()
	return r
}

// rebuildFree lists the slots no session holds. Slot 0 is never used, so a
// zeroed binding can never name a session.
func (r *Registry) rebuildFree() {
	r.free = r.free[:0]
	for s := len(r.gens) - 1; s >= 1; s-- {
		if _, used := r.bySlot[uint32(s)]; !used {
			r.free = append(r.free, uint32(s))
		}
	}
}

// SetEventSync registers a function that returns once every kernel event
// submitted so far has been handled. Close calls it before writing the
// closed record, so that record is the session's last.
func (r *Registry) SetEventSync(f func()) { r.sync = f }

func newID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return "s-" + hex.EncodeToString(b[:])
}

func kernelError(err error) error {
	return &Error{Code: CodeKernel, Message: err.Error()}
}

// Open validates req, writes the session to the kernel and returns it. The
// kernel state is written scope first, then the session, then the binding,
// so a member is never live without its scope; on any error everything
// written is removed again and the session does not exist.
//
// A caller that is itself a session member may only open a child of its
// own session: scope within its own, expiry no later, enforce mode if its
// own is enforced.
func (r *Registry) Open(req OpenRequest, caller Caller) (Session, error) {
	o, err := r.check(req, caller)
	if err != nil {
		return Session{}, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.clock.Wall(BootNS())
	expires := now.Add(o.ttl)
	member := r.memberOf(caller)
	parentID := req.Parent
	if member != nil {
		if parentID == "" {
			parentID = member.ID
		}
		if parentID != member.ID && !r.descendantOf(parentID, member.ID) {
			return Session{}, forbidden("parent", "a session member may only open children of its own session %s", member.ID)
		}
		// What a member opens, the agent in it decided: the origin says
		// so and cannot be claimed to be a person or a schedule.
		if req.Origin == nil {
			o.origin = Origin{Kind: "agent", Principal: parentID}
		} else if o.origin.Kind != "agent" {
			return Session{}, invalid("origin.kind", "a session opened from inside session %s has origin agent", member.ID)
		}
	}
	var parent *entry
	if parentID != "" {
		parent = r.byID[parentID]
		switch {
		case parent == nil:
			return Session{}, invalid("parent", "no session %q", parentID)
		case parent.State != StateActive || !now.Before(parent.ExpiresAt):
			return Session{}, invalid("parent", "session %s is %s", parentID, r.stateAt(parent, now))
		}
		if i := scope.Within(o.rules, parent.rules); i >= 0 {
			return Session{}, invalid(fmt.Sprintf("scope[%d]", i), "%s is not within the parent's scope", o.rules[i])
		}
		if expires.After(parent.ExpiresAt) {
			expires = parent.ExpiresAt
		}
		if parent.Mode == "enforce" && o.mode == enforcer.ModeAudit {
			return Session{}, invalid("mode", "audit mode would widen an enforced parent")
		}
		if pd := parent.dnsMode(); !o.dns.Within(pd) {
			if req.DNS != "" {
				return Session{}, invalid("dns", "dns %s would widen the parent's dns %s", o.dns, pd)
			}
			o.dns = pd
		}
		if o.origin.Kind == "agent" && o.origin.Principal != parent.ID {
			return Session{}, invalid("origin.principal", "an agent-originated child names its parent %s", parent.ID)
		}
	}
	if len(r.free) == 0 {
		return Session{}, &Error{Code: CodeCapacity, Message: fmt.Sprintf("all %d session slots are in use", len(r.gens)-1)}
	}
	slot := r.free[len(r.free)-1]
	e := &entry{Session: Session{Version: ModelVersion, ID: newID(), Intent: o.intent, Origin: o.origin, Agent: req.Agent,
		Mode: modeName(o.mode), TTL: expires.Sub(now).String(), CreatedAt: now, ExpiresAt: expires,
		Parent: parentID, Labels: maps.Clone(req.Labels), KeptCaps: o.caps, DNS: o.dns, OpenedBy: caller.ID, State: StateActive},
		slot: slot, gen: r.gens[slot] + 1, rules: o.rules}

	if err := r.writePolicy(e, o.entries); err != nil {
		return Session{}, err
	}
	if err := r.kernel.PutSession(slot, r.kernelState(e, o.mode)); err != nil {
		r.deletePolicy(e)
		return Session{}, kernelError(err)
	}
	undo := func() {
		r.kernel.PutSession(slot, enforcer.SessionState{Gen: e.gen, State: enforcer.StateFree})
		r.deletePolicy(e)
	}
	parentCgroup := ""
	if parent != nil {
		parentCgroup = parent.Binding.Cgroup
	}
	owner := -1
	if member != nil && caller.UID > 0 {
		owner = caller.UID
	}
	path, cgid, err := r.cgroups.Create(parentCgroup, e.ID, owner)
	if err != nil {
		undo()
		return Session{}, kernelError(err)
	}
	if err := r.kernel.BindCgroup(cgid, slot, e.gen); err != nil {
		r.cgroups.Destroy(path)
		undo()
		return Session{}, kernelError(err)
	}
	e.Binding.Cgroup, e.cgroupID = path, cgid
	if err := r.hook(e, r.hostnameHooks(e)); err != nil {
		r.hook(e, nil)
		r.kernel.UnbindCgroup(cgid)
		r.cgroups.Destroy(path)
		undo()
		return Session{}, kernelError(err)
	}
	r.free = r.free[:len(r.free)-1]
	r.gens[slot] = e.gen
	r.add(e)
	r.persist()
	r.lifecycle(e, "opened", caller.ID, "")
	return e.public(), nil
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

// The hostname programs must see the packets of every member of a session
// with hostname rules, and see each packet once: a cgroup's packets also
// run its ancestors' programs, and two runs would learn and record every
// answer twice. So the hooked cgroups never nest:
//
//   - while any such session has processes bound by pid (they may live in
//     any cgroup), only the root is hooked;
//   - else each such session's cgroup, unless an ancestor session has
//     hostname rules too (a child's hostname rules lie within its parent's,
//     so its cgroup is then below a hooked one), and its container's cgroup.

// hostnameHooks lists the cgroups e itself needs hooked.
func (r *Registry) hostnameHooks(e *entry) []string {
	if r.rootHooked || !hasHostnames(e.rules) {
		return nil
	}
	var out []string
	if !r.parentHasHostnames(e) {
		out = append(out, e.Binding.Cgroup)
	}
	if e.Binding.ContainerCgroup != "" {
		out = append(out, e.Binding.ContainerCgroup)
	}
	return out
}

func (r *Registry) parentHasHostnames(e *entry) bool {
	for p := r.byID[e.Parent]; p != nil; p = r.byID[p.Parent] {
		if hasHostnames(p.rules) {
			return true
		}
	}
	return false
}

// needsRoot reports whether e alone calls for the root hook.
func needsRoot(e *entry) bool {
	return hasHostnames(e.rules) && (len(e.Binding.PIDs) > 0 || e.escaped)
}

// hookRoot hooks or unhooks the root as the open sessions need, moving the
// per-session hooks out of the way or back. The new hooks go in before the
// old come out: for a moment some packets are seen twice, never none.
func (r *Registry) hookRoot() error {
	need := false
	for _, e := range r.byID {
		if need = needsRoot(e); need {
			break
		}
	}
	if need == r.rootHooked {
		return nil
	}
	var errs []error
	if need {
		if err := r.kernel.HookHostnames(r.cfg.CgroupRoot); err != nil {
			return err
		}
		r.rootHooked = true
		for _, e := range r.byID {
			errs = append(errs, r.hook(e, nil))
		}
		return errors.Join(errs...)
	}
	r.rootHooked = false
	for _, e := range r.byID {
		errs = append(errs, r.hook(e, r.hostnameHooks(e)))
	}
	return errors.Join(append(errs, r.kernel.UnhookHostnames(r.cfg.CgroupRoot))...)
}

// hook attaches and detaches the hostname programs until e's hooks are
// exactly want.
func (r *Registry) hook(e *entry, want []string) error {
	var errs []error
	kept := e.hooks[:0]
	for _, p := range e.hooks {
		if slices.Contains(want, p) {
			kept = append(kept, p)
		} else {
			errs = append(errs, r.kernel.UnhookHostnames(p))
		}
	}
	e.hooks = kept
	for _, p := range want {
		if slices.Contains(e.hooks, p) {
			continue
		}
		if err := r.kernel.HookHostnames(p); err != nil {
			errs = append(errs, err)
			continue
		}
		e.hooks = append(e.hooks, p)
	}
	return errors.Join(errs...)
}

func (r *Registry) deletePolicy(e *entry) error {
	errs := []error{r.kernel.DeleteScope(e.slot, e.compiled()), r.kernel.DeleteNames(e.slot, e.rules)}
	// Only hostname rules learn addresses, and purging walks the whole
	// learned table. What a session narrowed to addresses only learned
	// before is left: entries carry the generation, so they are dead for
	// the slot's next session, and the table is LRU.
	if hasHostnames(e.rules) {
		errs = append(errs, r.kernel.PurgeLearned(e.slot))
	}
	return errors.Join(errs...)
}

func hasHostnames(rules []scope.Rule) bool {
	return slices.ContainsFunc(rules, func(x scope.Rule) bool { return x.Host != "" })
}

func (r *Registry) kernelState(e *entry, mode enforcer.Mode) enforcer.SessionState {
	return enforcer.SessionState{Gen: e.gen, ExpiresNS: r.clock.Boot(e.ExpiresAt), State: enforcer.StateActive, Mode: mode,
		Budget: r.cfg.ViolationBudget, QuarantineOnBudget: r.cfg.DriftAction != "none",
		KillOnDrift: r.cfg.DriftAction == "kill", DNS: e.dnsMode()}
}

// dnsMode is the session's dns mode; one restored from state written
// before dns modes has none recorded and keeps what it was opened with.
func (e *entry) dnsMode() scope.DNSMode {
	if e.DNS == "" {
		return scope.DNSAny
	}
	return e.DNS
}

func (r *Registry) add(e *entry) {
	r.touch(e)
	r.byID[e.ID], r.bySlot[e.slot], r.byCgroup[e.Binding.Cgroup] = e, e, e
	if e.Binding.ContainerCgroup != "" {
		r.byCgroup[e.Binding.ContainerCgroup] = e
	}
}

// memberOf returns the session the caller's process belongs to, if any:
// a pid binding first, then the deepest session cgroup, as the kernel
// decides.
func (r *Registry) memberOf(c Caller) *entry {
	if c.PID <= 0 {
		return nil
	}
	if slot, gen, ok := r.kernel.PidBinding(uint32(c.PID)); ok {
		if e := r.bySlot[slot]; e != nil && e.gen == gen {
			return e
		}
	}
	path, err := r.cgroups.Of(c.PID)
	if err != nil {
		return nil
	}
	for p := path; p != "/" && p != "."; p = filepath.Dir(p) {
		if e := r.byCgroup[p]; e != nil {
			return e
		}
	}
	return nil
}

// MemberOf returns the id of the session pid belongs to.
func (r *Registry) MemberOf(pid int) (string, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if e := r.memberOf(Caller{PID: pid}); e != nil {
		return e.ID, true
	}
	return "", false
}

func (r *Registry) descendantOf(id, ancestor string) bool {
	for range len(r.byID) + 1 {
		e := r.byID[id]
		if e == nil || e.Parent == "" {
			return false
		}
		if e.Parent == ancestor {
			return true
		}
		id = e.Parent
	}
	return false
}

// authorize finds session id and checks that caller may act on it: callers
// outside sessions may act on any session, members only on their own
// session and its descendants.
func (r *Registry) authorize(id string, caller Caller) (*entry, error) {
	e := r.byID[id]
	if e == nil {
		return nil, notFound(id)
	}
	if m := r.memberOf(caller); m != nil && m.ID != id && !r.descendantOf(id, m.ID) {
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

// Bind makes more processes members of session id: a process (and what it
// forks afterwards) or a container's cgroup.
func (r *Registry) Bind(id string, req BindRequest, caller Caller) (Session, error) {
	held := r.heldGateCaps(req) // /proc reads, before the lock
	r.mu.Lock()
	defer r.mu.Unlock()
	e, err := r.authorize(id, caller)
	if err != nil {
		return Session{}, err
	}
	if e.State != StateActive && e.State != StateQuarantined {
		return Session{}, invalid("id", "session %s is %s", id, e.State)
	}
	switch {
	case (req.PID == 0) == (req.ContainerID == ""):
		return Session{}, invalid("pid", "give exactly one of pid and container_id")
	case req.PID != 0:
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", req.PID)); err != nil {
			return Session{}, invalid("pid", "no process %d", req.PID)
		}
		// A process may move only down its session tree (into a narrower
		// session), never sideways or up.
		pm := r.memberOf(Caller{PID: int(req.PID)})
		if pm != nil && pm != e && !r.descendantOf(e.ID, pm.ID) {
			return Session{}, &Error{Code: CodeConflict, Field: "pid", Message: fmt.Sprintf("process %d belongs to session %s", req.PID, pm.ID)}
		}
		// A member may move only processes of its own session tree.
		if cm := r.memberOf(caller); cm != nil && (pm == nil || (pm != cm && !r.descendantOf(pm.ID, cm.ID))) {
			return Session{}, forbidden("pid", "process %d is not in the caller's session %s", req.PID, cm.ID)
		}
		if err := r.kernel.BindPid(req.PID, e.slot, e.gen); err != nil {
			return Session{}, kernelError(err)
		}
		pids := e.Binding.PIDs
		if !slices.Contains(pids, req.PID) {
			e.Binding.PIDs = append(slices.Clip(pids), req.PID)
		}
		if err := r.hookRoot(); err != nil {
			e.Binding.PIDs = pids
			r.kernel.UnbindPid(req.PID)
			return Session{}, kernelError(err)
		}
		e.Binding.GateCaps = slices.DeleteFunc(slices.Clip(e.Binding.GateCaps), func(h audit.HeldCaps) bool { return h.PID == req.PID })
	default:
		if r.memberOf(caller) != nil {
			return Session{}, forbidden("container_id", "session members may not bind containers")
		}
		if e.Binding.ContainerID != "" {
			return Session{}, &Error{Code: CodeConflict, Field: "container_id", Message: "session already has a container"}
		}
		if !containerID(req.ContainerID) {
			return Session{}, invalid("container_id", "%q is not a container id (at least 12 lowercase hex digits)", req.ContainerID)
		}
		path, cgid, err := r.cgroups.FindContainer(req.ContainerID)
		if err != nil {
			return Session{}, invalid("container_id", "%v", err)
		}
		if other := r.byCgroup[path]; other != nil {
			return Session{}, &Error{Code: CodeConflict, Field: "container_id", Message: fmt.Sprintf("container belongs to session %s", other.ID)}
		}
		if err := r.kernel.BindCgroup(cgid, e.slot, e.gen); err != nil {
			return Session{}, kernelError(err)
		}
		e.Binding.ContainerID, e.Binding.ContainerCgroup, e.containerCgroups = req.ContainerID, path, cgid
		if err := r.hook(e, r.hostnameHooks(e)); err != nil {
			e.Binding.ContainerID, e.Binding.ContainerCgroup, e.containerCgroups = "", "", 0
			r.hook(e, r.hostnameHooks(e))
			r.kernel.UnbindCgroup(cgid)
			return Session{}, kernelError(err)
		}
		r.byCgroup[path] = e
	}
	e.Binding.GateCaps = append(slices.Clip(e.Binding.GateCaps), held...)
	r.touch(e)
	r.persist()
	r.lifecycle(e, "bound", caller.ID, "")
	return e.public(), nil
}

// containerID reports whether id can be (a prefix of) a container id, before
// anything looks for it.
func containerID(id string) bool {
	return len(id) >= 12 && strings.Trim(id, "0123456789abcdef") == ""
}

// maxHeldListed bounds the processes of a container listed in
// Binding.GateCaps: enough to show that it holds the keys, not a census.
const maxHeldListed = 16

// heldGateCaps lists the processes req binds that hold capabilities of the
// gate set. Processes that are gone by then are skipped: they hold nothing.
func (r *Registry) heldGateCaps(req BindRequest) []audit.HeldCaps {
	var pids []int
	switch {
	case req.PID != 0:
		pids = []int{int(req.PID)}
	case containerID(req.ContainerID):
		if path, _, err := r.cgroups.FindContainer(req.ContainerID); err == nil {
			pids, _ = r.cgroups.Procs(path)
		}
	}
	var out []audit.HeldCaps
	for _, pid := range pids {
		if caps, err := privdrop.HeldGate(pid); err == nil && len(caps) > 0 {
			out = append(out, audit.HeldCaps{PID: uint32(pid), Caps: privdrop.Names(caps)})
			if len(out) == maxHeldListed {
				break
			}
		}
	}
	return out
}

// Narrow replaces the scope of session id with a narrower one. Every new
// rule must lie within one current rule. Child sessions are clipped to the
// new scope, and connections the new scope no longer allows are destroyed.
func (r *Registry) Narrow(id string, req NarrowRequest, caller Caller) (Session, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	e, err := r.authorize(id, caller)
	if err != nil {
		return Session{}, err
	}
	rules, entries, err := parseScope("scope", req.Scope, r.cfg.MaxRules)
	if err != nil {
		return Session{}, err
	}
	if i := scope.Within(rules, e.rules); i >= 0 {
		return Session{}, invalid(fmt.Sprintf("scope[%d]", i), "%s is not within the current scope: a scope can only be narrowed", rules[i])
	}
	if err := r.narrow(e, rules, entries, caller.ID); err != nil {
		return Session{}, err
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
	e.rules = rules
	if err := errors.Join(r.hook(e, r.hostnameHooks(e)), r.hookRoot()); err != nil {
		r.log.Error("hostname programs after narrowing", "session", e.ID, "err", err)
	}
	r.touch(e)
	r.lifecycle(e, "narrowed", actor, "")
	for _, c := range r.children(e.ID) {
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
func (r *Registry) Revoke(id string, caller Caller) (Session, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	e, err := r.authorize(id, caller)
	if err != nil {
		return Session{}, err
	}
	if err := r.revoke(e, caller.ID, "revoked"); err != nil {
		return Session{}, err
	}
	r.persist()
	return e.public(), nil
}

func (r *Registry) revoke(e *entry, actor, reason string) error {
	for _, c := range r.children(e.ID) {
		r.revoke(c, actor, "parent revoked")
	}
	if e.State == StateRevoked {
		return nil
	}
	if err := r.kernel.SetState(e.slot, e.gen, enforcer.StateRevoked); err != nil {
		return kernelError(err)
	}
	e.State = StateRevoked
	r.touch(e)
	r.lifecycle(e, "revoked", actor, reason)
	r.destroy(e, "revoked", nil)
	return nil
}

// members lists the processes of a session: its cgroups and its pid tree.
func (r *Registry) members(e *entry) []int {
	var pids []int
	for _, cg := range []string{e.Binding.Cgroup, e.Binding.ContainerCgroup} {
		if cg == "" {
			continue
		}
		if p, err := r.cgroups.Procs(cg); err == nil {
			pids = append(pids, p...)
		}
	}
	for _, p := range r.boundPids(e) {
		pids = append(pids, int(p))
	}
	slices.Sort(pids)
	return slices.Compact(pids)
}

// boundPids lists the processes bound to e by pid: those bound through
// Bind with the descendants the kernel bound on fork, and every member by
// cgroup, which the process programs bind by pid at its first fork or exec.
// That includes members that left the session's cgroup (escaped), which
// cgroup.procs no longer lists, so it is always asked (a walk of the host's
// tasks with the BPF iterator, tens of microseconds).
func (r *Registry) boundPids(e *entry) []uint32 {
	pids, err := r.kernel.PidsOf(e.slot, e.gen)
	if err != nil {
		r.log.Error("list pid-bound members", "session", e.ID, "err", err)
	}
	return pids
}

// treePopulated reports whether the session or any descendant has members.
func (r *Registry) treePopulated(e *entry) bool {
	if len(r.members(e)) > 0 {
		return true
	}
	for _, c := range r.children(e.ID) {
		if r.treePopulated(c) {
			return true
		}
	}
	return false
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
	now := r.clock.Wall(BootNS())
	for _, c := range conns {
		rec := r.baseRecord(e, now, audit.KindDestroy)
		rec.Process = &audit.Process{PID: uint32(c.PID)}
		rec.Destination = &audit.Destination{IP: c.Remote.Addr().String(), Port: c.Remote.Port(), Protocol: c.Proto}
		rec.Outcome = &audit.Outcome{Verdict: audit.VerdictDestroyed, Reason: reason}
		r.emit(rec)
	}
}

// Close ends a session: its members are denied everything at once, killed,
// and its cgroups, bindings, scope and slot are released. Child sessions
// are closed first.
func (r *Registry) Close(id string, caller Caller) error {
	// Events already in the ring buffer (a quarantine, say) are handled
	// while the session still exists.
	if r.sync != nil {
		r.sync()
	}
	r.mu.Lock()
	e, err := r.authorize(id, caller)
	if err == nil && r.memberOf(caller) == e {
		// Closing its own session would take a member out of confinement.
		err = forbidden("id", "a member may not close its own session %s; revoke narrows it to nothing", id)
	}
	if err != nil {
		r.mu.Unlock()
		return err
	}
	var closed []*entry
	err = r.teardown(e, &closed)
	r.persist()
	r.mu.Unlock()
	if r.sync != nil {
		r.sync()
	}
	for _, c := range closed {
		r.lifecycle(c, "closed", caller.ID, "")
	}
	return err
}

func (r *Registry) teardown(e *entry, closed *[]*entry) error {
	var errs []error
	for _, c := range r.children(e.ID) {
		errs = append(errs, r.teardown(c, closed))
	}
	// Revoke before anything else so a member racing the close is denied,
	// never unmanaged.
	errs = append(errs, r.kernel.SetState(e.slot, e.gen, enforcer.StateRevoked))
	errs = append(errs, r.hook(e, nil))
	errs = append(errs, r.cgroups.Destroy(e.Binding.Cgroup))
	// Members bound by pid live outside the cgroup: unbound they would be
	// unconfined, so they end with the session.
	pids := r.boundPids(e)
	r.cgroups.KillPIDs(pids)
	for _, pid := range pids {
		errs = append(errs, r.kernel.UnbindPid(pid))
	}
	errs = append(errs, r.kernel.UnbindCgroup(e.cgroupID))
	if e.containerCgroups != 0 {
		errs = append(errs, r.kernel.UnbindCgroup(e.containerCgroups))
	}
	errs = append(errs, r.deletePolicy(e))
	errs = append(errs, r.kernel.PutSession(e.slot, enforcer.SessionState{Gen: e.gen, State: enforcer.StateFree}))
	if err := errors.Join(errs...); err != nil {
		return kernelError(err)
	}
	delete(r.byID, e.ID)
	delete(r.dirty, e.ID)
	r.gone = append(r.gone, e.ID)
	delete(r.bySlot, e.slot)
	delete(r.byCgroup, e.Binding.Cgroup)
	delete(r.byCgroup, e.Binding.ContainerCgroup)
	r.free = append(r.free, e.slot)
	e.closed = true
	if needsRoot(e) {
		if err := r.hookRoot(); err != nil {
			r.log.Error("hostname programs after closing", "session", e.ID, "err", err)
		}
	}
	r.recent = append(r.recent, e)
	if len(r.recent) > recentClosed {
		r.recent = slices.Delete(r.recent, 0, len(r.recent)-recentClosed)
	}
	*closed = append(*closed, e)
	return nil
}

// CloseAll closes every session.
func (r *Registry) CloseAll(caller Caller) error {
	var errs []error
	for _, s := range r.List(Filter{}) {
		if s.Parent == "" {
			errs = append(errs, r.Close(s.ID, caller))
		}
	}
	return errors.Join(errs...)
}

// Get returns one session.
func (r *Registry) Get(id string, caller Caller) (Session, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	e, err := r.authorize(id, caller)
	if err != nil {
		return Session{}, err
	}
	return r.view(e), nil
}

// Filter selects sessions in List; empty fields match everything.
type Filter struct {
	State  string
	Origin string // origin kind
	Agent  string // agent id or name
	Parent string
	Label  string // key=value
	Caller *Caller
}

// List returns the open sessions that match f, oldest first. A caller
// inside a session sees only its session and its descendants.
func (r *Registry) List(f Filter) []Session {
	r.mu.Lock()
	defer r.mu.Unlock()
	var member *entry
	if f.Caller != nil {
		member = r.memberOf(*f.Caller)
	}
	lk, lv, _ := strings.Cut(f.Label, "=")
	out := []Session{}
	for _, e := range r.byID {
		s := r.view(e)
		switch {
		case member != nil && e != member && !r.descendantOf(e.ID, member.ID):
		case f.State != "" && s.State != f.State:
		case f.Origin != "" && s.Origin.Kind != f.Origin:
		case f.Agent != "" && (s.Agent == nil || (s.Agent.ID != f.Agent && s.Agent.Name != f.Agent)):
		case f.Parent != "" && s.Parent != f.Parent:
		case f.Label != "" && s.Labels[lk] != lv:
		default:
			out = append(out, s)
		}
	}
	slices.SortFunc(out, func(a, b Session) int { return a.CreatedAt.Compare(b.CreatedAt) })
	return out
}

// StateCounts counts the open sessions by state, as List reports them. It
// is for the metrics scrape, which would otherwise copy every session.
func (r *Registry) StateCounts() map[string]int {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.clock.Wall(BootNS())
	out := map[string]int{}
	for _, e := range r.byID {
		state, _ := r.live(e, now)
		out[state]++
	}
	return out
}

// view is the public session with the kernel's live counters.
func (r *Registry) view(e *entry) Session {
	s := e.public()
	s.State, s.Violations = r.live(e, r.clock.Wall(BootNS()))
	return s
}

// live is a session's state and violation count as the kernel has them
// now: a quarantine shows before its event has been handled.
func (r *Registry) live(e *entry, now time.Time) (state string, violations uint32) {
	state, violations = e.State, e.Violations
	if st, err := r.kernel.Session(e.slot); err == nil && st.Gen == e.gen {
		violations = st.Violations
		if st.State == enforcer.StateQuarantined && state == StateActive {
			state = StateQuarantined
		}
	}
	if state == StateActive {
		state = r.stateAt(e, now)
	}
	return state, violations
}

func (r *Registry) stateAt(e *entry, now time.Time) string {
	if e.State == StateActive && !now.Before(e.ExpiresAt) {
		return StateExpired
	}
	return e.State
}

// Reap records the expiry of sessions whose time has passed and destroys
// their connections (the kernel already denies their members new ones),
// and closes expired or revoked sessions that have no members left.
func (r *Registry) Reap(now time.Time) {
	r.mu.Lock()
	var closed []*entry
	changed := false
	for _, e := range r.byID {
		if (e.State == StateActive || e.State == StateQuarantined) && !now.Before(e.ExpiresAt) {
			changed = true
			e.State = StateExpired
			r.touch(e)
			r.lifecycle(e, "expired", "kernel", "")
			r.destroy(e, "expired", nil)
		}
	}
	// Close ended sessions whose whole tree has no members left. Children
	// of an ended session have ended too (revocation cascades, expiry is
	// clamped to the parent's).
	var done []*entry
	for _, e := range r.byID {
		if (e.State == StateExpired || e.State == StateRevoked) && !r.treePopulated(e) {
			if p := r.byID[e.Parent]; p == nil || (p.State != StateExpired && p.State != StateRevoked) || r.treePopulated(p) {
				done = append(done, e) // the topmost ended, empty session of its tree
			}
		}
	}
	for _, e := range done {
		if err := r.teardown(e, &closed); err != nil {
			r.log.Error("reap session", "session", e.ID, "err", err)
		}
	}
	if changed || len(closed) > 0 {
		r.persist()
	}
	r.mu.Unlock()
	for _, c := range closed {
		r.lifecycle(c, "closed", "agentfenced (no members left)", "")
	}
}

// Quarantined handles the kernel's report that a session used up its
// violation budget: it records the fact and, with the kill drift action,
// kills the session's members.
func (r *Registry) Quarantined(slot uint32, gen uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	e := r.bySlot[slot]
	if e == nil || e.gen != gen || e.State != StateActive {
		return
	}
	e.State = StateQuarantined
	r.touch(e)
	r.lifecycle(e, "quarantined", "kernel", fmt.Sprintf("more than %d violations", r.cfg.ViolationBudget))
	switch r.cfg.DriftAction {
	case "kill":
		for _, cg := range []string{e.Binding.Cgroup, e.Binding.ContainerCgroup} {
			if cg != "" {
				r.cgroups.Kill(cg)
			}
		}
		r.cgroups.KillPIDs(r.boundPids(e))
		r.lifecycle(e, "killed", "kernel", "drift action kill")
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

// escaped handles an escape record: a member of the session in slot/gen
// left its cgroup and stays a member by pid. A session with hostname rules
// then needs the hostname programs at the root, where the member's packets
// pass now.
func (r *Registry) escaped(slot uint32, gen uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
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

// attributed is what the joiner needs of a session.
type attributed struct {
	session audit.Session
	agent   *audit.Agent
	origin  *audit.Origin
	rules   []scope.Rule
}

// resolve finds the session that held slot with generation gen, open or
// recently closed.
func (r *Registry) resolve(slot uint32, gen uint64) (attributed, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
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
		return attributed{}, false
	}
	a := attributed{session: audit.Session{ID: e.ID, Intent: e.Intent, Mode: e.Mode, Parent: e.Parent},
		origin: &audit.Origin{Kind: e.Origin.Kind, Principal: e.Origin.Principal}, rules: e.rules}
	if e.Agent != nil {
		a.agent = &audit.Agent{ID: e.Agent.ID, Name: e.Agent.Name, Version: e.Agent.Version, Owner: e.Agent.Owner}
	}
	return a, true
}

// sessionOf finds the session of a process from its pid binding or its
// cgroup path (relative to the cgroup root, as the process cache has it).
func (r *Registry) sessionOf(tgid uint32, cgroupPath string) (attributed, bool) {
	r.mu.Lock()
	var e *entry
	if slot, gen, ok := r.kernel.PidBinding(tgid); ok {
		if c := r.bySlot[slot]; c != nil && c.gen == gen {
			e = c
		}
	}
	if e == nil && cgroupPath != "" {
		for p := filepath.Join(r.cfg.CgroupRoot, cgroupPath); e == nil && p != "/" && p != "."; p = filepath.Dir(p) {
			e = r.byCgroup[p]
		}
	}
	r.mu.Unlock()
	if e == nil {
		return attributed{}, false
	}
	return r.resolve(e.slot, e.gen)
}

func (r *Registry) baseRecord(e *entry, t time.Time, kind string) audit.Record {
	rec := audit.Record{Schema: audit.SchemaVersion, Time: t, Kind: kind,
		Session: &audit.Session{ID: e.ID, Intent: e.Intent, Mode: e.Mode, Parent: e.Parent},
		Origin:  &audit.Origin{Kind: e.Origin.Kind, Principal: e.Origin.Principal}}
	if e.Agent != nil {
		rec.Agent = &audit.Agent{ID: e.Agent.ID, Name: e.Agent.Name, Version: e.Agent.Version, Owner: e.Agent.Owner}
	}
	return rec
}

func (r *Registry) lifecycle(e *entry, event, actor, reason string) {
	rec := r.baseRecord(e, r.clock.Wall(BootNS()), audit.KindSession)
	rec.Event, rec.Actor = event, actor
	rec.Session.KeptCaps = e.KeptCaps                       // never changed in place
	rec.Session.GateCaps = slices.Clone(e.Binding.GateCaps) // appended to by Bind
	rec.Session.DNS = string(e.dnsMode())
	if reason != "" {
		rec.Outcome = &audit.Outcome{Reason: reason}
	}
	r.emit(rec)
}

// public is the session as callers see it. Its scope texts are rendered
// from the rules here rather than kept beside them (~90 bytes a session).
func (e *entry) public() Session {
	s := e.Session
	s.Scope = texts(e.rules)
	s.Labels = maps.Clone(e.Labels)
	s.KeptCaps = slices.Clone(e.KeptCaps)
	s.Binding.PIDs = slices.Clone(e.Binding.PIDs)
	s.Binding.GateCaps = slices.Clone(e.Binding.GateCaps)
	if e.Agent != nil {
		a := *e.Agent
		s.Agent = &a
	}
	return s
}

func modeName(m enforcer.Mode) string {
	if m == enforcer.ModeAudit {
		return "audit"
	}
	return "enforce"
}
