//go:build ignore

// The processes bound to sessions by pid, found by walking the host's tasks
// and looking each thread-group leader up in pid_sessions. Walking the pid
// table itself costs its capacity (65,536 buckets, ~4 ms even in batches)
// whatever it holds; this costs the number of tasks. The enforcer reads the
// records when a session's members are listed (revoke, expiry, reaping).

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "core.h"
#include "common.h"

char __license[] SEC("license") = "Dual MIT/GPL";

AF_PID_SESSIONS_MAP;

// bound_task is one record; the layout is shared with members.go.
struct bound_task {
	__u32 tgid;
	__u32 slot;
	__u64 gen;
};

// Referenced so that the type is in BTF, for bpf2go.
const struct bound_task *unused_bound_task __attribute__((unused));

SEC("iter/task")
int bound_tasks(struct bpf_iter__task *ctx)
{
	struct task_struct *task = ctx->task;
	if (!task || task->pid != task->tgid)
		return 0;
	__u32 tgid = task->tgid;
	struct binding *b = bpf_map_lookup_elem(&pid_sessions, &tgid);
	if (!b)
		return 0;
	struct bound_task rec = {.tgid = tgid, .slot = b->slot, .gen = b->gen};
	bpf_seq_write(ctx->meta->seq, &rec, sizeof(rec));
	return 0;
}
