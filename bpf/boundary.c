//go:build ignore

// The session boundary where the gate's cgroup hooks do not reach: sockets
// of other families, moves to another network namespace, attaching to
// other processes, and sockets handed over from outside.
//
// The refusals run at LSM hooks, by the strongest layer the host has:
//
//   - lsm/...: BPF LSM programs, where the kernel runs the BPF LSM (it is
//     in the lsm= list);
//   - fmod_ret/security_...: the same checks as tracing programs that
//     modify the return of the kernel's security_* function for the hook.
//     The kernel allows that for security_* functions without the BPF LSM
//     (5.7+, BPF trampolines: x86-64, arm64 from 6.0), so most
//     distribution kernels, which build the BPF LSM but do not enable it,
//     refuse here too. A refusal returns before the other LSMs' checks;
//     a pass leaves them to run.
//
// Each check below has one body and an entry point per layer; the loader
// (enforcer/boundary.go) loads the programs of one layer.
//
// Sockets the gate's cgroup hooks never see. The cgroup programs judge inet
// sockets (connect, sendmsg, sock_create), but a packet socket (AF_PACKET),
// an AF_XDP socket, or one of the other families that reach a network
// (AF_VSOCK to the hypervisor, AF_CAN, AF_TIPC, AF_RDS, Bluetooth, ...) sends
// frames below every one of them. A session member may create sockets of
// the local families only: unix, netlink, and inet (which the gate judges).
// Every other family is handled here (docs/threat-model.md, route 6):
//
//   - at the socket_create hook, where one of the layers above runs: the
//     member's socket is refused (EPERM) before the family's code runs,
//     whichever way it was asked for (socket(2), socketcall, io_uring's
//     IORING_OP_SOCKET), and the refusal is recorded;
//   - raw_tp/sys_exit everywhere: the result of every socket syscall by a
//     member for such a family is recorded. A refusal (by the seccomp filter
//     `agentfence run` installs, which answers EAFNOSUPPORT, or for lack of
//     CAP_NET_RAW) counts as a violation like a gate denial. A socket that
//     was created (a bound member holding CAP_NET_RAW on a host where
//     neither layer runs) is drift: the session is quarantined at once, and
//     with the kill drift action the member is killed before the syscall
//     returns to it, so it never holds the descriptor.
//
// With a hook layer attached, the exit program records only the seccomp
// filter's refusals, which happen before the hook runs; the hook records
// the rest.
//
// The exit program also sees unshare(2) and setns(2) return: a member they
// left in another network namespace is reported as an escape (process.h),
// as the process programs report one that forks or execs into one. That
// costs nothing more per syscall than the number it already compares.
//
// The maps are the gate's (loaded with MapReplacements), so membership is
// exactly the gate's: the tgid binding first, else the cgroup's session.

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_tracing.h>

#include "common.h"
#include "gate.h"

char __license[] SEC("license") = "Dual MIT/GPL";

AF_SESSIONS_MAP;
AF_CGROUP_SESSIONS_MAP;
AF_PID_SESSIONS_MAP;
AF_GATE_EVENTS_MAP;
AF_GATE_STATS_MAP;

#include "member.h"

#define EPERM 1
#define EAFNOSUPPORT 97

// Written by the loader: a hook layer (lsm/ or fmod_ret/) is attached, so
// it records what it refuses and the exit program need not.
volatile const __u8 lsm_refuses = 0;

// Families a member may create: enum af_local_family is their list, which
// the seccomp filter of `agentfence run` (internal/privdrop) repeats; a test
// keeps the two in step.
enum af_local_family {
	AF_LOCAL_UNIX = AF_UNIX,
	AF_LOCAL_INET = AF_INET,
	AF_LOCAL_INET6 = AF_INET6,
	AF_LOCAL_NETLINK = AF_NETLINK,
};
const enum af_local_family *unused_local_family __attribute__((unused));

static __always_inline int local_family(__u64 family)
{
	return family == AF_LOCAL_UNIX || family == AF_LOCAL_INET || family == AF_LOCAL_INET6 ||
	       family == AF_LOCAL_NETLINK;
}

static __always_inline void count(__u32 stat)
{
	__u64 *v = bpf_map_lookup_elem(&gate_stats, &stat);
	if (v)
		*v += 1;
}

// member returns the session of the current task, as the gate finds it,
// without binding anything (that is the process programs' job).
static __always_inline struct session *member(struct binding *out)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct binding *b = bpf_map_lookup_elem(&pid_sessions, &tgid);
	struct session *s = live(b);

	if (s) {
		*out = *b;
		return s;
	}
	struct task_struct___af *task = (struct task_struct___af *)bpf_get_current_task();
	struct chain c = {};

	walk_cgroup(BPF_CORE_READ(task, cgroups, dfl_cgrp), 0, &c);
	if (!c.found)
		return 0;
	*out = c.deepest;
	return live(out);
}

