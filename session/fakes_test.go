package session

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	v1 "github.com/agentfence/agentfence/api/v1"
	"github.com/agentfence/agentfence/audit"
	"github.com/agentfence/agentfence/enforcer"
	"github.com/agentfence/agentfence/internal/boottime"
	"github.com/agentfence/agentfence/scope"
)

// op is one call a fake saw, in the order the fakes (which share a journal)
// saw them.
type op struct {
	Name     string // kernel method name, or "cgroups.Create" and the like
	Failed   bool   // the fake was told to fail this call
	Slot     uint32
	Gen      uint64
	State    enforcer.State
	Prefixes []string // WriteScope / DeleteScope
	Hosts    []string // WriteNames / DeleteNames (hostname rules only)
	ID       uint64   // cgroup id or tgid
	Path     string   // cgroup path
}

type journal struct {
	mu  sync.Mutex
	ops []op
}

func (j *journal) add(o op) {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.ops = append(j.ops, o)
}

func (j *journal) len() int {
	j.mu.Lock()
	defer j.mu.Unlock()
	return len(j.ops)
}

// since returns the ops recorded from index from on.
func (j *journal) since(from int) []op {
	j.mu.Lock()
	defer j.mu.Unlock()
	return slices.Clone(j.ops[from:])
}

func opNames(ops []op) []string {
	out := make([]string, len(ops))
	for i, o := range ops {
		out[i] = o.Name
		if o.Failed {
			out[i] += "!"
		}
	}
	return out
}

// readOps are kernel calls that change nothing.
var readOps = map[string]bool{"Session": true, "PidBinding": true, "PidsOf": true,
	"cgroups.Of": true, "cgroups.Procs": true, "cgroups.FindContainer": true, "cgroups.FindPod": true}

// writes filters the ops that change kernel or cgroup state.
func writes(ops []op) []op {
	var out []op
	for _, o := range ops {
		if !readOps[o.Name] {
			out = append(out, o)
		}
	}
	return out
}

type binding struct {
	slot uint32
	gen  uint64
}

// fakeKernel keeps the policy maps in memory and journals every call.
type fakeKernel struct {
	j        *journal
	mu       sync.Mutex
	sessions map[uint32]enforcer.SessionState
	scopes   map[uint32]map[netip.Prefix]uint64 // slot -> prefix -> gen
	entries  map[uint32]map[netip.Prefix]scope.Entry
	names    map[uint32]map[string]uint64 // slot -> host ("*.x" for wildcards) -> gen
	cgroups  map[uint64]binding
	pids     map[uint32]binding
	purged   []uint32
	fail     map[string]error // the next call of the method fails
	// learned and hostnames stand in for the hostname programs' state.
	learned   map[uint32][]enforcer.LearnedAddr
	hostnames map[uint64]string
	hooks     map[string]int // cgroup path -> HookHostnames count
}

func newFakeKernel(j *journal) *fakeKernel {
	return &fakeKernel{j: j, sessions: map[uint32]enforcer.SessionState{}, scopes: map[uint32]map[netip.Prefix]uint64{},
		entries: map[uint32]map[netip.Prefix]scope.Entry{}, names: map[uint32]map[string]uint64{},
		cgroups: map[uint64]binding{}, pids: map[uint32]binding{}, fail: map[string]error{}, hooks: map[string]int{}}
}

var errInjected = errors.New("injected failure")

// failNext makes the next call of method fail.
func (k *fakeKernel) failNext(method string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.fail[method] = fmt.Errorf("%s: %w", method, errInjected)
}

// call journals o and reports the injected failure, if any. k.mu is held.
func (k *fakeKernel) call(o op) error {
	err := k.fail[o.Name]
	delete(k.fail, o.Name)
	o.Failed = err != nil
	k.j.add(o)
	return err
}

func prefixes(entries []scope.Entry) []string {
	out := make([]string, len(entries))
	for i, e := range entries {
		out[i] = e.Prefix.String()
	}
	return out
}

func hostKeys(rules []scope.Rule) []string {
	var out []string
	for _, r := range rules {
		if r.Host == "" {
			continue
		}
		h := r.Host
		if r.Wildcard {
			h = "*." + h
		}
		out = append(out, h)
	}
	return out
}

func (k *fakeKernel) PutSession(slot uint32, s enforcer.SessionState) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.call(op{Name: "PutSession", Slot: slot, Gen: s.Gen, State: s.State}); err != nil {
		return err
	}
	k.sessions[slot] = s
	return nil
}

