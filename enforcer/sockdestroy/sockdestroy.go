// Package sockdestroy tears down the live TCP connections and connected UDP
// sockets of an intent session's member processes.
//
// The eBPF gate only sees connect(2) and sendmsg(2): once a session is
// revoked, expires or has its scope narrowed, new connects are denied at
// once, but a connection established earlier keeps working until someone
// kills it. Destroy does that from user space with the SOCK_DESTROY command of
// NETLINK_SOCK_DIAG, the same mechanism as `ss -K`. It works on every kernel
// since 4.5 built with CONFIG_INET_DIAG_DESTROY (needs CAP_NET_ADMIN), for
// TCP and UDP, IPv4 and IPv6.
//
// Finding the sockets costs what the members hold, not what the host
// holds. Where the kernel has task iterators of one process (6.1+) and BTF,
// a task_file iterator (bpf/sockiter.c) attached to each member process
// writes the inet_diag socket id of every inet socket it holds, cookie
// included: one read(2) per process. Elsewhere each fd in /proc/<pid>/fd is
// duplicated into this process with pidfd_getfd (Linux 5.6+; the same
// ptrace access check as reading that directory), and the socket's own
// addresses, protocol, bound device and cookie are read from it, eight
// system calls a socket. Only what that cannot name (a TCP connect still in
// SYN_SENT has no peer address to read; a process whose fds a stricter
// ptrace policy withholds) is found with sock_diag dumps, matched by inode.
// Dumps walk the whole established hash table once per family, about
// 1.5 ms each on a host with 262,144 buckets, so they are the last resort,
// not the path. A thread that unshared its fd table (unshare(CLONE_FILES))
// holds sockets that /proc/<pid>/fd and pidfd_getfd do not show, nor, at
// times, the 6.1 iterator: on every path kcmp finds such threads and their
// tables are read from /proc/<pid>/task/<tid>/fd. (The bpf_sock_destroy kfunc, 6.5+, runs only in socket
// iterators, which walk the same table; measured here it was slower:
// docs/benchmarks.md.)
//
// Sockets with a peer (TCP in any state but LISTEN, UDP only when
// connected) are offered to the match function and destroyed by their exact
// socket id, cookie included, so a socket that was closed and replaced by
// another one with the same 4-tuple is never hit. The owner sees
// ECONNABORTED on its next call; a TCP peer receives a RST.
//
// sock_diag reaches the sockets of the network namespace its own socket was
// opened in. A member in another namespace (a container's, typically) has
// its sockets destroyed through a sock_diag socket opened in that namespace
// (vishvananda/netlink), which takes CAP_SYS_ADMIN.
//
// Not covered:
//   - a socket is found only through a process in the pid list: one passed
//     with SCM_RIGHTS (or inherited) to a process outside the session stays
//     alive, as does one held only in flight in a unix socket queue;
//   - sockets connected after Destroy has scanned /proc are not destroyed, so
//     the gate's maps must be updated before Destroy is called;
//   - for UDP the kernel looks the socket up by 4-tuple, and with
//     SO_REUSEPORT groups the cookie check may reject it (reported as
//     vanished, not as an error).
package sockdestroy

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"strconv"

	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Conn is one socket of a member process.
type Conn struct {
	PID    int
	Inode  uint64
	Proto  string // "tcp" or "udp"
	Local  netip.AddrPort
	Remote netip.AddrPort // IPv4-mapped IPv6 remotes reported as IPv4
}

func (c Conn) String() string {
	return fmt.Sprintf("%s %s->%s (pid %d, inode %d)", c.Proto, c.Local, c.Remote, c.PID, c.Inode)
}

// Destroyer destroys the sockets of member processes.
type Destroyer struct {
	it  *iterator
	why error // why sockets are not named by the iterator
}

// New returns a Destroyer that names sockets with the BPF iterator where the
// kernel has one (6.1+, with BTF), else through pidfd_getfd.
func New() *Destroyer {
	it, err := loadIterator()
	return &Destroyer{it: it, why: err}
}