static __always_inline void report(const struct binding *b, __u8 hook, __u8 verdict, __u8 quarantined_now,
				   __u32 family, __u32 type, __u32 protocol, long result)
{
	struct gate_event *e = bpf_ringbuf_reserve(&gate_events, sizeof(*e), 0);

	if (!e) {
		lost_event();
		return;
	}
	__builtin_memset(e, 0, sizeof(*e));
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u64 ugid = bpf_get_current_uid_gid();

	e->ts_ns = bpf_ktime_get_boot_ns();
	e->cgroup_id = bpf_get_current_cgroup_id();
	e->session_gen = b->gen;
	e->session_slot = b->slot;
	e->pid = pid_tgid >> 32;
	e->tid = (__u32)pid_tgid;
	e->uid = (__u32)ugid;
	e->gid = ugid >> 32;
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	e->rule = AF_RULE_NONE;
	e->hook = hook;
	e->verdict = verdict;
	e->reason = AF_REASON_SOCKET_FAMILY;
	e->quarantined_now = quarantined_now;
	e->sock_family = family;
	e->sock_type = type & 0xf; // without SOCK_NONBLOCK and SOCK_CLOEXEC
	e->port = protocol;
	e->name_hash = result;
	bpf_ringbuf_submit(e, BPF_RB_FORCE_WAKEUP);
}

// socket_create is the socket_create hook's check: 0, or -EPERM. hook
// names the layer in the report.
static __always_inline int socket_create(__u8 hook, int family, int type, int protocol, int kern)
{
	if (kern || local_family(family))
		return 0;
	struct binding b;
	struct session *s = member(&b);

	if (!s)
		return 0;
	__u8 quarantined_now = violation(s);

	if (s->mode == AF_MODE_AUDIT) {
		count(AF_STAT_WOULD_DENY);
		report(&b, hook, AF_VERDICT_WOULD_DENY, quarantined_now, family, type, protocol, 0);
		return 0;
	}
	count(AF_STAT_DENIED);
	report(&b, hook, AF_VERDICT_DENIED, quarantined_now, family, type, protocol, 0);
	return -EPERM;
}

SEC("lsm/socket_create")
int BPF_PROG(af_lsm_socket_create, int family, int type, int protocol, int kern)
{
	return socket_create(AF_HOOK_LSM_SOCKET, family, type, protocol, kern);
}

// An fmod_ret program gets the return value so far as its last argument
// and replaces it when it returns non-zero.
SEC("fmod_ret/security_socket_create")
int BPF_PROG(af_fmod_socket_create, int family, int type, int protocol, int kern, int ret)
{
	return ret ? ret : socket_create(AF_HOOK_FMOD_SOCKET, family, type, protocol, kern);
}

// The syscalls the exit program looks at, and their arguments at its exit,
// per architecture. raw_tp/sys_exit passes (struct pt_regs *regs, long ret).
enum syscall_kind {
	SC_OTHER,
	SC_SOCKET,  // socket(family, type, protocol)
	SC_UNSHARE, // unshare(flags)
	SC_SETNS,   // setns(fd, nstype): args[0] is nstype
};

#if defined(__TARGET_ARCH_x86)
#define NR_SOCKET 41
#define NR_UNSHARE 272
#define NR_SETNS 308
// 32-bit tasks (int 0x80, or a compat syscall) use the i386 numbers:
// socket(2) is 359, and socketcall(2) (102) with call 1 carries the
// arguments in user memory. 102 is getuid on x86_64 and 310 is
// process_vm_readv, so the i386 numbers count only for tasks marked
// TS_COMPAT.
#define NR_SOCKET_I386 359
#define NR_SOCKETCALL_I386 102
#define NR_UNSHARE_I386 310
#define NR_SETNS_I386 346
#define SYS_SOCKET 1
#define TS_COMPAT 0x0002

struct pt_regs___af {
	unsigned long bx;
	unsigned long cx;
	unsigned long dx;
	unsigned long si;
	unsigned long di;
	unsigned long orig_ax;
} __attribute__((preserve_access_index));

struct thread_info___af {
	__u32 status;
} __attribute__((preserve_access_index));

struct task_struct___ti {
	struct thread_info___af thread_info;
} __attribute__((preserve_access_index));

