package sockdestroy

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"unsafe"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/agentfence/agentfence/internal/sockdiag"
)

// iterator names the sockets of a process with the task_file iterator of
// bpf/sockiter.c, attached to that process alone: one read for all of a
// process's sockets instead of eight system calls per fd.
type iterator struct {
	prog *ebpf.Program
}

// loadIterator loads the program and attaches it once to this process: a
// kernel without BTF, bpf_sock_from_file (5.11) or task iterator parameters
// (6.1) fails here, and the caller falls back to pidfd_getfd.
func loadIterator() (*iterator, error) {
	var progs sockiterPrograms
	if err := loadSockiterObjects(&progs, nil); err != nil {
		return nil, fmt.Errorf("load socket iterator: %w", err)
	}
	it := &iterator{prog: progs.MemberSockets}
	if _, err := it.read(os.Getpid(), nil); err != nil {
		it.close()
		return nil, err
	}
	return it, nil
}

func (it *iterator) close() { it.prog.Close() }

// ProbeIterator loads the socket iterator and releases it again; the error
// says why Destroy falls back to pidfd_getfd.
func ProbeIterator() error {
	it, err := loadIterator()
	if err == nil {
		it.close()
	}
	return err
}

// scan is a scanner (see destroy): every socket found is named.
func (it *iterator) scan(pids []int) ([]target, map[uint64]int, error) {
	var found []target
	w := newFDWalk()
	var errs []error
	buf := make([]byte, 0, 16<<10)
	for _, pid := range pids {
		if pid <= 0 {
			continue
		}
		recs, err := it.read(pid, buf)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		buf = recs[:0]
		for len(recs) >= sizeofMemberSock {
			t := parseMemberSock(recs[:sizeofMemberSock])
			recs = recs[sizeofMemberSock:]
			// A socket shared by several members is destroyed once.
			if !w.seen[t.conn.Inode] {
				w.seen[t.conn.Inode] = true
				t.conn.PID = pid
				found = append(found, t)
			}
		}
		// Whether the kernel walks the threads' own fd tables differs
		// between kernels and between processes on one kernel (a 6.1
		// guest's iterator named such a thread's socket in one process and
		// not in another), so they are always read from /proc as well;
		// sockets the iterator named are skipped by inode.
		errs = append(errs, w.ownTables(pid))
	}
	return found, w.rest, errors.Join(errs...)
}

// read runs the iterator over pid's files and returns its records, in buf
// if they fit. A process that is gone yields none.
func (it *iterator) read(pid int, buf []byte) ([]byte, error) {
	info := iterTaskInfo{pid: uint32(pid)}
	attr := linkCreateIterAttr{
		progFD:      uint32(it.prog.FD()),
		attachType:  uint32(ebpf.AttachTraceIter),
		iterInfo:    unsafe.Pointer(&info),
		iterInfoLen: uint32(unsafe.Sizeof(info)),
	}
	link, err := bpf(bpfLinkCreate, unsafe.Pointer(&attr), unsafe.Sizeof(attr))
	if err != nil {
		return nil, fmt.Errorf("attach socket iterator to pid %d: %w", pid, err)
	}
	defer unix.Close(link)
	icreate := iterCreateAttr{linkFD: uint32(link)}
	fd, err := bpf(bpfIterCreate, unsafe.Pointer(&icreate), unsafe.Sizeof(icreate))
	if err != nil {
		return nil, fmt.Errorf("open socket iterator of pid %d: %w", pid, err)
	}
	defer unix.Close(fd)
	// The records of one process, read to the end; the kernel hands a
	// record that does not fit over in the next read.
	out := buf[:0]
	for {
		if len(out) == cap(out) {
			out = append(out, make([]byte, max(cap(out), 4096))...)[:len(out)]
		}
		n, err := unix.Read(fd, out[len(out):cap(out)])
		if err == unix.EINTR || err == unix.EAGAIN {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("read socket iterator of pid %d: %w", pid, err)
		}
		if n == 0 {
			return out, nil
		}
		out = out[:len(out)+n]
	}
}

const sizeofMemberSock = int(unsafe.Sizeof(sockiterMemberSock{}))

// parseMemberSock turns a struct member_sock into the target SOCK_DESTROY
// takes.
func parseMemberSock(b []byte) target {
	var m sockiterMemberSock
	copy(unsafe.Slice((*byte)(unsafe.Pointer(&m)), sizeofMemberSock), b)
	t := target{req: sockdiag.Request{Family: m.Family, Protocol: m.Protocol}}
	t.conn.Inode = m.Ino
	t.conn.Proto = "tcp"
	if m.Protocol == unix.IPPROTO_UDP {
		t.conn.Proto = "udp"
	}
	sport, dport := ntohs(m.Sport), ntohs(m.Dport)
	var src, dst netip.Addr
	if m.Family == unix.AF_INET {
		src, dst = netip.AddrFrom4([4]byte(m.Src[:4])), netip.AddrFrom4([4]byte(m.Dst[:4]))
		t.req.ID.Src, t.req.ID.Dst = sockdiag.AddrBytes(src), sockdiag.AddrBytes(dst)
	} else {
		t.req.ID.Src, t.req.ID.Dst = m.Src, m.Dst
		src, dst = reported(netip.AddrFrom16(m.Src), m.Ifindex), reported(netip.AddrFrom16(m.Dst), m.Ifindex)
	}
	t.req.ID.SrcPort, t.req.ID.DstPort = sport, dport
	t.req.ID.Ifindex = m.Ifindex
	t.req.ID.Cookie = m.Cookie
	if t.req.ID.Cookie == 0 {
		// Never made: sock_diag would make one on lookup and find it differs.
		t.req.ID.Cookie = sockdiag.NoCookie
	}
	t.conn.Local = netip.AddrPortFrom(src, sport)
	t.conn.Remote = netip.AddrPortFrom(dst, dport)
	return t
}

// ntohs turns a port of the record, in network byte order as the kernel
// keeps it, into host order.
func ntohs(v uint16) uint16 {
	var b [2]byte
	binary.NativeEndian.PutUint16(b[:], v)
	return binary.BigEndian.Uint16(b[:])
}

// The bpf(2) commands cilium/ebpf does not expose with the task parameters
// of iterators (include/uapi/linux/bpf.h).
const (
	bpfLinkCreate = 28
	bpfIterCreate = 33
)

// linkCreateIterAttr holds iter_info as a pointer the garbage collector
// sees, so that it stays valid should the stack move before the call
// (amd64 and arm64 only, like the BPF objects).
type linkCreateIterAttr struct {
	progFD      uint32
	targetFD    uint32
	attachType  uint32
	flags       uint32
	iterInfo    unsafe.Pointer
	iterInfoLen uint32
	_           uint32
}

// iterTaskInfo is the task member of union bpf_iter_link_info.
type iterTaskInfo struct {
	tid, pid, pidFD uint32
}

type iterCreateAttr struct {
	linkFD uint32
	flags  uint32
}

func bpf(cmd uintptr, attr unsafe.Pointer, size uintptr) (int, error) {
	fd, _, errno := unix.Syscall(unix.SYS_BPF, cmd, uintptr(attr), size)
	if errno != 0 {
		return -1, errno
	}
	return int(fd), nil
}
