//go:build ignore

// The egress gate: cgroup sock_addr programs attached once at the cgroup v2
// root. Every connect() and unconnected sendmsg() on the host passes through
// them; for a task inside an intent session the destination must match the
// session's scope, otherwise the call fails with EPERM (enforce mode) or is
// recorded as would_deny (audit mode). Tasks in no session are not touched.

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "gate.h"

char __license[] SEC("license") = "Dual MIT/GPL";

AF_SESSIONS_MAP;

AF_CGROUP_SESSIONS_MAP;

AF_PID_SESSIONS_MAP;
AF_PROC_EXE_MAP;
AF_HOST_NAMES_MAP;
AF_LEARNED_MAP;
AF_SOCK_INFO_MAP;

AF_SCOPE_MAPS;

AF_GATE_EVENTS_MAP;
AF_GATE_STATS_MAP;

// The event travels through the ring buffer untyped; this keeps its type in
// BTF for bpf2go -type.
const struct gate_event *unused_gate_event __attribute__((unused));

// Allowed decisions are not worth a consumer wakeup each: the reader polls
// on a short timer and is woken early only when the ring fills up.
#define WAKEUP_BYTES (1 << 20)

// Written by the loader before load: the tail of a bound cgroup walk.
volatile const __u32 max_cgroup_depth = AF_MAX_CGROUP_DEPTH;

// Written by the loader: the port DNS answers come from (dns.c has the same).
volatile const __u16 dns_port = 53;

static __always_inline void count(__u32 stat)
{
	__u64 *v = bpf_map_lookup_elem(&gate_stats, &stat);
	if (v)
		*v += 1;
}

static __always_inline struct session *live(struct binding *b)
{
	if (!b)
		return 0;
	__u32 slot = b->slot;
	struct session *s = bpf_map_lookup_elem(&sessions, &slot);
	if (!s || s->gen != b->gen || s->state == AF_STATE_FREE)
		return 0;
	return s;
}

// find_session returns the session of the calling task. A pid binding
// (process-tree session) wins over cgroup bindings; among cgroups the
// deepest bound ancestor wins.
static __always_inline struct session *find_session(__u32 tgid, __u64 cgid, struct binding *out)
{
	struct binding *b = bpf_map_lookup_elem(&pid_sessions, &tgid);
	struct session *s = live(b);
	if (s) {
		*out = *b;
		return s;
	}

	b = bpf_map_lookup_elem(&cgroup_sessions, &cgid);
	s = live(b);
	if (s) {
		*out = *b;
		return s;
	}

	struct session *found = 0;
	for (int level = 1; level < AF_MAX_CGROUP_DEPTH; level++) {
		if (level >= max_cgroup_depth)
			break;
		__u64 id = bpf_get_current_ancestor_cgroup_id(level);
		if (id == 0 || id == cgid)
			break;
		b = bpf_map_lookup_elem(&cgroup_sessions, &id);
		s = live(b);
		if (s) {
			*out = *b;
			found = s;
		}
	}
	return found;
}

struct dest {
	__u8 addr[16];
	__u16 port;
	__u8 family;
	__u8 protocol;
	// Filled in by decide for the hostname programs (dns.h).
	__u8 via_name;   // allowed through a learned hostname
	__u8 in_session; // the caller is a session member
	__u16 rule;
	__u64 name_hash;
	__u64 cgid;
	__u64 ugid; // the caller's, fetched once for the event and the socket
	__u32 tgid;
	struct binding sess;
};

static __always_inline int proto_bit(__u8 protocol)
{
	if (protocol == IPPROTO_TCP)
		return AF_PROTO_TCP;
	if (protocol == IPPROTO_UDP)
		return AF_PROTO_UDP;
	return 0;
}

// match walks the port rules of the longest matching prefix. Returns the
// rule index or AF_RULE_NONE.
static __always_inline __u16 match(struct scope_val *v, struct session *s, __u32 tgid, struct dest *d)
{
	if (!v || v->gen != s->gen)
		return AF_RULE_NONE;
	int bit = proto_bit(d->protocol);
	struct exe_id *exe = 0;
	int exe_looked = 0;
	__u32 n = v->n;
	for (int i = 0; i < AF_MAX_PORT_RULES; i++) {
		if (i >= n)
			break;
		struct port_rule *r = &v->rules[i];
		if (!(r->protos & bit) || d->port < r->lo || d->port > r->hi)
			continue;
		if (s->state == AF_STATE_QUARANTINED && !(r->flags & AF_RULE_ESSENTIAL))
			continue;
		if (r->flags & AF_RULE_EXE) {
			if (!exe_looked) {
				exe = bpf_map_lookup_elem(&proc_exe, &tgid);
				exe_looked = 1;
			}
			if (!exe || exe->ino != r->exe.ino || exe->dev != r->exe.dev)
				continue;
		}
		return r->rule;
	}
	return AF_RULE_NONE;
}

static __always_inline __u16 lookup_scope(struct session *s, __u32 slot, __u32 tgid, struct dest *d)
{
	return match(scope_entry(d->family, slot, d->addr), s, tgid, d);
}

