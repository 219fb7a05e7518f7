package sockdiag

import (
	"errors"
	"fmt"

	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Conn is a NETLINK_SOCK_DIAG socket. It reaches the sockets of the network
// namespace it was opened in. Not safe for concurrent use.
type Conn struct {
	fd  int
	seq uint32
	buf []byte
	req []byte
	ns  *nl.NetlinkSocket // set when opened in another network namespace
}

// Open opens a sock_diag socket in this process's network namespace.
func Open() (*Conn, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
	if err != nil {
		return nil, fmt.Errorf("netlink sock_diag socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("netlink sock_diag bind: %w", err)
	}
	return newConn(fd, nil), nil
}

// OpenIn opens a sock_diag socket in the network namespace of pid (ours
// for 0). Entering the namespace takes CAP_SYS_ADMIN.
func OpenIn(pid int) (*Conn, error) {
	if pid == 0 {
		return Open()
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
	return newConn(s.GetFd(), s), nil
}

func newConn(fd int, ns *nl.NetlinkSocket) *Conn {
	// Acks without the echoed request; a bounded wait should the kernel
	// ever drop a reply.
	_ = unix.SetsockoptInt(fd, unix.SOL_NETLINK, unix.NETLINK_CAP_ACK, 1)
	tv := unix.Timeval{Sec: 10}
	_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	// Dumps are sized by the reader's buffer, up to 32 KiB per datagram.
	return &Conn{fd: fd, seq: 1, buf: make([]byte, 64<<10), ns: ns}
}

// Close closes the socket.
func (c *Conn) Close() {
	if c.ns != nil {
		c.ns.Close()
		return
	}
	unix.Close(c.fd)
}

// ErrInterrupted reports a dump the kernel flagged as inconsistent
// (NLM_F_DUMP_INTR) because the socket tables changed during it.
var ErrInterrupted = errors.New("dump interrupted, results may be incomplete")

var errDone = errors.New("done")

// Dump runs one SOCK_DIAG_BY_FAMILY dump of the sockets r selects, calling
// fn for each. It returns ErrInterrupted, after every socket, if the kernel
// flagged the dump as inconsistent.
func (c *Conn) Dump(r *Request, fn func(*Msg)) error {
	c.seq++
	seq := c.seq
	c.req = AppendDumpRequest(c.req[:0], seq, r)
	if err := c.send(); err != nil {
		return err
	}
	interrupted := false
	var err error
	for err == nil {
		err = c.recv(0, func(m *Message) error {
			if m.Seq != seq {
				return nil // stale reply
			}
			if m.Flags&unix.NLM_F_DUMP_INTR != 0 {
				interrupted = true
			}
			switch m.Type {
			case unix.NLMSG_DONE, unix.NLMSG_ERROR:
				if m.Errno != 0 {
					return m.Errno
				}
				return errDone
			case unix.SOCK_DIAG_BY_FAMILY:
				fn(&m.Diag)
			}
			return nil
		})
	}
	if err != errDone {
		return err
	}
	if interrupted {
		return ErrInterrupted
	}
	return nil
}

// DestroyBatch is the most requests Destroy takes: their error replies
// (about 1 KiB of receive buffer each) must fit the socket's buffer.
const DestroyBatch = 32

// Destroy sends SOCK_DESTROY for every request in one datagram and returns
// the kernel's answer to each: nil where it destroyed the socket, else the
// errno (ENOENT: no such socket, or another cookie). The requests ask for
// no acknowledgement: the kernel handles a request datagram within the
// sendto that carries it and answers only the requests that failed, so
// once sendto has returned every failure is queued on the socket. That
// saves a reply and a recvmsg per socket. An error (ENOBUFS: failures were
// dropped) means none of the answers is known.
func (c *Conn) Destroy(reqs []Request) ([]error, error) {
	if len(reqs) > DestroyBatch {
		return nil, fmt.Errorf("sock_diag destroy: %d requests, at most %d at once", len(reqs), DestroyBatch)
	}
	if len(reqs) == 0 {
		return nil, nil // netlink refuses an empty datagram
	}
	base := c.seq + 1
	c.seq += uint32(len(reqs))
	c.req = c.req[:0]
	for i := range reqs {
		c.req = AppendDestroyRequest(c.req, base+uint32(i), &reqs[i])
	}
	if err := c.send(); err != nil {
		return nil, err
	}
	results := make([]error, len(reqs))
	for {
		err := c.recv(unix.MSG_DONTWAIT, func(m *Message) error {
			i := m.Seq - base
			if m.Type == unix.NLMSG_ERROR && m.Seq >= base && i < uint32(len(reqs)) && m.Errno != 0 {
				results[i] = m.Errno
			}
			return nil
		})
		if errors.Is(err, unix.EAGAIN) {
			return results, nil
		}
		if err != nil {
			return nil, err
		}
	}
}

var kernel = &unix.SockaddrNetlink{Family: unix.AF_NETLINK}

func (c *Conn) send() error {
	if err := unix.Sendto(c.fd, c.req, 0, kernel); err != nil {
		return fmt.Errorf("netlink send: %w", err)
	}
	return nil
}

// recv reads one datagram from the kernel and calls fn for each message in
// it. flags are recvmsg's (MSG_DONTWAIT: EAGAIN when nothing is queued).
func (c *Conn) recv(flags int, fn func(*Message) error) error {
	for {
		n, _, rflags, from, err := unix.Recvmsg(c.fd, c.buf, nil, flags)
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
		return Parse(c.buf[:n], fn)
	}
}