// syscall_of reads the call at regs, if it is one of enum syscall_kind.
static __always_inline int syscall_of(struct pt_regs___af *regs, __u32 args[3])
{
	switch (BPF_CORE_READ(regs, orig_ax)) {
	case NR_SOCKET:
		args[0] = BPF_CORE_READ(regs, di);
		args[1] = BPF_CORE_READ(regs, si);
		args[2] = BPF_CORE_READ(regs, dx);
		return SC_SOCKET;
	case NR_UNSHARE:
		args[0] = BPF_CORE_READ(regs, di);
		return SC_UNSHARE;
	case NR_SETNS:
		args[0] = BPF_CORE_READ(regs, si);
		return SC_SETNS;
	case NR_SOCKET_I386:
	case NR_SOCKETCALL_I386:
	case NR_UNSHARE_I386:
	case NR_SETNS_I386:
		break;
	default:
		return SC_OTHER;
	}
	struct task_struct___ti *t = (struct task_struct___ti *)bpf_get_current_task();
	if (!(BPF_CORE_READ(t, thread_info.status) & TS_COMPAT))
		return SC_OTHER;
	switch (BPF_CORE_READ(regs, orig_ax)) {
	case NR_SOCKET_I386:
		args[0] = BPF_CORE_READ(regs, bx);
		args[1] = BPF_CORE_READ(regs, cx);
		args[2] = BPF_CORE_READ(regs, dx);
		return SC_SOCKET;
	case NR_UNSHARE_I386:
		args[0] = BPF_CORE_READ(regs, bx);
		return SC_UNSHARE;
	case NR_SETNS_I386:
		args[0] = BPF_CORE_READ(regs, cx);
		return SC_SETNS;
	}
	if (BPF_CORE_READ(regs, bx) != SYS_SOCKET)
		return SC_OTHER;
	// The arguments are three 32-bit words at cx, still mapped at exit.
	if (bpf_probe_read_user(args, 3 * sizeof(__u32), (void *)BPF_CORE_READ(regs, cx)))
		return SC_OTHER;
	return SC_SOCKET;
}
#elif defined(__TARGET_ARCH_arm64)
#define NR_UNSHARE 97
#define NR_SETNS 268
#define NR_SOCKET 198

struct pt_regs___af {
	__u64 regs[31];
	__u64 orig_x0; // x0 holds the return value by now
	__s32 syscallno;
} __attribute__((preserve_access_index));

// 32-bit (AArch32) tasks are not looked at: their socket number is 281,
// which is execveat for 64-bit tasks. The BPF LSM covers their sockets;
// their namespace changes are seen at their next exec or fork.
static __always_inline int syscall_of(struct pt_regs___af *regs, __u32 args[3])
{
	switch (BPF_CORE_READ(regs, syscallno)) {
	case NR_SOCKET:
		args[0] = BPF_CORE_READ(regs, orig_x0);
		args[1] = BPF_CORE_READ(regs, regs[1]);
		args[2] = BPF_CORE_READ(regs, regs[2]);
		return SC_SOCKET;
	case NR_UNSHARE:
		args[0] = BPF_CORE_READ(regs, orig_x0);
		return SC_UNSHARE;
	case NR_SETNS:
		args[0] = BPF_CORE_READ(regs, regs[1]);
		return SC_SETNS;
	}
	return SC_OTHER;
}
#else
#error "boundary.c: unknown architecture"
#endif

#define CLONE_NEWNET 0x40000000

// netns_after reports a member that unshare or setns left in another
// network namespace than its binding names (AF_ESCAPE_NETNS), whether or
// not it execs next, and makes the new one its namespace. flags is the
// call's CLONE_* argument. With the namespace it was in not known (a
// member by cgroup not yet bound by tgid), a call that asked for a new
// network namespace and succeeded moved it.
static __always_inline void netns_after(int sc, __u32 flags, long ret)
{
	if (ret != 0)
		return;
	struct binding b;

	if (!member(&b))
		return;
	__u32 ns = netns_of((struct task_struct___af *)bpf_get_current_task());

	if (!ns || ns == b.netns || (!b.netns && !(flags & CLONE_NEWNET)))
		return;
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 tgid = pid_tgid >> 32;
	struct binding *tb = bpf_map_lookup_elem(&pid_sessions, &tgid);

	if (tb && same_session(tb, &b))
		tb->netns = ns;
	report_escape(&b, AF_ESCAPE_NETNS, 0, 0, ns, tgid, (__u32)pid_tgid, 0, b.netns,
		      sc == SC_UNSHARE ? AF_NETNS_VIA_UNSHARE : AF_NETNS_VIA_SETNS);
}

