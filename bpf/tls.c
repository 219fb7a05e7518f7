//go:build ignore

// The plaintext of session members' TLS connections, at the TLS library's
// API: uprobes on OpenSSL's SSL_write, SSL_read, their _ex variants (which
// Python 3.10+ calls instead) and SSL_free, in libssl or in an executable
// that carries its own OpenSSL (node). User space (sensor/tlsprobe) parses
// the HTTP calls out of it (httpwire).
//
// Only members, and processes outside sessions that run an executable the
// config names (tls.processes, in tls_watch by identity), are looked at:
// the entry probe finds the caller's session as the gate would (member.h),
// else its executable in tls_watch, and does nothing for anyone else, so
// another process pays the uprobe's trap and two or three map lookups. The
// probes are attached only while sessions exist or the config names
// executables.
//
// A connection is named by its SSL object (the pointer, within the
// process). The socket under it is learned from the system calls the
// library makes while inside SSL_write or SSL_read: raw_tp/sys_enter sees
// the descriptor of the first read or write a thread makes during a probed
// call, and the socket behind it (peer address, cookie) is read from the
// task's file table. A library that does its own I/O elsewhere (node's
// memory BIOs) never shows one: its calls carry no socket, and user space
// says so.
//
// Go's crypto/tls is probed too, differently (tls_go.h): entry probes on
// (*tls.Conn).Write, Read and Close and probes at Read's RET instructions
// (Go cannot take return probes), the socket read from the *tls.Conn.

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

#include "core.h"
#include "common.h"
#include "gate.h"
#include "sock.h"

char __license[] SEC("license") = "Dual MIT/GPL";

AF_SESSIONS_MAP;
AF_CGROUP_SESSIONS_MAP;
AF_PID_SESSIONS_MAP;
AF_GATE_EVENTS_MAP;
AF_GATE_STATS_MAP;
AF_PROC_EXE_MAP;

#include "member.h"

// The executables, by identity, whose processes outside sessions are
// probed too (tls.processes). Their events carry this binding, which no
// session has (slots and generations start at 1; the hold is slot 0,
// generation 1).
#define AF_TLS_WATCH_MAX 64

enum af_tls_watched {
	AF_TLS_WATCHED_SLOT = 0,
	AF_TLS_WATCHED_GEN = 0,
	AF_TLS_WATCHED_MAX = AF_TLS_WATCH_MAX,
};
const enum af_tls_watched *unused_tls_watched __attribute__((unused));

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, AF_TLS_WATCHED_MAX);
	__type(key, struct exe_id);
	__type(value, __u8);
} tls_watch SEC(".maps");

// A call's event carries at most AF_TLS_DATA - 1 bytes of its plaintext:
// enough for the header block of nearly every request and response; the
// bytes past it are counted, not copied (httpwire skips body bytes by
// count). A power of two, for the mask that bounds the copy.
#define AF_TLS_DATA 8192

enum af_tls_op {
	AF_TLS_WRITE = 1,
	AF_TLS_READ = 2,
	AF_TLS_FREE = 3, // SSL_free: the connection's end; no data
	// A flag on the op: the call was Go's crypto/tls (tls_go.h), whose
	// connection is a *tls.Conn rather than an SSL object.
	AF_TLS_GO = 0x80,
};

// tls_event is one call, as user space gets it.
struct tls_event {
	__u64 ts_ns; // boot clock, at the call's return
	__u64 ssl;   // the SSL object (Go: the *tls.Conn): the connection, within the process
	__u64 cookie; // the socket's cookie; 0 when none was ever made
	__u64 session_gen;
	__u32 session_slot;
	__u32 pid;
	__u32 tid;
	__u32 size;     // bytes the call moved
	__u32 captured; // bytes of them in data
	__s32 fd;       // -1: no socket seen yet for this connection
	__u8 op;        // enum af_tls_op, AF_TLS_GO set for Go's crypto/tls
	__u8 family;    // AF_INET, AF_INET6, or 0 when fd is -1
	__be16 dport;
	__u8 daddr[16]; // IPv4: the first four bytes
	char comm[16];
	__u8 data[AF_TLS_DATA];
};

const struct tls_event *unused_tls_event __attribute__((unused));
const enum af_tls_op *unused_tls_op __attribute__((unused));

// A probed call in flight, by thread: what the return probe needs.
struct tls_call {
	__u64 ssl;
	__u64 buf;
	__u64 done_ptr; // _ex variants: where the library writes the byte count
	struct binding member;
	__u8 op;
};

// The socket a connection was seen on.
struct tls_sock {
	__u64 cookie;
	__s32 fd;
	__u8 family;
	__u8 pad;
	__be16 dport;
	__u8 daddr[16];
};

struct tls_conn_key {
	__u64 ssl;
	__u32 tgid;
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64); // pid_tgid
	__type(value, struct tls_call);
} tls_calls SEC(".maps");