// Iterator reports nil where sockets are named by the BPF iterator, else
// why they are named through pidfd_getfd.
func (d *Destroyer) Iterator() error { return d.why }

// Naming says how the Destroyer names sockets, and why not with the
// iterator.
func (d *Destroyer) Naming() string {
	if d.it != nil {
		return "bpf task_file iterator"
	}
	return fmt.Sprintf("pidfd_getfd (bpf iterator: %v)", d.why)
}

// Close releases the iterator program.
func (d *Destroyer) Close() {
	if d.it != nil {
		d.it.close()
	}
}

// Destroy finds the TCP (any state with a remote peer, i.e. not LISTEN) and
// connected UDP sockets, IPv4 and IPv6, owned by the given processes
// (processes that vanish meanwhile are skipped), and destroys those for
// which match returns true (a nil match selects all). It returns the
// destroyed ones and an error joining the per-socket failures; a socket that
// disappeared in between is not an error. Local addresses of IPv4-mapped
// sockets are reported as IPv4 too.
//
// Destroy needs CAP_NET_ADMIN, CAP_SYS_PTRACE for the members' fd tables or
// CAP_BPF and CAP_PERFMON for the iterator, and CAP_SYS_ADMIN for members
// in other network namespaces. Update the gate's maps first: sockets
// connected after the scan are not destroyed. A call with no member sockets
// does no netlink work at all.
func (d *Destroyer) Destroy(pids []int, match func(Conn) bool) ([]Conn, error) {
	if d.it != nil {
		return destroy(pids, match, d.it.scan)
	}
	return destroy(pids, match, scan)
}

// destroy is Destroy with the scanner as a parameter, so that the tests can
// also take the dump path for every socket.
func destroy(pids []int, match func(Conn) bool, scan func([]int) ([]target, map[uint64]int, error)) ([]Conn, error) {
	found, rest, err := scan(pids)
	if len(found) == 0 && len(rest) == 0 {
		return nil, err
	}
	errs := []error{err}
	var done []Conn
	for _, g := range byNetns(found, rest) {
		conns, err := g.destroy(match)
		done = append(done, conns...)
		errs = append(errs, err)
	}
	return done, errors.Join(errs...)
}

// netnsGroup is what destroy does in one network namespace: sock_diag
// finds and destroys sockets of the namespace its socket was opened in.
type netnsGroup struct {
	pid   int // a member in the namespace, 0 for ours
	found []target
	rest  map[uint64]int
}

// byNetns groups the sockets by the network namespace of the member
// holding them (a container's members usually have one of their own).
func byNetns(found []target, rest map[uint64]int) []*netnsGroup {
	self, _ := netnsOf("self")
	nsOf := make(map[int]uint64)
	groups := make(map[uint64]*netnsGroup)
	var order []*netnsGroup
	group := func(pid int) *netnsGroup {
		ns, ok := nsOf[pid]
		if !ok {
			ns, _ = netnsOf(strconv.Itoa(pid))
			nsOf[pid] = ns
		}
		if ns == 0 || ns == self {
			ns, pid = self, 0 // ours, or a process gone meanwhile
		}
		g := groups[ns]
		if g == nil {
			g = &netnsGroup{pid: pid, rest: make(map[uint64]int)}
			groups[ns] = g
			order = append(order, g)
		}
		return g
	}
	for _, t := range found {
		g := group(t.conn.PID)
		g.found = append(g.found, t)
	}
	for ino, pid := range rest {
		group(pid).rest[ino] = pid
	}
	return order
}

// netnsOf is the inode of /proc/<pid>/ns/net.
func netnsOf(pid string) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat("/proc/"+pid+"/ns/net", &st); err != nil {
		return 0, err
	}
	return st.Ino, nil
}

