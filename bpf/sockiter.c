//go:build ignore

// The inet sockets a process holds, read in one pass for SOCK_DESTROY.
//
// A task_file iterator attached to one process (the pid parameter of task
// iterators, Linux 6.1+) writes, for every inet socket with a peer among the
// process's files, the inet_diag socket id SOCK_DESTROY looks it up by:
// addresses, ports, bound device and cookie. User space reads the records
// with one read(2) per process, where naming each socket through
// pidfd_getfd costs eight system calls. The threads of the process are
// walked too, though not always on 6.1, so user space reads the fd tables of
// threads that unshared theirs from /proc as well.
//
// Every pointer here is read as the verifier of any build allows it: field
// loads through BTF pointers, never a BTF pointer passed to a helper. One
// build of 6.18.44 refused sock->sk as an untrusted pointer for
// bpf_get_socket_cookie that another build accepted, so the cookie is read
// from the socket instead of being made by the helper.

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>

#include "core.h"
#include "common.h"
#include "sock.h"

char __license[] SEC("license") = "Dual MIT/GPL";

#define TCP_ESTABLISHED 1
#define TCP_CLOSE 7
#define TCP_LISTEN 10

// member_sock is one record; the layout is shared with iter.go.
struct member_sock {
	__u64 cookie; // 0: the socket never had one made
	__u64 ino;
	__u8 src[16]; // IPv4: the first four bytes
	__u8 dst[16];
	__u32 ifindex;
	__be16 sport;
	__be16 dport;
	__u8 family;
	__u8 protocol;
	__u8 state;
	__u8 pad[5];
};

// Referenced so that the type is in BTF, for bpf2go.
const struct member_sock *unused_member_sock __attribute__((unused));

// A socket SOCK_DESTROY can find: TCP in any state with a peer but CLOSE
// (not hashed) and LISTEN, UDP only when connected.
static __always_inline int wanted(__u16 type, __u16 protocol, __u8 state, __be16 dport)
{
	if (!dport)
		return 0;
	if (type == SOCK_STREAM && protocol == IPPROTO_TCP)
		return state != TCP_CLOSE && state != TCP_LISTEN;
	if (type == SOCK_DGRAM && protocol == IPPROTO_UDP)
		return state == TCP_ESTABLISHED;
	return 0;
}

SEC("iter/task_file")
int member_sockets(struct bpf_iter__task_file *ctx)
{
	struct file *file = ctx->file;
	if (!file)
		return 0;
	struct socket *sock = bpf_sock_from_file(file);
	if (!sock)
		return 0;
	struct sock *sk = sock->sk;
	if (!sk)
		return 0;

	struct member_sock m = {};
	m.family = sk->__sk_common.skc_family;
	if (m.family != AF_INET && m.family != AF_INET6)
		return 0;
	m.protocol = sk->sk_protocol;
	m.state = sk->__sk_common.skc_state;
	m.dport = sk->__sk_common.skc_dport;
	if (!wanted(sk->sk_type, m.protocol, m.state, m.dport))
		return 0;
	m.sport = bpf_htons(sk->__sk_common.skc_num);
	m.ifindex = sk->__sk_common.skc_bound_dev_if;
	if (m.family == AF_INET) {
		__builtin_memcpy(m.src, (void *)&sk->__sk_common.skc_rcv_saddr, 4);
		__builtin_memcpy(m.dst, (void *)&sk->__sk_common.skc_daddr, 4);
	} else {
		BPF_CORE_READ_INTO(&m.src, sk, __sk_common.skc_v6_rcv_saddr);
		BPF_CORE_READ_INTO(&m.dst, sk, __sk_common.skc_v6_daddr);
	}
	// A cookie is made on first use (SO_COOKIE, sock_diag, a helper); one
	// never made reads 0, and user space then asks SOCK_DESTROY to match by
	// the socket id alone.
	m.cookie = BPF_CORE_READ(sk, __sk_common.skc_cookie.counter);
	m.ino = BPF_CORE_READ(file, f_inode, i_ino);
	bpf_seq_write(ctx->meta->seq, &m, sizeof(m));
	return 0;
}
