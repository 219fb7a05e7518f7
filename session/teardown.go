package session

import (
	"errors"
	"slices"
	"time"

	v1 "github.com/agentfence/agentfence/api/v1"
	"github.com/agentfence/agentfence/enforcer"
	"github.com/agentfence/agentfence/internal/boottime"
)

// deletePolicy removes a session's address and hostname rules from the
// kernel.
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

// Close ends a session: its members are denied everything at once, killed,
// and its cgroups, bindings, scope and slot are released. Child sessions
// are closed first.
func (r *Registry) Close(id string, caller Caller) error {
	// Events already in the ring buffer (a quarantine, say) are handled
	// while the session still exists.
	if r.sync != nil {
		r.sync()
	}
	r.begin()
	e, err := r.authorize(id, caller)
	if err == nil && r.memberOf(caller) == e {
		// Closing its own session would take a member out of confinement.
		err = forbidden("id", "a member may not close its own session %s; revoke narrows it to nothing", id)
	}
	if err != nil {
		r.end()
		return err
	}
	var closed []*entry
	err = r.teardown(e, &closed)
	r.persist()
	r.end()
	if r.sync != nil {
		r.sync()
	}
	// Closed entries are out of the index and never change again.
	for _, c := range closed {
		r.lifecycle(c, "closed", caller.ID, "")
	}
	r.out.flush()
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
		errs = append(errs, r.unbindWorkload(e, e.containerCgroups))
	}
	errs = append(errs, r.deletePolicy(e))
	errs = append(errs, r.kernel.PutSession(e.slot, enforcer.SessionState{Gen: e.gen, State: enforcer.StateFree}))
	if err := errors.Join(errs...); err != nil {
		return kernelError(err)
	}
	closedAt := boottime.Now()
	r.write(func() {
		e.closedAt = closedAt
		delete(r.byID, e.ID)
		delete(r.bySlot, e.slot)
		delete(r.byCgroup, e.Binding.Cgroup)
		delete(r.byCgroup, e.Binding.ContainerCgroup)
		r.free = append(r.free, e.slot)
		r.recent = append(r.recent, e)
		if len(r.recent) > recentClosed {
			r.recent = slices.Delete(r.recent, 0, len(r.recent)-recentClosed)
		}
	})
	delete(r.dirty, e.ID)
	r.gone = append(r.gone, e.ID)
	e.closed = true
	if needsRoot(e) {
		if err := r.hookRoot(); err != nil {
			r.log.Error("hostname programs after closing", "session", e.ID, "err", err)
		}
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

// Reap records the expiry of sessions whose time has passed and destroys
// their connections (the kernel already denies their members new ones),
// and closes expired or revoked sessions that have no members left.
func (r *Registry) Reap(now time.Time) {
	r.begin()
	var closed []*entry
	changed := false
	for _, e := range r.byID {
		if (e.State == v1.StateActive || e.State == v1.StateQuarantined) && !now.Before(e.ExpiresAt) {
			changed = true
			r.write(func() { e.State = v1.StateExpired })
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
		if (e.State == v1.StateExpired || e.State == v1.StateRevoked) && !r.treePopulated(e) {
			if p := r.byID[e.Parent]; p == nil || (p.State != v1.StateExpired && p.State != v1.StateRevoked) || r.treePopulated(p) {
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
	r.end()
	for _, c := range closed {
		r.lifecycle(c, "closed", "agentfenced (no members left)", "")
	}
	r.out.flush()
}
