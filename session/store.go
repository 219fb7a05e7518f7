package session

import (
	"bufio"
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"

	v1 "github.com/agentfence/agentfence/api/v1"
	"github.com/agentfence/agentfence/enforcer"
	"github.com/agentfence/agentfence/internal/cgroupv2"
)

// persisted is a session as the state file keeps it.
type persisted struct {
	v1.Session
	Slot    uint32 `json:"slot"`
	Gen     uint64 `json:"gen"`
	Flagged uint32 `json:"flagged,omitempty"`
}

type stateFile struct {
	Version  int         `json:"version"`
	Sessions []persisted `json:"sessions"`
}

// The state is a snapshot (StateFile) plus a journal (StateFile + ".log")
// of the sessions changed since, one JSON line each. A change appends one
// line, so opening a session costs the same with 10 or 10,000 sessions; the
// journal is folded into a new snapshot when it outgrows a bound.
//
// Neither file is fsync'd: the pinned maps they describe live in memory
// too, so the state only has to survive the daemon, not the machine.

// journalLine is one journal entry: a session as it is now, or its id once
// it is gone.
type journalLine struct {
	Put *persisted `json:"put,omitempty"`
	Del string     `json:"del,omitempty"`
}

const journalMax = 1 << 20

// touch marks a session changed, for persist.
func (r *Registry) touch(e *entry) { r.dirty[e.ID] = true }

