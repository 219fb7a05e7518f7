package sockdestroy

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"

	"golang.org/x/sys/unix"

	"github.com/agentfence/agentfence/internal/sockdiag"
)

// scan finds the sockets of pids by taking a copy of each of their fds
// (pidfd_getfd) and reading the socket's identity from it. It returns the
// sockets it named, each once, and those it could not, by inode with the
// first pid holding them, for a dump to find.
func scan(pids []int) ([]target, map[uint64]int, error) {
	var found []target
	w := newFDWalk()
	var errs []error
	for _, pid := range pids {
		if pid <= 0 {
			continue
		}
		pidfd, err := unix.PidfdOpen(pid, 0)
		if err != nil {
			if !gone(err) {
				errs = append(errs, fmt.Errorf("pidfd_open %d: %w", pid, err))
			}
			continue
		}
		err = w.each(pid, func(dir int, name string) bool {
			fd, err := strconv.Atoi(name)
			if err != nil {
				return true
			}
			sock, err := unix.PidfdGetfd(pidfd, fd, 0)
			if err == unix.EBADF || gone(err) {
				return true // closed meanwhile
			}
			if err != nil {
				// EPERM under a ptrace policy stricter than root's, EMFILE
				// here: this process's sockets are found by the dump.
				return false
			}
			defer unix.Close(sock)
			var st unix.Stat_t
			if unix.Fstat(sock, &st) != nil || st.Mode&unix.S_IFMT != unix.S_IFSOCK || w.seen[st.Ino] {
				return true
			}
			w.seen[st.Ino] = true
			switch t, n := describe(sock); n {
			case named:
				t.conn.PID, t.conn.Inode = pid, st.Ino
				found = append(found, t)
			case unnamed:
				w.rest[st.Ino] = pid
			}
			return true
		})
		unix.Close(pidfd)
		if err == errStopped {
			err = w.links(pid)
		}
		errs = append(errs, err, w.ownTables(pid))
	}
	return found, w.rest, errors.Join(errs...)
}

// scanOnlyLinks finds every socket of pids by inode, for the dump: the
// path scan falls back to, on its own for the tests.
func scanOnlyLinks(pids []int) ([]target, map[uint64]int, error) {
	w := newFDWalk()
	var errs []error
	for _, pid := range pids {
		if pid > 0 {
			errs = append(errs, w.links(pid), w.ownTables(pid))
		}
	}
	return nil, w.rest, errors.Join(errs...)
}

// fdWalk walks the fd tables of processes: the sockets seen so far (by
// inode), those left for a dump (inode → first pid holding it), and the
// buffers it reuses.
type fdWalk struct {
	seen  map[uint64]bool
	rest  map[uint64]int
	dents []byte
	names []string
}

func newFDWalk() *fdWalk {
	return &fdWalk{seen: make(map[uint64]bool), rest: make(map[uint64]int), dents: make([]byte, 8192)}
}

// links adds to rest the socket inodes /proc/<pid>/fd links to
// ("socket:[N]") that are not yet seen.
func (w *fdWalk) links(pid int) error { return w.linksIn(fdDir(pid), pid) }

// linksIn is links over the fd directory of pid or of one of its threads.
func (w *fdWalk) linksIn(fds string, pid int) error {
	link := make([]byte, 64)
	var errs []error
	err := w.eachIn(fds, func(dir int, name string) bool {
		l, err := unix.Readlinkat(dir, name, link)
		if err != nil {
			if !gone(err) {
				errs = append(errs, fmt.Errorf("readlink %s/%s: %w", fds, name, err))
			}
			return true
		}
		if ino, ok := socketInode(link[:l]); ok && !w.seen[ino] {
			w.seen[ino] = true
			w.rest[ino] = pid
		}
		return true
	})
	return errors.Join(append(errs, err)...)
}

// ownTables adds to rest the sockets held by threads of pid that unshared
// their fd table (unshare(CLONE_FILES)): /proc/<pid>/fd, pidfd_getfd and
// the 6.1 iterator see only the leader's table. kcmp tells a shared table
// apart in one system call, so a process whose threads all share it (the
// usual case) costs a read of /proc/<pid>/task and one kcmp a thread.
func (w *fdWalk) ownTables(pid int) error {
	task := "/proc/" + strconv.Itoa(pid) + "/task"
	var tids []int
	err := w.eachIn(task, func(_ int, name string) bool {
		if tid, err := strconv.Atoi(name); err == nil && tid != pid {
			tids = append(tids, tid)
		}
		return true
	})
	errs := []error{err}
	for _, tid := range tids {
		// 0: the same table. An error (no CONFIG_KCMP, a thread gone) walks
		// the thread anyway: sockets already seen are skipped by inode.
		if same, _, e := unix.Syscall6(unix.SYS_KCMP, uintptr(pid), uintptr(tid), kcmpFiles, 0, 0, 0); e == 0 && same == 0 {
			continue
		}
		errs = append(errs, w.linksIn(task+"/"+strconv.Itoa(tid)+"/fd", pid))
	}
	return errors.Join(errs...)
}

