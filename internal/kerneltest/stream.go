package kerneltest

import (
	"os"
	"time"

	"golang.org/x/sys/unix"
)

func (o Hold) run(c *child) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err == nil {
		err = unix.Connect(fd, &unix.SockaddrInet4{Port: int(o.Addr.Port()), Addr: o.Addr.Addr().As4()})
	}
	c.report(result(err))
	if err != nil {
		// Neither of the other two results would say anything.
		c.report(Result{Err: "-"})
		c.report(Result{Err: "-"})
		return
	}
	buf := make([]byte, 64)
	for {
		n, err := unix.Read(fd, buf)
		if err != nil {
			c.report(result(err))
			break
		}
		if n == 0 {
			c.report(Result{Err: ErrEOF})
			break
		}
	}
	unix.Close(fd)
	c.report(Connect{Addr: o.Addr}.probe())
}

func (o HoldMany) run(c *child) {
	var fds []int
	for range o.N {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err == nil {
			err = unix.Connect(fd, &unix.SockaddrInet4{Port: int(o.Addr.Port()), Addr: o.Addr.Addr().As4()})
		}
		if err != nil {
			c.report(result(err))
			return
		}
		fds = append(fds, fd)
	}
	c.report(Result{Err: OK})
	broken := 0
	buf := make([]byte, 8)
	for _, fd := range fds {
		if _, err := unix.Read(fd, buf); err != nil {
			broken++
		}
	}
	c.report(Result{Err: OK, N: broken})
}

func (o Loop) run(c *child) {
	allowed, denied := map[string]int{}, map[string]int{}
	var firstErr string
	deadline := time.Now().Add(10 * time.Minute)
	for i := 0; time.Now().Before(deadline); i++ {
		if i%50 == 0 {
			if _, err := os.Stat(o.Stop); err == nil {
				break
			}
		}
		r := Connect{Addr: o.Allowed}.probe().Outcome()
		if r != OK && firstErr == "" {
			firstErr = r
		}
		allowed[r]++
		denied[Connect{Addr: o.Denied}.probe().Outcome()]++
	}
	c.report(Result{Err: OK, Tallies: []map[string]int{allowed, denied}, FirstErr: firstErr})
}

func (o Flood) run(c *child) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		c.report(failed("socket", err))
		return
	}
	defer unix.Close(fd)
	sa := &unix.SockaddrInet4{Port: int(o.Addr.Port()), Addr: o.Addr.Addr().As4()}
	start := time.Now()
	for i := range o.N {
		if o.Rate > 0 && i%100 == 0 {
			// Pace in steps of 100 datagrams: the load generator's clock.
			if ahead := time.Duration(i)*time.Second/time.Duration(o.Rate) - time.Since(start); ahead > 0 {
				time.Sleep(ahead)
			}
		}
		if o.Ports > 1 {
			sa.Port = int(o.Addr.Port()) + i%o.Ports
		}
		if err := unix.Sendto(fd, []byte("x"), 0, sa); err != nil {
			c.report(result(err))
			return
		}
	}
	c.report(Result{Err: OK, Rate: float64(o.N) / time.Since(start).Seconds()})
}

// run holds the listening socket until stdin closes.
func (o ListenTCP) run(c *child) {
	fd, err := bound(unix.SOCK_STREAM, o.Addr)
	if err == nil {
		err = unix.Listen(fd, 128)
	}
	if err != nil {
		c.report(result(err))
		return
	}
	c.report(Result{Err: OK, Port: uint16(localPort(fd))})
	for c.line() {
	}
	unix.Close(fd)
}

// udpSocket is the socket a UDPSocket's UDPSend and UDPRecv act on.
type udpSocket struct {
	c  *child
	fd int
}

func (o UDPSocket) run(c *child) {
	fd, err := bound(unix.SOCK_DGRAM, o.Addr)
	if err != nil {
		c.report(result(err))
		return
	}
	defer unix.Close(fd)
	unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 20})
	c.report(Result{Err: OK, Port: uint16(localPort(fd))})
	s := udpSocket{c, fd}
	for {
		b, err := c.in.ReadBytes('\n')
		if err != nil {
			return
		}
		op, err := decodeOp(b)
		if err != nil {
			c.report(Result{Err: err.Error()})
			continue
		}
		switch op := op.(type) {
		case UDPSend:
			s.send(op)
		case UDPRecv:
			s.recv(op)
		default:
			c.report(Result{Err: "not an operation on a UDP socket"})
		}
	}
}

func (s udpSocket) send(o UDPSend) {
	_, sa := sockaddr(o.To)
	data := o.Data
	if len(data) == 0 {
		data = []byte("ping")
	}
	s.c.report(result(unix.Sendto(s.fd, data, 0, sa)))
}

// recv ends with the error of a read that failed, if one did.
func (s udpSocket) recv(o UDPRecv) {
	var got []string
	buf := make([]byte, 512)
	for {
		n, err := Read(s.fd, buf)
		if err != nil {
			s.c.report(Result{Err: errName(err), Got: got})
			return
		}
		got = append(got, string(buf[:n]))
		if string(buf[:n]) == o.Until {
			s.c.report(Result{Err: OK, Got: got})
			return
		}
	}
}

// UDPSend and UDPRecv run on a UDPSocket, never on their own.
func (o UDPSend) run(c *child) { c.report(Result{Err: "UDPSend without a UDPSocket"}) }
func (o UDPRecv) run(c *child) { c.report(Result{Err: "UDPRecv without a UDPSocket"}) }
