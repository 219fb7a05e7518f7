//go:build ignore

// Kubernetes pods held from their first moment (docs/kubernetes.md, "No
// race at container start").
//
// The kubelet makes a pod's cgroup before it starts any of the pod's
// containers, in one of its QoS cgroups (kubepods, kubepods/burstable, ...).
// af_pod_mkdir runs inside that mkdir and binds the new cgroup to the hold
// (slot AF_HOLD_SLOT), a session with no scope: everything the pod's
// processes try is denied and recorded until the daemon, once its informers
// have the pod, binds it to its AgentSession or lets it go. Informer lag
// then delays a pod; it never leaves an agent's pod unconfined.
//
// Only cgroups made directly in one of pod_parents are held, and only on the
// unified hierarchy (the one the gate judges by). af_pod_rmdir drops a
// hold with its cgroup, so the map does not fill with the dead; a cgroup
// bound to a session meanwhile is the registry's to unbind.

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>

#include "common.h"
#include "task.h"

char __license[] SEC("license") = "Dual MIT/GPL";

enum af_hold_stat {
	AF_HOLD_HELD = 0,   // a new pod cgroup was bound to the hold
	AF_HOLD_FAILED = 1, // ... and could not be (cgroup_sessions full)
	AF_HOLD_GONE = 2,   // a held cgroup was removed
	AF_HOLD_STAT_MAX = 3,
};

// The kubelet makes 3 QoS cgroups per driver; room for both drivers and
// a few more.
#define AF_MAX_POD_PARENTS 16

AF_CGROUP_SESSIONS_MAP;

// The kubelet's QoS cgroups: parent cgroup id -> the binding a new child
// gets (the hold's). The daemon writes it; empty, nothing is held.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, AF_MAX_POD_PARENTS);
	__type(key, __u64);
	__type(value, struct binding);
} pod_parents SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, AF_HOLD_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} hold_stats SEC(".maps");

const enum af_hold *unused_hold __attribute__((unused));
const enum af_hold_stat *unused_hold_stat __attribute__((unused));

static __always_inline void count(__u32 stat)
{
	__u64 *v = bpf_map_lookup_elem(&hold_stats, &stat);

	if (v)
		*v += 1;
}

// held returns the binding a new or removed cgroup cg gets from its parent,
// 0 when its parent is not one of pod_parents or cg is not on the unified
// hierarchy. The task making or removing it (the kubelet, systemd) is on
// the unified hierarchy's root like every task, which identifies it.
static __always_inline struct binding *hold_of(struct cgroup___af *cg)
{
	struct task_struct___af *t = (struct task_struct___af *)bpf_get_current_task();

	if (BPF_CORE_READ(cg, root) != BPF_CORE_READ(t, cgroups, dfl_cgrp, root))
		return 0;
	__u64 parent = BPF_CORE_READ(cg, self.parent, cgroup, kn, id);

	return bpf_map_lookup_elem(&pod_parents, &parent);
}

// (struct cgroup *cgrp, const char *path), after the cgroup was made and
// before anything can be moved into it.
SEC("raw_tp/cgroup_mkdir")
int af_pod_mkdir(struct bpf_raw_tracepoint_args *ctx)
{
	struct cgroup___af *cg = (struct cgroup___af *)ctx->args[0];
	struct binding *hold = hold_of(cg);

	if (!hold)
		return 0;
	struct binding b = *hold;
	__u64 id = BPF_CORE_READ(cg, kn, id);

	if (!bpf_map_update_elem(&cgroup_sessions, &id, &b, BPF_NOEXIST))
		count(AF_HOLD_HELD);
	else if (!bpf_map_lookup_elem(&cgroup_sessions, &id))
		// A full map leaves the pod unheld: counted, and an alert
		// (deploy/monitoring) names it. An entry that exists was made
		// by the previous daemon's copy of this program, attached
		// beside this one while the new one takes over.
		count(AF_HOLD_FAILED);
	return 0;
}

SEC("raw_tp/cgroup_rmdir")
int af_pod_rmdir(struct bpf_raw_tracepoint_args *ctx)
{
	struct cgroup___af *cg = (struct cgroup___af *)ctx->args[0];
	struct binding *hold = hold_of(cg);

	if (!hold)
		return 0;
	__u64 id = BPF_CORE_READ(cg, kn, id);
	struct binding *b = bpf_map_lookup_elem(&cgroup_sessions, &id);

	if (b && b->slot == hold->slot && b->gen == hold->gen) {
		bpf_map_delete_elem(&cgroup_sessions, &id);
		count(AF_HOLD_GONE);
	}
	return 0;
}
