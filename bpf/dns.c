//go:build ignore

// Hostname scopes (docs/hostnames.md): two cgroup_skb programs, attached
// only to the cgroups of sessions with hostname rules (enforcer/hooks.go).
//
// dns_ingress parses DNS answers (UDP from port 53, from a resolver in the
// session's scope) delivered to sockets the gate marked as session sockets,
// before the socket's receive queue sees them; the A/AAAA answers for an
// allowed name (directly or through a CNAME chain in the same response) are
// added to the session's learned addresses, so a connect right after
// recvmsg returns is judged with them.
//
// sni_egress checks the first data segment of a TCP connection the gate
// allowed only through a learned name: it must be a TLS ClientHello whose
// server_name is an allowed name for the session and the port; otherwise
// the segment and every later one are dropped (fail closed).
//
// The maps are the gate's: this object declares the same shapes and is
// loaded with MapReplacements. All parsing is over a copy of the payload in
// a per-CPU scratch buffer, with bounded loops and masked indexes; anything
// malformed is ignored (DNS) or refused (SNI), never trusted.

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "gate.h"

#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD

char __license[] SEC("license") = "Dual MIT/GPL";

// The gate's maps (same shapes as in gate.c; replaced at load).
AF_SESSIONS_MAP;

AF_SCOPE_MAPS;

AF_HOST_NAMES_MAP;
AF_LEARNED_MAP;
AF_SOCK_INFO_MAP;
AF_MEMBER_SOCKS_MAP;

// This object's own maps. 1 MiB is ~2,700 events (384 bytes with the
// ring's header; a datagram can teach 16 addresses, each an event): a
// reader woken at a quarter full (emit_learned) and polling every 50 ms
// lost none of 20,000 learned addresses a second (docs/benchmarks.md).
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
} host_events SEC(".maps");

#define HOST_WAKEUP_BYTES (1 << 18)

#define PKT_MAX 4096 // bytes of a DNS message or TCP payload looked at
#define PKT_MASK (PKT_MAX - 1)
#define MAX_ACCEPTED 8 // question name + CNAME targets followed
#define MAX_ANSWERS 16 // answer records looked at
#define MAX_EXTENSIONS 48
#define MAX_HOPS 16 // compression pointers followed in one name

struct name_walk {
	__u64 h, hs;
	__u32 pos, limit, end, hops, out, labels, left, _pad;
};

// Per-CPU scratch: key 0 for ingress, key 1 for the SNI check, key 2 for
// DNS queries (dns_egress; its own, so the two egress programs never find
// each other's busy flag on one packet). busy guards against
// a program interrupted on its CPU by another run of the same program (a
// softirq over process context): the inner run bails out.
struct scratch {
	__u8 pkt[PKT_MAX];
	char name[AF_NAME_MAX]; // last name read with copy, zero padded
	__u64 accepted[MAX_ACCEPTED];
	__u32 found_off[MAX_ANSWERS]; // addresses to learn once the walk succeeded
	__u32 found_ttl[MAX_ANSWERS];
	__u32 found_fam[MAX_ANSWERS];
	__u32 nacc;
	__u32 nfound;
	struct name_walk walk;
	__u64 hash;        // last name read
	__u64 suffix_hash; // of the part after its first label
	__u64 qhash;       // the question name
	__u64 gen;
	__u64 rule_hash; // name_key of the rule that matched
	__u32 rule_kind;
	__u32 len;
	__u32 name_len;
	__u32 slot;
	__u32 busy;
	__u32 qoff;  // dns_egress: the question of the query judged last
	__u32 qtype; // and its type, when the name was read
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 3);
	__type(key, __u32);
	__type(value, struct scratch);
} host_scratch SEC(".maps");

enum host_stat {
	HS_LOST = 0,     // ring buffer reserve failures
	HS_ANSWERS = 1,  // DNS responses parsed
	HS_LEARNED = 2,  // addresses learned
	HS_MALFORMED = 3, // DNS responses or ClientHellos given up on
	HS_UNSCOPED = 4, // answers for names not in scope
	HS_SNI_OK = 5,
	HS_SNI_DROP = 6,
	HS_BUSY = 7, // scratch busy: nested run bailed out
	HS_QUERY_OK = 8,   // member DNS queries let through by the dns mode
	HS_QUERY_DROP = 9, // member DNS queries refused (or would be, in audit mode)
	HS_MAX = 10,
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, HS_MAX);
	__type(key, __u32);
	__type(value, __u64);
} host_stats SEC(".maps");

// Kept in BTF for bpf2go -type (see gate.c).
const struct host_event *unused_host_event __attribute__((unused));
const enum af_host_kind *unused_host_kind __attribute__((unused));
const enum host_stat *unused_host_stat __attribute__((unused));

// Written by the loader: how long a learned address is kept, the record TTL
// clamped to [ttl_min_ns, ttl_max_ns]; and the port DNS answers come from.
volatile const __u64 ttl_min_ns = 30ULL * 1000000000ULL;
volatile const __u64 ttl_max_ns = 3600ULL * 1000000000ULL;
volatile const __u16 dns_port = 53;

static __always_inline void hstat(__u32 k)
{
	__u64 *v = bpf_map_lookup_elem(&host_stats, &k);
	if (v)
		*v += 1;
}

static __always_inline struct session *live_session(struct binding *b)
{
	__u32 slot = b->slot;
	struct session *s = bpf_map_lookup_elem(&sessions, &slot);
	if (!s || s->gen != b->gen || s->state == AF_STATE_FREE || s->state == AF_STATE_REVOKED)
		return 0;
	if (s->expires_ns && bpf_ktime_get_boot_ns() >= s->expires_ns)
		return 0;
	return s;
}