// persist writes what changed since the last call. Called by a change.
func (r *Registry) persist() {
	if r.cfg.StateFile == "" {
		clear(r.dirty)
		r.gone = r.gone[:0]
		return
	}
	if !r.snapshotted || r.journalSize > journalMax {
		if err := r.snapshot(); err != nil {
			r.log.Error("persist sessions", "file", r.cfg.StateFile, "err", err)
		}
		return
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	for id := range r.dirty {
		if e := r.byID[id]; e != nil {
			enc.Encode(journalLine{Put: e.persisted()})
		}
	}
	for _, id := range r.gone {
		enc.Encode(journalLine{Del: id})
	}
	clear(r.dirty)
	r.gone = r.gone[:0]
	if buf.Len() == 0 {
		return
	}
	var err error
	if r.journal == nil {
		r.journal, err = os.OpenFile(r.cfg.StateFile+".log", os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	}
	if err == nil {
		_, err = r.journal.Write(buf.Bytes())
	}
	if err != nil {
		r.log.Error("persist sessions", "file", r.cfg.StateFile+".log", "err", err)
		r.snapshotted = false // the next change writes everything
		return
	}
	r.journalSize += buf.Len()
}

// persisted is e as the state keeps it. Unlike public it shares e's
// labels, pids and agent: it is only encoded, by a change.
func (e *entry) persisted() *persisted {
	s := e.Session
	s.Scope = texts(e.rules)
	return &persisted{Session: s, Slot: e.slot, Gen: e.gen, Flagged: e.flagged}
}

// snapshot writes every session to the snapshot and empties the journal.
//
// The sessions are encoded one at a time straight into the file: encoding
// the whole state into one buffer (json.MarshalIndent) needed ~3 times the
// file's size at once, 20+ MiB at 10,000 sessions, and encoding/json pools
// that buffer for reuse, so 8 MiB of it stayed live between snapshots.
func (r *Registry) snapshot() error {
	es := slices.SortedFunc(maps.Values(r.byID), func(a, b *entry) int { return cmp.Compare(a.slot, b.slot) })
	err := writeAtomic(r.cfg.StateFile, func(w *bufio.Writer) error {
		// One session a line: {"version":1,"sessions":[\n{…}\n,{…}\n]}
		fmt.Fprintf(w, "{\"version\":%d,\"sessions\":[\n", v1.ModelVersion)
		enc := json.NewEncoder(w)
		for i, e := range es {
			if i > 0 {
				w.WriteByte(',')
			}
			if err := enc.Encode(e.persisted()); err != nil {
				return err
			}
		}
		w.WriteString("]}\n")
		return nil
	})
	if err == nil {
		if r.journal != nil {
			r.journal.Close()
			r.journal = nil
		}
		if err = os.Remove(r.cfg.StateFile + ".log"); os.IsNotExist(err) {
			err = nil
		}
	}
	clear(r.dirty)
	r.gone = r.gone[:0]
	r.snapshotted, r.journalSize = err == nil, 0
	return err
}

// loadState reads the snapshot and replays the journal over it. A torn
// last journal line (a daemon killed mid-write) is ignored.
func loadState(path string) (stateFile, error) {
	var st stateFile
	b, err := os.ReadFile(path)
	if err != nil {
		return st, err
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return st, fmt.Errorf("state file %s: %w", path, err)
	}
	if st.Version != v1.ModelVersion {
		return st, fmt.Errorf("state file %s has version %d, this daemon reads %d", path, st.Version, v1.ModelVersion)
	}
	j, err := os.ReadFile(path + ".log")
	if os.IsNotExist(err) {
		return st, nil
	}
	if err != nil {
		return st, err
	}
	byID := map[string]int{}
	for i, p := range st.Sessions {
		byID[p.ID] = i
	}
	lines := bytes.Split(j, []byte("\n"))
	for n, line := range lines {
		if len(line) == 0 {
			continue
		}
		var jl journalLine
		if err := json.Unmarshal(line, &jl); err != nil {
			if n == len(lines)-1 {
				break // torn tail
			}
			return st, fmt.Errorf("state journal %s.log line %d: %w", path, n+1, err)
		}
		switch {
		case jl.Put != nil:
			if i, ok := byID[jl.Put.ID]; ok {
				st.Sessions[i] = *jl.Put
			} else {
				byID[jl.Put.ID] = len(st.Sessions)
				st.Sessions = append(st.Sessions, *jl.Put)
			}
		case jl.Del != "":
			if i, ok := byID[jl.Del]; ok {
				st.Sessions[i].ID = "" // dropped below
			}
		}
	}
	st.Sessions = slices.DeleteFunc(st.Sessions, func(p persisted) bool { return p.ID == "" })
	return st, nil
}

// writeAtomic replaces path with what write writes, through a temporary
// file and a rename, so a reader never sees a partial file.
func writeAtomic(path string, write func(*bufio.Writer) error) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	w := bufio.NewWriter(f)
	if err := errors.Join(write(w), w.Flush()); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// Restore adopts the sessions a previous daemon left: those whose slot the
// kernel still holds (pinned maps) are taken over untouched, so enforcement
// never pauses; those the kernel lost are written to it again, so their
// processes are confined again. Sessions whose cgroup is gone are dropped.
// It returns how many sessions were adopted and rewritten.
func (r *Registry) Restore() (adopted, rewritten int, err error) {
	r.begin()
	defer r.end()
	if err := r.loadRetired(); err != nil {
		return 0, 0, fmt.Errorf("retired agents: %w", err)
	}
	defer func() {
		// What no restored session claimed belongs to sessions that are
		// gone; after a failed restore nothing is touched.
		if err != nil {
			return
		}
		if err := r.kernel.PruneHostnameHooks(); err != nil {
			r.log.Error("detach unclaimed hostname programs", "err", err)
		}
	}()
	gens := slices.Clone(r.gens)
	for slot := 1; slot < len(gens); slot++ {
		if st, err := r.kernel.Session(uint32(slot)); err == nil {
			gens[slot] = st.Gen
		}
	}
	r.write(func() { r.gens = gens })
	if r.cfg.StateFile == "" {
		return 0, 0, nil
	}
	st, err := loadState(r.cfg.StateFile)
	if os.IsNotExist(err) {
		return 0, 0, nil
	}
	if err != nil {
		return 0, 0, err
	}
	for _, p := range st.Sessions {
		if int(p.Slot) <= 0 || int(p.Slot) >= r.kernel.Slots() || r.bySlot[p.Slot] != nil {
			r.log.Warn("state: session with a bad or duplicate slot dropped", "session", p.ID, "slot", p.Slot)
			continue
		}
		if int(p.Slot) >= len(r.gens) {
			// max_sessions was lowered while it was open. Dropping it
			// would leave its members bound in the kernel with no session
			// to record them: it is kept until it ends, and new sessions
			// wait below the limit (rebuildFree).
			r.log.Warn("state: session above max_sessions kept until it ends", "session", p.ID, "slot", p.Slot, "max_sessions", r.cfg.MaxSessions)
			grown := slices.Clone(r.gens)
			for len(grown) <= int(p.Slot) {
				st, _ := r.kernel.Session(uint32(len(grown)))
				grown = append(grown, st.Gen)
			}
			r.write(func() { r.gens = grown })
		}
		e := &entry{Session: p.Session, slot: p.Slot, gen: p.Gen, flagged: p.Flagged}
		var perr error
		if e.rules, _, perr = parseScope("scope", p.Scope, r.cfg.MaxRules+1); perr != nil {
			r.log.Warn("state: session scope no longer parses, dropped", "session", p.ID, "err", perr)
			continue
		}
		e.Scope = nil // kept as rules only; see public
		if len(p.MCP) > 0 {
			// Resolved again: a server whose files changed while no
			// daemon ran is no longer recognised, and its launches stay
			// under the agent's scope.
			if e.mcp, perr = checkMCP(p.MCP, r.cfg.MaxRules+1); perr != nil {
				r.log.Warn("state: a session's MCP servers no longer check, not recognised", "session", p.ID, "err", perr)
			}
		}
		if e.cgroupID, err = cgroupv2.ID(e.Binding.Cgroup); err != nil {
			r.log.Warn("state: session cgroup gone, dropped", "session", p.ID, "cgroup", e.Binding.Cgroup)
			continue
		}
		if e.Binding.ContainerCgroup != "" {
			if e.containerCgroups, err = cgroupv2.ID(e.Binding.ContainerCgroup); err != nil {
				e.Binding.ContainerID, e.Binding.PodUID, e.Binding.ContainerCgroup = "", "", ""
			}
		}
		if ks, err := r.kernel.Session(e.slot); err == nil && ks.Gen == e.gen && ks.State != enforcer.StateFree {
			adopted++
		} else {
			// The kernel lost it (maps were not pinned, or were removed):
			// write it again under a new generation. Pid bindings are not
			// restored: the pids may belong to other processes by now.
			e.gen = max(r.gens[e.slot], p.Gen) + 1
			e.Binding.PIDs = nil
			if err := r.rewrite(e); err != nil {
				r.log.Error("state: rewrite session", "session", e.ID, "err", err)
				continue
			}
			rewritten++
		}
		r.write(func() {
			r.gens[e.slot] = e.gen
			r.add(e)
		})
		r.lifecycle(e, "adopted", "agentfenced", "")
	}
	r.write(func() {
		for _, e := range r.byID {
			if len(e.MCP) > 0 {
				r.linkServers(e)
			}
		}
	})
	if n := r.bindRunning(); n > 0 {
		r.log.Info("state: bound running members by pid", "processes", n)
	}
	// Hooks once every session is back: whether a session needs its own
	// depends on its parents and on the others' pid bindings.
	if err := r.hookRoot(); err != nil {
		r.log.Error("state: hostname programs at the root", "err", err)
	}
	for _, e := range r.byID {
		if err := r.hook(e, r.hostnameHooks(e)); err != nil {
			r.log.Error("state: hostname programs", "session", e.ID, "err", err)
		}
	}
	r.write(r.rebuildFree)
	r.persist()
	return adopted, rewritten, nil
}

// bindRunning binds by pid the processes in the sessions' cgroups that have
// no live pid binding: members that were already running when this daemon
// started and have neither forked nor exec'd since, which the process
// programs bind only then. Unbound, such a member would leave its session
// by writing its pid into another cgroup (docs/threat-model.md, route 1).
// Each process goes to the session its cgroup resolves to (the deepest),
// as the process programs would bind it. It returns how many it bound.
func (r *Registry) bindRunning() int {
	n := 0
	for _, e := range r.byID {
		for _, path := range []string{e.Binding.Cgroup, e.Binding.ContainerCgroup} {
			if path == "" {
				continue
			}
			pids, err := r.cgroups.Procs(path)
			if err != nil {
				r.log.Warn("state: list a session's processes", "session", e.ID, "err", err)
				continue
			}
			for _, pid := range pids {
				if r.memberOf(Caller{PID: pid}) != e {
					continue // bound already, or a child session's
				}
				if slot, gen, ok := r.kernel.PidBinding(uint32(pid)); ok && slot == e.slot && gen == e.gen {
					continue
				}
				if err := r.kernel.BindPid(uint32(pid), e.slot, e.gen); err != nil {
					r.log.Warn("state: bind a running member", "session", e.ID, "pid", pid, "err", err)
					continue
				}
				n++
			}
		}
	}
	return n
}

func (r *Registry) rewrite(e *entry) error {
	e.DNS = string(e.dnsMode())
	ks := r.kernelState(e)
	switch e.State {
	case v1.StateRevoked:
		ks.State = enforcer.StateRevoked
	case v1.StateQuarantined:
		ks.State = enforcer.StateQuarantined
	}
	if err := r.writePolicy(e, e.compiled()); err != nil {
		return err
	}
	if err := r.kernel.PutSession(e.slot, ks); err != nil {
		return err
	}
	if e.containerCgroups != 0 {
		if err := r.kernel.BindCgroup(e.containerCgroups, e.slot, e.gen); err != nil {
			return err
		}
	}
	return r.kernel.BindCgroup(e.cgroupID, e.slot, e.gen)
}
