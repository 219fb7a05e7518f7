// Layouts of the egress gate's maps and events. Go gets them from bpf2go
// -type; enforcer/layout_test.go pins their sizes.
#pragma once

#include "common.h"

// Port rules carried by one scope trie entry. The trie returns only the
// longest prefix, so userspace copies the port rules of every shorter prefix
// that covers it into each entry; 16 is the most rules one address may need.
#define AF_MAX_PORT_RULES 16
#define AF_MAX_CGROUP_DEPTH 16

// The enums below reach Go through bpf2go -type (enforcer/gen.go); gate.c
// references each from an unused global so that BTF keeps it.

// The rule field of an event or socket when no rule matched.
enum af_rule_none {
	AF_RULE_NONE = 0xffff,
};

enum af_mode {
	AF_MODE_ENFORCE = 0,
	AF_MODE_AUDIT = 1,
};

enum af_state {
	AF_STATE_FREE = 0,
	AF_STATE_ACTIVE = 1,
	AF_STATE_QUARANTINED = 2, // only essential rules match
	AF_STATE_REVOKED = 3,     // nothing matches
};

// Session flags (session.flags).
enum af_session_flag {
	AF_SESSION_QUARANTINE_ON_BUDGET = 1,
	// The drift action is kill: a member found holding a socket no hook
	// can judge (boundary.c) is killed before the syscall returns to it.
	AF_SESSION_KILL_ON_DRIFT = 2,
	// The DNS egress program (dns.c dns_egress) is not loaded: the gate
	// itself refuses connect and sendmsg to the DNS port for a session
	// whose dns mode is not AF_DNS_ANY. Without the program no question
	// can be read, so scoped degrades to none (fail closed).
	AF_SESSION_DNS_AT_GATE = 4,
	// The session declares MCP servers (docs/mcp.md), whose launches are
	// fellow members until the daemon judges and binds them: its members
	// may attach (ptrace) to no process at all, may not ask to be traced,
	// and may not receive an inet socket (boundary.c).
	AF_SESSION_LAUNCHES_SERVERS = 8,
};

// What a session's members may ask a resolver (session.dns): the question
// name of every DNS query they send is judged in dns_egress.
enum af_dns_mode {
	AF_DNS_ANY = 0,    // anything (the behaviour before dns modes; old pins)
	AF_DNS_SCOPED = 1, // names the session's hostname rules cover
	AF_DNS_NONE = 2,   // nothing
};

enum af_verdict {
	AF_VERDICT_ALLOWED = 1,
	AF_VERDICT_DENIED = 2,
	AF_VERDICT_WOULD_DENY = 3,
};

enum af_reason {
	AF_REASON_RULE = 0,        // a rule matched
	AF_REASON_NO_RULE = 1,     // no rule matched
	AF_REASON_EXPIRED = 2,     // the session's expiry has passed
	AF_REASON_REVOKED = 3,     // the session was revoked
	AF_REASON_QUARANTINED = 4, // only essential rules match
	AF_REASON_SOCKET_TYPE = 5, // raw or non-TCP/UDP socket
	// Hostname decisions (dns.c).
	AF_REASON_SNI_MISMATCH = 6,   // SNI names a host not in scope
	AF_REASON_SNI_MISSING = 7,    // no SNI (not TLS, or a ClientHello without it)
	AF_REASON_SNI_INCOMPLETE = 8, // the SNI is not within the first segment
	AF_REASON_NAME_UNSCOPED = 9,  // a DNS answer for a name not in scope
	// DNS queries of members (dns_egress), by the session's dns mode.
	AF_REASON_DNS_UNSCOPED = 10,  // scoped: no hostname rule covers the question name
	AF_REASON_DNS_NONE = 11,      // none: no query may leave
	AF_REASON_DNS_MALFORMED = 12, // not one standard query with a readable question
	AF_REASON_SOCKET_FAMILY = 16, // a family other than unix, netlink, inet (boundary.c)
};

enum af_hook {
	AF_HOOK_CONNECT4 = 1,
	AF_HOOK_CONNECT6 = 2,
	AF_HOOK_SENDMSG4 = 3,
	AF_HOOK_SENDMSG6 = 4,
	AF_HOOK_SOCK_CREATE = 5,
	// The hostname programs (dns.c).
	AF_HOOK_DNS = 6, // a DNS answer delivered to a session socket
	AF_HOOK_SNI = 7, // the first data segment of a TCP connection
	AF_HOOK_BIND4 = 8,    // a member binds a port
	AF_HOOK_BIND6 = 9,
	AF_HOOK_INGRESS4 = 10, // a peer reaches a member's socket
	AF_HOOK_INGRESS6 = 11,
	// Sockets of other families (boundary.c): the BPF LSM refused or let
	// one through, or the socket syscall's exit saw its result, or the
	// fmod_ret program on security_socket_create refused or let it through.
	AF_HOOK_LSM_SOCKET = 16,
	AF_HOOK_SYS_SOCKET = 17,
	AF_HOOK_FMOD_SOCKET = 18,
};