// Another process's memory, registers or descriptors: ptrace attach,
// process_vm_readv and _writev, /proc/PID/mem, pidfd_getfd all ask the
// kernel for PTRACE_MODE_ATTACH over the target. A member that held it
// over a process outside its session could make that process connect,
// send or hand over a socket for it, unjudged (route 17), so a member may
// attach only to members of its own session. The kernel's own checks
// (same uid, no capability the member lacks, Yama) come first; this
// narrows what they allow.
//
// In a session that launches MCP servers, a member may attach to nothing:
// a server's process is a fellow member from its exec until the daemon
// judges and binds it, and one attached in that window could be made to
// run the agent's code under the server's scope (route 25). For the same
// reason it may not ask to be traced (PTRACE_TRACEME, which makes its
// parent the tracer of whatever it execs next).
//
// Where neither hook layer runs, nothing here sees these: a tracing
// program has no way from a pid argument (a thread's, in the caller's pid
// namespace) to the task before Linux 6.2, and a wrong guess would apply
// the drift action to a debugger attaching to its own child's threads.
#define PTRACE_MODE_ATTACH 0x02

// same_member reports whether task (by its tgid binding, which the process
// programs write for every member at its first fork or exec, or else its
// cgroup) is in session b.
static __always_inline int same_member(struct task_struct___af *task, const struct binding *b)
{
	__u32 tgid = BPF_CORE_READ(task, tgid);
	struct binding *tb = bpf_map_lookup_elem(&pid_sessions, &tgid);

	if (live(tb))
		return same_session(tb, b);
	struct chain c = {};

	walk_cgroup(BPF_CORE_READ(task, cgroups, dfl_cgrp), 0, &c);
	return c.found && same_session(&c.deepest, b);
}

// refuse counts and reports the escape kind of b's session s (how in the
// event's protocol field, other in its name_hash) and returns the hook's
// answer: -EPERM, or 0 in audit mode. With e, the caller gets the event to
// complete and submit (0 when there is none to fill).
static __always_inline int refuse(struct session *s, const struct binding *b, __u8 kind, __u8 how, __u32 other,
				  struct gate_event **e)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u8 audit = s->mode == AF_MODE_AUDIT;

	count(audit ? AF_STAT_WOULD_DENY : AF_STAT_DENIED);
	struct gate_event *ev = escape_event(b, kind, audit ? AF_VERDICT_WOULD_DENY : AF_VERDICT_DENIED, 0, 0,
					     pid_tgid >> 32, (__u32)pid_tgid, 0, other, how);
	if (e)
		*e = ev;
	else if (ev)
		bpf_ringbuf_submit(ev, BPF_RB_FORCE_WAKEUP);
	return audit ? 0 : -EPERM;
}

// ptrace_access_check is the ptrace_access_check hook's check.
static __always_inline int ptrace_access_check(struct task_struct___af *child, unsigned int mode)
{
	if (!(mode & PTRACE_MODE_ATTACH))
		return 0;
	struct binding b;
	struct session *s = member(&b);

	if (!s)
		return 0;
	__u8 how = AF_PTRACE_SERVERS_SESSION;

	if (!(s->flags & AF_SESSION_LAUNCHES_SERVERS)) {
		if (same_member(child, &b))
			return 0;
		how = AF_PTRACE_OUTSIDE_SESSION;
	}
	return refuse(s, &b, AF_ESCAPE_PTRACE, how, BPF_CORE_READ(child, tgid), 0);
}

// ptrace_traceme is the ptrace_traceme hook's check: current asks its
// parent to trace it.
static __always_inline int ptrace_traceme(struct task_struct___af *parent)
{
	struct binding b;
	struct session *s = member(&b);

	if (!s || !(s->flags & AF_SESSION_LAUNCHES_SERVERS))
		return 0;
	return refuse(s, &b, AF_ESCAPE_PTRACE, AF_PTRACE_TRACEME, BPF_CORE_READ(parent, tgid), 0);
}

// A socket descriptor received from another process (SCM_RIGHTS over a
// unix socket, pidfd_getfd, binder) keeps whatever its connect was allowed.
// In a session that launches MCP servers the server holds a scope the
// agent must not borrow, so there a member may receive no inet socket
// (route 30). Other sockets (unix, netlink) and other files pass. The
// report carries the socket's protocol (TCP for a stream socket, UDP for
// a datagram one, else 0) and peer (family, addr, port: zero for one not
// connected).
#define S_IFMT 00170000
#define S_IFSOCK 0140000

#pragma clang attribute push(__attribute__((preserve_access_index)), apply_to = record)

