package session

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	v1 "github.com/agentfence/agentfence/api/v1"
	"github.com/agentfence/agentfence/enforcer"
)

func stateEnv(t *testing.T) *env {
	dir := t.TempDir()
	return newEnv(t, func(c *Config) { c.StateFile = filepath.Join(dir, "state", "sessions.json") })
}

func readState(t *testing.T, path string) stateFile {
	t.Helper()
	st, err := loadState(path)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// writeState replaces the state with st: a snapshot and no journal.
func writeState(t *testing.T, path string, st stateFile) {
	t.Helper()
	b, _ := json.Marshal(st)
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	os.Remove(path + ".log")
}

// twoSessions opens a session with a bound pid and a container, and an
// audit-mode session.
func twoSessions(t *testing.T, e *env) (a, b v1.Session) {
	t.Helper()
	a = e.open(t, v1.OpenRequest{Intent: "a", Scope: []string{"10.0.0.0/8:443", "api.example.com:443"}, Labels: map[string]string{"k": "v"},
		Agent: &v1.Agent{ID: "spiffe://example.org/a", Name: "a"}}, admin)
	ct := filepath.Join(e.cg.base, "ct.scope")
	if err := os.Mkdir(ct, 0o755); err != nil {
		t.Fatal(err)
	}
	ctID, _ := inode(ct)
	e.cg.containers["abcdefabcdef0000"] = container{path: ct, id: ctID}
	if _, err := e.r.Bind(a.ID, v1.BindRequest{ContainerID: "abcdefabcdef"}, admin); err != nil {
		t.Fatal(err)
	}
	if _, err := e.r.Bind(a.ID, v1.BindRequest{PID: uint32(os.Getpid())}, admin); err != nil {
		t.Fatal(err)
	}
	b = e.open(t, v1.OpenRequest{Intent: "b", Mode: "audit", Scope: []string{"10.1.0.0/16:443"}}, admin)
	return e.get(t, a.ID), b
}

func TestPersist(t *testing.T) {
	e := stateEnv(t)
	a, b := twoSessions(t, e)
	st := readState(t, e.cfg.StateFile)
	if st.Version != v1.ModelVersion || len(st.Sessions) != 2 {
		t.Fatalf("state = version %d, %d sessions", st.Version, len(st.Sessions))
	}
	for _, p := range st.Sessions {
		en := e.entry(t, p.ID)
		if p.Slot != en.slot || p.Gen != en.gen {
			t.Errorf("%s persisted at %d/%d, is at %d/%d", p.ID, p.Slot, p.Gen, en.slot, en.gen)
		}
		if p.ID == a.ID && (p.Binding.ContainerID != "abcdefabcdef" || len(p.Binding.PIDs) != 1 || p.Labels["k"] != "v") {
			t.Errorf("persisted a = %+v", p.Session)
		}
	}
	if fi, err := os.Stat(e.cfg.StateFile); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("state file mode: %v %v", fi, err)
	}
	if _, err := os.Stat(e.cfg.StateFile + ".tmp"); !os.IsNotExist(err) {
		t.Errorf("temporary state file left: %v", err)
	}
	if err := e.r.Close(a.ID, admin); err != nil {
		t.Fatal(err)
	}
	if st := readState(t, e.cfg.StateFile); len(st.Sessions) != 1 || st.Sessions[0].ID != b.ID {
		t.Errorf("persisted after closing a: %+v", st.Sessions)
	}
}

