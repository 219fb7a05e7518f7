//go:build ignore

// Process identity: exec, fork and exit of every thread group, feeding the
// userspace process cache and keeping the maps the egress gate reads
// (proc_exe, pid_sessions) in step with the process tree.
//
// Membership is kept per process. A process that is a member by its cgroup
// (the gate's cgroup_sessions, the cgroup or an ancestor) is bound by tgid in
// pid_sessions no later than its first fork or exec, and a child is bound at
// fork, before it runs. The gate looks at the tgid binding first, so a member
// that then moves to another cgroup (cgroup.procs, clone3 CLONE_INTO_CGROUP)
// stays in its session; the move is reported as an escape (process.h) and
// counts against the session's violation budget.
//
// Hooks are raw tracepoints (raw_tp/sched_process_*), not tp_btf or classic
// tracepoints:
//   - classic tracepoints do not expose the child task on fork (only pids), so
//     a thread cannot be told from a process, and do not expose bprm on exec;
//   - tp_btf needs the running kernel's own BTF to attach, raw_tp only needs
//     BTF for the CO-RE relocations, which may come from an external file
//     (btfhub) on kernels built without CONFIG_DEBUG_INFO_BTF;
//   - raw_tp exists since 4.17 and the ring buffer since 5.8, so 5.10 LTS
//     and later are covered. Only the leading tracepoint arguments are used,
//     so arguments appended later (6.16 added group_dead to exit) are harmless.

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

#include "core.h"
#include "common.h"
#include "gate.h"
#include "process.h"

char __license[] SEC("license") = "Dual MIT/GPL";

_Static_assert((AF_ARGV_MAX & (AF_ARGV_MAX - 1)) == 0, "AF_ARGV_MAX must be a power of two");

AF_PID_SESSIONS_MAP;
AF_PROC_EXE_MAP;

// The gate's maps, shared by the loader like pid_sessions: the session slots
// (to tell a live binding from a stale one, and to count an escape against
// the budget), the cgroup bindings, and the gate's event ring and counters
// (escape events go where the gate's decisions go). Standalone, the object
// has private copies of the same shapes.
AF_SESSIONS_MAP;
AF_CGROUP_SESSIONS_MAP;

AF_GATE_EVENTS_MAP;
AF_GATE_STATS_MAP;

#include "member.h"

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	// 4 MiB holds ~2500 exec records: enough to ride out a fork storm while
	// the reader is descheduled. Userspace may resize before load.
	__uint(max_entries, 4 << 20);
} proc_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} proc_lost SEC(".maps");

// Force the generation of Go types for the event layouts and the enums.
const struct proc_exec_event *unused_exec __attribute__((unused));
const struct proc_fork_event *unused_fork __attribute__((unused));
const struct proc_exit_event *unused_exit __attribute__((unused));
const enum af_proc_event_type *unused_type __attribute__((unused));
const enum af_proc_flags *unused_flags __attribute__((unused));
const enum af_escape_kind *unused_escape __attribute__((unused));
const enum af_netns_via *unused_netns_via __attribute__((unused));
const enum af_ptrace_how *unused_ptrace_how __attribute__((unused));
const enum af_proc_hook *unused_hook __attribute__((unused));

// Waking the reader costs an irq_work (a self-IPI, i.e. a VM exit under
// virtualisation) plus a context switch, which dominated the per-exec cost
// when every record woke it. Records are instead left for the reader's poll
// interval, and a wakeup is forced only once a batch has built up, so a storm
// is still drained promptly.
#define AF_WAKEUP_BYTES (64 << 10)

static __always_inline __u64 wakeup_flags(void)
{
	if (bpf_ringbuf_query(&proc_events, BPF_RB_AVAIL_DATA) >= AF_WAKEUP_BYTES)
		return BPF_RB_FORCE_WAKEUP;
	return BPF_RB_NO_WAKEUP;
}

static __always_inline void count_lost(void)
{
	__u32 zero = 0;
	__u64 *n = bpf_map_lookup_elem(&proc_lost, &zero);

	if (n)
		*n += 1; // per-CPU slot, no other writer
}

// Boot-clock start of the thread group: with tgid it names a process
// uniquely, and it is the clock /proc/<pid>/stat field 22 reports.
static __always_inline __u64 group_start(struct task_struct *task)
{
	struct task_struct *leader = BPF_CORE_READ(task, group_leader);

	if (bpf_core_field_exists(leader->start_boottime))
		return BPF_CORE_READ(leader, start_boottime);
	return BPF_CORE_READ(leader, real_start_time);
}

static __always_inline void exe_of(struct file *f, struct exe_id *id)
{
	struct inode *ino = BPF_CORE_READ(f, f_inode);

	id->ino = BPF_CORE_READ(ino, i_ino);
	id->dev = BPF_CORE_READ(ino, i_sb, s_dev);
}

