//go:build ignore

// The egress gate: cgroup sock_addr programs attached once at the cgroup v2
// root. Every connect() and unconnected sendmsg() on the host passes through
// them; for a task inside an intent session the destination must match the
// session's scope, otherwise the call fails with EPERM (enforce mode) or is
// recorded as would_deny (audit mode). Tasks in no session are not touched.
//
// Inbound is in scope too: bind() of a port no in: rule names fails the
// same way, and a cgroup_skb ingress program, also at the root, drops what
// peers send to a member that its scope does not admit (gate_ingress).

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

// The bind entry of each session (scope.Entry.IsBind): slot -> the port
// rules of all its in: rules.
AF_SCOPE_MAP(binds, __u32, BPF_MAP_TYPE_HASH);

AF_MEMBER_SOCKS_MAP;

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, AF_MAX_SESSIONS);
	__type(key, __u32); // slot
	__type(value, struct inbound_log);
} inbound_logs SEC(".maps");

AF_GATE_EVENTS_MAP;
AF_GATE_STATS_MAP;

// Two maps of repeats: the programs count into agg_maps[agg_current] while
// userspace drains the other. Swapping agg_current and then updating
// agg_maps (which waits for every program running to finish) leaves the
// drained map untouched by the kernel, so no count is lost.
struct agg_map {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, AF_AGG_ENTRIES);
	__type(key, struct agg_key);
	__type(value, struct agg_val);
} agg_a SEC(".maps"), agg_b SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, 2);
	__type(key, __u32);
	__array(values, struct agg_map);
} agg_maps SEC(".maps") = {
	.values = {&agg_a, &agg_b},
};

// The key and first value are built here: decide's stack has no room.
struct agg_scratch {
	struct agg_key k;
	struct agg_val v;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct agg_scratch);
} agg_scratch SEC(".maps");

// Written by the loader: 0 emits every decision (audit.aggregate_window 0).
volatile const __u8 aggregate = 1;

// The map the programs count into now; written by userspace.
__u32 agg_current;

// The event travels through the ring buffer untyped, and the enums are
// only ever stored in plain integer fields; these keep their types in BTF
// for bpf2go -type, so that Go's constants come from here.
const struct gate_event *unused_gate_event __attribute__((unused));
const struct agg_key *unused_agg_key __attribute__((unused));
const struct agg_val *unused_agg_val __attribute__((unused));
const enum af_hook *unused_hook __attribute__((unused));
const enum af_verdict *unused_verdict __attribute__((unused));
const enum af_reason *unused_reason __attribute__((unused));
const enum af_mode *unused_mode __attribute__((unused));
const enum af_state *unused_state __attribute__((unused));
const enum af_dns_mode *unused_dns_mode __attribute__((unused));
const enum af_stat *unused_stat __attribute__((unused));
const enum af_session_flag *unused_session_flag __attribute__((unused));
const enum af_rule_flag *unused_rule_flag __attribute__((unused));
const enum af_rule_none *unused_rule_none __attribute__((unused));
const enum af_event_name_flag *unused_event_name_flag __attribute__((unused));
const enum af_name_kind *unused_name_kind __attribute__((unused));

// Allowed decisions are not worth a consumer wakeup each: the reader polls
// on a short timer and is woken early once a quarter of the ring waits.
#define WAKEUP_BYTES (1 << 18)

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

// match walks the port rules of the longest matching prefix, those of
// direction in (0: outbound, AF_RULE_IN: inbound) only. Returns the rule
// index or AF_RULE_NONE.
static __always_inline __u16 match(struct scope_val *v, struct session *s, __u32 tgid, struct dest *d, __u8 in)
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
		if ((r->flags & AF_RULE_IN) != in || !(r->protos & bit) || d->port < r->lo || d->port > r->hi)
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
	return match(scope_entry(d->family, slot, d->addr), s, tgid, d, 0);
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
		__u16 rule = match(&nv->scope, s, tgid, d, 0);
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
	// through a learned name (the SNI check) and sockets talking to a
	// resolver (DNS learning over UDP, the dns mode over both). Storage on
	// any other socket would cost an allocation per connect for nothing.
	int sni = d->via_name && d->protocol == IPPROTO_TCP;
	// TCP to the DNS port too: dns_egress finds the session of a socket
	// made before its process joined (no member_socks) here.
	int dns = d->port == dns_port;
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
	e->name_flags = d->via_name ? AF_EVENT_VIA_NAME : 0;
	e->name_hash = d->name_hash;

	__u64 flags = BPF_RB_NO_WAKEUP;
	if (verdict != AF_VERDICT_ALLOWED || quarantined_now ||
	    bpf_ringbuf_query(&gate_events, BPF_RB_AVAIL_DATA) >= WAKEUP_BYTES)
		flags = BPF_RB_FORCE_WAKEUP;
	bpf_ringbuf_submit(e, flags);
}