// idx masks an index into the scratch buffer in a way the compiler cannot
// drop after proving a bound the verifier does not see.
static __always_inline __u64 idx(__u64 off)
{
	asm volatile("%[off] &= 0xfff" : [off] "+r"(off));
	return off;
}

static __always_inline __u64 nidx(__u64 off)
{
	asm volatile("%[off] &= 0xff" : [off] "+r"(off));
	return off;
}

static __always_inline __u8 pkt8(struct scratch *sc, __u32 off)
{
	return sc->pkt[idx(off)];
}

static __always_inline __u32 pkt16(struct scratch *sc, __u32 off)
{
	return ((__u32)sc->pkt[idx(off)] << 8) | sc->pkt[idx(off + 1)];
}

// Hostname characters: letters (lowercased), digits, '-' and '_'. Returns 0
// for anything else.
static __always_inline __u8 host_char(__u8 c)
{
	if (c >= 'A' && c <= 'Z')
		return c + ('a' - 'A');
	if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_')
		return c;
	return 0;
}

// dns_read_name reads the (possibly compressed) domain name at off in the
// scratch message and returns the offset just past it in place, or -1 if it
// is malformed or not a hostname. It leaves the FNV-1a hash of the
// lowercased presentation name in hash and that of the part after the first
// label in suffix_hash; with NAME_COPY in flags it also writes the name into
// name. Each compression pointer must point before the start of the labels
// it continues, so the walk always moves backwards and ends; with
// NAME_NO_POINTERS there may be none (a query's question: nothing precedes
// it to point to, and a pointer into the header would name bytes the
// sender chose as an ID).
#define NAME_COPY 1
#define NAME_NO_POINTERS 2
__attribute__((noinline)) int dns_read_name(__u32 key, __u32 off, __u32 flags)
{
	__u32 copy = flags & NAME_COPY;
	struct scratch *sc = bpf_map_lookup_elem(&host_scratch, &key);
	if (!sc)
		return -1;
	// The walk's state lives in the map value, not in registers: the
	// verifier then sees the same state at every iteration and checks the
	// loop in linear time instead of once per combination of counters.
	volatile struct name_walk *w = &sc->walk;
	w->pos = off;
	w->limit = off;
	w->end = 0;
	w->hops = 0;
	w->out = 0;
	w->labels = 0;
	w->left = 0;
	w->h = AF_FNV_OFFSET;
	w->hs = AF_FNV_OFFSET;
	if (copy) {
		for (int i = 0; i < AF_NAME_MAX / 8; i++)
			((__u64 *)sc->name)[i] = 0;
	}
	for (int i = 0; i < 255 + MAX_HOPS + 1; i++) {
		__u32 pos = w->pos;
		if (pos >= sc->len || pos >= PKT_MAX)
			return -1;
		__u8 c = sc->pkt[idx(pos)];
		if (w->left) {
			c = host_char(c);
			if (!c)
				return -1;
			w->h = (w->h ^ c) * AF_FNV_PRIME;
			if (w->labels > 1)
				w->hs = (w->hs ^ c) * AF_FNV_PRIME;
			if (copy)
				sc->name[nidx(w->out)] = c;
			w->out = w->out + 1;
			w->left = w->left - 1;
			w->pos = pos + 1;
			continue;
		}
		if (c == 0) {
			if (!w->end)
				w->end = pos + 1;
			if (w->labels < 2 || w->out > 253)
				return -1;
			sc->hash = w->h;
			sc->suffix_hash = w->hs;
			if (copy)
				sc->name_len = w->out;
			return w->end & 0xffff;
		}
		if ((c & 0xC0) == 0xC0) {
			if (flags & NAME_NO_POINTERS)
				return -1;
			if (pos + 1 >= sc->len)
				return -1;
			__u32 ptr = ((__u32)(c & 0x3F) << 8) | sc->pkt[idx(pos + 1)];
			if (ptr >= w->limit || w->hops >= MAX_HOPS)
				return -1;
			w->hops = w->hops + 1;
			if (!w->end)
				w->end = pos + 2;
			w->pos = ptr;
			w->limit = ptr;
			continue;
		}
		if (c & 0xC0)
			return -1; // reserved label types
		if (w->labels) {
			w->h = (w->h ^ '.') * AF_FNV_PRIME;
			if (w->labels > 1)
				w->hs = (w->hs ^ '.') * AF_FNV_PRIME;
			if (copy)
				sc->name[nidx(w->out)] = '.';
			w->out = w->out + 1;
		}
		w->labels = w->labels + 1;
		w->left = c;
		w->pos = pos + 1;
		if (w->out + c > 253)
			return -1;
	}
	return -1;
}

// name_allowed looks the name last read with copy up among the session's
// allowed names (exact, then the wildcard of its suffix), compares it in
// full, and returns the first rule index that admits protocol bit proto on
// port (port 0: any port), or -1. The matching rule's key is left in
// rule_kind/rule_hash.
__attribute__((noinline)) int name_allowed(__u32 key, __u32 port, __u32 proto)
{
	struct scratch *sc = bpf_map_lookup_elem(&host_scratch, &key);
	if (!sc)
		return -1;
	for (__u32 kind = 0; kind < 2; kind++) {
		struct name_key nk = {.slot = sc->slot, .kind = kind, .hash = kind ? sc->suffix_hash : sc->hash};
		struct name_val *v = bpf_map_lookup_elem(&host_names, &nk);
		if (!v || v->scope.gen != sc->gen)
			continue;
		// Compare the whole name: exact, or the suffix after the first
		// label for a wildcard.
		__u32 skip = 0;
		if (kind) {
			for (int i = 0; i < 64; i++) {
				if (sc->name[nidx(i)] == '.') {
					skip = i + 1;
					break;
				}
			}
			if (!skip)
				continue;
		}
		if (sc->name_len != skip + v->len)
			continue;
		int same = 1;
		for (int i = 0; i < AF_NAME_MAX; i++) {
			if (i >= v->len)
				break;
			if (sc->name[nidx(i + skip)] != v->name[nidx(i)]) {
				same = 0;
				break;
			}
		}
		if (!same)
			continue;
		__u32 n = v->scope.n;
		for (int i = 0; i < AF_MAX_PORT_RULES; i++) {
			if (i >= n)
				break;
			struct port_rule *r = &v->scope.rules[i];
			if (proto && !(r->protos & proto))
				continue;
			if (port && (port < r->lo || port > r->hi))
				continue;
			sc->rule_kind = kind;
			sc->rule_hash = nk.hash;
			return r->rule;
		}
	}
	return -1;
}