// member_binding returns the pid_sessions entry of task, the current task,
// whose tgid is tgid, if it is in a session: its tgid binding, else its
// cgroup's session, which it is then bound to by tgid. A stale tgid
// binding (its session is gone) is removed.
static __always_inline struct binding *member_binding(struct task_struct___af *task, __u32 tgid)
{
	struct binding *b = bpf_map_lookup_elem(&pid_sessions, &tgid);

	if (live(b))
		return b;
	struct chain c = {};

	walk_cgroup(BPF_CORE_READ(task, cgroups, dfl_cgrp), 0, &c);
	if (!c.found || c.deepest.slot == AF_HOLD_SLOT) {
		if (b)
			bpf_map_delete_elem(&pid_sessions, &tgid);
		return 0;
	}
	c.deepest.netns = netns_of(task);
	bpf_map_update_elem(&pid_sessions, &tgid, &c.deepest, BPF_ANY);
	return bpf_map_lookup_elem(&pid_sessions, &tgid);
}

static __always_inline __u64 cgroup_id_of(struct cgroup___af *cg)
{
	return BPF_CORE_READ(cg, kn, id);
}

SEC("raw_tp/sched_process_exec")
int af_sched_exec(struct bpf_raw_tracepoint_args *ctx)
{
	struct task_struct *task = (struct task_struct *)ctx->args[0];
	struct linux_binprm *bprm = (struct linux_binprm *)ctx->args[2];
	struct exe_id exe = {};
	struct file *f;
	__u32 tgid = BPF_CORE_READ(task, tgid);

	// A member by cgroup is bound by tgid before its new image runs. A
	// member that execs in another network namespace than it was bound
	// in is reported once, and the new one is its namespace from then on.
	struct binding *m = member_binding((struct task_struct___af *)task, tgid);
	// An exec in a session that launches MCP servers may be one: until the
	// daemon has judged it, the launch has only the agent's scope, and a
	// server calls out ~12 ms after its exec. The reader's poll interval
	// (10 ms) would take most of that, so this record wakes it at once.
	struct session *launcher = live(m);
	__u64 wakeup = launcher && (launcher->flags & AF_SESSION_LAUNCHES_SERVERS) ? BPF_RB_FORCE_WAKEUP : 0;

	if (m) {
		__u32 ns = netns_of((struct task_struct___af *)task);
		__u32 was = m->netns;

		if (was != ns && ns) {
			m->netns = ns;
			if (was) {
				struct binding member = *m;

				report_escape(&member, AF_ESCAPE_NETNS, 0, 0, ns, tgid, (__u32)bpf_get_current_pid_tgid(), 0, was,
					      AF_NETNS_VIA_EXEC);
			}
		}
	}

	// After exec the interpreter (for #! scripts) is bprm->file and
	// mm->exe_file alike; bprm->file is the cheaper read.
	f = BPF_CORE_READ(bprm, file);
	if (!f)
		f = BPF_CORE_READ(task, mm, exe_file);
	if (f)
		exe_of(f, &exe);

	// The gate depends on this even when the ring buffer is full.
	bpf_map_update_elem(&proc_exe, &tgid, &exe, BPF_ANY);

	struct proc_exec_event *ev = bpf_ringbuf_reserve(&proc_events, sizeof(*ev), 0);
	if (!ev) {
		count_lost();
		return 0;
	}

	__u64 ugid = bpf_get_current_uid_gid();
	const char *filename = BPF_CORE_READ(bprm, filename);
	const char *interp = BPF_CORE_READ(bprm, interp);
	long n;

	ev->hdr.type = AF_PROC_EXEC;
	ev->hdr._pad0 = 0;
	ev->hdr.flags = 0;
	ev->hdr.tgid = tgid;
	ev->hdr.ktime = bpf_ktime_get_boot_ns();
	ev->pid = (__u32)ctx->args[1];
	ev->ppid = BPF_CORE_READ(task, real_parent, tgid);
	ev->uid = (__u32)ugid;
	ev->gid = ugid >> 32;
	ev->cgroup_id = bpf_get_current_cgroup_id();
	ev->start_time = group_start(task);
	ev->exe = exe;
	ev->_pad1 = 0;

	n = bpf_probe_read_kernel_str(ev->filename, sizeof(ev->filename), filename);
	ev->filename_len = n > 0 ? n - 1 : 0;

	// interp differs from filename only for binfmt_script/misc; skip the copy
	// otherwise to keep the common exec cheap.
	ev->interp_len = 0;
	if (interp && interp != filename) {
		n = bpf_probe_read_kernel_str(ev->interp, sizeof(ev->interp), interp);
		ev->interp_len = n > 0 ? n - 1 : 0;
	} else {
		ev->interp[0] = 0;
	}

	// The new image's argv sits on its fresh stack, so the pages are present
	// and a non-sleepable read succeeds.
	struct mm_struct *mm = BPF_CORE_READ(task, mm);
	__u64 start = BPF_CORE_READ(mm, arg_start);
	__u64 end = BPF_CORE_READ(mm, arg_end);
	__u64 len = end > start ? end - start : 0;

	if (len > AF_ARGV_MAX) {
		len = AF_ARGV_MAX;
		ev->hdr.flags |= AF_FLAG_ARGV_TRUNCATED;
	}
	// Re-bound for the verifier: clang may have dropped the range above.
	asm volatile("%[len] &= %[mask]" : [len] "+r"(len) : [mask] "i"(AF_ARGV_MAX * 2 - 1));
	if (len > AF_ARGV_MAX)
		len = 0;
	ev->argv_len = 0;
	if (len > 0) {
		if (bpf_probe_read_user(ev->argv, len, (const void *)start) == 0)
			ev->argv_len = len;
		else
			ev->hdr.flags |= AF_FLAG_ARGV_FAULT;
	}

	bpf_ringbuf_submit(ev, wakeup ? wakeup : wakeup_flags());
	return 0;
}

