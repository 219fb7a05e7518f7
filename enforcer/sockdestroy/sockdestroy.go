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
// (sockdiag.OpenIn), which takes CAP_SYS_ADMIN.
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
	"errors"
	"fmt"
	"net/netip"
	"strconv"

	"golang.org/x/sys/unix"

	"github.com/agentfence/agentfence/internal/sockdiag"
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
	c, err := sockdiag.OpenIn(g.pid)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	if len(g.rest) > 0 {
		more, err := find(c, g.rest)
		g.found = append(g.found, more...)
		errs = append(errs, err)
	}
	var targets []target
	for _, t := range g.found {
		if match == nil || match(t.conn) {
			targets = append(targets, t)
		}
	}
	destroyed, err := destroyTargets(c, targets)
	return destroyed, errors.Join(append(errs, err)...)
}

// find dumps the socket tables for the sockets of owners.
func find(c *sockdiag.Conn, owners map[uint64]int) ([]target, error) {
	var targets []target
	var errs []error
	for _, q := range queries {
		var found []target
		var err error
		for try := 0; try < dumpAttempts; try++ {
			found = found[:0]
			err = c.Dump(&q.Request, func(m *sockdiag.Msg) {
				pid, mine := owners[uint64(m.Inode)]
				if !mine {
					return
				}
				if t, ok := fromMsg(m, q.Protocol); ok {
					t.conn.PID = pid
					found = append(found, t)
				}
			})
			if err != sockdiag.ErrInterrupted {
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
// socket states to return.
type query struct{ sockdiag.Request }

func (q query) String() string {
	s := "tcp"
	if q.Protocol == unix.IPPROTO_UDP {
		s = "udp"
	}
	if q.Family == unix.AF_INET6 {
		return s + "6"
	}
	return s + "4"
}

// tcpStates selects every TCP state with a peer that a file can still own:
// not LISTEN, and not TIME_WAIT or NEW_SYN_RECV (mini sockets, inode 0).
const tcpStates = 1<<sockdiag.TCPEstablished | 1<<sockdiag.TCPSynSent | 1<<sockdiag.TCPSynRecv |
	1<<sockdiag.TCPFinWait1 | 1<<sockdiag.TCPFinWait2 | 1<<sockdiag.TCPClose | 1<<sockdiag.TCPCloseWait |
	1<<sockdiag.TCPLastAck | 1<<sockdiag.TCPClosing

// udpStates selects connected UDP sockets (unconnected ones are TCP_CLOSE).
const udpStates = 1 << sockdiag.TCPEstablished

var queries = [...]query{
	{sockdiag.Request{Family: unix.AF_INET, Protocol: unix.IPPROTO_TCP, States: tcpStates}},
	{sockdiag.Request{Family: unix.AF_INET6, Protocol: unix.IPPROTO_TCP, States: tcpStates}},
	{sockdiag.Request{Family: unix.AF_INET, Protocol: unix.IPPROTO_UDP, States: udpStates}},
	{sockdiag.Request{Family: unix.AF_INET6, Protocol: unix.IPPROTO_UDP, States: udpStates}},
}

// dumpAttempts bounds the retries of a dump interrupted by concurrent changes
// to the socket tables.
const dumpAttempts = 3

// target is a socket selected for destruction.
type target struct {
	conn Conn
	req  sockdiag.Request // family, protocol and the exact socket id
}

// fromMsg turns a socket of a dump into a target. It returns false for
// sockets without a peer or an owning file.
func fromMsg(m *sockdiag.Msg, proto uint8) (target, bool) {
	if m.Inode == 0 {
		return target{}, false
	}
	t := target{req: sockdiag.Request{Family: m.Family, Protocol: proto, ID: m.ID}}
	t.conn.Inode = uint64(m.Inode)
	src, dst := m.ID.SrcAddr(m.Family), m.ID.DstAddr(m.Family)
	switch m.Family {
	case unix.AF_INET:
	case unix.AF_INET6:
		src, dst = reported(src, m.ID.Ifindex), reported(dst, m.ID.Ifindex)
	default:
		return target{}, false
	}
	if m.ID.DstPort == 0 || !dst.IsValid() || dst.IsUnspecified() {
		return target{}, false
	}
	if proto == unix.IPPROTO_UDP {
		t.conn.Proto = "udp"
	} else {
		t.conn.Proto = "tcp"
	}
	t.conn.Local = netip.AddrPortFrom(src, m.ID.SrcPort)
	t.conn.Remote = netip.AddrPortFrom(dst, m.ID.DstPort)
	return t, true
}

// reported is an IPv6 address as Conn reports it: IPv4-mapped ones as
// IPv4, link-local ones with the bound device as their zone.
func reported(a netip.Addr, ifindex uint32) netip.Addr {
	if a.Is4In6() {
		return a.Unmap()
	}
	if ifindex != 0 && (a.IsLinkLocalUnicast() || a.IsLinkLocalMulticast()) {
		a = a.WithZone(strconv.FormatUint(uint64(ifindex), 10))
	}
	return a
}

// destroyTargets destroys the targets, sockdiag.DestroyBatch at a time, and
// returns those the kernel destroyed. It stops at a failure that every
// other socket would meet too.
func destroyTargets(c *sockdiag.Conn, targets []target) ([]Conn, error) {
	var done []Conn
	var errs []error
	reqs := make([]sockdiag.Request, 0, min(len(targets), sockdiag.DestroyBatch))
	for len(targets) > 0 {
		chunk := targets[:min(sockdiag.DestroyBatch, len(targets))]
		targets = targets[len(chunk):]
		reqs = reqs[:0]
		for i := range chunk {
			reqs = append(reqs, chunk[i].req)
		}
		results, err := c.Destroy(reqs)
		if err != nil {
			// Nothing of this chunk can be reported as destroyed.
			return done, errors.Join(append(errs, err)...)
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