static __always_inline void fill_event(struct host_event *e, struct sock_info *info, struct scratch *sc,
				       __u8 kind)
{
	__builtin_memset(e, 0, sizeof(*e) - AF_NAME_MAX);
	e->ts_ns = bpf_ktime_get_boot_ns();
	e->cgroup_id = info->cgroup_id;
	e->session_gen = info->b.gen;
	e->session_slot = info->b.slot;
	e->pid = info->tgid;
	e->uid = info->uid;
	e->gid = info->gid;
	__builtin_memcpy(e->comm, info->comm, sizeof(e->comm));
	__builtin_memcpy(e->name, sc->name, AF_NAME_MAX);
	e->name_len = sc->name_len;
	e->name_hash = sc->hash;
	e->kind = kind;
	e->rule = AF_RULE_NONE;
}

// dns_learn adds the address at off (4 or 16 bytes, by family) to the
// session's learned set for the question name, kept for ttl seconds clamped
// to the configured bounds, and records it.
__attribute__((noinline)) int dns_learn(__u32 key, __u32 off, __u32 family, __u32 ttl)
{
	struct scratch *sc = bpf_map_lookup_elem(&host_scratch, &key);
	if (!sc)
		return 0;
	struct learned_key k = {.slot = sc->slot, .family = family};
	__u32 n = family == 4 ? 4 : 16;
	for (int i = 0; i < 16; i++) {
		if (i >= n)
			break;
		k.addr[i] = sc->pkt[idx(off + i)];
	}
	__u64 keep = (__u64)ttl * 1000000000ULL;
	if (keep < ttl_min_ns)
		keep = ttl_min_ns;
	if (keep > ttl_max_ns)
		keep = ttl_max_ns;
	__u64 now = bpf_ktime_get_boot_ns();
	__u64 expires = now + keep;

	struct learned_val v = {.gen = sc->gen};
	struct learned_val *old = bpf_map_lookup_elem(&learned, &k);
	if (old && old->gen == sc->gen)
		__builtin_memcpy(&v, old, sizeof(v));
	// Refresh the entry of the same name, else take a free or expired one,
	// else the one that expires first.
	int pick = -1, same = -1;
	__u64 soonest = ~0ULL;
	for (int i = 0; i < AF_MAX_LEARNED_NAMES; i++) {
		struct learned_name *ln = &v.names[i];
		if (ln->expires_ns > now && ln->name_hash == sc->qhash && ln->rule_hash == sc->rule_hash &&
		    ln->kind == sc->rule_kind)
			same = i;
		if (ln->expires_ns < soonest) {
			soonest = ln->expires_ns;
			pick = i;
		}
	}
	if (same >= 0)
		pick = same;
	if (pick < 0 || pick >= AF_MAX_LEARNED_NAMES)
		return 0;
	struct learned_name *ln = &v.names[pick];
	if (ln->expires_ns > expires && same >= 0)
		expires = ln->expires_ns; // never shorten a live entry
	ln->name_hash = sc->qhash;
	ln->rule_hash = sc->rule_hash;
	ln->kind = sc->rule_kind;
	ln->expires_ns = expires;
	if (bpf_map_update_elem(&learned, &k, &v, BPF_ANY))
		return 0;
	hstat(HS_LEARNED);
	return 1;
}

static __always_inline void emit_learned(struct sock_info *info, struct scratch *sc, __u32 off, __u32 family,
					 __u32 ttl, __u16 rule)
{
	struct host_event *e = bpf_ringbuf_reserve(&host_events, sizeof(*e), 0);
	if (!e) {
		hstat(HS_LOST);
		return;
	}
	fill_event(e, info, sc, AF_HOST_DNS_LEARNED);
	e->name_hash = sc->qhash;
	e->family = family;
	for (int i = 0; i < 16; i++) {
		if (i >= (family == 4 ? 4 : 16))
			break;
		e->addr[i] = sc->pkt[idx(off + i)];
	}
	__u64 keep = (__u64)ttl * 1000000000ULL;
	if (keep < ttl_min_ns)
		keep = ttl_min_ns;
	if (keep > ttl_max_ns)
		keep = ttl_max_ns;
	e->ttl_ns = keep;
	e->rule = rule;
	e->verdict = AF_VERDICT_ALLOWED;
	e->reason = AF_REASON_RULE;
	// An answer of many addresses is worth one wakeup, not one each.
	__u64 flags = BPF_RB_NO_WAKEUP;
	if (bpf_ringbuf_query(&host_events, BPF_RB_AVAIL_DATA) >= HOST_WAKEUP_BYTES)
		flags = BPF_RB_FORCE_WAKEUP;
	bpf_ringbuf_submit(e, flags);
}

// resolver_in_scope: the answer must come from an address and port the
// session may send UDP DNS to through an address rule. A learned address
// never makes a resolver.
static __always_inline int resolver_in_scope(struct session *s, __u32 slot, __u8 family, __u8 *addr,
					     __u16 port)
{
	struct scope_val *v = scope_entry(family, slot, addr);
	if (!v || v->gen != s->gen)
		return 0;
	__u32 n = v->n;
	for (int i = 0; i < AF_MAX_PORT_RULES; i++) {
		if (i >= n)
			break;
		struct port_rule *r = &v->rules[i];
		if ((r->flags & AF_RULE_IN) || !(r->protos & AF_PROTO_UDP) || port < r->lo || port > r->hi)
			continue;
		if (s->state == AF_STATE_QUARANTINED && !(r->flags & AF_RULE_ESSENTIAL))
			continue;
		return 1;
	}
	return 0;
}

