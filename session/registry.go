// Package session keeps the intent sessions and keeps the kernel's policy
// maps, cgroups and hooks in step with them (docs/sessions.md).
//
// The files follow a session's life: check.go validates a request, open.go
// writes a new session to the kernel, bind.go adds members, hooks.go places
// the hostname programs, narrow.go narrows, revokes and quarantines,
// teardown.go closes and reaps, query.go answers the API and the joiner,
// records.go builds lifecycle records, and store.go keeps the sessions
// across daemon restarts.
package session

import (
	"crypto/rand"
	"encoding/hex"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	v1 "github.com/agentfence/agentfence/api/v1"
	"github.com/agentfence/agentfence/audit"
	"github.com/agentfence/agentfence/config"
	"github.com/agentfence/agentfence/internal/boottime"
	"github.com/agentfence/agentfence/scope"
)

// Config bounds what sessions may ask for.
type Config struct {
	MaxSessions int // how many may be open at once; at most config.MaxSessionsLimit
	DefaultTTL  time.Duration
	MaxTTL      time.Duration
	MaxRules    int
	// ViolationBudget is how many denials a session may have before the
	// drift action applies.
	ViolationBudget uint32
	DriftAction     config.DriftAction
	// StateFile is where sessions are kept across daemon restarts ("" = not
	// kept).
	StateFile string
	// CgroupRoot is the cgroup v2 mount point.
	CgroupRoot string
}

// DefaultConfig is what the daemon uses unless configured otherwise.
func DefaultConfig() Config {
	return Config{MaxSessions: config.MaxSessionsLimit, DefaultTTL: time.Hour, MaxTTL: 24 * time.Hour, MaxRules: 4096,
		ViolationBudget: 100, DriftAction: config.DriftQuarantine}
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
	v1.Session
	slot             uint32
	gen              uint64
	cgroupID         uint64
	containerCgroups uint64
	rules            []scope.Rule
	hooks            []string // cgroups hooked for its hostname rules
	closed           bool
	closedAt         uint64 // boot ns, for late events (SessionOf)
	// escaped: a member left the session's cgroup (an escape record).
	// It is still a member, by pid; its packets no longer pass the
	// session cgroup's hostname hooks.
	escaped bool
	// mcp are the servers the session declares (docs/mcp.md); each has a
	// child session whose MCPServer names it: servers (see linkServers).
	mcp     []mcpServer
	servers []*entry
	// server is, for a server's session, the server it runs.
	server *audit.MCP
	// flagged counts the violations only user space sees (Drift): the
	// session's violations are the kernel's count and these.
	flagged uint32
	// cached is the attribution records share (resolve).
	cached atomic.Pointer[cachedAttribution]
}

// Registry owns the sessions.
type Registry struct {
	cfg     Config
	kernel  Kernel
	cgroups Cgroups
	sockets Sockets
	clock   *boottime.Clock
	sync    func()
	log     *slog.Logger

	// turn serializes changes. A change (open, bind, narrow, revoke,
	// close, reap, quarantine, restore) is a run of kernel writes (maps,
	// cgroups, hostname hooks, socket destruction) that must not
	// interleave with another change's, so turn is held across them; it
	// is the one lock held across system calls. Readers (the joiner,
	// Get, List, the metrics scrape) never take it, so a slow change
	// delays other changes only. Nothing is emitted under it (see out).
	//
	// turn guards the fields below mu's and the entries' hooks, escaped
	// and closed fields, which only changes use.
	turn sync.Mutex

	// mu guards the index (byID, bySlot, byCgroup, free, gens, recent) and
	// the entries' public fields and rules against the readers. It is held
	// only to read or write memory: never across a system call, a socket
	// destruction or an emit. A change holds turn, so it reads without mu
	// and takes mu to write.
	mu       sync.RWMutex
	byID     map[string]*entry
	bySlot   map[uint32]*entry
	byCgroup map[string]*entry
	free     []uint32
	gens     []uint64
	recent   []*entry // closed sessions, for late events
	// version counts the writes (write): an entry's cached attribution
	// (resolve) is good while it has not moved.
	version uint64
	// retired are the SPIFFE IDs of retired agents (agents.go): Open
	// refuses their sessions. Written under turn and mu.
	retired map[string]bool

	// Persistence (store.go): sessions changed or gone since the last
	// write. Guarded by turn.
	dirty       map[string]bool
	gone        []string
	snapshotted bool
	journal     *os.File // open for appending between snapshots
	journalSize int

	rootHooked bool // the hostname programs watch the root (see hostnameHooks); guarded by turn

	// holdingPods says that the kernel holds new pods (hold.go): a pod
	// whose session ends goes back to the hold. Guarded by turn.
	holdingPods bool

	out outbox
}

const recentClosed = 1024

// Deps are the registry's collaborators.
type Deps struct {
	Kernel  Kernel
	Cgroups Cgroups
	Sockets Sockets
	Clock   *boottime.Clock
	// Emit receives lifecycle and connection-destroyed records, in order,
	// never under the registry's locks: it may block.
	Emit func(audit.Record)
	Log  *slog.Logger
}

// NewRegistry makes a registry with no sessions; call Restore to adopt the
// ones a previous daemon left.
func NewRegistry(cfg Config, d Deps) *Registry {
	limit := config.MaxSessionsLimit
	if d.Kernel != nil {
		limit = d.Kernel.Slots() - 1
	}
	if cfg.MaxSessions <= 0 || cfg.MaxSessions > limit {
		cfg.MaxSessions = limit
	}
	if d.Log == nil {
		d.Log = slog.New(slog.DiscardHandler)
	}
	if d.Emit == nil {
		d.Emit = func(audit.Record) {}
	}
	r := &Registry{cfg: cfg, kernel: d.Kernel, cgroups: d.Cgroups, sockets: d.Sockets, clock: d.Clock, log: d.Log, out: outbox{emit: d.Emit},
		byID: map[string]*entry{}, bySlot: map[uint32]*entry{}, byCgroup: map[string]*entry{}, retired: map[string]bool{}, gens: make([]uint64, cfg.MaxSessions+1), dirty: map[string]bool{}}
	r.out.delivered.L = &r.out.mu
	r.rebuildFree()
	return r
}

// rebuildFree lists the slots no session holds, up to max_sessions (a
// restored session may hold one above it). Slot 0 is never used, so a
// zeroed binding can never name a session.
func (r *Registry) rebuildFree() {
	r.free = r.free[:0]
	for s := r.cfg.MaxSessions; s >= 1; s-- {
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
	return &v1.Error{Code: v1.CodeKernel, Message: err.Error()}
}
