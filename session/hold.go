package session

import (
	"os"

	v1 "github.com/agentfence/agentfence/api/v1"
	"github.com/agentfence/agentfence/audit"
	"github.com/agentfence/agentfence/enforcer"
)

// HoldID is the session id records of a held pod carry: a Kubernetes pod
// whose cgroup the kernel holds at deny until its node classifies it
// (enforcer.HoldSlot, docs/kubernetes.md). It is no session of the
// registry: nothing opens, lists or closes it.
const HoldID = "held"

var holdAttribution = Attribution{Session: audit.Session{ID: HoldID, Mode: string(v1.ModeEnforce),
	Intent: "a Kubernetes pod held at deny until its node binds it to its AgentSession or finds no Agent selects it"}}

// HoldPods says whether the kernel holds new pods (enforcer.Gate.HoldPods):
// while it does, a pod whose session ends goes back to the hold rather
// than out of every session.
func (r *Registry) HoldPods(on bool) {
	r.begin()
	r.holdingPods = on
	r.end()
}

// HoldPod holds the cgroup of pod uid at deny unless a session has it, and
// reports whether it did: for a pod an Agent selects that started before
// the kernel held new pods.
func (r *Registry) HoldPod(uid string) (bool, error) {
	return r.podHold(uid, r.kernel.HoldCgroup)
}

// ReleasePod lets the cgroup of pod uid go if it is held, and reports
// whether it was: for a pod no Agent selects.
func (r *Registry) ReleasePod(uid string) (bool, error) {
	return r.podHold(uid, r.kernel.ReleaseCgroup)
}

func (r *Registry) podHold(uid string, op func(uint64) (bool, error)) (bool, error) {
	if !podUID(uid) {
		return false, invalid("pod_uid", "%q is not a pod UID (a lowercase UUID)", uid)
	}
	_, cgid, err := r.cgroups.FindPod(uid)
	if err != nil {
		return false, invalid("pod_uid", "%v", err)
	}
	// Under turn, so that it never interleaves with a Bind of the pod.
	r.begin()
	defer r.end()
	done, err := op(cgid)
	if err != nil {
		return false, kernelError(err)
	}
	return done, nil
}

// unbindWorkload unbinds the container or pod cgroup of e, into the hold
// for a pod while the kernel holds pods: one atomic map write, so there is
// no moment the pod is in no session. A pod whose cgroup is gone is
// unbound, so the map does not keep the dead.
func (r *Registry) unbindWorkload(e *entry, cgid uint64) error {
	if e.Binding.PodUID != "" && r.holdingPods {
		if _, err := os.Stat(e.Binding.ContainerCgroup); err == nil {
			return r.kernel.BindCgroup(cgid, enforcer.HoldSlot, enforcer.HoldGen)
		}
	}
	return r.kernel.UnbindCgroup(cgid)
}
