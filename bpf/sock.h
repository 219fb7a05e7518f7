// CO-RE views of the socket structures (sockiter.c reads a member's
// sockets, tls.c the socket a TLS call went out on). Only the fields read
// are declared; preserve_access_index relocates each against the kernel.
#pragma once

#pragma clang attribute push(__attribute__((preserve_access_index)), apply_to = record)

struct in6_addr {
	__u8 bytes[16];
};

typedef struct {
	__s64 counter;
} atomic64_t;

struct sock_common {
	__be32 skc_daddr;
	__be32 skc_rcv_saddr;
	__be16 skc_dport;
	__u16 skc_num;
	unsigned short skc_family;
	volatile unsigned char skc_state;
	int skc_bound_dev_if;
	struct in6_addr skc_v6_daddr;
	struct in6_addr skc_v6_rcv_saddr;
	atomic64_t skc_cookie;
};

struct sock {
	struct sock_common __sk_common;
	__u16 sk_type;     // a plain field since 5.6, as is sk_protocol
	__u16 sk_protocol;
};

struct socket {
	struct sock *sk;
};

#pragma clang attribute pop