// aggregated counts an allowed connect or send as a repeat of one emitted
// earlier in the window and returns 1, or remembers it as the first of its
// key and returns 0: the caller emits it. A full map remembers nothing, so
// every decision is emitted, as without aggregation.
static __always_inline int aggregated(struct binding *b, __u32 tid, __u64 now, struct dest *d, __u8 hook,
				      __u16 rule)
{
	if (!aggregate || hook < AF_HOOK_CONNECT4 || hook > AF_HOOK_SENDMSG6)
		return 0;
	__u32 idx = agg_current & 1;
	void *inner = bpf_map_lookup_elem(&agg_maps, &idx);
	if (!inner)
		return 0;
	__u32 zero = 0;
	struct agg_scratch *sc = bpf_map_lookup_elem(&agg_scratch, &zero);
	if (!sc)
		return 0;
	struct agg_key *k = &sc->k;
	k->session_gen = b->gen;
	k->cgroup_id = d->cgid;
	k->name_hash = d->name_hash;
	k->session_slot = b->slot;
	k->pid = d->tgid;
	__builtin_memcpy(k->addr, d->addr, 16);
	k->port = d->port;
	k->rule = rule;
	k->family = d->family;
	k->protocol = d->protocol;
	k->hook = hook;
	k->_pad = 0;
	struct agg_val *v = bpf_map_lookup_elem(inner, k);
	if (v) {
		// Without the fetch form of atomic add (kernel 5.12) the first
		// repeat cannot be told exactly; concurrent first repeats all
		// write their time, nanoseconds apart.
		__sync_fetch_and_add(&v->count, 1);
		if (!v->first_ns)
			v->first_ns = now;
		if (now > v->last_ns)
			v->last_ns = now;
		return 1;
	}
	struct agg_val *first = &sc->v;
	first->count = 0;
	first->first_ns = 0;
	first->last_ns = 0;
	first->tid = tid;
	first->uid = (__u32)d->ugid;
	first->gid = d->ugid >> 32;
	first->name_flags = d->via_name ? AF_EVENT_VIA_NAME : 0;
	bpf_get_current_comm(first->comm, sizeof(first->comm));
	bpf_map_update_elem(inner, k, first, BPF_NOEXIST);
	return 0;
}