struct inode___af {
	__u16 i_mode;
};

struct in6_addr___af {
	__u8 b[16];
};

struct sock_common___af {
	__u16 skc_family;
	__u32 skc_daddr;
	__be16 skc_dport;
	struct in6_addr___af skc_v6_daddr;
};

struct sock___af {
	struct sock_common___af __sk_common;
};

struct socket___af {
	short type; // SOCK_STREAM, SOCK_DGRAM, ...
	struct sock___af *sk;
};

struct file___af {
	struct inode___af *f_inode;
	void *private_data; // a socket file's struct socket
};

#pragma clang attribute pop

static __always_inline int file_receive(struct file___af *file)
{
	if ((BPF_CORE_READ(file, f_inode, i_mode) & S_IFMT) != S_IFSOCK)
		return 0;
	struct socket___af *sock = BPF_CORE_READ(file, private_data);
	struct sock___af *sk = BPF_CORE_READ(sock, sk);
	__u16 family = BPF_CORE_READ(sk, __sk_common.skc_family);

	if (family != AF_INET && family != AF_INET6)
		return 0;
	struct binding b;
	struct session *s = member(&b);

	if (!s || !(s->flags & AF_SESSION_LAUNCHES_SERVERS))
		return 0;
	struct gate_event *e;
	int ret = refuse(s, &b, AF_ESCAPE_SOCKET_RECEIVE, 0, 0, &e);

	if (!e)
		return ret;
	// The peer, so the record says where the socket led.
	short type = BPF_CORE_READ(sock, type);

	e->protocol = type == SOCK_STREAM ? IPPROTO_TCP : type == SOCK_DGRAM ? IPPROTO_UDP : 0;
	e->port = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	if (family == AF_INET) {
		e->family = 4;
		__u32 daddr = BPF_CORE_READ(sk, __sk_common.skc_daddr);
		__builtin_memcpy(e->addr, &daddr, 4);
	} else {
		e->family = 6;
		BPF_CORE_READ_INTO(&e->addr, sk, __sk_common.skc_v6_daddr);
	}
	bpf_ringbuf_submit(e, BPF_RB_FORCE_WAKEUP);
	return ret;
}

SEC("lsm/ptrace_access_check")
int BPF_PROG(af_lsm_ptrace, struct task_struct *child, unsigned int mode)
{
	return ptrace_access_check((struct task_struct___af *)child, mode);
}

SEC("lsm/ptrace_traceme")
int BPF_PROG(af_lsm_traceme, struct task_struct *parent)
{
	return ptrace_traceme((struct task_struct___af *)parent);
}

SEC("lsm/file_receive")
int BPF_PROG(af_lsm_file_receive, struct file *file)
{
	return file_receive((struct file___af *)file);
}

SEC("fmod_ret/security_ptrace_access_check")
int BPF_PROG(af_fmod_ptrace, struct task_struct *child, unsigned int mode, int ret)
{
	return ret ? ret : ptrace_access_check((struct task_struct___af *)child, mode);
}

SEC("fmod_ret/security_ptrace_traceme")
int BPF_PROG(af_fmod_traceme, struct task_struct *parent, int ret)
{
	return ret ? ret : ptrace_traceme((struct task_struct___af *)parent);
}

SEC("fmod_ret/security_file_receive")
int BPF_PROG(af_fmod_file_receive, struct file *file, int ret)
{
	return ret ? ret : file_receive((struct file___af *)file);
}

SEC("raw_tp/sys_exit")
int af_sys_exit(struct bpf_raw_tracepoint_args *ctx)
{
	__u32 args[3];
	int sc = syscall_of((struct pt_regs___af *)ctx->args[0], args);
	long ret = ctx->args[1];

	if (sc == SC_UNSHARE || sc == SC_SETNS) {
		netns_after(sc, args[0], ret);
		return 0;
	}
	if (sc != SC_SOCKET || local_family(args[0]))
		return 0;

	if (lsm_refuses && ret != -EAFNOSUPPORT)
		return 0;
	struct binding b;
	struct session *s = member(&b);

	if (!s)
		return 0;
	if (ret < 0) {
		count(AF_STAT_DENIED);
		report(&b, AF_HOOK_SYS_SOCKET, AF_VERDICT_DENIED, violation(s), args[0], args[1], args[2], ret);
		return 0;
	}
	// A socket no hook judges is in the member's hands: the session's drift
	// action applies now, whatever is left of its budget.
	report(&b, AF_HOOK_SYS_SOCKET, 0, drift(s), args[0], args[1], args[2], ret);
	return 0;
}
