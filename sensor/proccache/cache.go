// Package proccache keeps the identity of every process on the host, fed by
// the kernel's exec/fork/exit events and seeded once from /proc, so that a
// connect can be attributed without touching /proc on the hot path.
//
// Processes are keyed by (tgid, start time): a pid is reused by the kernel,
// a pid together with its boot-clock start time never is. Exited processes
// stay for a grace period so events that arrive late still resolve to the
// process that was alive when they happened.
package proccache

import (
	"context"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/agentfence/agentfence/sensor"
	"github.com/agentfence/agentfence/sensor/cgroupmeta"
)

// Key names one process for its whole life, across execs.
type Key struct {
	TGID  uint32 `json:"pid"`
	Start uint64 `json:"start_time_ns"` // CLOCK_BOOTTIME ns
}

// Source says where an entry's identity came from.
const (
	SourceExec = "exec" // the kernel reported its exec
	SourceFork = "fork" // forked, has not exec'd: runs its parent's image
	SourceProc = "proc" // seeded from /proc at start
)

// Hash states of Process.ExeSHA256.
const (
	HashPending     = "pending"
	HashOK          = "ok"
	HashUnavailable = "unavailable" // file gone and process gone, or unreadable
	HashTooLarge    = "too_large"
	HashSkipped     = "skipped" // hashing queue full
)

// Process is a snapshot of one process; callers own it.
type Process struct {
	Key
	PPID          uint32          `json:"ppid"`
	UID           uint32          `json:"uid"`
	GID           uint32          `json:"gid"`
	ExePath       string          `json:"exe,omitempty"`
	ExeDeleted    bool            `json:"exe_deleted,omitempty"`
	Exe           sensor.ExeID    `json:"exe_id"`
	ExeSHA256     string          `json:"exe_sha256,omitempty"`
	HashState     string          `json:"exe_hash_state,omitempty"`
	Args          []string        `json:"args,omitempty"` // valid UTF-8, see sanitizeArg
	ArgsTruncated bool            `json:"args_truncated,omitempty"`
	CgroupID      uint64          `json:"cgroup_id,omitempty"`
	CgroupPath    string          `json:"cgroup,omitempty"`
	Container     cgroupmeta.Meta `json:"container"`
	Execs         int             `json:"execs"` // execs seen; >1 means the image changed
	Source        string          `json:"source"`
	Exited        bool            `json:"exited,omitempty"`
	ExitTime      uint64          `json:"exit_time_ns,omitempty"`
	ExitStatus    uint32          `json:"exit_status,omitempty"` // wait(2) encoding
	// Ancestry holds the exe paths of the parent, grandparent, ... (nearest
	// first), as far as they are known, up to Config.AncestryDepth.
	Ancestry []string `json:"ancestry,omitempty"`
}

// Config tunes a Cache. Zero values pick the defaults.
type Config struct {
	// MaxEntries bounds live plus exited entries (default 65536).
	MaxEntries int
	// ExitGrace keeps exited processes resolvable (default 30s).
	ExitGrace time.Duration
	// AncestryDepth bounds Process.Ancestry (default 8).
	AncestryDepth int
	// HashQueue bounds pending SHA-256 jobs (default 4096); HashMaxSize skips
	// executables larger than this (default 512 MiB).
	HashQueue   int
	HashMaxSize int64
	// ProcRoot is /proc; tests point it elsewhere.
	ProcRoot string
	// Redact replaces the credentials in a command line (credential.
	// Redactor.Argv) before the cache keeps it; nil keeps argv whole.
	Redact func(args []string) []string
	// CgroupPath maps a cgroup id to its path (cgroupmeta.Resolver.Path).
	// Nil leaves CgroupPath and Container empty for event-fed entries.
	CgroupPath func(id uint64) (string, error)
	// Now returns CLOCK_BOOTTIME in ns; tests inject a fake clock.
	Now func() uint64
}

// Stats are counters for metrics.
type Stats struct {
	Live, Exited   int
	EvictedLive    uint64 // dropped while alive because the cache was full
	MissedExits    uint64 // pid reused before we saw the exit (lost events)
	UnknownExits   uint64 // exit of a process we never knew
	HashJobsQueued uint64
	HashJobsDone   uint64
}

type entry struct {
	Process
	coarse bool // Start comes from /proc stat, 10 ms resolution
	// anc is the ancestry snapshot found, as of the cache's epoch.
	anc atomic.Pointer[ancestry]
}

// ancestry is an entry's ancestry at an epoch of the cache: it depends on
// other entries only, so it holds until the cache changes. Walking it for
// every record was most of the process cache's share of the record path
// (a profile of the system benchmark, docs/benchmarks.md).
type ancestry struct {
	epoch uint64
	paths []string
}