func (g *netnsGroup) destroy(match func(Conn) bool) ([]Conn, error) {
	var errs []error
	d, err := openDiagIn(g.pid)
	if err != nil {
		return nil, err
	}
	defer d.close()
	if len(g.rest) > 0 {
		more, err := d.find(g.rest)
		g.found = append(g.found, more...)
		errs = append(errs, err)
	}
	var targets []target
	for _, t := range g.found {
		if match == nil || match(t.conn) {
			targets = append(targets, t)
		}
	}
	destroyed, err := d.destroy(targets)
	return destroyed, errors.Join(append(errs, err)...)
}

// find dumps the socket tables for the sockets of owners.
func (d *diag) find(owners map[uint64]int) ([]target, error) {
	var targets []target
	var errs []error
	for _, q := range queries {
		var found []target
		var err error
		for try := 0; try < dumpAttempts; try++ {
			found = found[:0]
			err = d.dump(q, func(m []byte) {
				if len(m) < sizeofMsg {
					return
				}
				pid, mine := owners[uint64(binary.NativeEndian.Uint32(m[msgInodeOff:]))]
				if !mine {
					return
				}
				if t, ok := parseMsg(m, q.proto); ok {
					t.conn.PID = pid
					found = append(found, t)
				}
			})
			if err != errInterrupted {
				break
			}
		}
		if err != nil {
			// An interrupted dump still yields what it saw.
			errs = append(errs, fmt.Errorf("sock_diag dump %s: %w", q, err))
		}
		targets = append(targets, found...)
	}
	return targets, errors.Join(errs...)
}

// query is one sock_diag dump: an address family and protocol, and the
// socket states (as a bit mask of 1<<TCP_*) to return.
type query struct {
	family uint8
	proto  uint8
	states uint32
}

func (q query) String() string {
	s := "tcp"
	if q.proto == unix.IPPROTO_UDP {
		s = "udp"
	}
	if q.family == unix.AF_INET6 {
		return s + "6"
	}
	return s + "4"
}

// Kernel TCP states (include/net/tcp_states.h).
const (
	tcpEstablished = 1
	tcpSynSent     = 2
	tcpSynRecv     = 3
	tcpFinWait1    = 4
	tcpFinWait2    = 5
	tcpClose       = 7
	tcpCloseWait   = 8
	tcpLastAck     = 9
	tcpClosing     = 11
)

// tcpStates selects every TCP state with a peer that a file can still own:
// not LISTEN, and not TIME_WAIT or NEW_SYN_RECV (mini sockets, inode 0).
const tcpStates = 1<<tcpEstablished | 1<<tcpSynSent | 1<<tcpSynRecv |
	1<<tcpFinWait1 | 1<<tcpFinWait2 | 1<<tcpClose | 1<<tcpCloseWait |
	1<<tcpLastAck | 1<<tcpClosing

// udpStates selects connected UDP sockets (unconnected ones are TCP_CLOSE).
const udpStates = 1 << tcpEstablished

var queries = [...]query{
	{unix.AF_INET, unix.IPPROTO_TCP, tcpStates},
	{unix.AF_INET6, unix.IPPROTO_TCP, tcpStates},
	{unix.AF_INET, unix.IPPROTO_UDP, udpStates},
	{unix.AF_INET6, unix.IPPROTO_UDP, udpStates},
}

// Layout of struct inet_diag_req_v2 and struct inet_diag_msg
// (include/uapi/linux/inet_diag.h).
const (
	sizeofNlmsghdr = unix.SizeofNlMsghdr // 16
	sizeofSockID   = 48                  // struct inet_diag_sockid
	sizeofReq      = 8 + sizeofSockID    // struct inet_diag_req_v2
	sizeofMsg      = 4 + sizeofSockID + 20
	msgIDOff       = 4 // offset of the sockid in inet_diag_msg
	reqIDOff       = 8 // offset of the sockid in inet_diag_req_v2
	msgInodeOff    = 68
	// noCookie in both halves of idiag_cookie (INET_DIAG_NOCOOKIE) tells
	// sock_diag to match by the socket id alone.
	noCookie = ^uint64(0)
)

