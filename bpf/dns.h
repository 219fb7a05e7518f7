// Hostname scopes: the layouts shared by the gate (which consults learned
// addresses at connect and marks sockets) and the hostname programs (which
// learn addresses from DNS answers and check TLS SNI). Included by gate.h;
// docs/hostnames.md describes the design.
#pragma once

#include "common.h"

#define AF_NAME_MAX 256           // a presentation name is at most 253 bytes
#define AF_MAX_LEARNED_NAMES 4    // names one learned address is kept for
#define AF_MAX_HOST_NAMES 65536   // (slot, name) entries over all sessions
#define AF_MAX_LEARNED (1 << 16)  // learned (slot, address) entries, LRU

// The hooks and reasons of hostname decisions are in enum af_hook and enum
// af_reason (gate.h).

enum af_name_kind {
	AF_NAME_EXACT = 0,
	AF_NAME_WILDCARD = 1, // hash and name are the suffix after "*."
};

// Allowed names of a session: (slot, kind, FNV-1a hash of the lowercased
// name) → the port rules of every hostname rule with that name, and the
// name itself, which the kernel compares in full before trusting a hash.
struct name_key {
	__u32 slot;
	__u32 kind;
	__u64 hash;
};

struct name_val {
	struct scope_val scope; // gen, port rules, rule indexes
	__u32 len;
	__u32 _pad;
	char name[AF_NAME_MAX]; // zero padded
};

// Learned addresses: (slot, family, address) → the names it was learned
// for, each with its own expiry (CLOCK_BOOTTIME).
struct learned_key {
	__u32 slot;
	__u8 family; // 4 or 6
	__u8 _pad[3];
	__u8 addr[16]; // IPv4 in the first 4 bytes
};

struct learned_name {
	__u64 name_hash;  // the question name, for audit records
	__u64 rule_hash;  // name_key.hash of the rule that admitted it
	__u64 expires_ns; // 0 = unused
	__u32 kind;       // name_key.kind of that rule
	__u32 _pad;
};

struct learned_val {
	__u64 gen;
	struct learned_name names[AF_MAX_LEARNED_NAMES];
};

// Socket local storage written by the gate for every socket a session
// member was allowed to use; the cgroup_skb programs have no task context
// and find the session here.
#define AF_SOCK_SNI 1      // TCP allowed only through a learned name
#define AF_SOCK_SNI_DONE 2 // the first data segment was checked
#define AF_SOCK_BLOCKED 4  // the SNI check failed: drop everything
#define AF_SOCK_DNS_BLOCKED 8 // a TCP DNS stream was refused (dns_egress)

struct sock_info {
	struct binding b;
	__u64 cgroup_id;
	__u64 name_hash; // learned name the connect was allowed through
	__u32 tgid;
	__u32 uid;
	__u32 gid;
	__u16 rule;
	__u8 flags;
	__u8 _pad;
	char comm[16];
};

enum af_host_kind {
	AF_HOST_DNS_LEARNED = 1,  // an address learned for an allowed name
	AF_HOST_DNS_UNSCOPED = 2, // an answer for a name not in scope
	AF_HOST_SNI = 3,          // a TLS SNI check that failed
	AF_HOST_DNS_QUERY = 4,    // a member's DNS query refused by the session's dns mode
};

// A hostname event, on its own ring buffer (host_events).
struct host_event {
	__u64 ts_ns; // CLOCK_BOOTTIME
	__u64 cgroup_id;
	__u64 session_gen;
	__u64 name_hash;
	__u64 ttl_ns; // learned: how long the address is kept
	__u32 session_slot;
	__u32 pid;
	__u32 uid;
	__u32 gid;
	__u16 port; // host byte order: the peer's port
	__u16 rule; // AF_RULE_NONE when no rule matched
	__u16 name_len;
	__u8 kind;
	__u8 verdict;
	__u8 reason;
	__u8 family;
	__u8 protocol; // AF_HOST_DNS_QUERY: IPPROTO_UDP or IPPROTO_TCP
	__u8 _pad[5];
	__u8 addr[16]; // learned address, the TCP peer for SNI, the resolver of a query
	char comm[16];
	// The question name or the SNI, zero padded. For AF_HOST_DNS_QUERY:
	// the question's first AF_DNS_QUERY_RAW bytes as sent (wire labels, any
	// byte values), name_len of them; user space decodes and sanitises.
	char name[AF_NAME_MAX];
};

#define AF_DNS_QUERY_RAW 64

#define AF_HOST_NAMES_MAP                                     \
	struct {                                              \
		__uint(type, BPF_MAP_TYPE_HASH);              \
		__uint(max_entries, AF_MAX_HOST_NAMES);       \
		__uint(map_flags, BPF_F_NO_PREALLOC);         \
		__type(key, struct name_key);                 \
		__type(value, struct name_val);               \
	} host_names SEC(".maps")

#define AF_LEARNED_MAP                                        \
	struct {                                              \
		__uint(type, BPF_MAP_TYPE_LRU_HASH);          \
		__uint(max_entries, AF_MAX_LEARNED);          \
		__type(key, struct learned_key);              \
		__type(value, struct learned_val);            \
	} learned SEC(".maps")

#define AF_SOCK_INFO_MAP                                      \
	struct {                                              \
		__uint(type, BPF_MAP_TYPE_SK_STORAGE);        \
		__uint(map_flags, BPF_F_NO_PREALLOC);         \
		__type(key, int);                             \
		__type(value, struct sock_info);              \
	} session_socks SEC(".maps")

// FNV-1a, 64 bit, over the lowercased presentation name. Only an index:
// every hit is confirmed by comparing the whole name.
#define AF_FNV_OFFSET 0xcbf29ce484222325ULL
#define AF_FNV_PRIME 0x100000001b3ULL