// Cache is safe for concurrent use: one goroutine applies events (Run), any
// number look up.
type Cache struct {
	cfg Config

	mu      sync.RWMutex
	procs   map[uint32][]*entry // incarnations of a tgid, ascending Start
	n       int
	exited  []Key // exit order == eviction order
	stats   Stats
	mark    uint64        // highest event time applied
	epoch   uint64        // counts the changes, under mu (ancestry)
	changed chan struct{} // closed and replaced after each Apply
	// wake asks the event source (Run's) to return what it has now, a
	// sensor.Quiet when it has nothing: a waiter's mark then comes without
	// waiting out the source's poll interval. nil without Run.
	wake func()

	hasher *hasher
}

// New returns an empty cache and starts its hashing worker; Close stops it.
func New(cfg Config) *Cache {
	if cfg.MaxEntries <= 0 {
		cfg.MaxEntries = 65536
	}
	if cfg.ExitGrace <= 0 {
		cfg.ExitGrace = 30 * time.Second
	}
	if cfg.AncestryDepth <= 0 {
		cfg.AncestryDepth = 8
	}
	if cfg.HashQueue <= 0 {
		cfg.HashQueue = 4096
	}
	if cfg.HashMaxSize <= 0 {
		cfg.HashMaxSize = 512 << 20
	}
	if cfg.ProcRoot == "" {
		cfg.ProcRoot = "/proc"
	}
	if cfg.Now == nil {
		cfg.Now = bootNow
	}
	c := &Cache{cfg: cfg, procs: map[uint32][]*entry{}, changed: make(chan struct{})}
	c.hasher = newHasher(c, cfg.HashQueue, cfg.HashMaxSize, cfg.ProcRoot)
	return c
}

// Close stops the hashing worker.
func (c *Cache) Close() { c.hasher.stop() }

// sameStart compares a stored start with a kernel one, at tick resolution
// when the stored one came from /proc.
func (e *entry) sameStart(start uint64) bool {
	if e.coarse {
		return e.Start/nsPerTick == start/nsPerTick
	}
	return e.Start == start
}

func (c *Cache) find(tgid uint32, start uint64) *entry {
	for _, e := range c.procs[tgid] {
		if e.sameStart(start) {
			return e
		}
	}
	return nil
}

// insert adds e, retiring older live incarnations of the same tgid: the pid
// was reused, so they are dead even if their exit event was lost.
func (c *Cache) insert(e *entry, now uint64) {
	list := c.procs[e.TGID]
	for _, old := range list {
		if !old.Exited && old.Start < e.Start {
			c.stats.MissedExits++
			c.markExited(old, now, 0)
		}
	}
	for c.n >= c.cfg.MaxEntries && c.evictOne() {
	}
	list = append(c.procs[e.TGID], e)
	sort.Slice(list, func(i, j int) bool { return list[i].Start < list[j].Start })
	c.procs[e.TGID] = list
	c.n++
}

func (c *Cache) markExited(e *entry, at uint64, status uint32) {
	e.Exited, e.ExitTime, e.ExitStatus = true, at, status
	c.exited = append(c.exited, e.Key)
}

func (c *Cache) remove(k Key) bool {
	list := c.procs[k.TGID]
	for i, e := range list {
		if e.Key == k {
			list = append(list[:i], list[i+1:]...)
			if len(list) == 0 {
				delete(c.procs, k.TGID)
			} else {
				c.procs[k.TGID] = list
			}
			c.n--
			return true
		}
	}
	return false
}

// evictOne drops the longest-exited entry, or when none has exited, an
// arbitrary live one: staying bounded beats completeness under a pid storm.
func (c *Cache) evictOne() bool {
	for len(c.exited) > 0 {
		k := c.exited[0]
		c.exited = c.exited[1:]
		if c.remove(k) {
			return true
		}
	}
	for _, list := range c.procs {
		c.stats.EvictedLive++
		return c.remove(list[0].Key)
	}
	return false
}

// Sweep drops processes that exited more than ExitGrace before now (boot ns).
func (c *Cache) Sweep(now uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.epoch++
	c.sweep(now)
}

func (c *Cache) sweep(now uint64) {
	grace := uint64(c.cfg.ExitGrace)
	i := 0
	for ; i < len(c.exited); i++ {
		k := c.exited[i]
		e := c.get(k)
		if e == nil || !e.Exited {
			continue // evicted already, or a stale duplicate key
		}
		if e.ExitTime+grace > now {
			break
		}
		c.remove(k)
	}
	c.exited = c.exited[i:]
	if cap(c.exited) > 1024 && len(c.exited) < cap(c.exited)/4 {
		c.exited = append([]Key(nil), c.exited...)
	}
}

func (c *Cache) get(k Key) *entry {
	for _, e := range c.procs[k.TGID] {
		if e.Start == k.Start {
			return e
		}
	}
	return nil
}

