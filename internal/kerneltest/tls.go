package kerneltest

import (
	"crypto/tls"
	"io"
	"net"
	"net/netip"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

func (o TLSHello) run(c *child) { c.report(o.probe()) }
func (o SendTCP) run(c *child)  { c.report(o.probe()) }

func (o TLSHello) probe() Result {
	hello, err := ClientHello(o.SNI)
	if err != nil {
		return failed("hello", err)
	}
	first := len(hello)
	if o.Split > 0 {
		first = o.Split
	}
	return sendTCP(o.Addr, hello[:first], hello[first:])
}

func (o SendTCP) probe() Result {
	data := o.Data
	if o.File != "" {
		var err error
		if data, err = os.ReadFile(o.File); err != nil {
			return failed("file", err)
		}
	}
	return sendTCP(o.Addr, data, nil)
}

// ClientHello is the first flight crypto/tls sends for sni ("": none), for
// tests that parse or replay it themselves.
func ClientHello(sni string) ([]byte, error) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	go tls.Client(a, &tls.Config{InsecureSkipVerify: true, ServerName: sni}).Handshake()
	b.SetReadDeadline(time.Now().Add(5 * time.Second))
	hdr := make([]byte, 5)
	if _, err := io.ReadFull(b, hdr); err != nil {
		return nil, err
	}
	body := make([]byte, int(hdr[3])<<8|int(hdr[4]))
	if _, err := io.ReadFull(b, body); err != nil {
		return nil, err
	}
	return append(hdr, body...), nil
}

// sendTCP connects, writes first and (as a separate segment) rest, and
// closes.
func sendTCP(ap netip.AddrPort, first, rest []byte) Result {
	family, sa := sockaddr(ap)
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return failed("socket", err)
	}
	defer unix.Close(fd)
	unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	if err := unix.Connect(fd, sa); err != nil {
		return result(err)
	}
	if _, err := unix.Write(fd, first); err != nil {
		return failed("write", err)
	}
	if len(rest) > 0 {
		if _, err := unix.Write(fd, rest); err != nil {
			return failed("write", err)
		}
	}
	return Result{Err: OK}
}