static __always_inline int is_bind(__u8 hook)
{
	return hook == AF_HOOK_BIND4 || hook == AF_HOOK_BIND6;
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
		if (is_bind(hook)) {
			// A port of the member's own: the peers are judged per
			// packet (gate_ingress), the port here.
			__u32 slot = b.slot;
			rule = match(bpf_map_lookup_elem(&binds, &slot), s, tgid, d, AF_RULE_IN);
		} else {
			rule = lookup_scope(s, b.slot, tgid, d);
			if (rule == AF_RULE_NONE)
				rule = lookup_learned(s, b.slot, tgid, d, now);
		}
		d->rule = rule;
		if (rule != AF_RULE_NONE)
			reason = AF_REASON_RULE;
		else if (s->state == AF_STATE_QUARANTINED)
			reason = AF_REASON_QUARANTINED;
		// No DNS egress program to read the question (gate.h).
		if (rule != AF_RULE_NONE && !is_bind(hook) && d->port == dns_port &&
		    (s->flags & AF_SESSION_DNS_AT_GATE) && s->dns != AF_DNS_ANY)
			reason = AF_REASON_DNS_NONE;
	}

	if (reason == AF_REASON_RULE) {
		count(AF_STAT_ALLOWED);
		if (!aggregated(&b, (__u32)pid_tgid, now, d, hook, rule))
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

// judge decides a sock_addr call. Binding port 0 asks the kernel for an
// ephemeral port: nothing to judge yet, and what reaches that port is judged
// per packet (gate_ingress).
static __always_inline int judge(struct bpf_sock_addr *ctx, struct dest *d, __u8 hook)
{
	if (is_bind(hook)) {
		if (d->port == 0)
			return 1;
		return decide(d, hook);
	}
	int ret = decide(d, hook);
	remember_sock(ctx->sk, d, ret);
	return ret;
}

static __always_inline int gate4(struct bpf_sock_addr *ctx, __u8 hook)
{
	struct dest d = {.family = 4};
	__u32 ip = ctx->user_ip4;
	__builtin_memcpy(d.addr, &ip, 4);
	d.port = bpf_ntohs(ctx->user_port);
	d.protocol = ctx->protocol;
	return judge(ctx, &d, hook);
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
		return judge(ctx, &d, hook);
	}
	__builtin_memcpy(d.addr, &w0, 4);
	__builtin_memcpy(d.addr + 4, &w1, 4);
	__builtin_memcpy(d.addr + 8, &w2, 4);
	__builtin_memcpy(d.addr + 12, &w3, 4);
	return judge(ctx, &d, hook);
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

SEC("cgroup/bind4")
int gate_bind4(struct bpf_sock_addr *ctx)
{
	return gate4(ctx, AF_HOOK_BIND4);
}

SEC("cgroup/bind6")
int gate_bind6(struct bpf_sock_addr *ctx)
{
	return gate6(ctx, AF_HOOK_BIND6);
}

// mark_member gives a member's new socket its session, for gate_ingress,
// which runs without the task. It is done at creation, by tgid binding
// first, so a member that left its cgroup still marks its sockets, and a
// listener that never calls bind() (listen() picks a port) is marked too.
static __always_inline void mark_member(struct bpf_sock *sk)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	__u64 cgid = bpf_get_current_cgroup_id();
	struct binding b = {};
	if (!find_session(tgid, cgid, &b))
		return;
	struct member_sock *m = bpf_sk_storage_get(&member_socks, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!m)
		return;
	__u64 ugid = bpf_get_current_uid_gid();
	m->b = b;
	m->cgroup_id = cgid;
	m->tgid = tgid;
	m->uid = (__u32)ugid;
	m->gid = ugid >> 32;
	m->flags = 0;
	bpf_get_current_comm(m->comm, sizeof(m->comm));
}

// Raw sockets and inet protocols other than TCP and UDP would reach the
// network without passing connect or sendmsg, so session members may not
// create them. TCP and UDP sockets of members are marked (mark_member).
SEC("cgroup/sock_create")
int gate_sock_create(struct bpf_sock *ctx)
{
	if (ctx->family != AF_INET && ctx->family != AF_INET6)
		return 1;
	if ((ctx->type == SOCK_STREAM && ctx->protocol == IPPROTO_TCP) ||
	    (ctx->type == SOCK_DGRAM && ctx->protocol == IPPROTO_UDP)) {
		mark_member(ctx);
		return 1;
	}
	struct dest d = {.family = ctx->family == AF_INET ? 4 : 6, .protocol = ctx->protocol};
	return decide(&d, AF_HOOK_SOCK_CREATE);
}

// What reached a member socket: d.addr and d.port are the peer.
struct inbound {
	struct dest d;
	__u8 local[16];
	__u16 local_port;
};

#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define LOOPBACK_IFINDEX 1