// Apply folds one kernel event into the cache.
func (c *Cache) Apply(ev sensor.Event) {
	var job *hashJob
	c.mu.Lock()
	c.epoch++
	switch e := ev.(type) {
	case *sensor.ExecEvent:
		job = c.applyExec(e)
	case *sensor.ForkEvent:
		c.applyFork(e)
	case *sensor.ExitEvent:
		if p := c.find(e.TGID, e.StartTime); p != nil && !p.Exited {
			c.markExited(p, e.Ktime, e.Status)
		} else if p == nil {
			c.stats.UnknownExits++
		}
	}
	if t := ev.Time(); t > c.mark {
		c.mark = t
	}
	if len(c.exited) > 0 {
		c.sweep(c.cfg.Now())
	}
	close(c.changed)
	c.changed = make(chan struct{})
	c.mu.Unlock()
	if job != nil {
		c.hasher.enqueue(job)
	}
}

func (c *Cache) applyExec(ev *sensor.ExecEvent) *hashJob {
	p := c.find(ev.TGID, ev.StartTime)
	if p == nil {
		p = &entry{Process: Process{Key: Key{ev.TGID, ev.StartTime}}}
		c.insert(p, ev.Ktime)
	} else if p.coarse {
		p.Start, p.coarse = ev.StartTime, false
	}
	path := ev.Filename
	if ev.Interp != "" {
		path = ev.Interp
	}
	p.PPID, p.UID, p.GID = ev.PPID, ev.UID, ev.GID
	p.Exe, p.ExePath, p.ExeDeleted = ev.Exe, path, false
	p.ExeSHA256, p.HashState = "", HashPending
	p.Args, p.ArgsTruncated = sanitizeArgs(ev.Args, ev.ArgsTruncated, c.cfg.Redact), ev.ArgsTruncated
	p.Execs++
	p.Source = SourceExec
	if p.CgroupID != ev.CgroupID || p.CgroupPath == "" {
		p.CgroupID = ev.CgroupID
		p.CgroupPath, p.Container = "", cgroupmeta.Meta{}
		if c.cfg.CgroupPath != nil {
			// Cached after the first miss per cgroup, so this is a map
			// lookup for all but the first process of a container.
			if path, err := c.cfg.CgroupPath(ev.CgroupID); err == nil {
				p.CgroupPath, p.Container = path, cgroupmeta.Parse(path)
			}
		}
	}
	if sum, ok := c.hasher.known(ev.Exe); ok {
		// Provisional: the worker still re-checks mtime before trusting it.
		p.ExeSHA256 = sum
	}
	return &hashJob{key: p.Key, exe: ev.Exe, path: path}
}

func (c *Cache) applyFork(ev *sensor.ForkEvent) {
	if c.find(ev.TGID, ev.StartTime) != nil {
		return
	}
	p := &entry{Process: Process{Key: Key{ev.TGID, ev.StartTime}, PPID: ev.ParentTGID, Source: SourceFork}}
	if parent := c.find(ev.ParentTGID, ev.ParentStartTime); parent != nil {
		// Same image, same credentials, same cgroup until it execs or
		// moves; copying avoids a /proc read.
		src := parent.Process
		p.UID, p.GID = src.UID, src.GID
		p.Exe, p.ExePath, p.ExeDeleted = src.Exe, src.ExePath, src.ExeDeleted
		p.ExeSHA256, p.HashState = src.ExeSHA256, src.HashState
		p.Args, p.ArgsTruncated = src.Args, src.ArgsTruncated
		p.CgroupID, p.CgroupPath, p.Container = src.CgroupID, src.CgroupPath, src.Container
	}
	c.insert(p, ev.Ktime)
}

// lookup picks the incarnation of tgid that was alive at boot time at: the
// newest one started by then, unless it had already exited. at == 0 asks for
// the newest incarnation.
func (c *Cache) lookup(tgid uint32, at uint64) *entry {
	list := c.procs[tgid]
	if len(list) == 0 {
		return nil
	}
	if at == 0 {
		return list[len(list)-1]
	}
	for i := len(list) - 1; i >= 0; i-- {
		e := list[i]
		if e.Start > at {
			continue
		}
		if e.Exited && e.ExitTime < at {
			// The pid belonged to a newer process we have not heard of yet.
			return nil
		}
		return e
	}
	return nil
}

// Lookup resolves a tgid seen at boot time at (ns; a gate event timestamp)
// to the process that was alive then. at == 0 means "the newest".
func (c *Cache) Lookup(tgid uint32, at uint64) (Process, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	e := c.lookup(tgid, at)
	if e == nil {
		return Process{}, false
	}
	return c.snapshot(e), true
}