// lookup_learned is the hostname fallback of lookup_scope: the address was
// learned from a DNS answer for an allowed name (dns.c) and has not expired;
// the port rules are those of that name's hostname rules.
static __always_inline __u16 lookup_learned(struct session *s, __u32 slot, __u32 tgid, struct dest *d,
					    __u64 now)
{
	struct learned_key k = {.slot = slot, .family = d->family};
	__builtin_memcpy(k.addr, d->addr, 16);
	struct learned_val *v = bpf_map_lookup_elem(&learned, &k);
	if (!v || v->gen != s->gen)
		return AF_RULE_NONE;
	for (int i = 0; i < AF_MAX_LEARNED_NAMES; i++) {
		struct learned_name *n = &v->names[i];
		if (n->expires_ns <= now)
			continue;
		struct name_key nk = {.slot = slot, .kind = n->kind, .hash = n->rule_hash};
		struct name_val *nv = bpf_map_lookup_elem(&host_names, &nk);
		if (!nv)
			continue;
		__u16 rule = match(&nv->scope, s, tgid, d);
		if (rule != AF_RULE_NONE) {
			d->via_name = 1;
			d->name_hash = n->name_hash;
			return rule;
		}
	}
	return AF_RULE_NONE;
}

// remember_sock records the session on a socket a member was allowed to use,
// for the cgroup_skb programs, which run without the task (dns.c).
static __always_inline void remember_sock(struct bpf_sock *sk, struct dest *d, int allowed)
{
	if (!sk || !d->in_session || !allowed)
		return;
	// Only two kinds of socket are looked at there: TCP connections allowed
	// through a learned name (the SNI check) and UDP sockets talking to a
	// resolver (DNS learning). Storage on any other socket would cost an
	// allocation per connect for nothing.
	int sni = d->via_name && d->protocol == IPPROTO_TCP;
	int dns = d->protocol == IPPROTO_UDP && d->port == dns_port;
	if (!sni && !dns)
		return;
	struct sock_info *info = bpf_sk_storage_get(&session_socks, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!info)
		return;
	info->b = d->sess;
	info->cgroup_id = d->cgid;
	info->name_hash = d->name_hash;
	info->tgid = d->tgid;
	info->uid = (__u32)d->ugid;
	info->gid = d->ugid >> 32;
	info->rule = d->rule;
	bpf_get_current_comm(info->comm, sizeof(info->comm));
	__u8 flags = 0;
	if (d->via_name && d->protocol == IPPROTO_TCP)
		flags = AF_SOCK_SNI;
	info->flags = flags;
}

static __always_inline void emit(struct binding *b, __u32 tgid, __u32 tid, __u64 cgid, __u64 now,
				 struct dest *d, __u8 hook, __u8 verdict, __u8 reason, __u16 rule,
				 __u8 quarantined_now)
{
	struct gate_event *e = bpf_ringbuf_reserve(&gate_events, sizeof(*e), 0);
	if (!e) {
		count(AF_STAT_LOST);
		return;
	}
	e->ts_ns = now;
	e->cgroup_id = cgid;
	e->session_gen = b->gen;
	e->session_slot = b->slot;
	e->pid = tgid;
	e->tid = tid;
	e->uid = (__u32)d->ugid;
	e->gid = d->ugid >> 32;
	e->port = d->port;
	e->rule = rule;
	__builtin_memcpy(e->addr, d->addr, 16);
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	e->family = d->family;
	e->protocol = d->protocol;
	e->hook = hook;
	e->verdict = verdict;
	e->reason = reason;
	e->quarantined_now = quarantined_now;
	e->sock_family = 0;
	e->sock_type = 0;
	e->name_flags = d->via_name;
	e->name_hash = d->name_hash;

	__u64 flags = BPF_RB_NO_WAKEUP;
	if (verdict != AF_VERDICT_ALLOWED || quarantined_now ||
	    bpf_ringbuf_query(&gate_events, BPF_RB_AVAIL_DATA) >= WAKEUP_BYTES)
		flags = BPF_RB_FORCE_WAKEUP;
	bpf_ringbuf_submit(e, flags);
}