enum af_stat {
	AF_STAT_LOST = 0, // ring buffer reserve failures
	AF_STAT_ALLOWED = 1,
	AF_STAT_DENIED = 2,
	AF_STAT_WOULD_DENY = 3,
	AF_STAT_MAX = 4,
};

// One slot of the session array. A slot is reused with a higher gen, so a
// binding, scope entry or event from an earlier session never matches it.
struct session {
	__u64 gen;
	__u64 expires_ns; // CLOCK_BOOTTIME; 0 = never
	__u32 state;
	__u32 mode;
	__u32 violations; // denials (or would-denials) so far
	__u32 budget;     // violations allowed before the drift action (flags)
	__u32 flags;
	__u32 dns; // enum af_dns_mode
};

#define AF_PROTO_TCP 1
#define AF_PROTO_UDP 2

// Port rule flags (port_rule.flags).
enum af_rule_flag {
	AF_RULE_ESSENTIAL = 1, // still matches in quarantine
	AF_RULE_EXE = 2,       // only for processes whose executable is exe
	AF_RULE_IN = 4,        // an in: rule: the prefix is peers, lo-hi local ports
};

struct port_rule {
	struct exe_id exe;
	__u16 lo; // host byte order, inclusive
	__u16 hi;
	__u16 rule; // index into the session's scope, reported in events
	__u8 protos;
	__u8 flags;
};

struct scope_val {
	__u64 gen;
	__u32 n;
	__u32 _pad;
	struct port_rule rules[AF_MAX_PORT_RULES];
};

struct scope4_key {
	__u32 prefixlen; // 32 (slot) + address prefix
	__u32 slot;
	__u8 addr[4];
};

struct scope6_key {
	__u32 prefixlen; // 32 (slot) + address prefix
	__u32 slot;
	__u8 addr[16];
};

struct exact4_key {
	__u32 slot;
	__u8 addr[4];
};

struct exact6_key {
	__u32 slot;
	__u8 addr[16];
};

// gate_event.name_flags.
enum af_event_name_flag {
	AF_EVENT_VIA_NAME = 1, // allowed through a learned hostname (dns.h)
};

struct gate_event {
	__u64 ts_ns; // CLOCK_BOOTTIME
	__u64 cgroup_id;
	__u64 session_gen;
	__u32 session_slot;
	__u32 pid; // thread group id
	__u32 tid;
	__u32 uid;
	__u32 gid;
	__u16 port; // host byte order
	__u16 rule; // AF_RULE_NONE when no rule matched
	__u8 addr[16]; // IPv4 in the first 4 bytes; v4-mapped IPv6 is unmapped
	char comm[16];
	__u8 family; // 4 or 6; 0 for sock_create
	__u8 protocol; // IPPROTO_*
	__u8 hook;
	__u8 verdict;
	__u8 reason;
	__u8 quarantined_now; // this decision used up the budget
	// Socket events (AF_HOOK_LSM_SOCKET, AF_HOOK_SYS_SOCKET): the socket's
	// address family and type; port then holds its protocol argument (an
	// ethertype for AF_PACKET) and name_hash the syscall's result (a file
	// descriptor, or a negative errno), 0 from the LSM.
	__u8 sock_family;
	__u8 sock_type;
	__u32 name_flags; // enum af_event_name_flag
	__u64 name_hash;  // that hostname's FNV-1a hash, 0 if none
	// Inbound (AF_HOOK_INGRESS*): addr and port above are the peer; these
	// are the member's side. suppressed counts the refusals of this
	// session not recorded one by one since its previous inbound record.
	__u8 local_addr[16];
	__u16 local_port;
	__u16 _pad2;
	__u32 suppressed;
};

// Aggregation of repeated allowed decisions (gate.c aggregated): the first
// decision of a key in a window is emitted at once and remembered here; its
// repeats are only counted, and userspace flushes them as one record when
// it swaps the window's map (enforcer/aggregate.go).
#define AF_AGG_ENTRIES 4096

struct agg_key {
	__u64 session_gen;
	__u64 cgroup_id;
	__u64 name_hash;
	__u32 session_slot;
	__u32 pid; // thread group id
	__u8 addr[16];
	__u16 port;
	__u16 rule;
	__u8 family;
	__u8 protocol;
	__u8 hook;
	__u8 _pad;
};