func TestRestoreAdopts(t *testing.T) {
	e := stateEnv(t)
	a, b := twoSessions(t, e)
	ea, eb := *e.entry(t, a.ID), *e.entry(t, b.ID)

	mark := e.j.len()
	r2 := e.registry(e.k) // the kernel kept the sessions (pinned maps)
	// A new daemon's gate holds the pinned hostname attachments unclaimed.
	clear(e.k.hooks)
	adopted, rewritten, err := r2.Restore()
	if err != nil || adopted != 2 || rewritten != 0 {
		t.Fatalf("Restore = %d, %d, %v; want 2, 0", adopted, rewritten, err)
	}
	// Adopting changes no policy; it claims the hostname attachment a's
	// hostname rule needs and then lets the gate drop the unclaimed rest.
	var hooks []string
	w := writes(e.j.since(mark))
	for i, o := range w {
		switch {
		case o.Name == "HookHostnames":
			hooks = append(hooks, o.Path)
		case o.Name == "PruneHostnameHooks" && i == len(w)-1:
		default:
			t.Errorf("adopting wrote to the kernel: %v", opNames(w))
		}
	}
	// a has a pid binding: the root alone.
	if want := []string{e.cfg.CgroupRoot}; !slices.Equal(hooks, want) {
		t.Errorf("hooked %q, want %q", hooks, want)
	}
	e.r = r2
	for _, want := range []*entry{&ea, &eb} {
		got := e.entry(t, want.ID)
		if got.slot != want.slot || got.gen != want.gen || got.cgroupID != want.cgroupID || got.containerCgroups != want.containerCgroups {
			t.Errorf("%s restored at %d/%d cg %d/%d, was %d/%d cg %d/%d", want.ID, got.slot, got.gen, got.cgroupID, got.containerCgroups,
				want.slot, want.gen, want.cgroupID, want.containerCgroups)
		}
		if !slices.Equal(texts(got.rules), texts(want.rules)) || len(got.compiled()) != len(want.compiled()) {
			t.Errorf("%s rules not restored: %v", want.ID, got.rules)
		}
		if rec := e.recs.find(t, want.ID, "adopted"); rec.Actor != "agentfenced" {
			t.Errorf("adopted actor = %q", rec.Actor)
		}
	}
	ga := e.get(t, a.ID)
	if !slices.Equal(ga.Binding.PIDs, []uint32{uint32(os.Getpid())}) || ga.Binding.ContainerID != "abcdefabcdef" {
		t.Errorf("adopted bindings = %+v", ga.Binding)
	}
	// The restored registry works: membership, delegation, new slots.
	if id, ok := r2.MemberOf(os.Getpid()); !ok || id != a.ID {
		t.Errorf("MemberOf(bound pid) = %q %v", id, ok)
	}
	c := e.open(t, req("c"), admin)
	if en := e.entry(t, c.ID); en.slot == ea.slot || en.slot == eb.slot {
		t.Errorf("new session took a restored slot %d", en.slot)
	}
	if err := r2.Close(a.ID, admin); err != nil {
		t.Fatal(err)
	}
}

func TestRestoreRewrites(t *testing.T) {
	e := stateEnv(t)
	a, b := twoSessions(t, e)
	if _, err := e.r.Revoke(b.ID, admin); err != nil {
		t.Fatal(err)
	}
	ea, eb := *e.entry(t, a.ID), *e.entry(t, b.ID)

	j := &journal{}
	k2 := newFakeKernel(j) // the kernel lost everything
	r2 := e.registry(k2)
	adopted, rewritten, err := r2.Restore()
	if err != nil || adopted != 0 || rewritten != 2 {
		t.Fatalf("Restore = %d, %d, %v; want 0, 2", adopted, rewritten, err)
	}
	e.r, e.k = r2, k2
	for _, want := range []*entry{&ea, &eb} {
		got := e.entry(t, want.ID)
		if got.slot != want.slot {
			t.Errorf("%s moved from slot %d to %d", want.ID, want.slot, got.slot)
		}
		// A rewrite takes a generation newer than both the kernel's (0
		// here) and the persisted one.
		if got.gen != want.gen+1 {
			t.Errorf("%s rewritten at gen %d", want.ID, got.gen)
		}
		if bnd := k2.cgroups[want.cgroupID]; bnd != (binding{got.slot, got.gen}) {
			t.Errorf("%s cgroup binding = %+v", want.ID, bnd)
		}
		if got := k2.scopeOf(want.slot); len(got) != 1 {
			t.Errorf("%s scope rewritten as %v", want.ID, got)
		}
	}
	if got := k2.namesOf(ea.slot); !slices.Equal(got, []string{"api.example.com"}) {
		t.Errorf("names rewritten as %v", got)
	}
	if bnd := k2.cgroups[ea.containerCgroups]; bnd.slot != ea.slot {
		t.Errorf("container binding not rewritten: %+v", bnd)
	}
	if len(k2.pids) != 0 {
		t.Errorf("pid bindings restored: %v", k2.pids)
	}
	if g := e.get(t, a.ID); len(g.Binding.PIDs) != 0 {
		t.Errorf("pid binding kept in the session: %v", g.Binding.PIDs)
	}
	ksa, ksb := k2.session(ea.slot), k2.session(eb.slot)
	if ksa.State != enforcer.StateActive || ksa.Mode != enforcer.ModeEnforce || ksa.ExpiresNS != e.clock.Boot(a.ExpiresAt) {
		t.Errorf("a rewritten as %+v", ksa)
	}
	if ksb.State != enforcer.StateRevoked || ksb.Mode != enforcer.ModeAudit {
		t.Errorf("revoked audit b rewritten as %+v", ksb)
	}
	// Scope before session before binding, per session.
	ops := writes(j.since(0))
	for _, en := range []*entry{&ea, &eb} {
		var seq []string
		for _, o := range ops {
			if o.Slot == en.slot && o.Name != "BindCgroup" || o.Name == "BindCgroup" && o.ID == en.cgroupID {
				seq = append(seq, o.Name)
			}
		}
		if !slices.Equal(seq, []string{"WriteScope", "WriteNames", "PutSession", "BindCgroup"}) {
			t.Errorf("rewrite of slot %d: %v", en.slot, seq)
		}
	}
	st := readState(t, e.cfg.StateFile)
	for _, p := range st.Sessions {
		if p.Gen != 2 || len(p.Binding.PIDs) != 0 {
			t.Errorf("persisted after rewrite: gen %d pids %v", p.Gen, p.Binding.PIDs)
		}
	}
}