// decide returns 1 to let the call through and 0 to fail it with EPERM.
static __always_inline int decide(struct dest *d, __u8 hook)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 tgid = pid_tgid >> 32;
	__u64 cgid = bpf_get_current_cgroup_id();
	struct binding b = {};
	struct session *s = find_session(tgid, cgid, &b);
	if (!s)
		return 1;
	d->in_session = 1;
	d->sess = b;
	d->cgid = cgid;
	d->tgid = tgid;
	d->ugid = bpf_get_current_uid_gid();

	__u64 now = bpf_ktime_get_boot_ns();
	__u16 rule = AF_RULE_NONE;
	__u8 reason = AF_REASON_NO_RULE;
	if (s->state == AF_STATE_REVOKED) {
		reason = AF_REASON_REVOKED;
	} else if (s->expires_ns && now >= s->expires_ns) {
		reason = AF_REASON_EXPIRED;
	} else if (hook == AF_HOOK_SOCK_CREATE) {
		reason = AF_REASON_SOCKET_TYPE;
	} else {
		rule = lookup_scope(s, b.slot, tgid, d);
		if (rule == AF_RULE_NONE)
			rule = lookup_learned(s, b.slot, tgid, d, now);
		d->rule = rule;
		if (rule != AF_RULE_NONE)
			reason = AF_REASON_RULE;
		else if (s->state == AF_STATE_QUARANTINED)
			reason = AF_REASON_QUARANTINED;
	}

	if (reason == AF_REASON_RULE) {
		count(AF_STAT_ALLOWED);
		emit(&b, tgid, (__u32)pid_tgid, cgid, now, d, hook, AF_VERDICT_ALLOWED, reason, rule, 0);
		return 1;
	}

	__u8 quarantined_now = 0;
	// The fetch form of atomic add needs kernel 5.12; a plain add plus a
	// racy read is enough for a threshold check.
	__sync_fetch_and_add(&s->violations, 1);
	__u32 violations = s->violations;
	if (violations > s->budget && (s->flags & AF_SESSION_QUARANTINE_ON_BUDGET) &&
	    s->state == AF_STATE_ACTIVE) {
		s->state = AF_STATE_QUARANTINED;
		quarantined_now = 1;
	}

	if (s->mode == AF_MODE_AUDIT) {
		count(AF_STAT_WOULD_DENY);
		emit(&b, tgid, (__u32)pid_tgid, cgid, now, d, hook, AF_VERDICT_WOULD_DENY, reason, rule,
		     quarantined_now);
		return 1;
	}
	count(AF_STAT_DENIED);
	emit(&b, tgid, (__u32)pid_tgid, cgid, now, d, hook, AF_VERDICT_DENIED, reason, rule, quarantined_now);
	return 0;
}

static __always_inline int gate4(struct bpf_sock_addr *ctx, __u8 hook)
{
	struct dest d = {.family = 4};
	__u32 ip = ctx->user_ip4;
	__builtin_memcpy(d.addr, &ip, 4);
	d.port = bpf_ntohs(ctx->user_port);
	d.protocol = ctx->protocol;
	int ret = decide(&d, hook);
	remember_sock(ctx->sk, &d, ret);
	return ret;
}

static __always_inline int gate6(struct bpf_sock_addr *ctx, __u8 hook)
{
	struct dest d = {.family = 6};
	__u32 w0 = ctx->user_ip6[0], w1 = ctx->user_ip6[1], w2 = ctx->user_ip6[2], w3 = ctx->user_ip6[3];
	d.port = bpf_ntohs(ctx->user_port);
	d.protocol = ctx->protocol;
	// ::ffff:a.b.c.d is judged as the IPv4 address it carries, so a
	// dual-stack socket cannot route around the IPv4 rules.
	if (w0 == 0 && w1 == 0 && w2 == bpf_htonl(0x0000ffff)) {
		d.family = 4;
		__builtin_memcpy(d.addr, &w3, 4);
		int ret = decide(&d, hook);
		remember_sock(ctx->sk, &d, ret);
		return ret;
	}
	__builtin_memcpy(d.addr, &w0, 4);
	__builtin_memcpy(d.addr + 4, &w1, 4);
	__builtin_memcpy(d.addr + 8, &w2, 4);
	__builtin_memcpy(d.addr + 12, &w3, 4);
	int ret = decide(&d, hook);
	remember_sock(ctx->sk, &d, ret);
	return ret;
}

SEC("cgroup/connect4")
int gate_connect4(struct bpf_sock_addr *ctx)
{
	return gate4(ctx, AF_HOOK_CONNECT4);
}

SEC("cgroup/connect6")
int gate_connect6(struct bpf_sock_addr *ctx)
{
	return gate6(ctx, AF_HOOK_CONNECT6);
}

SEC("cgroup/sendmsg4")
int gate_sendmsg4(struct bpf_sock_addr *ctx)
{
	return gate4(ctx, AF_HOOK_SENDMSG4);
}

SEC("cgroup/sendmsg6")
int gate_sendmsg6(struct bpf_sock_addr *ctx)
{
	return gate6(ctx, AF_HOOK_SENDMSG6);
}

// Raw sockets and inet protocols other than TCP and UDP would reach the
// network without passing connect or sendmsg, so session members may not
// create them.
SEC("cgroup/sock_create")
int gate_sock_create(struct bpf_sock *ctx)
{
	if (ctx->family != AF_INET && ctx->family != AF_INET6)
		return 1;
	if ((ctx->type == SOCK_STREAM && ctx->protocol == IPPROTO_TCP) ||
	    (ctx->type == SOCK_DGRAM && ctx->protocol == IPPROTO_UDP))
		return 1;
	struct dest d = {.family = ctx->family == AF_INET ? 4 : 6, .protocol = ctx->protocol};
	return decide(&d, AF_HOOK_SOCK_CREATE);
}