struct l4 {
	__u8 addr[16]; // the peer: source on ingress, destination on egress
	__u32 off;     // transport header
	__u8 family;
	__u8 proto;
};

// parse_ip reads the IP header (cgroup_skb data starts at it). Fragments and
// IPv6 extension headers are not followed: such packets are left alone.
static __always_inline int parse_ip(struct __sk_buff *skb, struct l4 *l, int egress)
{
	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		__u8 h[20];
		if (bpf_skb_load_bytes(skb, 0, h, sizeof(h)))
			return -1;
		if ((h[0] >> 4) != 4 || (h[0] & 0xF) < 5)
			return -1;
		if (((h[6] << 8) | h[7]) & 0x3FFF) // MF or fragment offset
			return -1;
		l->family = 4;
		l->proto = h[9];
		l->off = (h[0] & 0xF) * 4;
		__builtin_memcpy(l->addr, egress ? &h[16] : &h[12], 4);
		return 0;
	}
	if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		__u8 h[40];
		if (bpf_skb_load_bytes(skb, 0, h, sizeof(h)))
			return -1;
		l->family = 6;
		l->proto = h[6];
		l->off = 40;
		__builtin_memcpy(l->addr, egress ? &h[24] : &h[8], 16);
		return 0;
	}
	return -1;
}

// payload_len is how many payload bytes from off are looked at: at most
// PKT_MAX.
static __always_inline __u32 payload_len(struct __sk_buff *skb, __u32 off)
{
	__u32 len = skb->len;
	if (off >= len)
		return 0;
	__u32 n = len - off;
	return n > PKT_MAX ? PKT_MAX : n;
}

// load_payload copies n (1..PKT_MAX) bytes at off into the scratch buffer.
static __always_inline int load_payload(struct __sk_buff *skb, __u32 off, struct scratch *sc, __u32 n)
{
	if (n < 1 || n > PKT_MAX)
		return -1;
	__u64 size = n;
	// clang turns `n < 1` into `n == 0`, from which verifiers before 6.8
	// learn no lower bound: 5.10 and 6.1 then refuse a length that may be
	// 0. Rebuild [1, PKT_MAX] with arithmetic every verifier tracks (the
	// value is unchanged: n is already in range).
	asm volatile("%[size] += -1\n\t"
		     "%[size] &= %[mask]\n\t"
		     "%[size] += 1"
		     : [size] "+r"(size)
		     : [mask] "i"(PKT_MASK));
	return bpf_skb_load_bytes(skb, off, sc->pkt, size);
}

static __always_inline struct scratch *take_scratch(__u32 key)
{
	struct scratch *sc = bpf_map_lookup_elem(&host_scratch, &key);
	if (!sc)
		return 0;
	if (sc->busy) {
		hstat(HS_BUSY);
		return 0;
	}
	sc->busy = 1;
	return sc;
}

// dns_answer checks the answer record at off of the message in scratch key
// key: a CNAME whose owner is an accepted name adds its target to the
// accepted names; an A/AAAA record of an accepted name is noted for
// learning. Returns the offset of the next record, or -1 if the record is
// malformed.
__attribute__((noinline)) int dns_answer(__u32 key, __u32 off)
{
	struct scratch *sc = bpf_map_lookup_elem(&host_scratch, &key);
	if (!sc)
		return -1;
	int end = dns_read_name(key, off, 0);
	if (end < 0 || end > PKT_MAX)
		return -1;
	__u64 owner = *(volatile __u64 *)&sc->hash;
	off = end;
	if (off + 10 > sc->len)
		return -1;
	__u32 type = pkt16(sc, off), class = pkt16(sc, off + 2);
	__u32 ttl = (pkt16(sc, off + 4) << 16) | pkt16(sc, off + 6);
	__u32 rdlen = pkt16(sc, off + 8);
	off += 10;
	if (off + rdlen > sc->len)
		return -1;
	__u32 nacc = sc->nacc;
	int ours = 0;
	for (int j = 0; j < MAX_ACCEPTED; j++) {
		if (j < nacc && sc->accepted[j] == owner)
			ours = 1;
	}
	if (type == 5) { // CNAME: its target must be a well-formed name
		int cend = dns_read_name(key, off, 0);
		if (cend < 0 || cend != off + rdlen)
			return -1;
		if (ours && class == 1 && nacc < MAX_ACCEPTED) {
			sc->accepted[nacc & (MAX_ACCEPTED - 1)] = *(volatile __u64 *)&sc->hash;
			sc->nacc = nacc + 1;
		}
	} else if ((type == 1 && rdlen != 4) || (type == 28 && rdlen != 16)) {
		return -1;
	} else if (ours && class == 1 && (type == 1 || type == 28)) {
		__u32 n = sc->nfound;
		if (ttl & 0x80000000) // RFC 2181: treat as zero
			ttl = 0;
		if (n < MAX_ANSWERS) {
			sc->found_off[n & (MAX_ANSWERS - 1)] = off;
			sc->found_ttl[n & (MAX_ANSWERS - 1)] = ttl;
			sc->found_fam[n & (MAX_ANSWERS - 1)] = type == 1 ? 4 : 6;
			sc->nfound = n + 1;
		}
	}
	return off + rdlen;
}