// Session reads a slot like the kernel's array map: every slot exists.
func (k *fakeKernel) Slots() int { return 128 }

func (k *fakeKernel) Session(slot uint32) (enforcer.SessionState, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.call(op{Name: "Session", Slot: slot}); err != nil {
		return enforcer.SessionState{}, err
	}
	return k.sessions[slot], nil
}

func (k *fakeKernel) SetState(slot uint32, gen uint64, st enforcer.State) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.call(op{Name: "SetState", Slot: slot, Gen: gen, State: st}); err != nil {
		return err
	}
	s := k.sessions[slot]
	if s.Gen != gen {
		return fmt.Errorf("slot %d holds generation %d, not %d", slot, s.Gen, gen)
	}
	s.State = st
	k.sessions[slot] = s
	return nil
}

func (k *fakeKernel) WriteScope(slot uint32, gen uint64, entries []scope.Entry) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.call(op{Name: "WriteScope", Slot: slot, Gen: gen, Prefixes: prefixes(entries)}); err != nil {
		return err
	}
	if k.scopes[slot] == nil {
		k.scopes[slot], k.entries[slot] = map[netip.Prefix]uint64{}, map[netip.Prefix]scope.Entry{}
	}
	for _, e := range entries {
		k.scopes[slot][e.Prefix] = gen
		k.entries[slot][e.Prefix] = e
	}
	return nil
}

func (k *fakeKernel) DeleteScope(slot uint32, entries []scope.Entry) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.call(op{Name: "DeleteScope", Slot: slot, Prefixes: prefixes(entries)}); err != nil {
		return err
	}
	for _, e := range entries {
		delete(k.scopes[slot], e.Prefix)
		delete(k.entries[slot], e.Prefix)
	}
	return nil
}

func (k *fakeKernel) WriteNames(slot uint32, gen uint64, rules []scope.Rule) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.call(op{Name: "WriteNames", Slot: slot, Gen: gen, Hosts: hostKeys(rules)}); err != nil {
		return err
	}
	for _, h := range hostKeys(rules) {
		if k.names[slot] == nil {
			k.names[slot] = map[string]uint64{}
		}
		k.names[slot][h] = gen
	}
	return nil
}

func (k *fakeKernel) DeleteNames(slot uint32, rules []scope.Rule) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.call(op{Name: "DeleteNames", Slot: slot, Hosts: hostKeys(rules)}); err != nil {
		return err
	}
	for _, h := range hostKeys(rules) {
		delete(k.names[slot], h)
	}
	return nil
}

func (k *fakeKernel) PurgeLearned(slot uint32) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.call(op{Name: "PurgeLearned", Slot: slot}); err != nil {
		return err
	}
	k.purged = append(k.purged, slot)
	return nil
}

func (k *fakeKernel) Learned(slot uint32, gen uint64) ([]enforcer.LearnedAddr, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.learned[slot], nil
}

func (k *fakeKernel) Hostname(slot uint32, hash uint64) string {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.hostnames[hash]
}

func (k *fakeKernel) HookHostnames(path string) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.call(op{Name: "HookHostnames", Path: path}); err != nil {
		return err
	}
	k.hooks[path]++
	return nil
}

func (k *fakeKernel) UnhookHostnames(path string) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.call(op{Name: "UnhookHostnames", Path: path}); err != nil {
		return err
	}
	if k.hooks[path]--; k.hooks[path] <= 0 {
		delete(k.hooks, path)
	}
	return nil
}

func (k *fakeKernel) PruneHostnameHooks() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.call(op{Name: "PruneHostnameHooks"})
}

func (k *fakeKernel) BindCgroup(cgroupID uint64, slot uint32, gen uint64) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.call(op{Name: "BindCgroup", ID: cgroupID, Slot: slot, Gen: gen}); err != nil {
		return err
	}
	k.cgroups[cgroupID] = binding{slot, gen}
	return nil
}

func (k *fakeKernel) UnbindCgroup(cgroupID uint64) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.call(op{Name: "UnbindCgroup", ID: cgroupID}); err != nil {
		return err
	}
	delete(k.cgroups, cgroupID)
	return nil
}

func (k *fakeKernel) HoldCgroup(cgroupID uint64) (bool, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.call(op{Name: "HoldCgroup", ID: cgroupID}); err != nil {
		return false, err
	}
	if _, ok := k.cgroups[cgroupID]; ok {
		return false, nil
	}
	k.cgroups[cgroupID] = binding{enforcer.HoldSlot, enforcer.HoldGen}
	return true, nil
}

