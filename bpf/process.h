// Events emitted by process.c on the proc_events ring buffer. Go gets these
// layouts through bpf2go -type; keep every field naturally aligned and pad
// explicitly so the C and Go views cannot drift.
#pragma once

#define AF_FILENAME_MAX 256
// Total argv bytes per exec. 1024 covers the interesting part of nearly every
// agent command line while keeping an exec record near 1.6 KiB.
#define AF_ARGV_MAX 1024

enum af_proc_event_type {
	AF_PROC_EXEC = 1,
	AF_PROC_FORK = 2,
	AF_PROC_EXIT = 3,
};

enum af_proc_flags {
	AF_FLAG_ARGV_TRUNCATED = 1 << 0, // argv longer than AF_ARGV_MAX
	AF_FLAG_ARGV_FAULT = 1 << 1, // argv pages not readable at exec
	AF_FLAG_SESSION_INHERITED = 1 << 2, // the child was bound to a session at fork (its parent's, or its cgroup's)
	AF_FLAG_EXE_INHERITED = 1 << 3, // fork copied a proc_exe entry
};

// Common prefix of every event; type selects the full layout.
struct proc_event_hdr {
	__u8 type;
	__u8 _pad0;
	__u16 flags;
	__u32 tgid;
	__u64 ktime; // bpf_ktime_get_boot_ns() when the event was produced
};

struct proc_exec_event {
	struct proc_event_hdr hdr;
	__u32 pid; // tid that called execve (differs from tgid when a thread execs)
	__u32 ppid; // real_parent->tgid
	__u32 uid;
	__u32 gid;
	__u64 cgroup_id;
	__u64 start_time; // group leader start_boottime: with tgid, the process key
	struct exe_id exe;
	__u16 filename_len;
	__u16 interp_len;
	__u16 argv_len;
	__u16 _pad1;
	char filename[AF_FILENAME_MAX];
	char interp[AF_FILENAME_MAX];
	char argv[AF_ARGV_MAX];
};

struct proc_fork_event {
	struct proc_event_hdr hdr; // hdr.tgid is the child
	__u32 parent_tgid;
	__u32 _pad1;
	__u64 start_time; // child
	__u64 parent_start_time;
};

struct proc_exit_event {
	struct proc_event_hdr hdr;
	__u32 exit_code; // wait(2) status encoding: code << 8 | signal
	__u32 _pad1;
	__u64 start_time;
};

// Attempts to leave a session. The process programs keep membership per
// process (pid_sessions), so a member that changes its cgroup stays in its
// session; the attempt is reported on the gate's event ring (gate_events,
// shared with the gate) in the gate's event layout, so that it becomes an
// audit record and counts against the session's violation budget exactly
// like a denial. Such an event has hook AF_HOOK_ESCAPE and:
//   reason     enum af_escape_kind: what was tried
//   cgroup_id  the cgroup the member was moved or cloned into
//   pid, tid   the member (for a clone into a cgroup, the process that
//              called clone3; for a fork into a new network namespace,
//              the new process)
//   uid, gid, comm  the member's
//   name_hash  the other process: for a move, the tgid of the process that
//              wrote cgroup.procs; for a clone, the new process. For a
//              network namespace change, the namespace it was in before
//              (0: not known)
//   (cgroup_id holds, for a network namespace change, the new namespace's
//   inode number, and protocol enum af_netns_via)
//   verdict    0: the kernel saw the attempt, it did not decide it; for
//              AF_ESCAPE_PTRACE and AF_ESCAPE_SOCKET_RECEIVE the decision
//              of the program at the LSM hook (boundary.c)
//   rule       AF_RULE_NONE; family, port, addr zero, and protocol but
//              for a network namespace change
// Hooks 32-47 are reserved for events the process programs write (see
// common.h).
enum af_proc_hook {
	AF_HOOK_ESCAPE = 32,
};

enum af_escape_kind {
	AF_ESCAPE_CGROUP_MOVE = 1,       // written into another cgroup's cgroup.procs or cgroup.threads
	AF_ESCAPE_CLONE_INTO_CGROUP = 2, // forked into another cgroup (clone3 CLONE_INTO_CGROUP)
	// Moved to another network namespace than the one it was last seen in:
	// how is enum af_netns_via. It stays a member either way.
	AF_ESCAPE_NETNS = 3,
	// Asked for another process with PTRACE_MODE_ATTACH (ptrace attach,
	// process_vm_*, /proc/PID/mem, pidfd_getfd), or to be traced: refused
	// at the LSM hook (verdict denied, or would_deny in audit mode). The
	// event's name_hash is the other process's tgid, its protocol enum
	// af_ptrace_how.
	AF_ESCAPE_PTRACE = 4,
	// Received an inet socket (SCM_RIGHTS, pidfd_getfd) in a session that
	// launches MCP servers: refused by the program at the file_receive
	// hook. The event's family, addr and port are the socket's peer, its
	// protocol the socket's (IPPROTO_TCP, IPPROTO_UDP, or 0).
	AF_ESCAPE_SOCKET_RECEIVE = 5,
};

// Which ptrace request an AF_ESCAPE_PTRACE event refused (its protocol
// field), and why.
enum af_ptrace_how {
	AF_PTRACE_OUTSIDE_SESSION = 0, // attach to a process outside the session
	AF_PTRACE_SERVERS_SESSION = 1, // attach, in a session that launches MCP servers
	AF_PTRACE_TRACEME = 2,         // PTRACE_TRACEME, in such a session: name_hash is the parent
};

// How a member came to another network namespace (an AF_ESCAPE_NETNS
// event's protocol field). Each is seen when it happens, so a change is
// reported once whether or not an exec follows; the exec check stays for
// what the others cannot see (a thread's own change, say, or a host where
// the syscall exit program is not attached).
enum af_netns_via {
	AF_NETNS_VIA_EXEC = 0,    // exec'd in it (sched_process_exec)
	AF_NETNS_VIA_CLONE = 1,   // forked into a new one: clone CLONE_NEWNET (sched_process_fork)
	AF_NETNS_VIA_UNSHARE = 2, // unshare(2) returned in a new one (sys_exit)
	AF_NETNS_VIA_SETNS = 3,   // setns(2) returned in another one (sys_exit)
};