SEC("raw_tp/sched_process_fork")
int af_sched_fork(struct bpf_raw_tracepoint_args *ctx)
{
	struct task_struct *parent = (struct task_struct *)ctx->args[0];
	struct task_struct *child = (struct task_struct *)ctx->args[1];
	__u32 child_pid = BPF_CORE_READ(child, pid);
	__u32 child_tgid = BPF_CORE_READ(child, tgid);
	__u16 flags = 0;

	// A new thread joins an existing group: nothing changes for the gate.
	if (child_pid != child_tgid)
		return 0;

	__u32 parent_tgid = BPF_CORE_READ(parent, tgid);

	// The child has not run yet (the tracepoint precedes wake_up_new_task),
	// so it can neither connect nor exec before it holds the binding.
	// A child of no session has its key deleted: a stale entry left by an
	// unrelated earlier process with the same tgid must not be inherited.
	//
	// The parent is the current task. Its session is its tgid binding, or
	// its cgroup's, which binds it by tgid now.
	struct task_struct___af *pt = (struct task_struct___af *)parent;
	struct task_struct___af *ct = (struct task_struct___af *)child;
	struct binding pb, cb;
	struct binding *m = member_binding(pt, parent_tgid);
	int member = 0, bound = 0;

	if (m) {
		pb = *m;
		member = 1;
	}

	if (BPF_CORE_READ(pt, cgroups) == BPF_CORE_READ(ct, cgroups)) {
		// The child is where the parent is (every fork but clone3
		// CLONE_INTO_CGROUP): it is in the parent's session.
		if (member) {
			cb = pb;
			bound = 1;
		}
	} else {
		// Forked into another cgroup. Into the session's own subtree, the
		// child is in the deepest session there (a child session, say),
		// as the gate finds it by cgroup; anywhere else it stays in the
		// parent's, and the attempt is reported.
		struct cgroup___af *cg = BPF_CORE_READ(ct, cgroups, dfl_cgrp);
		struct chain c = {};

		walk_cgroup(cg, member ? &pb : 0, &c);
		if (member && !c.has_member) {
			cb = pb;
			bound = 1;
			report_escape(&pb, AF_ESCAPE_CLONE_INTO_CGROUP, 0, 0, cgroup_id_of(cg), parent_tgid,
				      (__u32)bpf_get_current_pid_tgid(), 0, child_tgid, 0);
		} else if (c.found && c.deepest.slot != AF_HOLD_SLOT) {
			cb = c.deepest;
			bound = 1;
		}
	}
	if (bound) {
		// A member's child made in a network namespace of its own (clone
		// with CLONE_NEWNET) is reported now, before it runs. One that a
		// non-member started into a session that way (a container
		// runtime's clone3 with CLONE_INTO_CGROUP and CLONE_NEWNET, say)
		// is not: it never was anywhere else.
		__u32 ns = netns_of(ct);

		if (member && ns && pb.netns && ns != pb.netns)
			report_escape(&pb, AF_ESCAPE_NETNS, 0, 0, ns, child_tgid, child_tgid, ct, pb.netns, AF_NETNS_VIA_CLONE);
		cb.netns = ns;
		if (bpf_map_update_elem(&pid_sessions, &child_tgid, &cb, BPF_ANY) == 0)
			flags |= AF_FLAG_SESSION_INHERITED;
	} else {
		bpf_map_delete_elem(&pid_sessions, &child_tgid);
	}

	// Until it execs, the child runs the parent's image.
	struct exe_id *e = bpf_map_lookup_elem(&proc_exe, &parent_tgid);
	if (e) {
		struct exe_id copy = *e;

		if (bpf_map_update_elem(&proc_exe, &child_tgid, &copy, BPF_ANY) == 0)
			flags |= AF_FLAG_EXE_INHERITED;
	} else {
		bpf_map_delete_elem(&proc_exe, &child_tgid);
	}

	struct proc_fork_event *ev = bpf_ringbuf_reserve(&proc_events, sizeof(*ev), 0);
	if (!ev) {
		count_lost();
		return 0;
	}
	ev->hdr.type = AF_PROC_FORK;
	ev->hdr._pad0 = 0;
	ev->hdr.flags = flags;
	ev->hdr.tgid = child_tgid;
	ev->hdr.ktime = bpf_ktime_get_boot_ns();
	ev->parent_tgid = parent_tgid;
	ev->_pad1 = 0;
	ev->start_time = group_start(child);
	ev->parent_start_time = group_start(parent);
	bpf_ringbuf_submit(ev, wakeup_flags());
	return 0;
}

