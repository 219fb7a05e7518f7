// Session membership as the tracing and LSM programs see it: the walk up a
// task's cgroups (task.h) that finds the session the gate would find by
// cgroup, and escape reports. Include after declaring the sessions and cgroup_sessions maps (AF_SESSIONS_MAP,
// AF_CGROUP_SESSIONS_MAP), which these functions read, and the gate_events
// and gate_stats maps, which they write.
#pragma once

#include "common.h"
#include "gate.h"
#include "process.h"
#include "task.h"

// live returns the session a binding names while its slot still holds the
// binding's generation: the gate's test (gate.c).
static __always_inline struct session *live(const struct binding *b)
{
	if (!b)
		return 0;
	__u32 slot = b->slot;
	struct session *s = bpf_map_lookup_elem(&sessions, &slot);

	if (!s || s->gen != b->gen || s->state == AF_STATE_FREE)
		return 0;
	return s;
}

static __always_inline int same_session(const struct binding *a, const struct binding *b)
{
	return a->slot == b->slot && a->gen == b->gen;
}

// A cgroup walked up from. The gate looks at a task's own cgroup and its
// ancestors at levels 1 to AF_MAX_CGROUP_DEPTH - 1; the walk starts at the
// bottom, so it covers those levels for cgroups up to AF_CGROUP_WALK deep.
// It reads the cgroups with CO-RE rather than the gate's helper, which
// tracing programs cannot call before Linux 5.12 or so
// (bpf_get_current_ancestor_cgroup_id), and it works for a task other than
// the current one (a child at fork, a task being moved).
#define AF_CGROUP_WALK 32

struct chain {
	struct binding deepest; // the session the gate would find by cgroup
	int found;
	int has_member; // the member's session is bound on the chain
};

static __always_inline void walk_cgroup(struct cgroup___af *cg, const struct binding *member, struct chain *c)
{
	for (int i = 0; i < AF_CGROUP_WALK; i++) {
		if (!cg)
			break;
		int level = BPF_CORE_READ(cg, level);

		if (i == 0 || (level >= 1 && level < AF_MAX_CGROUP_DEPTH)) {
			__u64 id = BPF_CORE_READ(cg, kn, id);
			struct binding *b = bpf_map_lookup_elem(&cgroup_sessions, &id);

			if (live(b)) {
				if (!c->found) {
					c->deepest = *b;
					c->found = 1;
				}
				if (member && same_session(b, member))
					c->has_member = 1;
			}
		}
		if (level <= 1)
			break; // the root is looked at only as a task's own cgroup
		cg = BPF_CORE_READ(cg, self.parent, cgroup);
	}
}

// violation counts one violation against s, as the gate counts a denial,
// and switches s to quarantine when that used up its budget. Returns 1 when
// it did.
static __always_inline __u8 violation(struct session *s)
{
	// The fetch form of atomic add needs kernel 5.12; a plain add plus a
	// racy read is enough for a threshold check.
	__sync_fetch_and_add(&s->violations, 1);
	__u32 violations = s->violations;
	if (violations > s->budget && (s->flags & AF_SESSION_QUARANTINE_ON_BUDGET) && s->state == AF_STATE_ACTIVE) {
		s->state = AF_STATE_QUARANTINED;
		return 1;
	}
	return 0;
}

// lost counts a gate event the ring buffer had no room for.
static __always_inline void lost_event(void)
{
	__u32 k = AF_STAT_LOST;
	__u64 *n = bpf_map_lookup_elem(&gate_stats, &k);

	if (n)
		*n += 1;
}

static __always_inline __u32 netns_of(struct task_struct___af *t)
{
	return BPF_CORE_READ(t, nsproxy, net_ns, ns.inum);
}

// drift applies session s's drift action now, whatever is left of its
// budget: for what a member did that no hook could refuse. Returns 1 when
// it quarantined s. With the kill action the current task gets SIGKILL,
// which it takes before the syscall returns to it.
static __always_inline __u8 drift(struct session *s)
{
	__u8 quarantined_now = 0;

	__sync_fetch_and_add(&s->violations, 1);
	if ((s->flags & AF_SESSION_QUARANTINE_ON_BUDGET) && s->state == AF_STATE_ACTIVE) {
		s->state = AF_STATE_QUARANTINED;
		quarantined_now = 1;
	}
	if (s->flags & AF_SESSION_KILL_ON_DRIFT)
		bpf_send_signal(9);
	return quarantined_now;
}

// escape_event counts an attempt to leave session b against its budget,
// quarantining it as the gate would (or, with now, applies the drift
// action at once: drift), and reserves its report on the gate's ring with
// verdict (0: the kernel let it happen), for the caller to complete and
// submit; 0 when the ring is full (counted) or b's slot moved on. task is
// the member when it is not the current task; detail goes in the event's
// protocol field (enum af_netns_via for AF_ESCAPE_NETNS).
static __always_inline struct gate_event *escape_event(const struct binding *b, __u8 kind, __u8 verdict, int now,
						       __u64 dst_cgroup, __u32 tgid, __u32 tid,
						       struct task_struct___af *task, __u32 other, __u8 detail)
{
	__u32 slot = b->slot;
	struct session *s = bpf_map_lookup_elem(&sessions, &slot);

	if (!s || s->gen != b->gen)
		return 0;
	__u8 quarantined_now = now ? drift(s) : violation(s);
	struct gate_event *e = bpf_ringbuf_reserve(&gate_events, sizeof(*e), 0);
	if (!e) {
		lost_event();
		return 0;
	}
	__builtin_memset(e, 0, sizeof(*e));
	e->ts_ns = bpf_ktime_get_boot_ns();
	e->cgroup_id = dst_cgroup;
	e->session_gen = b->gen;
	e->session_slot = b->slot;
	e->pid = tgid;
	e->tid = tid;
	if (task) {
		e->uid = BPF_CORE_READ(task, cred, uid.val);
		e->gid = BPF_CORE_READ(task, cred, gid.val);
		BPF_CORE_READ_STR_INTO(&e->comm, task, comm);
	} else {
		__u64 ugid = bpf_get_current_uid_gid();

		e->uid = (__u32)ugid;
		e->gid = ugid >> 32;
		bpf_get_current_comm(e->comm, sizeof(e->comm));
	}
	e->rule = AF_RULE_NONE;
	e->hook = AF_HOOK_ESCAPE;
	e->reason = kind;
	e->verdict = verdict;
	e->quarantined_now = quarantined_now;
	e->name_hash = other;
	e->protocol = detail;
	return e;
}

// report_escape is escape_event, submitted as it is.
static __always_inline void report_escape(const struct binding *b, __u8 kind, __u8 verdict, int now, __u64 dst_cgroup,
					  __u32 tgid, __u32 tid, struct task_struct___af *task, __u32 other,
					  __u8 detail)
{
	struct gate_event *e = escape_event(b, kind, verdict, now, dst_cgroup, tgid, tid, task, other, detail);

	if (e)
		bpf_ringbuf_submit(e, BPF_RB_FORCE_WAKEUP);
}
