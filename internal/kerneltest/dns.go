package kerneltest

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/sys/unix"
)

func (o DNSQuery) run(c *child)    { c.report(o.probe(c)) }
func (o DNSReset) run(c *child)    { c.report(o.probe(c)) }
func (o Resolve) run(c *child)     { c.report(o.probe()) }
func (o ResolveLoop) run(c *child) { c.report(o.probe()) }
func (o DNSReplay) run(c *child)   { c.report(o.probe()) }
func (o DialName) run(c *child)    { c.report(o.probe()) }

func qtype(t uint16) uint16 {
	if t == 0 {
		return dns.TypeA
	}
	return t
}

func (o DNSQuery) probe(c *child) Result {
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(o.Name), qtype(o.Type))
	msg, err := m.Pack()
	if err != nil {
		return failed("pack", err)
	}
	tcp := o.Net == "tcp"
	typ := unix.SOCK_DGRAM
	if tcp {
		typ = unix.SOCK_STREAM
	}
	family, sa := sockaddr(o.Server)
	fd, err := unix.Socket(family, typ|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return failed("socket", err)
	}
	if !tcp {
		defer unix.Close(fd)
		if err := unix.Sendto(fd, msg, 0, sa); err != nil {
			return result(err)
		}
	} else {
		unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
		if err := unix.Connect(fd, sa); err != nil {
			unix.Close(fd)
			return failed("connect", err)
		}
		if _, err := unix.Write(fd, append(binary.BigEndian.AppendUint16(nil, uint16(len(msg))), msg...)); err != nil {
			unix.Close(fd)
			return result(err)
		}
		if o.Hold {
			c.held = append(c.held, fd)
			return Result{Err: OK}
		}
		defer unix.Close(fd)
	}
	unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 5})
	buf := make([]byte, 4096)
	n, err := Read(fd, buf)
	if err != nil {
		return failed("read", err)
	}
	if tcp {
		if n < 2 {
			return Result{Err: ErrShort, Stage: "answer"}
		}
		buf, n = buf[2:], n-2
	}
	r := new(dns.Msg)
	if err := r.Unpack(buf[:n]); err != nil || r.Id != m.Id {
		return Result{Err: ErrBadAnswer, Stage: "answer"}
	}
	return Result{Err: OK}
}

func (DNSReset) probe(c *child) Result {
	for _, fd := range c.held {
		unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
		unix.Close(fd)
	}
	c.held = nil
	return Result{Err: OK}
}

func dialDNS(server netip.AddrPort) (*dns.Conn, error) {
	return (&dns.Client{Timeout: 5 * time.Second}).Dial(server.String())
}

func (o Resolve) probe() Result {
	conn, err := dialDNS(o.Server)
	if err != nil {
		return result(err)
	}
	defer conn.Close()
	a, err := exchange(conn, o.Name, qtype(o.Type))
	if err != nil {
		return result(err)
	}
	return Result{Err: OK, Addr: a}
}

func (o ResolveLoop) probe() Result {
	conn, err := dialDNS(o.Server)
	if err != nil {
		return result(err)
	}
	defer conn.Close()
	tally := map[string]int{}
	for i := range o.N {
		a, err := exchange(conn, o.Name, dns.TypeA)
		if err != nil {
			return Result{Err: errName(err), Stage: "query", N: i}
		}
		tally[Connect{Addr: netip.AddrPortFrom(a, o.Port)}.probe().Outcome()]++
	}
	return Result{Err: OK, Tallies: []map[string]int{tally}}
}

func (o DNSReplay) probe() Result {
	conn, err := dialDNS(o.Server)
	if err != nil {
		return result(err)
	}
	defer conn.Close()
	m := new(dns.Msg)
	m.SetQuestion("replay.corpus.test.", dns.TypeA)
	if err := conn.WriteMsg(m); err != nil {
		return result(err)
	}
	buf := make([]byte, 65536)
	for i := 0; i <= o.N; i++ {
		conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := conn.Read(buf); err != nil {
			return Result{Err: errName(err), Stage: "read", N: i}
		}
	}
	return Result{Err: OK}
}

// exchange asks conn for name and returns the first address of the answer.
func exchange(conn *dns.Conn, name string, qt uint16) (netip.Addr, error) {
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), qt)
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	if err := conn.WriteMsg(m); err != nil {
		return netip.Addr{}, err
	}
	r, err := conn.ReadMsg()
	if err != nil {
		return netip.Addr{}, err
	}
	if r.Id != m.Id {
		return netip.Addr{}, fmt.Errorf("id %d, want %d", r.Id, m.Id)
	}
	for _, rr := range r.Answer {
		switch rr := rr.(type) {
		case *dns.A:
			a, _ := netip.AddrFromSlice(rr.A.To4())
			return a, nil
		case *dns.AAAA:
			a, _ := netip.AddrFromSlice(rr.AAAA)
			return a, nil
		}
	}
	return netip.Addr{}, fmt.Errorf("rcode %d, no address", r.Rcode)
}

// probe resolves with the Go resolver, as an agent would.
func (o DialName) probe() Result {
	r := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "udp", o.Resolver.String())
	}}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	addrs, err := r.LookupNetIP(ctx, "ip4", o.Host)
	if err != nil {
		return failed("resolve", err)
	}
	if len(addrs) == 0 {
		return Result{Err: ErrNone, Stage: "resolve"}
	}
	return Connect{Addr: netip.AddrPortFrom(addrs[0], o.Port)}.probe()
}