func (k *fakeKernel) ReleaseCgroup(cgroupID uint64) (bool, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.call(op{Name: "ReleaseCgroup", ID: cgroupID}); err != nil {
		return false, err
	}
	if k.cgroups[cgroupID] != (binding{enforcer.HoldSlot, enforcer.HoldGen}) {
		return false, nil
	}
	delete(k.cgroups, cgroupID)
	return true, nil
}

func (k *fakeKernel) BindPid(tgid uint32, slot uint32, gen uint64) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.call(op{Name: "BindPid", ID: uint64(tgid), Slot: slot, Gen: gen}); err != nil {
		return err
	}
	k.pids[tgid] = binding{slot, gen}
	return nil
}

func (k *fakeKernel) UnbindPid(tgid uint32) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.call(op{Name: "UnbindPid", ID: uint64(tgid)}); err != nil {
		return err
	}
	delete(k.pids, tgid)
	return nil
}

func (k *fakeKernel) PidBinding(tgid uint32) (uint32, uint64, bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.j.add(op{Name: "PidBinding", ID: uint64(tgid)})
	b, ok := k.pids[tgid]
	return b.slot, b.gen, ok
}

func (k *fakeKernel) PidsOf(slot uint32, gen uint64) ([]uint32, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.j.add(op{Name: "PidsOf", Slot: slot, Gen: gen})
	var out []uint32
	for p, b := range k.pids {
		if b.slot == slot && b.gen == gen {
			out = append(out, p)
		}
	}
	slices.Sort(out)
	return out, nil
}

// scopeOf lists the prefixes written for slot, sorted.
func (k *fakeKernel) scopeOf(slot uint32) []string {
	k.mu.Lock()
	defer k.mu.Unlock()
	var out []string
	for p := range k.scopes[slot] {
		out = append(out, p.String())
	}
	sort.Strings(out)
	return out
}

func (k *fakeKernel) namesOf(slot uint32) []string {
	k.mu.Lock()
	defer k.mu.Unlock()
	var out []string
	for h := range k.names[slot] {
		out = append(out, h)
	}
	sort.Strings(out)
	return out
}

func (k *fakeKernel) session(slot uint32) enforcer.SessionState {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.sessions[slot]
}

// assertClean fails unless the kernel holds no policy at all: no scope or
// name entries, no bindings and no slot in a live state.
func (k *fakeKernel) assertClean(t testing.TB) {
	t.Helper()
	k.mu.Lock()
	defer k.mu.Unlock()
	for slot, m := range k.scopes {
		if len(m) != 0 {
			t.Errorf("kernel: slot %d still has scope entries %v", slot, m)
		}
	}
	for slot, m := range k.names {
		if len(m) != 0 {
			t.Errorf("kernel: slot %d still has names %v", slot, m)
		}
	}
	if len(k.cgroups) != 0 {
		t.Errorf("kernel: cgroup bindings left: %v", k.cgroups)
	}
	if len(k.pids) != 0 {
		t.Errorf("kernel: pid bindings left: %v", k.pids)
	}
	if len(k.hooks) != 0 {
		t.Errorf("kernel: hostname programs left on %v", k.hooks)
	}
	for slot, s := range k.sessions {
		if s.State != enforcer.StateFree {
			t.Errorf("kernel: slot %d left in state %d", slot, s.State)
		}
	}
}

// container is a FindContainer table row.
type container struct {
	path string
	id   uint64
}

// fakeCgroups makes real directories under a temporary base, so cgroup ids
// are inode numbers as with cgroup v2 (Restore reads them back).
type fakeCgroups struct {
	j          *journal
	mu         sync.Mutex
	base       string
	owners     map[string]int // created path -> owner
	destroyed  []string
	killedPIDs []uint32
	killed     []string
	of         map[int]string
	procs      map[string][]int
	containers map[string]container // full container id -> cgroup
	pods       map[string]container // pod UID -> cgroup
	fail       map[string]error
}

func newFakeCgroups(j *journal, base string) *fakeCgroups {
	return &fakeCgroups{j: j, base: base, owners: map[string]int{}, of: map[int]string{}, procs: map[string][]int{},
		containers: map[string]container{}, pods: map[string]container{}, fail: map[string]error{}}
}

func (c *fakeCgroups) failNext(method string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.fail[method] = fmt.Errorf("cgroups.%s: %w", method, errInjected)
}