// parse_answers walks the answer records of the message in scratch key 0
// whose question was accepted. The whole walk must succeed before anything
// is learned: a message malformed anywhere in its first MAX_ANSWERS records
// teaches nothing. Returns the number of addresses learned.
static __always_inline int parse_answers(struct scratch *sc, struct sock_info *info, __u32 off, __u32 ancount,
					 __u16 rule)
{
	sc->accepted[0] = sc->qhash;
	sc->nacc = 1;
	sc->nfound = 0;
	for (int i = 0; i < MAX_ANSWERS; i++) {
		if (i >= ancount)
			break;
		int next = dns_answer(0, off);
		if (next < 0) {
			hstat(HS_MALFORMED);
			return 0;
		}
		off = next;
	}
	int learned_n = 0;
	__u32 nfound = sc->nfound;
	for (int i = 0; i < MAX_ANSWERS; i++) {
		if (i >= nfound)
			break;
		__u32 aoff = sc->found_off[i], ttl = sc->found_ttl[i], family = sc->found_fam[i];
		if (dns_learn(0, aoff, family, ttl)) {
			learned_n++;
			emit_learned(info, sc, aoff, family, ttl, rule);
		}
	}
	return learned_n;
}

SEC("cgroup_skb/ingress")
int dns_ingress(struct __sk_buff *skb)
{
	struct bpf_sock *sk = skb->sk;
	if (!sk)
		return 1;
	sk = bpf_sk_fullsock(sk);
	if (!sk || sk->protocol != IPPROTO_UDP)
		return 1;
	struct sock_info *info = bpf_sk_storage_get(&session_socks, sk, 0, 0);
	if (!info)
		return 1;
	struct binding b = info->b;
	struct session *s = live_session(&b);
	if (!s)
		return 1;

	struct l4 l = {};
	if (parse_ip(skb, &l, 0) || l.proto != IPPROTO_UDP)
		return 1;
	__u8 udp[8];
	if (bpf_skb_load_bytes(skb, l.off, udp, sizeof(udp)))
		return 1;
	__u16 sport = (udp[0] << 8) | udp[1];
	if (sport != dns_port || !resolver_in_scope(s, b.slot, l.family, l.addr, sport))
		return 1;
	__u32 off = l.off + 8;
	if (off >= skb->len)
		return 1;
	__u32 plen = payload_len(skb, off);
	if (plen < 12)
		return 1;

	struct scratch *sc = take_scratch(0);
	if (!sc)
		return 1;
	if (load_payload(skb, off, sc, plen))
		goto out;
	hstat(HS_ANSWERS);
	sc->len = plen;
	sc->slot = b.slot;
	sc->gen = b.gen;

	// Header: a standard-query response with one question.
	__u32 flags = pkt16(sc, 2);
	if (!(flags & 0x8000) || (flags & 0x7800) || pkt16(sc, 4) != 1)
		goto malformed;
	int qend = dns_read_name(0, 12, NAME_COPY);
	if (qend < 0 || qend + 4 > plen)
		goto malformed;
	sc->qhash = *(volatile __u64 *)&sc->hash;
	__u32 qtype = pkt16(sc, qend), qclass = pkt16(sc, qend + 2);
	if (qclass != 1)
		goto out;
	int rule = name_allowed(0, 0, 0);
	if (rule < 0) {
		hstat(HS_UNSCOPED);
		struct host_event *e = bpf_ringbuf_reserve(&host_events, sizeof(*e), 0);
		if (!e) {
			hstat(HS_LOST);
			goto out;
		}
		fill_event(e, info, sc, AF_HOST_DNS_UNSCOPED);
		e->family = l.family;
		__builtin_memcpy(e->addr, l.addr, 16);
		e->port = sport;
		e->verdict = AF_VERDICT_DENIED;
		e->reason = AF_REASON_NAME_UNSCOPED;
		e->ttl_ns = qtype; // the question type, for the record
		bpf_ringbuf_submit(e, 0);
		goto out;
	}
	if ((flags & 0xF) != 0) // only NOERROR answers carry addresses
		goto out;
	parse_answers(sc, info, qend + 4, pkt16(sc, 6), rule);
out:
	sc->busy = 0;
	return 1;
malformed:
	hstat(HS_MALFORMED);
	sc->busy = 0;
	return 1;
}

