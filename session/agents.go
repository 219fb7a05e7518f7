package session

import (
	"bufio"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"

	v1 "github.com/agentfence/agentfence/api/v1"
	"github.com/agentfence/agentfence/audit"
)

// retiredFile keeps the retired agents across daemon restarts, so that a
// restarted daemon refuses their sessions before it hears from the cluster
// again and does not record a retirement twice.
type retiredFile struct {
	Agents []string `json:"agents"` // SPIFFE IDs
}

func (r *Registry) retiredPath() string {
	if r.cfg.StateFile == "" {
		return ""
	}
	return filepath.Join(filepath.Dir(r.cfg.StateFile), "retired-agents.json")
}

// loadRetired reads the retired agents a previous daemon kept; called
// under turn.
func (r *Registry) loadRetired() error {
	path := r.retiredPath()
	if path == "" {
		return nil
	}
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var f retiredFile
	if err := json.Unmarshal(b, &f); err != nil {
		return err
	}
	r.write(func() {
		for _, id := range f.Agents {
			r.retired[id] = true
		}
	})
	return nil
}

// RetireAgent ends agent a (by its SPIFFE ID) on this node: every session
// of it is revoked (its members denied everything, their connections
// destroyed), Open refuses new ones, and an agent record (event retired)
// names actor. Again for the same agent it revokes what is left and
// records nothing. It returns how many sessions it revoked.
func (r *Registry) RetireAgent(a audit.Agent, actor, reason string) (int, error) {
	if a.ID == "" {
		return 0, invalid("agent.id", "an agent is retired by its SPIFFE ID")
	}
	r.begin()
	defer r.end()
	first := !r.retired[a.ID]
	if first {
		r.write(func() { r.retired[a.ID] = true })
		if path := r.retiredPath(); path != "" {
			ids := make([]string, 0, len(r.retired))
			for id := range r.retired {
				ids = append(ids, id)
			}
			slices.Sort(ids)
			if err := writeAtomic(path, func(w *bufio.Writer) error { return json.NewEncoder(w).Encode(retiredFile{Agents: ids}) }); err != nil {
				r.log.Error("keep the retired agents", "err", err)
			}
		}
		rec := audit.Record{Schema: audit.SchemaVersion, Time: r.now(), Kind: audit.KindAgent, Agent: &a, Event: "retired", Actor: actor}
		if reason != "" {
			rec.Outcome = &audit.Outcome{Reason: reason}
		}
		r.out.add(rec)
	}
	var errs []error
	revoked := 0
	for _, e := range r.byID {
		if e.Agent != nil && e.Agent.ID == a.ID && (e.State == v1.StateActive || e.State == v1.StateQuarantined) {
			if err := r.revoke(e, actor, "agent retired"); err != nil {
				errs = append(errs, err)
				continue
			}
			revoked++
		}
	}
	r.persist()
	return revoked, errors.Join(errs...)
}
