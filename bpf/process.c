//go:build ignore

// Process identity: exec, fork and exit of every thread group, feeding the
// userspace process cache and keeping the maps the egress gate reads
// (proc_exe, pid_sessions) in step with the process tree.
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
#include "process.h"

char __license[] SEC("license") = "Dual MIT/GPL";

_Static_assert((AF_ARGV_MAX & (AF_ARGV_MAX - 1)) == 0, "AF_ARGV_MAX must be a power of two");

AF_PID_SESSIONS_MAP;
AF_PROC_EXE_MAP;

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

SEC("raw_tp/sched_process_exec")
int af_sched_exec(struct bpf_raw_tracepoint_args *ctx)
{
	struct task_struct *task = (struct task_struct *)ctx->args[0];
	struct linux_binprm *bprm = (struct linux_binprm *)ctx->args[2];
	struct exe_id exe = {};
	struct file *f;
	__u32 tgid = BPF_CORE_READ(task, tgid);

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

	bpf_ringbuf_submit(ev, wakeup_flags());
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
	// Missing parent entries delete the child's key: a stale entry left by
	// an unrelated earlier process with the same tgid must not be inherited.
	struct binding *b = bpf_map_lookup_elem(&pid_sessions, &parent_tgid);
	if (b) {
		struct binding copy = *b;

		if (bpf_map_update_elem(&pid_sessions, &child_tgid, &copy, BPF_ANY) == 0)
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