// kcmpFiles is KCMP_FILES (include/uapi/linux/kcmp.h).
const kcmpFiles = 2

var errStopped = errors.New("stopped")

// each calls fn for each entry of /proc/<pid>/fd until it returns false
// (then errStopped). A process gone meanwhile is not an error.
func (w *fdWalk) each(pid int, fn func(dir int, name string) bool) error {
	return w.eachIn(fdDir(pid), fn)
}

func fdDir(pid int) string { return "/proc/" + strconv.Itoa(pid) + "/fd" }

// eachIn is each over any directory (a thread's fds, a process's threads).
func (w *fdWalk) eachIn(dir string, fn func(dir int, name string) bool) error {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		if gone(err) {
			return nil
		}
		return fmt.Errorf("open %s: %w", dir, err)
	}
	defer unix.Close(fd)
	for {
		n, err := unix.Getdents(fd, w.dents)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			if gone(err) {
				return nil
			}
			return fmt.Errorf("read %s: %w", dir, err)
		}
		if n <= 0 {
			return nil
		}
		_, _, w.names = unix.ParseDirent(w.dents[:n], -1, w.names[:0])
		for _, name := range w.names {
			if !fn(fd, name) {
				return errStopped
			}
		}
	}
}

// gone reports errors meaning the process or the fd went away meanwhile.
func gone(err error) bool {
	return err == unix.ENOENT || err == unix.ESRCH
}

// socketInode parses a /proc/<pid>/fd link target "socket:[N]".
func socketInode(l []byte) (uint64, bool) {
	const prefix = "socket:["
	if len(l) <= len(prefix)+1 || string(l[:len(prefix)]) != prefix || l[len(l)-1] != ']' {
		return 0, false
	}
	var ino uint64
	for _, c := range l[len(prefix) : len(l)-1] {
		if c < '0' || c > '9' || ino > (1<<64-1)/10-1 {
			return 0, false
		}
		ino = ino*10 + uint64(c-'0')
	}
	return ino, true
}

type naming int

const (
	skip    naming = iota // not an inet socket with a peer
	named                 // the target identifies the socket
	unnamed               // a TCP socket with a peer we cannot read
)

// describe reads what SOCK_DESTROY needs from a socket fd of our own.
func describe(fd int) (target, naming) {
	var t target
	local, err := unix.Getsockname(fd)
	if err != nil {
		return target{}, skip
	}
	switch local.(type) {
	case *unix.SockaddrInet4:
		t.req.Family = unix.AF_INET
	case *unix.SockaddrInet6:
		t.req.Family = unix.AF_INET6
	default:
		return target{}, skip
	}
	proto, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PROTOCOL)
	if err != nil {
		return target{}, skip
	}
	switch proto {
	case unix.IPPROTO_TCP:
		t.req.Protocol, t.conn.Proto = unix.IPPROTO_TCP, "tcp"
	case unix.IPPROTO_UDP:
		t.req.Protocol, t.conn.Proto = unix.IPPROTO_UDP, "udp"
	default:
		return target{}, skip
	}
	remote, err := unix.Getpeername(fd)
	if err != nil {
		// ENOTCONN: unconnected UDP, a listener, a closed socket, or a
		// TCP connect in flight, which still needs destroying.
		if t.req.Protocol == unix.IPPROTO_TCP {
			if info, err := unix.GetsockoptTCPInfo(fd, unix.IPPROTO_TCP, unix.TCP_INFO); err == nil && sockdiag.TCPState(info.State) == sockdiag.TCPSynSent {
				return target{}, unnamed
			}
		}
		return target{}, skip
	}
	cookie, err := unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_COOKIE)
	if err != nil {
		return target{}, unnamed
	}
	// The lookup matches the device a socket is bound to.
	ifindex, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_BINDTOIFINDEX)
	if err != nil {
		return target{}, unnamed
	}
	src, sport := sockaddr(local)
	dst, dport := sockaddr(remote)
	if dport == 0 {
		return target{}, skip
	}
	t.req.ID = sockdiag.SockID{
		SrcPort: sport, DstPort: dport,
		Src: sockdiag.AddrBytes(src), Dst: sockdiag.AddrBytes(dst),
		Ifindex: uint32(ifindex),
		Cookie:  cookie,
	}
	t.conn.Local = netip.AddrPortFrom(src.Unmap(), sport)
	t.conn.Remote = netip.AddrPortFrom(dst.Unmap(), dport)
	return t, named
}

func sockaddr(sa unix.Sockaddr) (netip.Addr, uint16) {
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrFrom4(sa.Addr), uint16(sa.Port)
	case *unix.SockaddrInet6:
		return netip.AddrFrom16(sa.Addr), uint16(sa.Port)
	}
	return netip.Addr{}, 0
}