func TestRestoreStaleKernelGeneration(t *testing.T) {
	e := stateEnv(t)
	a := e.open(t, req("a", "10.0.0.0/8"), admin)
	ea := *e.entry(t, a.ID)
	// The kernel's slot has moved on (another daemon used it since).
	e.k.sessions[ea.slot] = enforcer.SessionState{Gen: ea.gen + 5, State: enforcer.StateFree}
	r2 := e.registry(e.k)
	if adopted, rewritten, err := r2.Restore(); err != nil || adopted != 0 || rewritten != 1 {
		t.Fatalf("Restore = %d, %d, %v", adopted, rewritten, err)
	}
	e.r = r2
	if en := e.entry(t, a.ID); en.gen != ea.gen+6 {
		t.Errorf("rewritten at gen %d, want %d", en.gen, ea.gen+6)
	}
}

func TestRestoreDropsGoneCgroup(t *testing.T) {
	e := stateEnv(t)
	a := e.open(t, req("a", "10.0.0.0/8"), admin)
	b := e.open(t, req("b", "10.0.0.0/8"), admin)
	if err := os.Remove(b.Binding.Cgroup); err != nil {
		t.Fatal(err)
	}
	r2 := e.registry(e.k)
	adopted, rewritten, err := r2.Restore()
	if err != nil || adopted != 1 || rewritten != 0 {
		t.Fatalf("Restore = %d, %d, %v; want 1, 0", adopted, rewritten, err)
	}
	e.r = r2
	if got := ids(r2.List(Filter{})); !slices.Equal(got, []string{a.ID}) {
		t.Errorf("restored %v, want only %s", got, a.ID)
	}
	if st := readState(t, e.cfg.StateFile); len(st.Sessions) != 1 {
		t.Errorf("state file keeps %d sessions", len(st.Sessions))
	}
	// b's slot is free again.
	eb := e.open(t, req("c"), admin)
	_ = eb
}