SEC("raw_tp/sched_process_exit")
int af_sched_exit(struct bpf_raw_tracepoint_args *ctx)
{
	struct task_struct *task = (struct task_struct *)ctx->args[0];

	// do_exit decrements signal->live before this tracepoint; zero means the
	// last thread of the group is leaving, whether or not it is the leader.
	if (BPF_CORE_READ(task, signal, live.counter) != 0)
		return 0;

	__u32 tgid = BPF_CORE_READ(task, tgid);

	// The tgid cannot be reused before release_task, which runs after this,
	// so deleting now cannot hit a newer process.
	bpf_map_delete_elem(&proc_exe, &tgid);
	bpf_map_delete_elem(&pid_sessions, &tgid);

	struct proc_exit_event *ev = bpf_ringbuf_reserve(&proc_events, sizeof(*ev), 0);
	if (!ev) {
		count_lost();
		return 0;
	}
	ev->hdr.type = AF_PROC_EXIT;
	ev->hdr._pad0 = 0;
	ev->hdr.flags = 0;
	ev->hdr.tgid = tgid;
	ev->hdr.ktime = bpf_ktime_get_boot_ns();
	ev->exit_code = BPF_CORE_READ(task, exit_code);
	ev->_pad1 = 0;
	ev->start_time = group_start(task);
	bpf_ringbuf_submit(ev, wakeup_flags());
	return 0;
}

// A task moved to another cgroup (a write to cgroup.procs or cgroup.threads,
// by itself or another process). The raw tracepoint fires after the move
// succeeded: (struct cgroup *dst_cgrp, const char *path, struct task_struct
// *task, bool threadgroup).
SEC("raw_tp/cgroup_attach_task")
int af_task_cgroup_attach(struct bpf_raw_tracepoint_args *ctx)
{
	struct cgroup___af *dst = (struct cgroup___af *)ctx->args[0];
	struct task_struct___af *task = (struct task_struct___af *)ctx->args[2];

	// Only the unified hierarchy counts: a v1 hierarchy's cgroup is not
	// the one the gate sees.
	if (BPF_CORE_READ(dst, root) != BPF_CORE_READ(task, cgroups, dfl_cgrp, root))
		return 0;

	__u32 tgid = BPF_CORE_READ(task, tgid);
	struct binding pb;
	struct binding *b = bpf_map_lookup_elem(&pid_sessions, &tgid);
	int member = 0;

	if (live(b)) {
		pb = *b;
		member = 1;
	}
	struct chain c = {};

	walk_cgroup(dst, member ? &pb : 0, &c);
	if (!member) {
		// Moved into a session (a container's init, say): a member by
		// tgid from now on, in the namespace it is in.
		if (c.found && c.deepest.slot != AF_HOLD_SLOT) {
			c.deepest.netns = netns_of(task);
			bpf_map_update_elem(&pid_sessions, &tgid, &c.deepest, BPF_ANY);
		}
		return 0;
	}
	if (c.has_member) {
		// Within its session's cgroup subtree: into a deeper session
		// (a child session) it is that session's member, as by cgroup.
		if (!same_session(&c.deepest, &pb)) {
			c.deepest.netns = pb.netns;
			bpf_map_update_elem(&pid_sessions, &tgid, &c.deepest, BPF_ANY);
		}
		return 0;
	}
	report_escape(&pb, AF_ESCAPE_CGROUP_MOVE, 0, 0, cgroup_id_of(dst), tgid, BPF_CORE_READ(task, pid), task,
		      bpf_get_current_pid_tgid() >> 32, 0);
	return 0;
}