// sni_parse finds the server_name of the TLS ClientHello at the start of
// the scratch payload (key 1), copies it into name and hashes it. Only the
// first TLS record is read. Returns 0 when found, else the reason.
__attribute__((noinline)) int sni_parse(__u32 key)
{
	struct scratch *sc = bpf_map_lookup_elem(&host_scratch, &key);
	if (!sc)
		return AF_REASON_SNI_MISSING;
	__u32 len = sc->len;
	for (int i = 0; i < AF_NAME_MAX / 8; i++)
		((__u64 *)sc->name)[i] = 0;
	sc->name_len = 0;
	sc->hash = 0;
	if (len < 9)
		return AF_REASON_SNI_INCOMPLETE;
	if (pkt8(sc, 0) != 0x16 || pkt8(sc, 1) != 3 || pkt8(sc, 5) != 1)
		return AF_REASON_SNI_MISSING; // not a TLS handshake starting with a ClientHello
	__u32 rec_end = 5 + pkt16(sc, 3);
	__u32 hs_end = 9 + ((__u32)pkt8(sc, 6) << 16 | pkt16(sc, 7));
	// complete: the whole ClientHello is in this record and this segment,
	// so a missing SNI is really missing rather than further on.
	int complete = hs_end <= rec_end && rec_end <= len;
	__u32 end = rec_end < len ? rec_end : len;
	if (hs_end < end)
		end = hs_end;
	__u32 p = 9 + 2 + 32;
	if (p + 1 > end)
		goto short_;
	p += 1 + pkt8(sc, p); // session id
	if (p + 2 > end)
		goto short_;
	p += 2 + pkt16(sc, p); // cipher suites
	if (p + 1 > end)
		goto short_;
	p += 1 + pkt8(sc, p); // compression methods
	if (p + 2 > end)
		goto short_;
	__u32 ext_end = p + 2 + pkt16(sc, p);
	p += 2;
	if (ext_end > end) {
		if (complete)
			return AF_REASON_SNI_MISSING; // lengths disagree: malformed
		ext_end = end;
	}
	__u32 found = 0, elen = 0;
	for (int i = 0; i < MAX_EXTENSIONS; i++) {
		if (p + 4 > ext_end)
			goto short_;
		__u32 type = pkt16(sc, p);
		elen = pkt16(sc, p + 2);
		p += 4;
		if (p + elen > ext_end)
			goto short_;
		if (type == 0) {
			found = 1;
			break;
		}
		p += elen;
	}
	if (!found)
		goto short_;
	// Forget what the verifier knows about p and elen (it differs for each
	// extension the loop stopped at) so the name loop below is checked once.
	sc->walk.pos = p;
	sc->walk.end = elen;
	p = *(volatile __u32 *)&sc->walk.pos;
	elen = *(volatile __u32 *)&sc->walk.end;
	// server_name: list length, then entries of type, length, name. The
	// first entry must be a host_name.
	if (elen < 5 || pkt8(sc, p + 2) != 0)
		return AF_REASON_SNI_MISMATCH;
	__u32 nlen = pkt16(sc, p + 3);
	__u32 q = p + 5;
	if (nlen == 0 || q + nlen > p + elen || pkt16(sc, p) + 2 > elen)
		return AF_REASON_SNI_MISMATCH;
	if (pkt8(sc, q + nlen - 1) == '.') // tolerate a trailing dot
		nlen--;
	if (nlen == 0 || nlen > 253)
		return AF_REASON_SNI_MISMATCH;
	volatile struct name_walk *w = &sc->walk;
	w->h = AF_FNV_OFFSET;
	w->hs = AF_FNV_OFFSET;
	w->labels = 0; // dots seen
	w->left = 0;   // length of the current label
	for (int j = 0; j < 253; j++) {
		if (j >= nlen)
			break;
		__u8 c = pkt8(sc, q + j);
		if (c == '.') {
			if (w->left == 0)
				return AF_REASON_SNI_MISMATCH;
			if (w->labels)
				w->hs = (w->hs ^ c) * AF_FNV_PRIME;
			w->labels = w->labels + 1;
			w->left = 0;
		} else {
			c = host_char(c);
			if (!c)
				return AF_REASON_SNI_MISMATCH;
			if (w->labels)
				w->hs = (w->hs ^ c) * AF_FNV_PRIME;
			w->left = w->left + 1;
		}
		w->h = (w->h ^ c) * AF_FNV_PRIME;
		sc->name[nidx(j)] = c;
	}
	if (w->left == 0 || w->labels == 0)
		return AF_REASON_SNI_MISMATCH;
	sc->name_len = nlen;
	sc->hash = w->h;
	sc->suffix_hash = w->hs;
	return 0;
short_:
	return complete ? AF_REASON_SNI_MISSING : AF_REASON_SNI_INCOMPLETE;
}

SEC("cgroup_skb/egress")
int sni_egress(struct __sk_buff *skb)
{
	struct bpf_sock *sk = skb->sk;
	if (!sk)
		return 1;
	sk = bpf_sk_fullsock(sk);
	if (!sk || sk->protocol != IPPROTO_TCP)
		return 1;
	struct sock_info *info = bpf_sk_storage_get(&session_socks, sk, 0, 0);
	if (!info || !(info->flags & AF_SOCK_SNI) || (info->flags & AF_SOCK_SNI_DONE))
		return 1;
	if (info->flags & AF_SOCK_BLOCKED)
		return 0;
	struct binding b = info->b;
	struct session *s = live_session(&b);
	if (!s)
		return 1; // the session is gone: the gate no longer manages this socket

	struct l4 l = {};
	if (parse_ip(skb, &l, 1) || l.proto != IPPROTO_TCP)
		return 1;
	__u8 tcp[14];
	if (bpf_skb_load_bytes(skb, l.off, tcp, sizeof(tcp)))
		return 1;
	__u16 dport = (tcp[2] << 8) | tcp[3];
	__u32 off = l.off + (tcp[12] >> 4) * 4;
	if (off >= skb->len)
		return 1; // no payload: handshake, ACKs, FIN
	__u32 plen = payload_len(skb, off);
	if (plen == 0)
		return 1;

	struct scratch *sc = take_scratch(1);
	if (!sc)
		return 0; // fail closed; TCP sends the segment again
	sc->slot = b.slot;
	sc->gen = b.gen;
	int reason = AF_REASON_SNI_INCOMPLETE;
	if (!load_payload(skb, off, sc, plen)) {
		sc->len = plen;
		reason = sni_parse(1);
	}
	int rule = -1;
	if (reason == 0) {
		rule = name_allowed(1, dport, AF_PROTO_TCP);
		if (rule < 0)
			reason = AF_REASON_SNI_MISMATCH;
	}
	if (reason == 0) {
		hstat(HS_SNI_OK);
		info->flags |= AF_SOCK_SNI_DONE;
		sc->busy = 0;
		return 1;
	}

	hstat(HS_SNI_DROP);
	__sync_fetch_and_add(&s->violations, 1);
	int enforce = s->mode != AF_MODE_AUDIT;
	struct host_event *e = bpf_ringbuf_reserve(&host_events, sizeof(*e), 0);
	if (e) {
		fill_event(e, info, sc, AF_HOST_SNI);
		e->family = l.family;
		__builtin_memcpy(e->addr, l.addr, 16);
		e->port = dport;
		e->rule = info->rule;
		e->verdict = enforce ? AF_VERDICT_DENIED : AF_VERDICT_WOULD_DENY;
		e->reason = reason;
		e->name_hash = info->name_hash; // the learned name the connect used
		bpf_ringbuf_submit(e, 0);
	} else {
		hstat(HS_LOST);
	}
	sc->busy = 0;
	if (!enforce) {
		info->flags |= AF_SOCK_SNI_DONE;
		return 1;
	}
	info->flags |= AF_SOCK_BLOCKED;
	return 0;
}