// target is a socket selected for destruction.
type target struct {
	conn   Conn
	family uint8
	proto  uint8
	id     [sizeofSockID]byte // exact inet_diag_sockid from the dump
}

// parseMsg decodes an inet_diag_msg. It returns false for sockets without a
// peer or an owning file.
func parseMsg(m []byte, proto uint8) (target, bool) {
	if len(m) < sizeofMsg {
		return target{}, false
	}
	t := target{family: m[0], proto: proto}
	copy(t.id[:], m[msgIDOff:msgIDOff+sizeofSockID])
	t.conn.Inode = uint64(binary.NativeEndian.Uint32(m[msgInodeOff:]))
	if t.conn.Inode == 0 {
		return target{}, false
	}
	sport := binary.BigEndian.Uint16(t.id[0:])
	dport := binary.BigEndian.Uint16(t.id[2:])
	ifindex := binary.NativeEndian.Uint32(t.id[36:])
	var src, dst netip.Addr
	switch t.family {
	case unix.AF_INET:
		src = netip.AddrFrom4([4]byte(t.id[4:8]))
		dst = netip.AddrFrom4([4]byte(t.id[20:24]))
	case unix.AF_INET6:
		src = addr6([16]byte(t.id[4:20]), ifindex)
		dst = addr6([16]byte(t.id[20:36]), ifindex)
	default:
		return target{}, false
	}
	if dport == 0 || !dst.IsValid() || dst.IsUnspecified() {
		return target{}, false
	}
	if proto == unix.IPPROTO_UDP {
		t.conn.Proto = "udp"
	} else {
		t.conn.Proto = "tcp"
	}
	t.conn.Local = netip.AddrPortFrom(src, sport)
	t.conn.Remote = netip.AddrPortFrom(dst, dport)
	return t, true
}

func addr6(b [16]byte, ifindex uint32) netip.Addr {
	a := netip.AddrFrom16(b)
	if a.Is4In6() {
		return a.Unmap()
	}
	if ifindex != 0 && (a.IsLinkLocalUnicast() || a.IsLinkLocalMulticast()) {
		a = a.WithZone(strconv.FormatUint(uint64(ifindex), 10))
	}
	return a
}

// diag is a NETLINK_SOCK_DIAG socket.
type diag struct {
	fd  int
	seq uint32
	buf []byte
	ns  *nl.NetlinkSocket // set when opened in another network namespace
}