func TestRestoreErrors(t *testing.T) {
	for name, content := range map[string]string{
		"corrupt":          `{"version": 1, "sessions": [`,
		"not json":         "\x00\x01garbage",
		"version mismatch": `{"version": 2, "sessions": []}`,
		"version missing":  `{"sessions": []}`,
	} {
		t.Run(name, func(t *testing.T) {
			e := stateEnv(t)
			if err := os.MkdirAll(filepath.Dir(e.cfg.StateFile), 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(e.cfg.StateFile, []byte(content), 0o600); err != nil {
				t.Fatal(err)
			}
			_, _, err := e.r.Restore()
			if err == nil || !strings.Contains(err.Error(), e.cfg.StateFile) {
				t.Errorf("Restore = %v, want an error naming the file", err)
			}
			if w := writes(e.j.since(0)); len(w) != 0 {
				t.Errorf("failed Restore wrote %v", opNames(w))
			}
			// The state file is left for the operator.
			if b, _ := os.ReadFile(e.cfg.StateFile); string(b) != content {
				t.Error("failed Restore changed the state file")
			}
		})
	}
}

func TestRestoreNoFile(t *testing.T) {
	e := stateEnv(t)
	if a, r, err := e.r.Restore(); a != 0 || r != 0 || err != nil {
		t.Errorf("Restore without a state file = %d %d %v", a, r, err)
	}
	e2 := newEnv(t, nil)
	if a, r, err := e2.r.Restore(); a != 0 || r != 0 || err != nil {
		t.Errorf("Restore without StateFile = %d %d %v", a, r, err)
	}
}

func TestRestoreBadSlots(t *testing.T) {
	e := stateEnv(t)
	a := e.open(t, req("a", "10.0.0.0/8"), admin)
	st := readState(t, e.cfg.StateFile)
	good := st.Sessions[0]
	dup := good
	dup.ID = "s-dup"
	zero := good
	zero.ID, zero.Slot = "s-zero", 0
	high := good
	high.ID, high.Slot = "s-high", uint32(e.k.Slots()) // past the kernel's maps
	badScope := good
	badScope.ID, badScope.Slot, badScope.Scope = "s-badscope", good.Slot+1, []string{"nonsense://x"}
	st.Sessions = []persisted{good, dup, zero, high, badScope}
	writeState(t, e.cfg.StateFile, st)
	r2 := e.registry(e.k)
	adopted, rewritten, err := r2.Restore()
	if err != nil || adopted != 1 || rewritten != 0 {
		t.Fatalf("Restore = %d, %d, %v; want 1, 0", adopted, rewritten, err)
	}
	if got := ids(r2.List(Filter{})); !slices.Equal(got, []string{a.ID}) {
		t.Errorf("restored %v", got)
	}
}

// The journal: every change is one appended line, replayed over the
// snapshot; a torn last line (a daemon killed mid-write) is ignored.
func TestStateJournal(t *testing.T) {
	e := stateEnv(t)
	var ids []string
	for i := range 30 {
		ids = append(ids, e.open(t, req(fmt.Sprint("s", i), "10.0.0.0/8"), admin).ID)
	}
	for _, id := range ids[:5] {
		if _, err := e.r.Narrow(id, v1.NarrowRequest{Scope: []string{"10.1.0.0/16"}}, admin); err != nil {
			t.Fatal(err)
		}
	}
	for _, id := range ids[5:15] {
		if err := e.r.Close(id, admin); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := os.Stat(e.cfg.StateFile + ".log"); err != nil {
		t.Fatalf("no journal after changes: %v", err)
	}
	f, _ := os.OpenFile(e.cfg.StateFile+".log", os.O_WRONLY|os.O_APPEND, 0)
	f.WriteString(`{"put":{"id":"s-torn"`)
	f.Close()

	st := readState(t, e.cfg.StateFile)
	got := map[string]persisted{}
	for _, p := range st.Sessions {
		got[p.ID] = p
	}
	live := e.r.List(Filter{})
	if len(got) != len(live) || len(live) != 20 {
		t.Fatalf("state has %d sessions, registry %d", len(got), len(live))
	}
	for _, s := range live {
		p, ok := got[s.ID]
		if !ok || strings.Join(p.Scope, ",") != strings.Join(s.Scope, ",") {
			t.Errorf("%s: state %+v, registry scope %v", s.ID, p.Scope, s.Scope)
		}
	}
	if got[ids[0]].Scope[0] != "10.1.0.0/16" {
		t.Errorf("narrowing not journaled: %v", got[ids[0]].Scope)
	}

	// Folded into a snapshot (written a session at a time): the same
	// sessions, and no journal.
	e.r.mu.Lock()
	err := e.r.snapshot()
	e.r.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(e.cfg.StateFile + ".log"); !os.IsNotExist(err) {
		t.Errorf("journal left after the snapshot: %v", err)
	}
	snap := readState(t, e.cfg.StateFile)
	if len(snap.Sessions) != len(live) {
		t.Fatalf("snapshot has %d sessions, registry %d", len(snap.Sessions), len(live))
	}
	for _, p := range snap.Sessions {
		if g, ok := got[p.ID]; !ok || p.Slot != g.Slot || p.Gen != g.Gen || !slices.Equal(p.Scope, g.Scope) || p.Binding.Cgroup != g.Binding.Cgroup {
			t.Errorf("snapshot %+v, journal replay %+v", p, g)
		}
	}
}

// A member that was already running when the daemon started, and has not
// forked or exec'd since, has no pid binding: Restore binds it, so leaving
// the cgroup no longer takes it out. Processes bound to a live session
// already are left alone; a binding of a gone generation is replaced.
func TestRestoreBindsRunningMembers(t *testing.T) {
	e := stateEnv(t)
	a, b := twoSessions(t, e)
	ea, eb := e.entry(t, a.ID), e.entry(t, b.ID)
	const unbound, elsewhere, stale, inContainer = 9001, 9002, 9003, 9004
	e.cg.setProcs(a.Binding.Cgroup, unbound, elsewhere)
	e.cg.setProcs(b.Binding.Cgroup, stale)
	e.cg.setProcs(a.Binding.ContainerCgroup, inContainer)
	e.cg.setOf(unbound, a.Binding.Cgroup)
	e.cg.setOf(elsewhere, a.Binding.Cgroup)
	e.cg.setOf(stale, b.Binding.Cgroup)
	e.cg.setOf(inContainer, a.Binding.ContainerCgroup)
	e.k.pids[elsewhere] = binding{eb.slot, eb.gen} // bound to b by pid
	e.k.pids[stale] = binding{eb.slot, eb.gen - 1}

	r2 := e.registry(e.k)
	if _, _, err := r2.Restore(); err != nil {
		t.Fatal(err)
	}
	for pid, want := range map[uint32]binding{unbound: {ea.slot, ea.gen}, elsewhere: {eb.slot, eb.gen},
		stale: {eb.slot, eb.gen}, inContainer: {ea.slot, ea.gen}} {
		if got := e.k.pids[pid]; got != want {
			t.Errorf("pid %d bound to %+v, want %+v", pid, got, want)
		}
	}
	// Binding running members does not make them pid-bound in the model:
	// they are members by cgroup, bound early.
	if g := e.get(t, a.ID); len(g.Binding.PIDs) != 1 {
		t.Errorf("a's pids = %v", g.Binding.PIDs)
	}
}

// A daemon restarted with a lower max_sessions keeps the sessions above it
// (their members stay bound in the kernel and recorded) and opens new ones
// only below it.
func TestRestoreAboveLoweredMaxSessions(t *testing.T) {
	e := stateEnv(t)
	var opened []string
	for i := range 3 {
		opened = append(opened, e.open(t, req(fmt.Sprint("s", i), "tcp://127.0.0.1:443"), admin).ID)
	}
	e.cfg.MaxSessions = 1
	r2 := e.registry(e.k)
	if _, _, err := r2.Restore(); err != nil {
		t.Fatal(err)
	}
	if got := ids(r2.List(Filter{})); len(got) != 3 {
		t.Fatalf("after restore with max_sessions 1: %v, want all three", got)
	}
	_, err := r2.Open(req("new", "tcp://127.0.0.1:443"), admin)
	wantErr(t, err, v1.CodeCapacity, "")
	var low string
	for _, id := range opened {
		if r2.byID[id].slot == 1 {
			low = id
		}
	}
	if err := r2.Close(low, admin); err != nil {
		t.Fatal(err)
	}
	if s, err := r2.Open(req("new", "tcp://127.0.0.1:443"), admin); err != nil || r2.byID[s.ID].slot != 1 {
		t.Fatalf("open below the limit after a close: %v", err)
	}
}