struct agg_val {
	__u64 count;    // repeats since the decision that was emitted
	__u64 first_ns; // the first repeat (0: none yet)
	__u64 last_ns;  // the latest repeat
	__u32 tid;      // of the emitted decision, as are the rest
	__u32 uid;
	__u32 gid;
	__u32 name_flags;
	char comm[16];
};

// Socket local storage of every TCP and UDP socket a session member
// creates (sock_create), for the ingress program, which runs without the
// task: the session it belongs to and who made it, for records.
struct member_sock {
	struct binding b;
	__u64 cgroup_id;
	__u32 tgid;
	__u32 uid;
	__u32 gid;
	__u32 flags; // AF_MEMBER_*
	char comm[16];
};

// A TCP DNS stream of this socket was refused (dns_egress): every later
// segment is dropped without another record, so retransmissions of the
// refused query do not each leave one.
#define AF_MEMBER_DNS_BLOCKED 1

#define AF_MEMBER_SOCKS_MAP                                   \
	struct {                                              \
		__uint(type, BPF_MAP_TYPE_SK_STORAGE);        \
		__uint(map_flags, BPF_F_NO_PREALLOC);         \
		__type(key, int);                             \
		__type(value, struct member_sock);            \
	} member_socks SEC(".maps")

// Refused inbound attempts are caused by peers, often outside the session,
// so they are recorded at most AF_INBOUND_RECORDS a second per session: a
// flood from outside cannot fill the ring and crowd out the members' own
// records. The rest are counted and the count travels with the next
// inbound record (gate_event.suppressed).
#define AF_INBOUND_RECORDS 32

struct inbound_log {
	__u64 gen;       // the session's; another generation starts afresh
	__u64 window_ns; // start of the current one-second window
	__u32 recorded;  // records in that window
	__u32 suppressed;
};

#include "dns.h"

// Maps of the gate that the hostname programs read too (loaded there with
// MapReplacements, so both objects see the same maps).
#define AF_SESSIONS_MAP                                       \
	struct {                                              \
		__uint(type, BPF_MAP_TYPE_ARRAY);             \
		__uint(max_entries, AF_MAX_SESSIONS);         \
		__type(key, __u32);                           \
		__type(value, struct session);                \
	} sessions SEC(".maps")

// The scope of every session: an LPM trie per family keyed (slot, prefix)
// for network rules, and a hash per family keyed (slot, address) for host
// rules (/32, /128), the most common kind (one MCP server, one API). A host
// rule is then one hash lookup instead of a trie walk whose depth grows with
// every session's rules. enforcer/policy.go puts each compiled entry in one
// of the two; a host entry carries the rules of every prefix covering it,
// like a trie entry does.
#define AF_SCOPE_MAP(name, key_type, type_)                   \
	struct {                                              \
		__uint(type, type_);                          \
		__uint(max_entries, 1 << 20);                 \
		__uint(map_flags, BPF_F_NO_PREALLOC);         \
		__type(key, key_type);                        \
		__type(value, struct scope_val);              \
	} name SEC(".maps")

// Declares the four scope maps and scope_entry, which returns the entry
// that decides (slot, addr): the host entry, else the longest prefix.
#define AF_SCOPE_MAPS                                                                  \
	AF_SCOPE_MAP(scope4, struct scope4_key, BPF_MAP_TYPE_LPM_TRIE);                \
	AF_SCOPE_MAP(scope6, struct scope6_key, BPF_MAP_TYPE_LPM_TRIE);                \
	AF_SCOPE_MAP(exact4, struct exact4_key, BPF_MAP_TYPE_HASH);                    \
	AF_SCOPE_MAP(exact6, struct exact6_key, BPF_MAP_TYPE_HASH);                    \
	static __always_inline struct scope_val *scope_entry(__u8 family, __u32 slot,  \
							     const __u8 *addr)         \
	{                                                                              \
		struct scope_val *v;                                                   \
		if (family == 4) {                                                     \
			struct exact4_key e = {.slot = slot};                          \
			__builtin_memcpy(e.addr, addr, 4);                             \
			v = bpf_map_lookup_elem(&exact4, &e);                          \
			if (v)                                                         \
				return v;                                              \
			struct scope4_key k = {.prefixlen = 64, .slot = slot};         \
			__builtin_memcpy(k.addr, addr, 4);                             \
			return bpf_map_lookup_elem(&scope4, &k);                       \
		}                                                                      \
		struct exact6_key e = {.slot = slot};                                  \
		__builtin_memcpy(e.addr, addr, 16);                                    \
		v = bpf_map_lookup_elem(&exact6, &e);                                  \
		if (v)                                                                 \
			return v;                                                      \
		struct scope6_key k = {.prefixlen = 160, .slot = slot};                \
		__builtin_memcpy(k.addr, addr, 16);                                    \
		return bpf_map_lookup_elem(&scope6, &k);                               \
	}