// openDiag opens a sock_diag socket in this process's network namespace.
func openDiag() (*diag, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
	if err != nil {
		return nil, fmt.Errorf("netlink sock_diag socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("netlink sock_diag bind: %w", err)
	}
	return newDiag(fd, nil), nil
}

// openDiagIn opens the sock_diag socket in the network namespace of pid
// (ours for 0): sock_diag reaches the sockets of the namespace its socket
// was created in. Entering the namespace takes CAP_SYS_ADMIN.
func openDiagIn(pid int) (*diag, error) {
	if pid == 0 {
		return openDiag()
	}
	ns, err := netns.GetFromPid(pid)
	if err != nil {
		return nil, fmt.Errorf("network namespace of pid %d: %w", pid, err)
	}
	defer ns.Close()
	s, err := nl.GetNetlinkSocketAt(ns, netns.None(), unix.NETLINK_SOCK_DIAG)
	if err != nil {
		return nil, fmt.Errorf("netlink sock_diag socket in the network namespace of pid %d: %w", pid, err)
	}
	// The library opens it non-blocking; the reads here block with a
	// timeout or pass MSG_DONTWAIT.
	if err := unix.SetNonblock(s.GetFd(), false); err != nil {
		s.Close()
		return nil, err
	}
	return newDiag(s.GetFd(), s), nil
}

func newDiag(fd int, ns *nl.NetlinkSocket) *diag {
	// Acks without the echoed request; a bounded wait should the kernel
	// ever drop a reply.
	_ = unix.SetsockoptInt(fd, unix.SOL_NETLINK, unix.NETLINK_CAP_ACK, 1)
	tv := unix.Timeval{Sec: 10}
	_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	// Dumps are sized by the reader's buffer, up to 32 KiB per datagram.
	return &diag{fd: fd, seq: 1, buf: make([]byte, 64<<10), ns: ns}
}

func (d *diag) close() {
	if d.ns != nil {
		d.ns.Close()
		return
	}
	unix.Close(d.fd)
}

var kernel = &unix.SockaddrNetlink{Family: unix.AF_NETLINK}

// putReq appends a netlink message carrying an inet_diag_req_v2.
func putReq(b []byte, typ, flags uint16, seq uint32, family, proto uint8, states uint32, id *[sizeofSockID]byte) []byte {
	off := len(b)
	b = append(b, make([]byte, sizeofNlmsghdr+sizeofReq)...)
	h := b[off:]
	binary.NativeEndian.PutUint32(h[0:], sizeofNlmsghdr+sizeofReq)
	binary.NativeEndian.PutUint16(h[4:], typ)
	binary.NativeEndian.PutUint16(h[6:], flags)
	binary.NativeEndian.PutUint32(h[8:], seq)
	r := h[sizeofNlmsghdr:]
	r[0], r[1] = family, proto
	binary.NativeEndian.PutUint32(r[4:], states)
	if id != nil {
		copy(r[reqIDOff:], id[:])
	}
	return b
}

// recv reads one datagram from the kernel and calls fn for each netlink
// message in it.
func (d *diag) recv(fn func(typ, flags uint16, seq uint32, payload []byte) error) error {
	return d.recvFlags(0, fn)
}

// recvFlags is recv with recvmsg flags (MSG_DONTWAIT: EAGAIN when nothing
// is queued).
func (d *diag) recvFlags(flags int, fn func(typ, flags uint16, seq uint32, payload []byte) error) error {
	for {
		n, _, rflags, from, err := unix.Recvmsg(d.fd, d.buf, nil, flags)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("netlink recv: %w", err)
		}
		if rflags&unix.MSG_TRUNC != 0 {
			return errors.New("netlink recv: message truncated")
		}
		if sa, ok := from.(*unix.SockaddrNetlink); !ok || sa.Pid != 0 {
			continue // not from the kernel
		}
		b := d.buf[:n]
		for len(b) >= sizeofNlmsghdr {
			l := int(binary.NativeEndian.Uint32(b[0:]))
			if l < sizeofNlmsghdr || l > len(b) {
				return errors.New("netlink recv: malformed message")
			}
			err := fn(binary.NativeEndian.Uint16(b[4:]), binary.NativeEndian.Uint16(b[6:]),
				binary.NativeEndian.Uint32(b[8:]), b[sizeofNlmsghdr:l])
			if err != nil {
				return err
			}
			b = b[min(nlmsgAlign(l), len(b)):]
		}
		return nil
	}
}

func nlmsgAlign(l int) int { return (l + unix.NLMSG_ALIGNTO - 1) &^ (unix.NLMSG_ALIGNTO - 1) }

var errDone = errors.New("done")

// errInterrupted reports a dump the kernel flagged as inconsistent because
// the socket tables changed during it.
var errInterrupted = errors.New("dump interrupted, results may be incomplete")

// dumpAttempts bounds the retries of a dump interrupted by concurrent changes
// to the socket tables.
const dumpAttempts = 3