// DNS queries of members (docs/hostnames.md, "DNS modes"): a session whose
// dns mode is scoped may ask a resolver only for names its hostname rules
// cover, one with none for nothing. A query that may not leave is dropped
// here, before it reaches any device, loopback included: a resolver in scope
// would otherwise carry whatever a member encodes in a name to the
// authoritative server of a zone the member chose.

#define MAX_TCP_QUERIES 4 // DNS messages in one TCP segment (glibc writes two at once)

// dns_query_check judges the query message at off, len bytes long, in
// scratch key 2, for mode (AF_DNS_SCOPED or AF_DNS_NONE). Returns 0 if it may
// leave, else the reason. The question's offset is left in qoff (for the
// record) and its type in qtype.
__attribute__((noinline)) int dns_query_check(__u32 off, __u32 len, __u32 mode)
{
	__u32 key = 2;
	struct scratch *sc = bpf_map_lookup_elem(&host_scratch, &key);
	if (!sc)
		return AF_REASON_DNS_MALFORMED;
	sc->qoff = off + 12;
	sc->qtype = 0;
	sc->name_len = 0;
	if (mode == AF_DNS_NONE)
		return AF_REASON_DNS_NONE;
	if (len < 12 || off + len > sc->len)
		return AF_REASON_DNS_MALFORMED;
	// A standard query (QR=0, opcode QUERY) with one question: anything
	// else (an update, a notify, a message without a question) carries no
	// name to judge it by.
	__u32 flags = pkt16(sc, off + 2);
	if ((flags & 0x8000) || (flags & 0x7800) || pkt16(sc, off + 4) != 1)
		return AF_REASON_DNS_MALFORMED;
	int qend = dns_read_name(key, off + 12, NAME_COPY | NAME_NO_POINTERS);
	if (qend < 0 || qend + 4 > off + len)
		return AF_REASON_DNS_MALFORMED;
	sc->qtype = pkt16(sc, qend);
	if (name_allowed(key, 0, 0) < 0)
		return AF_REASON_DNS_UNSCOPED;
	return 0;
}

// The socket's session and who made the socket, from member_socks (every
// TCP and UDP socket a member creates) or, for a socket made before its
// process joined, session_socks (written when the gate let it talk to the
// DNS port).
struct querier {
	struct binding b;
	__u64 cgroup_id;
	__u32 tgid, uid, gid;
	char comm[16];
};

static __always_inline int find_querier(struct bpf_sock *sk, struct querier *q, struct member_sock **m,
					struct sock_info **info)
{
	*m = bpf_sk_storage_get(&member_socks, sk, 0, 0);
	if (*m) {
		q->b = (*m)->b;
		q->cgroup_id = (*m)->cgroup_id;
		q->tgid = (*m)->tgid;
		q->uid = (*m)->uid;
		q->gid = (*m)->gid;
		__builtin_memcpy(q->comm, (*m)->comm, sizeof(q->comm));
		return 0;
	}
	*info = bpf_sk_storage_get(&session_socks, sk, 0, 0);
	if (*info) {
		q->b = (*info)->b;
		q->cgroup_id = (*info)->cgroup_id;
		q->tgid = (*info)->tgid;
		q->uid = (*info)->uid;
		q->gid = (*info)->gid;
		__builtin_memcpy(q->comm, (*info)->comm, sizeof(q->comm));
		return 0;
	}
	return -1;
}

// egress_l4 finds the transport header of an outgoing packet, walking up to
// four IPv6 hop-by-hop, routing and destination options headers (a member
// may add a routing header without privileges). Egress packets are not yet
// fragmented.
static __always_inline int egress_l4(struct __sk_buff *skb, struct l4 *l)
{
	if (parse_ip(skb, l, 1))
		return -1;
	if (l->family != 6)
		return 0;
	for (int i = 0; i < 4; i++) {
		if (l->proto != 0 && l->proto != 43 && l->proto != 60)
			break;
		__u8 ext[2];
		if (bpf_skb_load_bytes(skb, l->off, ext, sizeof(ext)))
			return -1;
		l->proto = ext[0];
		l->off += (ext[1] + 1) * 8;
	}
	return 0;
}

static __always_inline void emit_query(struct querier *q, struct scratch *sc, struct l4 *l, __u8 proto,
				       __u16 port, __u8 verdict, __u8 reason)
{
	struct host_event *e = bpf_ringbuf_reserve(&host_events, sizeof(*e), 0);
	if (!e) {
		hstat(HS_LOST);
		return;
	}
	__builtin_memset(e, 0, sizeof(*e) - AF_NAME_MAX);
	for (int i = 0; i < AF_NAME_MAX / 8; i++)
		((__u64 *)e->name)[i] = 0;
	e->ts_ns = bpf_ktime_get_boot_ns();
	e->cgroup_id = q->cgroup_id;
	e->session_gen = q->b.gen;
	e->session_slot = q->b.slot;
	e->pid = q->tgid;
	e->uid = q->uid;
	e->gid = q->gid;
	__builtin_memcpy(e->comm, q->comm, sizeof(e->comm));
	e->kind = AF_HOST_DNS_QUERY;
	e->verdict = verdict;
	e->reason = reason;
	e->rule = AF_RULE_NONE;
	e->family = l->family;
	e->protocol = proto;
	__builtin_memcpy(e->addr, l->addr, 16);
	e->port = port;
	e->ttl_ns = sc->qtype;
	// The name as sent, whatever its bytes: user space decodes and
	// sanitises it (a refused name is exactly the one that may not be a
	// hostname).
	__u32 qoff = sc->qoff, len = sc->len, n = 0;
	for (int i = 0; i < AF_DNS_QUERY_RAW; i++) {
		if (qoff + i >= len)
			break;
		e->name[i] = pkt8(sc, qoff + i);
		n = i + 1;
	}
	e->name_len = n;
	bpf_ringbuf_submit(e, 0);
}