func (c *fakeCgroups) call(o op) error {
	err := c.fail[strings.TrimPrefix(o.Name, "cgroups.")]
	delete(c.fail, strings.TrimPrefix(o.Name, "cgroups."))
	o.Failed = err != nil
	c.j.add(o)
	return err
}

func inode(path string) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, err
	}
	return st.Ino, nil
}

func (c *fakeCgroups) Create(parent, name string, owner int) (string, uint64, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	dir := parent
	if dir == "" {
		dir = c.base
	}
	path := filepath.Join(dir, name)
	if err := c.call(op{Name: "cgroups.Create", Path: path}); err != nil {
		return "", 0, err
	}
	if err := os.Mkdir(path, 0o755); err != nil {
		return "", 0, err
	}
	id, err := inode(path)
	if err != nil {
		return "", 0, err
	}
	c.owners[path] = owner
	return path, id, nil
}

// Destroy removes the directory like rmdir on a cgroup: it fails while
// child cgroups exist.
func (c *fakeCgroups) Destroy(path string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.call(op{Name: "cgroups.Destroy", Path: path}); err != nil {
		return err
	}
	c.destroyed = append(c.destroyed, path)
	if err := os.Remove(path); err != nil && !os.IsNotExist(err) {
		return err // like cgroupv2.Manager.Destroy, a cgroup already gone is fine
	}
	return nil
}

func (c *fakeCgroups) Kill(path string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.call(op{Name: "cgroups.Kill", Path: path}); err != nil {
		return err
	}
	c.killed = append(c.killed, path)
	return nil
}

func (c *fakeCgroups) KillPIDs(pids []uint32) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.call(op{Name: "cgroups.KillPIDs"})
	c.killedPIDs = append(c.killedPIDs, pids...)
}

func (c *fakeCgroups) Procs(path string) ([]int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.call(op{Name: "cgroups.Procs", Path: path}); err != nil {
		return nil, err
	}
	var out []int
	for p, pids := range c.procs {
		if p == path || strings.HasPrefix(p, path+"/") {
			out = append(out, pids...)
		}
	}
	slices.Sort(out)
	return out, nil
}

func (c *fakeCgroups) Of(pid int) (string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.call(op{Name: "cgroups.Of", ID: uint64(pid)}); err != nil {
		return "", err
	}
	if p, ok := c.of[pid]; ok {
		return p, nil
	}
	return "", fmt.Errorf("no process %d", pid)
}

func (c *fakeCgroups) FindContainer(id string) (string, uint64, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.call(op{Name: "cgroups.FindContainer", Path: id}); err != nil {
		return "", 0, err
	}
	for full, ct := range c.containers {
		if strings.HasPrefix(full, id) {
			return ct.path, ct.id, nil
		}
	}
	return "", 0, fmt.Errorf("no container %s", id)
}

func (c *fakeCgroups) FindPod(uid string) (string, uint64, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.call(op{Name: "cgroups.FindPod", Path: uid}); err != nil {
		return "", 0, err
	}
	if p, ok := c.pods[uid]; ok {
		return p.path, p.id, nil
	}
	return "", 0, fmt.Errorf("no pod %s", uid)
}

func (c *fakeCgroups) setOf(pid int, path string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.of[pid] = path
}

func (c *fakeCgroups) setProcs(path string, pids ...int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(pids) == 0 {
		delete(c.procs, path)
		return
	}
	c.procs[path] = pids
}

// live lists the directories below base that exist (created, not destroyed).
func (c *fakeCgroups) live(t testing.TB) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(c.base, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && p != c.base {
			out = append(out, p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

type destroyCall struct {
	pids  []int
	match func(Conn) bool
}

// fakeSockets destroys the configured connections of the given pids that
// match selects: they are returned once and then gone.
type fakeSockets struct {
	mu    sync.Mutex
	calls []destroyCall
	conns []Conn
}

func (s *fakeSockets) Destroy(pids []int, match func(Conn) bool) ([]Conn, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if match == nil { // selects all
		match = func(Conn) bool { return true }
	}
	s.calls = append(s.calls, destroyCall{pids: slices.Clone(pids), match: match})
	var out, kept []Conn
	for _, c := range s.conns {
		if slices.Contains(pids, c.PID) && match(c) {
			out = append(out, c)
		} else {
			kept = append(kept, c)
		}
	}
	s.conns = kept
	return out, nil
}

func (s *fakeSockets) callsSince(from int) []destroyCall {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.calls[from:])
}

func (s *fakeSockets) n() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.calls)
}