// Get returns the process with exactly this key.
func (c *Cache) Get(k Key) (Process, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	e := c.find(k.TGID, k.Start)
	if e == nil {
		return Process{}, false
	}
	return c.snapshot(e), true
}

// LookupWait is Lookup that, on a miss, waits for the event stream to catch
// up with at (the process may have forked moments before the event that is
// being attributed), until ctx is done.
func (c *Cache) LookupWait(ctx context.Context, tgid uint32, at uint64) (Process, bool) {
	for {
		c.mu.RLock()
		e := c.lookup(tgid, at)
		var p Process
		if e != nil {
			p = c.snapshot(e)
		}
		mark, ch := c.mark, c.changed
		c.mu.RUnlock()
		if e != nil {
			return p, true
		}
		if at != 0 && mark >= at {
			return Process{}, false // events up to at are in: it is unknown
		}
		c.wakeSource()
		select {
		case <-ch:
		case <-ctx.Done():
			return Process{}, false
		}
	}
}

func (c *Cache) wakeSource() {
	c.mu.RLock()
	wake := c.wake
	c.mu.RUnlock()
	if wake != nil {
		wake()
	}
}

func (c *Cache) snapshot(e *entry) Process {
	p := e.Process
	if p.HashState == HashPending && p.ExeSHA256 != "" {
		p.ExeSHA256 = "" // provisional hash, not yet verified
	}
	if a := e.anc.Load(); a != nil && a.epoch == c.epoch {
		p.Ancestry = a.paths
		return p
	}
	var anc []string
	cur := e
	for len(anc) < c.cfg.AncestryDepth && cur.PPID != 0 {
		// The parent is whoever held ppid when the child started.
		parent := c.lookup(cur.PPID, cur.Start)
		if parent == nil || parent == cur {
			break
		}
		anc = append(anc, parent.ExePath)
		cur = parent
	}
	// Shared by the snapshots until the next change: nobody may modify
	// a Process's Ancestry in place.
	e.anc.Store(&ancestry{epoch: c.epoch, paths: anc})
	p.Ancestry = anc
	return p
}

// CgroupPath names a cgroup id through Config.CgroupPath (an escape
// record's destination, say); false without one or when the cgroup is gone.
func (c *Cache) CgroupPath(id uint64) (string, bool) {
	if c.cfg.CgroupPath == nil {
		return "", false
	}
	p, err := c.cfg.CgroupPath(id)
	return p, err == nil
}

// Watermark is the newest event time applied; events before it are in.
func (c *Cache) Watermark() uint64 {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.mark
}

// Stats returns the counters.
func (c *Cache) Stats() Stats {
	c.mu.RLock()
	defer c.mu.RUnlock()
	s := c.stats
	for _, list := range c.procs {
		for _, e := range list {
			if e.Exited {
				s.Exited++
			} else {
				s.Live++
			}
		}
	}
	s.HashJobsQueued, s.HashJobsDone = c.hasher.counts()
	return s
}

// Len is the number of entries, live and exited.
func (c *Cache) Len() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.n
}

// Run applies events from src until ctx is done or src fails, sweeping
// exited entries and reconciling with /proc when the kernel reports lost
// events. Load the programs, Seed, then Run: the ring buffer holds what
// happened during seeding.
func (c *Cache) Run(ctx context.Context, src sensor.EventSource) error {
	errc := make(chan error, 1)
	evc := make(chan sensor.Event, 256)
	go func() {
		for {
			ev, err := src.ReadEvent()
			if err != nil {
				errc <- err
				close(evc)
				return
			}
			evc <- ev
		}
	}()
	stop := context.AfterFunc(ctx, func() { src.Close() })
	defer stop()
	c.mu.Lock()
	c.wake = src.Wake
	c.mu.Unlock()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	var lost uint64
	for {
		select {
		case ev, ok := <-evc:
			if !ok {
				err := <-errc
				if ctx.Err() != nil {
					return ctx.Err()
				}
				return err
			}
			c.Apply(ev)
		case <-tick.C:
			c.Sweep(c.cfg.Now())
			if n, err := src.Lost(); err == nil && n > lost {
				lost = n
				// Some exec/fork/exit is missing; /proc is the only truth.
				c.Reconcile()
			}
		}
	}
}

// WaitFor blocks until every event up to boot time at has been applied, or
// ctx is done; it reports which. A process found in its forked form may have
// exec'd before at: waiting for the watermark tells the two apart.
func (c *Cache) WaitFor(ctx context.Context, at uint64) bool {
	for {
		c.mu.RLock()
		mark, ch := c.mark, c.changed
		c.mu.RUnlock()
		if mark >= at {
			return true
		}
		c.wakeSource()
		select {
		case <-ch:
		case <-ctx.Done():
			return false
		}
	}
}
