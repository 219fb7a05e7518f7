// Shared by every agentfence BPF program: the layouts of the maps that more
// than one object uses. Go sees these through bpf2go -type; a test checks the
// sizes so a mismatch fails the build instead of an enforcement decision.
#pragma once

#define AF_MAX_SESSIONS 16384

// Socket constants, written out: the libc and uapi headers that define them
// do not build for the BPF target.
#define AF_UNIX 1
#define AF_INET 2
#define AF_INET6 10
#define AF_NETLINK 16
#define SOCK_STREAM 1
#define SOCK_DGRAM 2
#define IPPROTO_TCP 6
#define IPPROTO_UDP 17

// A binding names a session slot and the generation that slot had when the
// binding was made; a binding whose generation no longer matches the slot is
// stale and ignored.
struct binding {
	__u32 slot;
	// The network namespace (inode number) the member was last seen in, by
	// the process programs at fork and exec, the syscall exit program at
	// unshare and setns, and userspace when it binds a pid; 0 when not
	// known. The gate ignores it: a change is reported, never judged.
	__u32 netns;
	__u64 gen;
};

// The binding of the hold (podhold.c): a Kubernetes pod's cgroup bound to it
// is denied everything until the daemon classifies the pod. Slot 0 is never
// a session's (the registry hands out 1 and up); the daemon writes it as a
// session with no scope. Its members are judged by cgroup only, never bound
// by tgid (process.c): binding or releasing the pod's cgroup then takes
// every process of the pod with it, those that started held included.
enum af_hold {
	AF_HOLD_SLOT = 0,
	AF_HOLD_GEN = 1,
};

// Identity of an executable captured at exec time. dev is the kernel's
// internal encoding (major << 20 | minor).
struct exe_id {
	__u64 ino;
	__u32 dev;
	__u32 _pad;
};

// Map shapes shared between objects. The enforcer owns the maps; other
// objects declare the same shape and are loaded with MapReplacements.
#define AF_PID_SESSIONS_MAP                                   \
	struct {                                              \
		__uint(type, BPF_MAP_TYPE_HASH);              \
		__uint(max_entries, 65536);                   \
		__type(key, __u32); /* tgid */                \
		__type(value, struct binding);                \
	} pid_sessions SEC(".maps")

#define AF_PROC_EXE_MAP                                       \
	struct {                                              \
		__uint(type, BPF_MAP_TYPE_HASH);              \
		__uint(max_entries, 65536);                   \
		__type(key, __u32); /* tgid */                \
		__type(value, struct exe_id);                 \
	} proc_exe SEC(".maps")

// The gate's cgroup id -> session map, which the process programs read to
// bind a cgroup member by tgid.
#define AF_CGROUP_SESSIONS_MAP                                \
	struct {                                              \
		__uint(type, BPF_MAP_TYPE_HASH);              \
		__uint(max_entries, AF_MAX_SESSIONS);         \
		__type(key, __u64); /* cgroup id */           \
		__type(value, struct binding);                \
	} cgroup_sessions SEC(".maps")

// The gate's event ring and its per-CPU counters; the process programs
// write escape events to the same ring. 1 MiB is ~7,700 decisions (136
// bytes with the ring's header): 385 ms of the 20,000 records a second the
// pipeline must take without loss, against a 50 ms poll and a wakeup at a
// quarter full (gate.c). The reader maps a ring's data twice, so each MiB
// here is 2 MiB of the daemon's RSS (docs/benchmarks.md, issue 15).
#define AF_GATE_EVENTS_MAP                                    \
	struct {                                              \
		__uint(type, BPF_MAP_TYPE_RINGBUF);           \
		__uint(max_entries, 1 << 20);                 \
	} gate_events SEC(".maps")

#define AF_GATE_STATS_MAP                                     \
	struct {                                              \
		__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);      \
		__uint(max_entries, AF_STAT_MAX);             \
		__type(key, __u32);                           \
		__type(value, __u64);                         \
	} gate_stats SEC(".maps")

// Hooks (gate_event.hook) 32-47 are the process programs': events they write
// to the gate's ring (process.h, AF_HOOK_ESCAPE). The gate's and hostname
// programs' hooks stay below 32.
