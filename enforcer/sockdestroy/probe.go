package sockdestroy

import (
	"errors"
	"fmt"
	"net"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/agentfence/agentfence/internal/sockdiag"
)

// ProbeDestroy cuts the client end of a loopback TCP connection with the
// request Destroy sends, and checks that the socket died. It returns nil
// when it did, an error wrapping EOPNOTSUPP when the kernel lacks
// CONFIG_INET_DIAG_DESTROY, one wrapping EPERM without CAP_NET_ADMIN, and
// others when it could not tell.
func ProbeDestroy() error {
	ln, err := net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return fmt.Errorf("loopback listener: %w", err)
	}
	defer ln.Close()
	client, err := net.DialTCP("tcp4", nil, ln.Addr().(*net.TCPAddr))
	if err != nil {
		return fmt.Errorf("loopback connect: %w", err)
	}
	defer client.Close()
	server, err := ln.AcceptTCP()
	if err != nil {
		return fmt.Errorf("loopback accept: %w", err)
	}
	defer server.Close()

	local := client.LocalAddr().(*net.TCPAddr).AddrPort()
	remote := client.RemoteAddr().(*net.TCPAddr).AddrPort()
	t := target{
		conn: Conn{Proto: "tcp", Local: local, Remote: remote},
		req: sockdiag.Request{Family: unix.AF_INET, Protocol: unix.IPPROTO_TCP, ID: sockdiag.SockID{
			SrcPort: local.Port(), DstPort: remote.Port(),
			Src: sockdiag.AddrBytes(local.Addr().Unmap()), Dst: sockdiag.AddrBytes(remote.Addr().Unmap()),
			Cookie: sockdiag.NoCookie,
		}},
	}
	c, err := sockdiag.Open()
	if err != nil {
		return err
	}
	defer c.Close()
	done, err := destroyTargets(c, []target{t})
	if err != nil {
		return err
	}
	if len(done) == 0 {
		return errors.New("SOCK_DESTROY did not find the loopback socket")
	}
	// The kernel said yes; check the socket really died.
	_ = client.SetReadDeadline(time.Now().Add(2 * time.Second))
	_, err = client.Read(make([]byte, 1))
	switch {
	case errors.Is(err, unix.ECONNABORTED):
		return nil
	case errors.Is(err, os.ErrDeadlineExceeded):
		return errors.New("SOCK_DESTROY acknowledged but the socket is still open")
	default:
		return fmt.Errorf("SOCK_DESTROY acknowledged, read after it returned %v (want ECONNABORTED)", err)
	}
}
