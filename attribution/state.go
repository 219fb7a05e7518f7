package attribution

import (
	"bytes"
	"cmp"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"

	"github.com/agentfence/agentfence/enforcer"
	"github.com/agentfence/agentfence/internal/cgroupv2"
)

// persisted is a session as the state file keeps it.
type persisted struct {
	Session
	Slot uint32 `json:"slot"`
	Gen  uint64 `json:"gen"`
}

type stateFile struct {
	Version  int         `json:"version"`
	Sessions []persisted `json:"sessions"`
}

// persist writes the sessions to the state file, atomically. Called with
// r.mu held after every change. Each session's JSON is kept from its last
// change (touch drops it), so a change costs one session's encoding plus a
// write, not an encoding of every session.
//
// The file is not fsync'd: the pinned maps it describes live in memory
// too, so it only has to survive the daemon, not the machine.
func (r *Registry) persist() {
	if r.cfg.StateFile == "" {
		return
	}
	es := make([]*entry, 0, len(r.byID))
	for _, e := range r.byID {
		es = append(es, e)
	}
	slices.SortFunc(es, func(a, b *entry) int { return cmp.Compare(a.slot, b.slot) })
	var buf bytes.Buffer
	fmt.Fprintf(&buf, "{\"version\":%d,\"sessions\":[", ModelVersion)
	for i, e := range es {
		enc, ok := r.enc[e.ID]
		if !ok {
			var err error
			if enc, err = json.Marshal(persisted{Session: e.public(), Slot: e.slot, Gen: e.gen}); err != nil {
				r.log.Error("persist session", "session", e.ID, "err", err)
				continue
			}
			r.enc[e.ID] = enc
		}
		if i > 0 {
			buf.WriteString(",\n")
		}
		buf.Write(enc)
	}
	buf.WriteString("]}\n")
	if err := writeAtomic(r.cfg.StateFile, buf.Bytes()); err != nil {
		r.log.Error("persist sessions", "file", r.cfg.StateFile, "err", err)
	}
}

// touch marks a session changed, for persist.
func (r *Registry) touch(e *entry) { delete(r.enc, e.ID) }

func writeAtomic(path string, b []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
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
	r.mu.Lock()
	defer r.mu.Unlock()
	for slot := 1; slot < len(r.gens); slot++ {
		if st, err := r.kernel.Session(uint32(slot)); err == nil {
			r.gens[slot] = st.Gen
		}
	}
	if r.cfg.StateFile == "" {
		return 0, 0, nil
	}
	b, err := os.ReadFile(r.cfg.StateFile)
	if os.IsNotExist(err) {
		return 0, 0, nil
	}
	if err != nil {
		return 0, 0, err
	}
	var st stateFile
	if err := json.Unmarshal(b, &st); err != nil {
		return 0, 0, fmt.Errorf("state file %s: %w", r.cfg.StateFile, err)
	}
	if st.Version != ModelVersion {
		return 0, 0, fmt.Errorf("state file %s has version %d, this daemon reads %d", r.cfg.StateFile, st.Version, ModelVersion)
	}
	for _, p := range st.Sessions {
		if int(p.Slot) <= 0 || int(p.Slot) >= len(r.gens) || r.bySlot[p.Slot] != nil {
			r.log.Warn("state: session with a bad or duplicate slot dropped", "session", p.ID, "slot", p.Slot)
			continue
		}
		e := &entry{Session: p.Session, slot: p.Slot, gen: p.Gen}
		var perr error
		if e.rules, e.entries, perr = parseScope("scope", p.Scope, r.cfg.MaxRules+1); perr != nil {
			r.log.Warn("state: session scope no longer parses, dropped", "session", p.ID, "err", perr)
			continue
		}
		if e.cgroupID, err = cgroupv2.ID(e.Binding.Cgroup); err != nil {
			r.log.Warn("state: session cgroup gone, dropped", "session", p.ID, "cgroup", e.Binding.Cgroup)
			continue
		}
		if e.Binding.ContainerCgroup != "" {
			if e.containerCgroups, err = cgroupv2.ID(e.Binding.ContainerCgroup); err != nil {
				e.Binding.ContainerID, e.Binding.ContainerCgroup = "", ""
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
		r.gens[e.slot] = e.gen
		r.add(e)
		r.lifecycle(e, "adopted", "agentfenced", "")
	}
	r.rebuildFree()
	r.persist()
	return adopted, rewritten, nil
}

func (r *Registry) rewrite(e *entry) error {
	mode := enforcer.ModeEnforce
	if e.Mode == "audit" {
		mode = enforcer.ModeAudit
	}
	ks := r.kernelState(e, mode)
	switch e.State {
	case StateRevoked:
		ks.State = enforcer.StateRevoked
	case StateQuarantined:
		ks.State = enforcer.StateQuarantined
	}
	if err := r.writePolicy(e); err != nil {
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
