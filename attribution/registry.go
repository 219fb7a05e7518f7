// Package attribution keeps the intent sessions and joins kernel events with
// them into audit records.
package attribution

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/agentfence/agentfence/audit"
	"github.com/agentfence/agentfence/enforcer"
	"github.com/agentfence/agentfence/scope"
)

// Kernel is the part of the enforcer the registry writes policy to.
type Kernel interface {
	PutSession(slot uint32, s enforcer.SessionState) error
	SetState(slot uint32, gen uint64, st enforcer.State) error
	WriteScope(slot uint32, gen uint64, entries []scope.Entry) error
	DeleteScope(slot uint32, entries []scope.Entry) error
	BindCgroup(cgroupID uint64, slot uint32, gen uint64) error
	UnbindCgroup(cgroupID uint64) error
}

// Cgroups creates and destroys the cgroups sessions are bound to.
type Cgroups interface {
	// Create makes the cgroup for session id and returns its path and id.
	Create(id string) (path string, cgroupID uint64, err error)
	// Destroy kills whatever still runs in the cgroup and removes it.
	Destroy(path string) error
}

// Config bounds what sessions may ask for.
type Config struct {
	MaxSessions int // at most the kernel's slot count
	DefaultTTL  time.Duration
	MaxTTL      time.Duration
	MaxRules    int
	// ViolationBudget is how many denials a session may have before the
	// kernel quarantines it; 0 disables quarantine.
	ViolationBudget uint32
}

// DefaultConfig is what the daemon uses unless configured otherwise.
func DefaultConfig() Config {
	return Config{MaxSessions: 16384, DefaultTTL: time.Hour, MaxTTL: 24 * time.Hour, MaxRules: 4096}
}

// Session is an intent session as the API shows it.
type Session struct {
	ID        string    `json:"id"`
	Intent    string    `json:"intent"`
	Mode      string    `json:"mode"`
	Allow     []string  `json:"allow"`
	CreatedAt time.Time `json:"created_at"`
	ExpiresAt time.Time `json:"expires_at"`
	Cgroup    string    `json:"cgroup"`
	State     string    `json:"state"`
	OpenedBy  string    `json:"opened_by,omitempty"`

	slot     uint32
	gen      uint64
	cgroupID uint64
	rules    []scope.Rule
	entries  []scope.Entry
	expired  bool
}

// Registry owns the sessions and keeps the kernel's maps in step with them.
type Registry struct {
	cfg     Config
	kernel  Kernel
	cgroups Cgroups
	clock   *Clock
	emit    func(audit.Record)
	sync    func()

	mu     sync.Mutex
	byID   map[string]*Session
	bySlot map[uint32]*Session
	free   []uint32
	gens   []uint64
	// recent keeps closed sessions for a while so that events read after
	// a close are still attributed.
	recent []*Session
}

const recentClosed = 1024

// NewRegistry makes a registry. emit receives session lifecycle records.
func NewRegistry(cfg Config, k Kernel, cg Cgroups, clock *Clock, emit func(audit.Record)) *Registry {
	if cfg.MaxSessions <= 0 || cfg.MaxSessions > 16384 {
		cfg.MaxSessions = 16384
	}
	r := &Registry{cfg: cfg, kernel: k, cgroups: cg, clock: clock, emit: emit,
		byID: map[string]*Session{}, bySlot: map[uint32]*Session{}, gens: make([]uint64, cfg.MaxSessions)}
	// Slot 0 is never used, so a zeroed binding can never name a session.
	for s := cfg.MaxSessions - 1; s >= 1; s-- {
		r.free = append(r.free, uint32(s))
	}
	return r
}

func newID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return "s-" + hex.EncodeToString(b[:])
}

// Open validates req, writes the session to the kernel and returns it. The
// kernel state is written scope first, then the session, then the binding,
// so a member is never live without its scope; on any error everything
// written is removed again and the session does not exist.
func (r *Registry) Open(req OpenRequest, caller string) (Session, error) {
	v, err := r.validate(req)
	if err != nil {
		return Session{}, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.free) == 0 {
		return Session{}, &Error{Code: CodeCapacity, Message: fmt.Sprintf("all %d session slots are in use", r.cfg.MaxSessions-1)}
	}
	slot := r.free[len(r.free)-1]
	gen := r.gens[slot] + 1
	now := r.clock.Wall(BootNS())
	s := &Session{ID: newID(), Intent: v.intent, Mode: modeName(v.mode), CreatedAt: now, ExpiresAt: now.Add(v.ttl),
		State: "active", OpenedBy: caller, slot: slot, gen: gen, rules: v.rules, entries: v.entries}
	for _, rule := range v.rules {
		s.Allow = append(s.Allow, rule.String())
	}

	kernelErr := func(err error) error { return &Error{Code: CodeKernel, Message: err.Error()} }
	if err := r.kernel.WriteScope(slot, gen, v.entries); err != nil {
		return Session{}, kernelErr(err)
	}
	st := enforcer.SessionState{Gen: gen, ExpiresNS: r.clock.Boot(s.ExpiresAt), State: enforcer.StateActive, Mode: v.mode,
		Budget: r.cfg.ViolationBudget, QuarantineOnBudget: r.cfg.ViolationBudget > 0}
	if err := r.kernel.PutSession(slot, st); err != nil {
		r.kernel.DeleteScope(slot, v.entries)
		return Session{}, kernelErr(err)
	}
	undoSession := func() {
		r.kernel.PutSession(slot, enforcer.SessionState{Gen: gen, State: enforcer.StateFree})
		r.kernel.DeleteScope(slot, v.entries)
	}
	path, cgid, err := r.cgroups.Create(s.ID)
	if err != nil {
		undoSession()
		return Session{}, kernelErr(err)
	}
	if err := r.kernel.BindCgroup(cgid, slot, gen); err != nil {
		r.cgroups.Destroy(path)
		undoSession()
		return Session{}, kernelErr(err)
	}
	s.Cgroup, s.cgroupID = path, cgid
	r.free = r.free[:len(r.free)-1]
	r.gens[slot] = gen
	r.byID[s.ID], r.bySlot[slot] = s, s
	r.lifecycle(s, "opened", caller)
	return s.public(), nil
}

