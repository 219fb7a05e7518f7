package session

import (
	"fmt"
	"os"
	"slices"
	"strings"

	v1 "github.com/agentfence/agentfence/api/v1"
	"github.com/agentfence/agentfence/internal/privdrop"
)

// Bind makes more processes members of session id: a process (and what it
// forks afterwards) or a container's cgroup.
func (r *Registry) Bind(id string, req v1.BindRequest, caller Caller) (v1.Session, error) {
	held := r.heldGateCaps(req) // /proc reads, before the change
	r.begin()
	defer r.end()
	e, err := r.authorize(id, caller)
	if err != nil {
		return v1.Session{}, err
	}
	if e.State != v1.StateActive && e.State != v1.StateQuarantined {
		return v1.Session{}, invalid("id", "session %s is %s", id, e.State)
	}
	named := 0
	for _, set := range []bool{req.PID != 0, req.ContainerID != "", req.PodUID != ""} {
		if set {
			named++
		}
	}
	switch {
	case named != 1:
		return v1.Session{}, invalid("pid", "give exactly one of pid, container_id and pod_uid")
	case req.PID != 0:
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", req.PID)); err != nil {
			return v1.Session{}, invalid("pid", "no process %d", req.PID)
		}
		// A process may move only down its session tree (into a narrower
		// session), never sideways or up.
		pm := r.memberOf(Caller{PID: int(req.PID)})
		if pm != nil && pm != e && !r.descendantOf(e.ID, pm.ID) {
			return v1.Session{}, &v1.Error{Code: v1.CodeConflict, Field: "pid", Message: fmt.Sprintf("process %d belongs to session %s", req.PID, pm.ID)}
		}
		// A member may move only processes of its own session tree.
		if cm := r.memberOf(caller); cm != nil && (pm == nil || (pm != cm && !r.descendantOf(pm.ID, cm.ID))) {
			return v1.Session{}, forbidden("pid", "process %d is not in the caller's session %s", req.PID, cm.ID)
		}
		if err := r.bindPid(e, req.PID); err != nil {
			return v1.Session{}, err
		}
	default:
		w, err := r.workloadOf(req)
		if err != nil {
			return v1.Session{}, err
		}
		if r.memberOf(caller) != nil {
			return v1.Session{}, forbidden(w.field, "session members may not bind a %s", w.what)
		}
		if e.Binding.ContainerCgroup != "" {
			return v1.Session{}, &v1.Error{Code: v1.CodeConflict, Field: w.field, Message: "session already has a container or pod"}
		}
		path, cgid, err := w.find(w.id)
		if err != nil {
			return v1.Session{}, invalid(w.field, "%v", err)
		}
		if other := r.byCgroup[path]; other != nil {
			return v1.Session{}, &v1.Error{Code: v1.CodeConflict, Field: w.field, Message: fmt.Sprintf("%s belongs to session %s", w.what, other.ID)}
		}
		if err := r.kernel.BindCgroup(cgid, e.slot, e.gen); err != nil {
			return v1.Session{}, kernelError(err)
		}
		r.write(func() {
			e.Binding.ContainerID, e.Binding.PodUID = req.ContainerID, req.PodUID
			e.Binding.ContainerCgroup, e.containerCgroups = path, cgid
		})
		if err := r.hook(e, r.hostnameHooks(e)); err != nil { // hostnameHooks reads the workload's cgroup
			r.unbindWorkload(e, cgid)
			r.write(func() {
				e.Binding.ContainerID, e.Binding.PodUID, e.Binding.ContainerCgroup, e.containerCgroups = "", "", "", 0
			})
			r.hook(e, r.hostnameHooks(e))
			return v1.Session{}, kernelError(err)
		}
		r.write(func() { r.byCgroup[path] = e })
	}
	r.write(func() { e.Binding.GateCaps = append(slices.Clip(e.Binding.GateCaps), held...) })
	r.touch(e)
	r.persist()
	r.lifecycle(e, "bound", caller.ID, "")
	return e.public(), nil
}

// bindPid makes process pid (and what it forks afterwards) a member of e.
func (r *Registry) bindPid(e *entry, pid uint32) error {
	if err := r.kernel.BindPid(pid, e.slot, e.gen); err != nil {
		return kernelError(err)
	}
	pids := e.Binding.PIDs
	if !slices.Contains(pids, pid) {
		r.write(func() { e.Binding.PIDs = append(slices.Clip(pids), pid) })
	}
	if err := r.hookRoot(); err != nil { // needsRoot reads the new pid
		r.write(func() { e.Binding.PIDs = pids })
		r.kernel.UnbindPid(pid)
		return kernelError(err)
	}
	r.write(func() {
		e.Binding.GateCaps = slices.DeleteFunc(slices.Clip(e.Binding.GateCaps), func(h v1.HeldCaps) bool { return h.PID == pid })
	})
	return nil
}

// workload is the container or pod a bind request names.
type workload struct {
	field, what, id string
	find            func(string) (string, uint64, error)
}

// workloadOf checks the container id or pod UID of req before anything
// looks for it.
func (r *Registry) workloadOf(req v1.BindRequest) (workload, error) {
	if req.PodUID != "" {
		if !podUID(req.PodUID) {
			return workload{}, invalid("pod_uid", "%q is not a pod UID (a lowercase UUID)", req.PodUID)
		}
		return workload{"pod_uid", "pod", req.PodUID, r.cgroups.FindPod}, nil
	}
	if !containerID(req.ContainerID) {
		return workload{}, invalid("container_id", "%q is not a container id (at least 12 lowercase hex digits)", req.ContainerID)
	}
	return workload{"container_id", "container", req.ContainerID, r.cgroups.FindContainer}, nil
}

// podUID reports whether uid is a UUID as the API server writes them.
func podUID(uid string) bool {
	if len(uid) != 36 {
		return false
	}
	for i, c := range uid {
		if i == 8 || i == 13 || i == 18 || i == 23 {
			if c != '-' {
				return false
			}
		} else if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
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
func (r *Registry) heldGateCaps(req v1.BindRequest) []v1.HeldCaps {
	var pids []int
	switch {
	case req.PID != 0:
		pids = []int{int(req.PID)}
	case req.ContainerID != "" || req.PodUID != "":
		if w, err := r.workloadOf(req); err == nil {
			if path, _, err := w.find(w.id); err == nil {
				pids, _ = r.cgroups.Procs(path)
			}
		}
	}
	var out []v1.HeldCaps
	for _, pid := range pids {
		if caps, err := privdrop.HeldGate(pid); err == nil && len(caps) > 0 {
			out = append(out, v1.HeldCaps{PID: uint32(pid), Caps: privdrop.Names(caps)})
			if len(out) == maxHeldListed {
				break
			}
		}
	}
	return out
}
