// Go's crypto/tls, included by tls.c (the same ring, event and maps).
//
// Go takes no return probes: a uretprobe swaps the return address on the
// goroutine's stack, which Go copies when it grows and walks when it
// unwinds (golang/go#22008), and the program crashes. So:
//   - (*Conn).Write is read at its entry: the buffer and its length are
//     the call's arguments. A Write that then fails (the peer gone) is
//     still reported with the length asked for; that is rare, and what was
//     asked to be sent is what the record is about.
//   - (*Conn).Read is remembered at its entry and read at each of its RET
//     instructions (user space finds them by decoding the function), where
//     the result n is in the first result register. The call is keyed by
//     the goroutine, not the thread: a Read that blocks is parked and may
//     resume on another thread.
//   - (*Conn).Close ends the connection, as SSL_free does.
// Arguments come in Go's internal register ABI (uregs.h), which Go 1.17
// (amd64) and 1.18 (arm64) introduced; user space attaches only to those.
//
// The socket is not learned from system calls (an entry probe has no
// return to end the window): it is read from the *tls.Conn itself,
// conn (a net.Conn interface) -> its data, a *net.TCPConn -> conn.fd, a
// *net.netFD -> pfd.Sysfd, with the offsets user space found for that
// executable (go_conn_offsets). Anything else behind the interface (a
// wrapper conn) yields garbage or a failed read: learn() takes a
// descriptor only if it is an INET socket of the task's own, so garbage
// means no socket (or, at worst, another socket of the same process).

// go_exe names an executable as the kernel does: its inode and the
// device, in the kernel's encoding, of its superblock.
struct go_exe {
	__u64 ino;
	__u32 dev;
	__u32 pad;
};

// go_offsets are where the path from a *tls.Conn to its descriptor goes,
// by executable (the layouts are the Go version's).
struct go_offsets {
	__u32 conn;  // tls.Conn.conn, the net.Conn interface
	__u32 fd;    // net.TCPConn's conn.fd, the *net.netFD
	__u32 sysfd; // net.netFD's pfd.Sysfd, an int
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, struct go_exe);
	__type(value, struct go_offsets);
} go_conn_offsets SEC(".maps");

struct go_read_key {
	__u32 tgid;
	__u32 pad;
	__u64 g; // the goroutine
};

// LRU: a Read whose goroutine never returned (the process killed while it
// waited) ages out.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct go_read_key);
	__type(value, struct tls_call);
} go_reads SEC(".maps");

// go_fd reads the descriptor under the *tls.Conn conn, or -1.
static __always_inline int go_fd(__u64 conn)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct inode *ino = BPF_CORE_READ(task, mm, exe_file, f_inode);
	struct go_exe k = {};

	if (!ino)
		return -1;
	k.ino = BPF_CORE_READ(ino, i_ino);
	k.dev = BPF_CORE_READ(ino, i_sb, s_dev);
	struct go_offsets *o = bpf_map_lookup_elem(&go_conn_offsets, &k);
	if (!o)
		return -1;
	__u64 data = 0, netfd = 0;
	__s64 fd = -1;
	// An interface value is (itab, data): the data word follows.
	if (bpf_probe_read_user(&data, sizeof(data), (void *)(conn + o->conn + 8)) || !data)
		return -1;
	if (bpf_probe_read_user(&netfd, sizeof(netfd), (void *)(data + o->fd)) || !netfd)
		return -1;
	if (bpf_probe_read_user(&fd, sizeof(fd), (void *)(netfd + o->sysfd)))
		return -1;
	if (fd < 0 || fd > 0x7fffffff)
		return -1;
	return fd;
}

// go_learn ties the connection to its socket, again when the descriptor
// changed (a *tls.Conn freed by the collector without Close, its memory
// reused for another connection).
static __always_inline void go_learn(struct tls_call *c, __u64 id)
{
	int fd = go_fd(c->ssl);

	if (fd < 0)
		return;
	struct tls_conn_key k = {.ssl = c->ssl, .tgid = id >> 32};
	struct tls_sock *s = bpf_map_lookup_elem(&tls_socks, &k);
	if (s && s->fd == fd)
		return;
	if (s)
		bpf_map_delete_elem(&tls_socks, &k);
	learn(c, id, fd);
}

SEC("uprobe/go_tls_write")
int af_go_tls_write(struct uregs *ctx)
{
	struct tls_call c = {};
	__s64 n = GO_ARG3(ctx);

	if (n <= 0 || !session_of(&c.member))
		return 0;
	__u64 id = bpf_get_current_pid_tgid();
	c.ssl = GO_ARG1(ctx);
	c.buf = GO_ARG2(ctx);
	c.op = AF_TLS_WRITE | AF_TLS_GO;
	go_learn(&c, id);
	emit(&c, id, n < 0xffffffff ? n : 0xffffffff);
	return 0;
}

SEC("uprobe/go_tls_read")
int af_go_tls_read(struct uregs *ctx)
{
	struct tls_call c = {};

	if (!session_of(&c.member))
		return 0;
	__u64 id = bpf_get_current_pid_tgid();
	c.ssl = GO_ARG1(ctx);
	c.buf = GO_ARG2(ctx);
	c.op = AF_TLS_READ | AF_TLS_GO;
	go_learn(&c, id);
	struct go_read_key k = {.tgid = id >> 32, .g = GO_G(ctx)};
	bpf_map_update_elem(&go_reads, &k, &c, BPF_ANY);
	return 0;
}

// At each RET of (*Conn).Read: the goroutine's call in flight, and n.
SEC("uprobe/go_tls_read_ret")
int af_go_tls_read_ret(struct uregs *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct go_read_key k = {.tgid = id >> 32, .g = GO_G(ctx)};
	struct tls_call *c = bpf_map_lookup_elem(&go_reads, &k);

	if (!c)
		return 0;
	__s64 n = GO_RET1(ctx);
	if (n > 0)
		emit(c, id, n < 0xffffffff ? n : 0xffffffff);
	bpf_map_delete_elem(&go_reads, &k);
	return 0;
}

SEC("uprobe/go_tls_close")
int af_go_tls_close(struct uregs *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct tls_conn_key k = {.ssl = GO_ARG1(ctx), .tgid = id >> 32};
	struct tls_call c = {.ssl = GO_ARG1(ctx), .op = AF_TLS_FREE | AF_TLS_GO};

	if (!session_of(&c.member) && !bpf_map_lookup_elem(&tls_socks, &k))
		return 0;
	emit(&c, id, 0);
	return 0;
}