// LRU: a connection whose SSL_free was never seen (a process killed
// mid-connection) ages out rather than filling the map.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct tls_conn_key);
	__type(value, struct tls_sock);
} tls_socks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 23);
} tls_events SEC(".maps");

// Events that found the ring full.
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} tls_lost SEC(".maps");

// An event is built here (it is larger than the BPF stack) and copied to
// the ring at its real length.
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct tls_event);
} tls_scratch SEC(".maps");

#include "uregs.h"

// session_of returns the current task's binding, as the gate would find
// its session, or a zero binding (slot 0) for a process outside sessions
// whose executable is in tls_watch; 0 for anyone else.
static __always_inline int session_of(struct binding *out)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct binding *b = bpf_map_lookup_elem(&pid_sessions, &tgid);

	if (live(b)) {
		*out = *b;
		return 1;
	}
	struct task_struct___af *task = (struct task_struct___af *)bpf_get_current_task();
	struct chain c = {};

	walk_cgroup(BPF_CORE_READ(task, cgroups, dfl_cgrp), 0, &c);
	if (c.found) {
		*out = c.deepest;
		if (live(out))
			return 1;
	}
	// proc_exe has what the process runs since its exec (or its fork).
	struct exe_id *exe = bpf_map_lookup_elem(&proc_exe, &tgid);
	if (!exe || !bpf_map_lookup_elem(&tls_watch, exe))
		return 0;
	__builtin_memset(out, 0, sizeof(*out)); // AF_TLS_WATCHED_SLOT, _GEN
	return 1;
}

static __always_inline void enter(struct uregs *ctx, __u8 op, int ex)
{
	struct tls_call c = {};

	if (!session_of(&c.member))
		return;
	c.ssl = ARG1(ctx);
	c.buf = ARG2(ctx);
	c.done_ptr = ex ? ARG4(ctx) : 0;
	c.op = op;
	__u64 id = bpf_get_current_pid_tgid();
	bpf_map_update_elem(&tls_calls, &id, &c, BPF_ANY);
}

static __always_inline void lost(void)
{
	__u32 zero = 0;
	__u64 *n = bpf_map_lookup_elem(&tls_lost, &zero);

	if (n)
		*n += 1;
}

// Waking the reader for each event cost the daemon a context switch and
// more per call (BenchmarkHTTPRecords: ~300 µs of daemon CPU a call at
// 1,000 calls/s, mostly waking up). Events wait for the reader's poll
// interval instead, and a wakeup is forced only once a batch has built up,
// as the process ring does.
#define AF_TLS_WAKEUP_BYTES (256 << 10)

static __always_inline __u64 wakeup_flags(void)
{
	if (bpf_ringbuf_query(&tls_events, BPF_RB_AVAIL_DATA) >= AF_TLS_WAKEUP_BYTES)
		return BPF_RB_FORCE_WAKEUP;
	return BPF_RB_NO_WAKEUP;
}

static __always_inline void emit(struct tls_call *c, __u64 id, __u32 size)
{
	__u32 zero = 0;
	struct tls_event *e = bpf_map_lookup_elem(&tls_scratch, &zero);

	if (!e)
		return;
	e->ts_ns = bpf_ktime_get_boot_ns();
	e->ssl = c->ssl;
	e->session_gen = c->member.gen;
	e->session_slot = c->member.slot;
	e->pid = id >> 32;
	e->tid = (__u32)id;
	e->op = c->op;
	e->size = size;
	bpf_get_current_comm(e->comm, sizeof(e->comm));

	struct tls_conn_key k = {.ssl = c->ssl, .tgid = id >> 32};
	struct tls_sock *s = bpf_map_lookup_elem(&tls_socks, &k);
	if (s) {
		e->cookie = s->cookie;
		e->fd = s->fd;
		e->family = s->family;
		e->dport = s->dport;
		__builtin_memcpy(e->daddr, s->daddr, sizeof(e->daddr));
	} else {
		e->cookie = 0;
		e->fd = -1;
		e->family = 0;
		e->dport = 0;
		__builtin_memset(e->daddr, 0, sizeof(e->daddr));
	}
	if ((c->op & ~AF_TLS_GO) == AF_TLS_FREE)
		bpf_map_delete_elem(&tls_socks, &k);

	__u64 n = size < AF_TLS_DATA ? size : AF_TLS_DATA - 1;
	// The mask, in assembly so that clang keeps it, is what bounds n for
	// the verifier: clang would hand the helper the unclamped copy of
	// size. So a call's first 8 KiB less one byte are captured.
	asm volatile("%[n] &= %[mask]" : [n] "+r"(n) : [mask] "i"(AF_TLS_DATA - 1));
	if (n && bpf_probe_read_user(e->data, n, (void *)c->buf))
		n = 0; // the buffer went away: the size still counts
	e->captured = n;
	if (bpf_ringbuf_output(&tls_events, e, __builtin_offsetof(struct tls_event, data) + n, wakeup_flags()))
		lost();
}