// SetEventSync registers a function that returns once every kernel event
// submitted so far has been handled. Close calls it before writing the
// closed record, so that record is the session's last.
func (r *Registry) SetEventSync(f func()) { r.sync = f }

// Close ends a session: its members are denied everything at once, killed,
// and its cgroup, binding, scope and slot are released.
func (r *Registry) Close(id, caller string) error {
	s, err := r.teardown(id)
	if err != nil {
		return err
	}
	if r.sync != nil {
		r.sync()
	}
	r.lifecycle(s, "closed", caller)
	return nil
}

func (r *Registry) teardown(id string) (*Session, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	s, ok := r.byID[id]
	if !ok {
		return nil, &Error{Code: CodeNotFound, Field: "id", Message: fmt.Sprintf("no session %q", id)}
	}
	// Revoke before anything else so a member racing the close is denied,
	// never unmanaged.
	var errs []error
	errs = append(errs, r.kernel.SetState(s.slot, s.gen, enforcer.StateRevoked))
	errs = append(errs, r.cgroups.Destroy(s.Cgroup))
	errs = append(errs, r.kernel.UnbindCgroup(s.cgroupID))
	errs = append(errs, r.kernel.DeleteScope(s.slot, s.entries))
	errs = append(errs, r.kernel.PutSession(s.slot, enforcer.SessionState{Gen: s.gen, State: enforcer.StateFree}))
	if err := errors.Join(errs...); err != nil {
		return nil, &Error{Code: CodeKernel, Message: err.Error()}
	}
	delete(r.byID, id)
	delete(r.bySlot, s.slot)
	r.free = append(r.free, s.slot)
	s.State = "closed"
	r.recent = append(r.recent, s)
	if len(r.recent) > recentClosed {
		r.recent = slices.Delete(r.recent, 0, len(r.recent)-recentClosed)
	}
	return s, nil
}

// CloseAll closes every session, for shutdown.
func (r *Registry) CloseAll(caller string) error {
	var errs []error
	for _, s := range r.List() {
		errs = append(errs, r.Close(s.ID, caller))
	}
	return errors.Join(errs...)
}

// Get returns one session.
func (r *Registry) Get(id string) (Session, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	s, ok := r.byID[id]
	if !ok {
		return Session{}, &Error{Code: CodeNotFound, Field: "id", Message: fmt.Sprintf("no session %q", id)}
	}
	return s.public(), nil
}

// List returns the open sessions, oldest first.
func (r *Registry) List() []Session {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]Session, 0, len(r.byID))
	for _, s := range r.byID {
		out = append(out, s.public())
	}
	slices.SortFunc(out, func(a, b Session) int { return a.CreatedAt.Compare(b.CreatedAt) })
	return out
}

// Reap records the expiry of sessions whose time has passed. The kernel
// already denies their members; the session stays until it is closed so
// that its members never become unmanaged.
func (r *Registry) Reap(now time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, s := range r.byID {
		if !s.expired && !now.Before(s.ExpiresAt) {
			s.expired = true
			s.State = "expired"
			r.lifecycle(s, "expired", "kernel")
		}
	}
}

// attributed is what the joiner needs of a session.
type attributed struct {
	id, intent, mode string
	rules            []scope.Rule
}

// resolve finds the session that held slot with generation gen, open or
// recently closed.
func (r *Registry) resolve(slot uint32, gen uint64) (attributed, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if s, ok := r.bySlot[slot]; ok && s.gen == gen {
		return attributed{s.ID, s.Intent, s.Mode, s.rules}, true
	}
	for i := len(r.recent) - 1; i >= 0; i-- {
		if s := r.recent[i]; s.slot == slot && s.gen == gen {
			return attributed{s.ID, s.Intent, s.Mode, s.rules}, true
		}
	}
	return attributed{}, false
}

func (r *Registry) lifecycle(s *Session, event, actor string) {
	if r.emit == nil {
		return
	}
	r.emit(audit.Record{Schema: audit.SchemaVersion, Time: r.clock.Wall(BootNS()), Kind: audit.KindSession,
		Event: event, Actor: actor, Session: &audit.Session{ID: s.ID, Intent: s.Intent, Mode: s.Mode}})
}

func (s *Session) public() Session {
	c := *s
	c.Allow = slices.Clone(s.Allow)
	return c
}

func modeName(m enforcer.Mode) string {
	if m == enforcer.ModeAudit {
		return "audit"
	}
	return "enforce"
}
