package kerneltest

import (
	"net/netip"

	"golang.org/x/sys/unix"
)

// Read is read(2) on a socket with SO_RCVTIMEO, retried on EINTR: a
// timeout makes the call unrestartable (signal(7)), so the Go runtime's
// preemption signal ends it early (seen on 6.1 under emulation).
func Read(fd int, buf []byte) (int, error) {
	for {
		n, err := unix.Read(fd, buf)
		if err != unix.EINTR {
			return n, err
		}
	}
}

// sockaddr is ap as the socket address of its family; a v4-mapped address
// gets an AF_INET6 socket.
func sockaddr(ap netip.AddrPort) (int, unix.Sockaddr) {
	if ap.Addr().Is4() {
		return unix.AF_INET, &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}
	}
	return unix.AF_INET6, &unix.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()}
}

// sockaddrAs is ap for a socket of family AF_INET6 when v6 (an IPv4
// address v4-mapped) or else of ap's family, a v4-mapped one unmapped.
func sockaddrAs(ap netip.AddrPort, v6 bool) (int, unix.Sockaddr) {
	if v6 || (ap.Addr().Is6() && !ap.Addr().Is4In6()) {
		return unix.AF_INET6, &unix.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()}
	}
	return unix.AF_INET, &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().Unmap().As4()}
}

func localPort(fd int) int {
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return 0
	}
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return sa.Port
	case *unix.SockaddrInet6:
		return sa.Port
	}
	return 0
}

// bound is a socket of typ bound to ap (the zero value: not bound).
func bound(typ int, ap netip.AddrPort) (int, error) {
	family, sa := unix.AF_INET, unix.Sockaddr(nil)
	if ap.IsValid() {
		family, sa = sockaddr(ap)
	}
	fd, err := unix.Socket(family, typ|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	if sa != nil {
		if err := unix.Bind(fd, sa); err != nil {
			unix.Close(fd)
			return -1, err
		}
	}
	return fd, nil
}

// sendOn makes a socket of typ for ap (sockaddrAs), runs send on it and
// names the outcome; stage "socket" when there was no socket.
func sendOn(ap netip.AddrPort, v6 bool, typ int, send func(fd int, sa unix.Sockaddr) error) Result {
	family, sa := sockaddrAs(ap, v6)
	fd, err := unix.Socket(family, typ|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return failed("socket", err)
	}
	defer unix.Close(fd)
	return result(send(fd, sa))
}

func (o Connect) probe() Result {
	return sendOn(o.Addr, o.V6, unix.SOCK_STREAM, unix.Connect)
}

func (o SendUDP) probe() Result {
	payload := o.Payload
	if len(payload) == 0 {
		payload = []byte("probe")
	}
	return sendOn(o.Addr, o.V6, unix.SOCK_DGRAM, func(fd int, sa unix.Sockaddr) error {
		return unix.Sendto(fd, payload, 0, sa)
	})
}

func (o ConnectUDP) probe() Result { return sendOn(o.Addr, false, unix.SOCK_DGRAM, unix.Connect) }

func (o FastOpen) probe() Result {
	return sendOn(o.Addr, false, unix.SOCK_STREAM, func(fd int, sa unix.Sockaddr) error {
		return unix.Sendto(fd, []byte("probe"), unix.MSG_FASTOPEN, sa)
	})
}

func (o Socket) probe() Result {
	fd, err := unix.Socket(o.Family, o.Type, o.Proto)
	if err == nil {
		unix.Close(fd)
	}
	return result(err)
}

func (o Bind) probe() Result {
	typ := unix.SOCK_STREAM
	if o.UDP {
		typ = unix.SOCK_DGRAM
	}
	fd, err := bound(typ, o.Addr)
	if err == nil {
		unix.Close(fd)
	}
	return result(err)
}

func (o Connect) run(c *child)    { c.report(o.probe()) }
func (o SendUDP) run(c *child)    { c.report(o.probe()) }
func (o ConnectUDP) run(c *child) { c.report(o.probe()) }
func (o FastOpen) run(c *child)   { c.report(o.probe()) }
func (o Socket) run(c *child)     { c.report(o.probe()) }
func (o Bind) run(c *child)       { c.report(o.probe()) }