static __always_inline void leave(struct uregs *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct tls_call *c = bpf_map_lookup_elem(&tls_calls, &id);

	if (!c)
		return;
	// All four return an int: the upper half of the register is not
	// theirs.
	int ret = (int)RET(ctx);
	__u64 size = 0;

	if (c->done_ptr) {
		// SSL_read_ex and SSL_write_ex return 1 on success and write the
		// count through their fourth argument.
		if (ret == 1)
			bpf_probe_read_user(&size, sizeof(size), (void *)c->done_ptr);
	} else if (ret > 0) {
		size = ret;
	}
	if (size > 0 && size <= 0xffffffff)
		emit(c, id, size);
	bpf_map_delete_elem(&tls_calls, &id);
}

SEC("uprobe/SSL_write")
int af_ssl_write(struct uregs *ctx)
{
	enter(ctx, AF_TLS_WRITE, 0);
	return 0;
}

SEC("uprobe/SSL_write_ex")
int af_ssl_write_ex(struct uregs *ctx)
{
	enter(ctx, AF_TLS_WRITE, 1);
	return 0;
}

SEC("uprobe/SSL_read")
int af_ssl_read(struct uregs *ctx)
{
	enter(ctx, AF_TLS_READ, 0);
	return 0;
}

SEC("uprobe/SSL_read_ex")
int af_ssl_read_ex(struct uregs *ctx)
{
	enter(ctx, AF_TLS_READ, 1);
	return 0;
}

// One return probe serves all four: the call in flight says which it was.
SEC("uretprobe/SSL_rw")
int af_ssl_return(struct uregs *ctx)
{
	leave(ctx);
	return 0;
}

// SSL_free ends the connection: the pointer may name another one next.
SEC("uprobe/SSL_free")
int af_ssl_free(struct uregs *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct tls_conn_key k = {.ssl = ARG1(ctx), .tgid = id >> 32};
	struct tls_call c = {.ssl = ARG1(ctx), .op = AF_TLS_FREE};

	// A connection with no socket seen may still have had calls (node's),
	// so a member's end is reported either way.
	if (!session_of(&c.member) && !bpf_map_lookup_elem(&tls_socks, &k))
		return 0;
	emit(&c, id, 0);
	return 0;
}

#define S_IFMT 00170000
#define S_IFSOCK 0140000

// learn records the socket behind fd as the connection's.
static __always_inline void learn(struct tls_call *c, __u64 id, int fd)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct fdtable *fdt = BPF_CORE_READ(task, files, fdt);

	if (!fdt || fd < 0 || (unsigned int)fd >= BPF_CORE_READ(fdt, max_fds))
		return;
	struct file **fds = BPF_CORE_READ(fdt, fd);
	struct file *f = 0;

	if (bpf_probe_read_kernel(&f, sizeof(f), &fds[fd]) || !f)
		return;
	if ((BPF_CORE_READ(f, f_inode, i_mode) & S_IFMT) != S_IFSOCK)
		return;
	struct socket *sock = BPF_CORE_READ(f, private_data);
	struct sock *sk = sock ? BPF_CORE_READ(sock, sk) : 0;
	if (!sk)
		return;

	struct tls_sock s = {.fd = fd};
	s.family = BPF_CORE_READ(sk, __sk_common.skc_family);
	if (s.family == AF_INET) {
		__be32 a4 = BPF_CORE_READ(sk, __sk_common.skc_daddr);
		__builtin_memcpy(s.daddr, &a4, sizeof(a4));
	} else if (s.family == AF_INET6) {
		BPF_CORE_READ_INTO(&s.daddr, sk, __sk_common.skc_v6_daddr);
	} else {
		return; // a unix socket: nothing to tie to a connect record
	}
	s.dport = BPF_CORE_READ(sk, __sk_common.skc_dport);
	s.cookie = BPF_CORE_READ(sk, __sk_common.skc_cookie.counter);
	struct tls_conn_key k = {.ssl = c->ssl, .tgid = id >> 32};
	bpf_map_update_elem(&tls_socks, &k, &s, BPF_ANY);
}

// The first read or write system call a thread makes inside a probed call
// is the library's I/O on the connection's socket.
SEC("raw_tp/sys_enter")
int af_tls_sys_enter(struct bpf_raw_tracepoint_args *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct tls_call *c = bpf_map_lookup_elem(&tls_calls, &id);

	if (!c)
		return 0;
	long nr = ctx->args[1];
	if (!IS_IO(nr))
		return 0;
	struct tls_conn_key k = {.ssl = c->ssl, .tgid = id >> 32};
	if (bpf_map_lookup_elem(&tls_socks, &k))
		return 0;
	learn(c, id, (int)SYSCALL_FD(ctx->args[0]));
	return 0;
}

#include "tls_go.h"