SEC("cgroup_skb/egress")
int dns_egress(struct __sk_buff *skb)
{
	struct bpf_sock *sk = skb->sk;
	if (!sk)
		return 1;
	sk = bpf_sk_fullsock(sk);
	if (!sk)
		return 1;
	__u32 proto = sk->protocol;
	if (proto != IPPROTO_UDP && proto != IPPROTO_TCP)
		return 1;
	struct querier q = {};
	struct member_sock *m = 0;
	struct sock_info *info = 0;
	if (find_querier(sk, &q, &m, &info))
		return 1;
	if ((m && (m->flags & AF_MEMBER_DNS_BLOCKED)) || (info && (info->flags & AF_SOCK_DNS_BLOCKED))) {
		// Even after the session ends: the refused bytes are still in
		// the socket's queue. Segments without data (the ACKs, FIN or
		// reset that end the connection) pass.
		struct l4 bl = {};
		__u8 tcp[13] = {};
		if (egress_l4(skb, &bl) || bl.proto != IPPROTO_TCP || bpf_skb_load_bytes(skb, bl.off, tcp, sizeof(tcp)))
			return 0;
		return bl.off + (tcp[12] >> 4) * 4 >= skb->len;
	}
	struct session *s = live_session(&q.b);
	if (!s)
		return 1;
	__u32 mode = s->dns;
	if (mode != AF_DNS_SCOPED && mode != AF_DNS_NONE)
		return 1;

	// From here on the session restricts DNS: a packet whose ports cannot
	// be found is refused, since it might be a query.
	struct l4 l = {};
	__u16 dport = 0;
	__u32 off = 0;
	int reason = 0;
	if (egress_l4(skb, &l) || l.proto != proto) {
		reason = AF_REASON_DNS_MALFORMED;
	} else if (proto == IPPROTO_UDP) {
		__u8 udp[8] = {};
		if (bpf_skb_load_bytes(skb, l.off, udp, sizeof(udp)))
			reason = AF_REASON_DNS_MALFORMED;
		dport = (udp[2] << 8) | udp[3];
		off = l.off + 8;
	} else {
		__u8 tcp[14] = {};
		if (bpf_skb_load_bytes(skb, l.off, tcp, sizeof(tcp)))
			reason = AF_REASON_DNS_MALFORMED;
		dport = (tcp[2] << 8) | tcp[3];
		off = l.off + (tcp[12] >> 4) * 4;
	}
	if (!reason && dport != dns_port)
		return 1;
	if (!reason && proto == IPPROTO_TCP && off >= skb->len)
		return 1; // no payload: handshake, ACKs, FIN
	// UDP segmentation offload sends several datagrams as one packet here;
	// only the first would be read.
	if (!reason && proto == IPPROTO_UDP && skb->gso_segs > 1)
		reason = AF_REASON_DNS_MALFORMED;

	struct scratch *sc = take_scratch(2);
	if (!sc)
		return 0; // fail closed: UDP sees EPERM, TCP sends again
	sc->slot = q.b.slot;
	sc->gen = q.b.gen;
	sc->len = 0;
	sc->qoff = 0;
	sc->qtype = 0;
	__u32 total = off < skb->len ? skb->len - off : 0;
	__u32 plen = payload_len(skb, off);
	if (!reason) {
		if (plen == 0 || load_payload(skb, off, sc, plen))
			reason = AF_REASON_DNS_MALFORMED;
		else
			sc->len = plen;
	}
	if (!reason && proto == IPPROTO_UDP) {
		// The question is at the start; what follows it reaches only
		// the resolver, which is in scope.
		reason = dns_query_check(0, plen, mode);
	} else if (!reason) {
		// TCP: every message of the segment, each after its 2-byte
		// length, must be complete in it and allowed. A query split over
		// segments is refused.
		if (total > plen)
			reason = AF_REASON_DNS_MALFORMED;
		__u32 moff = 0;
		int done = 0;
		for (int i = 0; i < MAX_TCP_QUERIES && !reason; i++) {
			if (moff + 2 > plen) {
				reason = AF_REASON_DNS_MALFORMED;
				break;
			}
			__u32 mlen = pkt16(sc, moff);
			if (moff + 2 + mlen > plen) {
				sc->qoff = moff + 2 + 12;
				reason = mode == AF_DNS_NONE ? AF_REASON_DNS_NONE : AF_REASON_DNS_MALFORMED;
				break;
			}
			reason = dns_query_check(moff + 2, mlen, mode);
			moff += 2 + mlen;
			if (moff >= plen) {
				done = 1;
				break;
			}
		}
		if (!reason && !done)
			reason = AF_REASON_DNS_MALFORMED;
	}
	if (!reason) {
		hstat(HS_QUERY_OK);
		sc->busy = 0;
		return 1;
	}

	hstat(HS_QUERY_DROP);
	__sync_fetch_and_add(&s->violations, 1);
	int enforce = s->mode != AF_MODE_AUDIT;
	emit_query(&q, sc, &l, proto, dport, enforce ? AF_VERDICT_DENIED : AF_VERDICT_WOULD_DENY, reason);
	sc->busy = 0;
	if (!enforce)
		return 1;
	if (proto == IPPROTO_TCP) {
		if (m)
			m->flags |= AF_MEMBER_DNS_BLOCKED;
		else if (info)
			info->flags |= AF_SOCK_DNS_BLOCKED;
	}
	return 0;
}