// recorder collects emitted audit records.
type recorder struct {
	mu   sync.Mutex
	recs []audit.Record
}

func (r *recorder) emit(rec audit.Record) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.recs = append(r.recs, rec)
}

func (r *recorder) all() []audit.Record {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.recs)
}

// lifecycle lists "event" of the session records of session id, in order.
func (r *recorder) lifecycle(id string) []string {
	var out []string
	for _, rec := range r.all() {
		if rec.Kind == audit.KindSession && rec.Session != nil && rec.Session.ID == id {
			out = append(out, rec.Event)
		}
	}
	return out
}

// find returns the session record of id with event ev.
func (r *recorder) find(t testing.TB, id, ev string) audit.Record {
	t.Helper()
	for _, rec := range r.all() {
		if rec.Kind == audit.KindSession && rec.Session != nil && rec.Session.ID == id && rec.Event == ev {
			return rec
		}
	}
	t.Fatalf("no %q record for session %s; have %v", ev, id, r.lifecycle(id))
	return audit.Record{}
}

func (r *recorder) destroyed(id string) []audit.Record {
	var out []audit.Record
	for _, rec := range r.all() {
		if rec.Kind == audit.KindDestroy && rec.Session != nil && rec.Session.ID == id {
			out = append(out, rec)
		}
	}
	return out
}

// env is a registry over fakes.
type env struct {
	cfg   Config
	j     *journal
	k     *fakeKernel
	cg    *fakeCgroups
	sk    *fakeSockets
	clock *boottime.Clock
	recs  *recorder
	r     *Registry
}

func testConfig() Config {
	cfg := DefaultConfig()
	cfg.MaxSessions = 64
	cfg.MaxRules = 32
	return cfg
}

func newEnv(t testing.TB, mod func(*Config)) *env {
	t.Helper()
	cfg := testConfig()
	if mod != nil {
		mod(&cfg)
	}
	j := &journal{}
	e := &env{cfg: cfg, j: j, k: newFakeKernel(j), cg: newFakeCgroups(j, t.TempDir()), sk: &fakeSockets{},
		clock: boottime.NewClock(), recs: &recorder{}}
	e.r = e.registry(e.k)
	return e
}

// registry builds another registry over kernel and the env's other fakes,
// as a restarted daemon would.
func (e *env) registry(k *fakeKernel) *Registry {
	return NewRegistry(e.cfg, Deps{Kernel: k, Cgroups: e.cg, Sockets: e.sk, Clock: e.clock, Emit: e.recs.emit})
}

var admin = Caller{ID: "admin@example.com", PID: 1, UID: 0}

func (e *env) open(t testing.TB, req v1.OpenRequest, c Caller) v1.Session {
	t.Helper()
	s, err := e.r.Open(req, c)
	if err != nil {
		t.Fatalf("Open(%+v): %v", req, err)
	}
	return s
}

func (e *env) entry(t testing.TB, id string) *entry {
	t.Helper()
	e.r.mu.Lock()
	defer e.r.mu.Unlock()
	en := e.r.byID[id]
	if en == nil {
		t.Fatalf("no entry %s", id)
	}
	return en
}

func (e *env) get(t testing.TB, id string) v1.Session {
	t.Helper()
	s, err := e.r.Get(id, admin)
	if err != nil {
		t.Fatalf("Get(%s): %v", id, err)
	}
	return s
}

func req(intent string, rules ...string) v1.OpenRequest {
	return v1.OpenRequest{Intent: intent, Scope: rules}
}

// wantErr fails unless err is an *Error with code and field.
func wantErr(t testing.TB, err error, code v1.Code, field string) *v1.Error {
	t.Helper()
	var e *v1.Error
	if !errors.As(err, &e) {
		t.Fatalf("error = %v (%T), want *v1.Error %s/%s", err, err, code, field)
	}
	if e.Code != code || e.Field != field {
		t.Fatalf("error = %q code=%q field=%q, want code=%q field=%q", e.Error(), e.Code, e.Field, code, field)
	}
	if strings.TrimSpace(e.Message) == "" {
		t.Fatalf("error %s/%s has no message", code, field)
	}
	return e
}

func ids(ss []v1.Session) []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = s.ID
	}
	sort.Strings(out)
	return out
}

func sortedIDs(v ...string) []string {
	out := slices.Clone(v)
	sort.Strings(out)
	return out
}

func near(a, b time.Time, d time.Duration) bool {
	x := a.Sub(b)
	return -d <= x && x <= d
}