// parse_inbound reads the addresses and ports of a packet (cgroup_skb data
// starts at the IP header; fragments are reassembled by now). IPv6
// hop-by-hop, routing and destination options headers are walked, up to
// four; a packet whose transport header is not found returns -1.
static __always_inline int parse_inbound(struct __sk_buff *skb, struct inbound *in)
{
	__u32 off;
	__u8 proto;
	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		__u8 h[20];
		if (bpf_skb_load_bytes(skb, 0, h, sizeof(h)) || (h[0] >> 4) != 4)
			return -1;
		off = (h[0] & 0xf) * 4;
		proto = h[9];
		in->d.family = 4;
		__builtin_memcpy(in->d.addr, h + 12, 4);
		__builtin_memcpy(in->local, h + 16, 4);
	} else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		__u8 h[40];
		if (bpf_skb_load_bytes(skb, 0, h, sizeof(h)) || (h[0] >> 4) != 6)
			return -1;
		off = 40;
		proto = h[6];
		in->d.family = 6;
		__builtin_memcpy(in->d.addr, h + 8, 16);
		__builtin_memcpy(in->local, h + 24, 16);
		for (int i = 0; i < 4; i++) {
			if (proto != 0 && proto != 43 && proto != 60)
				break;
			__u8 ext[2];
			if (bpf_skb_load_bytes(skb, off, ext, sizeof(ext)))
				return -1;
			proto = ext[0];
			off += (ext[1] + 1) * 8;
		}
	} else {
		return -1;
	}
	if (proto != in->d.protocol)
		return -1;
	__u8 ports[4];
	if (bpf_skb_load_bytes(skb, off, ports, sizeof(ports)))
		return -1;
	in->d.port = (ports[0] << 8) | ports[1];
	in->local_port = (ports[2] << 8) | ports[3];
	return 0;
}

// same_session_peer: the packet came over loopback from a socket of a member
// of the same session. The peer's socket is found with the packet's tuple
// turned around (its local end is the packet's source), in the established
// table first, so it is the socket that sent it. Only on loopback: a packet
// from outside with a forged local source finds no such socket here.
static __always_inline int same_session_peer(struct __sk_buff *skb, struct inbound *in, struct member_sock *m)
{
	if (skb->ifindex != LOOPBACK_IFINDEX)
		return 0;
	struct bpf_sock_tuple t = {};
	__u32 size;
	if (in->d.family == 4) {
		__builtin_memcpy(&t.ipv4.saddr, in->local, 4);
		__builtin_memcpy(&t.ipv4.daddr, in->d.addr, 4);
		t.ipv4.sport = bpf_htons(in->local_port);
		t.ipv4.dport = bpf_htons(in->d.port);
		size = sizeof(t.ipv4);
	} else {
		__builtin_memcpy(t.ipv6.saddr, in->local, 16);
		__builtin_memcpy(t.ipv6.daddr, in->d.addr, 16);
		t.ipv6.sport = bpf_htons(in->local_port);
		t.ipv6.dport = bpf_htons(in->d.port);
		size = sizeof(t.ipv6);
	}
	struct bpf_sock *peer;
	if (in->d.protocol == IPPROTO_TCP)
		peer = bpf_sk_lookup_tcp(skb, &t, size, BPF_F_CURRENT_NETNS, 0);
	else
		peer = bpf_sk_lookup_udp(skb, &t, size, BPF_F_CURRENT_NETNS, 0);
	if (!peer)
		return 0;
	struct member_sock *pm = bpf_sk_storage_get(&member_socks, peer, 0, 0);
	int same = pm && pm->b.slot == m->b.slot && pm->b.gen == m->b.gen;
	bpf_sk_release(peer);
	return same;
}

// record_inbound emits a refused inbound attempt, at most
// AF_INBOUND_RECORDS a second per session (gate.h says why); the others are
// counted, and the count goes out with the next record.
static __always_inline void record_inbound(struct member_sock *m, struct inbound *in, __u8 verdict, __u8 reason,
					   __u64 now)
{
	__u32 slot = m->b.slot;
	struct inbound_log *l = bpf_map_lookup_elem(&inbound_logs, &slot);
	if (!l || l->gen != m->b.gen) {
		struct inbound_log fresh = {.gen = m->b.gen, .window_ns = now};
		bpf_map_update_elem(&inbound_logs, &slot, &fresh, BPF_ANY);
		l = bpf_map_lookup_elem(&inbound_logs, &slot);
		if (!l) {
			count(AF_STAT_LOST);
			return;
		}
	}
	if (now - l->window_ns >= 1000000000ULL) {
		l->window_ns = now;
		l->recorded = 0;
	}
	if (l->recorded >= AF_INBOUND_RECORDS) {
		__sync_fetch_and_add(&l->suppressed, 1);
		return;
	}
	__sync_fetch_and_add(&l->recorded, 1);
	struct gate_event *e = bpf_ringbuf_reserve(&gate_events, sizeof(*e), 0);
	if (!e) {
		count(AF_STAT_LOST);
		return;
	}
	__u32 suppressed = l->suppressed;
	__sync_fetch_and_add(&l->suppressed, -suppressed);
	__builtin_memset(e, 0, sizeof(*e));
	e->ts_ns = now;
	e->cgroup_id = m->cgroup_id;
	e->session_gen = m->b.gen;
	e->session_slot = slot;
	e->pid = m->tgid;
	e->uid = m->uid;
	e->gid = m->gid;
	e->port = in->d.port;
	e->rule = AF_RULE_NONE;
	__builtin_memcpy(e->addr, in->d.addr, 16);
	__builtin_memcpy(e->comm, m->comm, sizeof(e->comm));
	e->family = in->d.family;
	e->protocol = in->d.protocol;
	e->hook = in->d.family == 4 ? AF_HOOK_INGRESS4 : AF_HOOK_INGRESS6;
	e->verdict = verdict;
	e->reason = reason;
	__builtin_memcpy(e->local_addr, in->local, 16);
	e->local_port = in->local_port;
	e->suppressed = suppressed;
	bpf_ringbuf_submit(e, BPF_RB_FORCE_WAKEUP);
}