// dump runs one SOCK_DIAG_BY_FAMILY dump, calling fn for each inet_diag_msg
// (valid only during the call). It returns errInterrupted if the kernel
// flagged the dump as inconsistent.
func (d *diag) dump(q query, fn func([]byte)) error {
	d.seq++
	seq := d.seq
	req := putReq(nil, unix.SOCK_DIAG_BY_FAMILY, unix.NLM_F_REQUEST|unix.NLM_F_DUMP, seq, q.family, q.proto, q.states, nil)
	if err := unix.Sendto(d.fd, req, 0, kernel); err != nil {
		return fmt.Errorf("netlink send: %w", err)
	}
	interrupted := false
	var err error
	for err == nil {
		err = d.recv(func(typ, flags uint16, s uint32, p []byte) error {
			if s != seq {
				return nil // stale reply
			}
			if flags&unix.NLM_F_DUMP_INTR != 0 {
				interrupted = true
			}
			switch typ {
			case unix.NLMSG_DONE, unix.NLMSG_ERROR:
				if len(p) >= 4 {
					if e := int32(binary.NativeEndian.Uint32(p)); e < 0 {
						return unix.Errno(-e)
					}
				}
				return errDone
			case unix.SOCK_DIAG_BY_FAMILY:
				fn(p)
			}
			return nil
		})
	}
	if err != errDone {
		return err
	}
	if interrupted {
		return errInterrupted
	}
	return nil
}

// batch is the number of SOCK_DESTROY requests sent in one datagram; their
// error replies (about 1 KiB of receive buffer each) must fit the socket's
// buffer.
const batch = 32

// destroy sends SOCK_DESTROY for every target and returns those the kernel
// destroyed. The requests ask for no acknowledgement: the kernel handles a
// request datagram within the sendto that carries it, and answers only the
// requests that failed, so once sendto has returned every failure is queued
// on the socket and every other target is gone. That saves a reply and a
// recvmsg per socket.
func (d *diag) destroy(targets []target) ([]Conn, error) {
	var done []Conn
	var errs []error
	req := make([]byte, 0, batch*(sizeofNlmsghdr+sizeofReq))
	for len(targets) > 0 {
		chunk := targets[:min(batch, len(targets))]
		targets = targets[len(chunk):]
		base := d.seq + 1
		d.seq += uint32(len(chunk))
		req = req[:0]
		for i := range chunk {
			t := &chunk[i]
			req = putReq(req, unix.SOCK_DESTROY, unix.NLM_F_REQUEST, base+uint32(i), t.family, t.proto, 0, &t.id)
		}
		if err := unix.Sendto(d.fd, req, 0, kernel); err != nil {
			return done, errors.Join(append(errs, fmt.Errorf("netlink send: %w", err))...)
		}
		results := make([]error, len(chunk))
		for {
			err := d.recvFlags(unix.MSG_DONTWAIT, func(typ, _ uint16, s uint32, p []byte) error {
				i := s - base
				if typ != unix.NLMSG_ERROR || s < base || i >= uint32(len(chunk)) || len(p) < 4 {
					return nil
				}
				if e := int32(binary.NativeEndian.Uint32(p)); e < 0 {
					results[i] = unix.Errno(-e)
				}
				return nil
			})
			if errors.Is(err, unix.EAGAIN) {
				break
			}
			if err != nil {
				// ENOBUFS would mean failures were dropped: nothing of
				// this chunk can be reported as destroyed.
				return done, errors.Join(append(errs, err)...)
			}
		}
		fatal := false
		for i, err := range results {
			switch err {
			case nil:
				done = append(done, chunk[i].conn)
			case unix.ENOENT:
				// Closed, or replaced by a socket with another cookie.
			case unix.EOPNOTSUPP, unix.EPERM, unix.EACCES:
				fatal = true
				errs = append(errs, fmt.Errorf("sock_diag destroy %s: %w", chunk[i].conn, err))
			default:
				errs = append(errs, fmt.Errorf("sock_diag destroy %s: %w", chunk[i].conn, err))
			}
		}
		if fatal {
			if len(targets) > 0 {
				errs = append(errs, fmt.Errorf("sock_diag destroy: %d more sockets not attempted", len(targets)))
			}
			break
		}
	}
	return done, errors.Join(errs...)
}