// gate_ingress judges what peers send to members. Attached at the root
// like the sock_addr programs, it runs for every packet delivered to a
// socket on the host, so everyone else's packets leave at the first
// storage lookup. For a member socket it judges:
//   - every segment to a TCP listener (the SYN, and the ACK that would
//     complete a handshake, so a SYN cookie cannot stand in for a SYN):
//     the peer must be named by an in: rule for the local port;
//   - every datagram to an unconnected UDP socket: the peer must be named
//     by an in: rule for the local port, or be a destination the session
//     may send UDP to (the reply of a resolver or an API in scope).
// Connections (accepted or connected) and connected UDP sockets are not
// judged again: connect judged the member's own, the listener's SYN the
// others, and the kernel delivers a connected UDP socket only its peer's
// datagrams. A same-session member's socket on loopback needs no rule.
// Refusals do not count against the violation budget: peers cause them,
// and a flood from outside must not quarantine a session.
SEC("cgroup_skb/ingress")
int gate_ingress(struct __sk_buff *skb)
{
	struct bpf_sock *sk = skb->sk;
	if (!sk)
		return 1;
	sk = bpf_sk_fullsock(sk);
	if (!sk)
		return 1;
	struct member_sock *m = bpf_sk_storage_get(&member_socks, sk, 0, 0);
	if (!m)
		return 1;
	struct inbound in = {};
	in.d.protocol = sk->protocol;
	if (in.d.protocol == IPPROTO_TCP) {
		if (sk->state != BPF_TCP_LISTEN)
			return 1;
	} else if (in.d.protocol != IPPROTO_UDP || sk->dst_port != 0) {
		return 1;
	}
	struct session *s = live(&m->b);
	if (!s)
		return 1;
	__u32 slot = m->b.slot;
	__u64 now = bpf_ktime_get_boot_ns();
	// A packet whose ports cannot be found is refused: there is nothing
	// to judge it by.
	int parsed = parse_inbound(skb, &in) == 0;
	__u8 reason = AF_REASON_NO_RULE;
	if (s->state == AF_STATE_REVOKED) {
		reason = AF_REASON_REVOKED;
	} else if (s->expires_ns && now >= s->expires_ns) {
		reason = AF_REASON_EXPIRED;
	} else if (parsed) {
		struct dest local = in.d;
		local.port = in.local_port;
		if (match(scope_entry(in.d.family, slot, in.d.addr), s, m->tgid, &local, AF_RULE_IN) != AF_RULE_NONE)
			return 1;
		if (in.d.protocol == IPPROTO_UDP && (lookup_scope(s, slot, m->tgid, &in.d) != AF_RULE_NONE ||
						     lookup_learned(s, slot, m->tgid, &in.d, now) != AF_RULE_NONE))
			return 1;
		if (same_session_peer(skb, &in, m))
			return 1;
		if (s->state == AF_STATE_QUARANTINED)
			reason = AF_REASON_QUARANTINED;
	}
	if (s->mode == AF_MODE_AUDIT) {
		count(AF_STAT_WOULD_DENY);
		record_inbound(m, &in, AF_VERDICT_WOULD_DENY, reason, now);
		return 1;
	}
	count(AF_STAT_DENIED);
	record_inbound(m, &in, AF_VERDICT_DENIED, reason, now);
	return 0;
}
