package doctor

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// probeSockDestroy opens a loopback TCP connection and asks the kernel to
// destroy the client end with a sock_diag SOCK_DESTROY request, the same
// request agentfenced sends to cut connections of a quarantined session.
// It returns nil when the socket was destroyed, an error wrapping
// EOPNOTSUPP when the kernel lacks CONFIG_INET_DIAG_DESTROY, and other
// errors when it could not tell.
func probeSockDestroy() error {
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

	local := client.LocalAddr().(*net.TCPAddr)
	remote := client.RemoteAddr().(*net.TCPAddr)
	if err := sockDestroy4(local, remote); err != nil {
		return err
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

// Sizes of the netlink structures (linux/netlink.h, linux/inet_diag.h).
const (
	nlmsghdrLen      = 16
	inetDiagReqV2Len = 56 // family, protocol, ext, pad, states, inet_diag_sockid(48)
	nlmsgerrLen      = 4  // the int error that starts struct nlmsgerr
	inetDiagNoCookie = ^uint32(0)
)

// sockDestroy4 sends SOCK_DESTROY for the IPv4 TCP socket local→remote and
// returns the kernel's answer.
func sockDestroy4(local, remote *net.TCPAddr) error {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
	if err != nil {
		return fmt.Errorf("netlink socket: %w", err)
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("netlink bind: %w", err)
	}
	tv := unix.NsecToTimeval((2 * time.Second).Nanoseconds())
	_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)

	const seq = 1
	msg := make([]byte, nlmsghdrLen+inetDiagReqV2Len)
	ne := binary.NativeEndian
	ne.PutUint32(msg[0:], uint32(len(msg)))
	ne.PutUint16(msg[4:], unix.SOCK_DESTROY)
	ne.PutUint16(msg[6:], unix.NLM_F_REQUEST|unix.NLM_F_ACK)
	ne.PutUint32(msg[8:], seq)
	ne.PutUint32(msg[12:], 0)

	req := msg[nlmsghdrLen:]
	req[0] = unix.AF_INET
	req[1] = unix.IPPROTO_TCP
	ne.PutUint32(req[4:], ^uint32(0)) // all TCP states
	id := req[8:]
	binary.BigEndian.PutUint16(id[0:], uint16(local.Port))
	binary.BigEndian.PutUint16(id[2:], uint16(remote.Port))
	copy(id[4:8], local.IP.To4())
	copy(id[20:24], remote.IP.To4())
	ne.PutUint32(id[36:], 0) // interface
	ne.PutUint32(id[40:], inetDiagNoCookie)
	ne.PutUint32(id[44:], inetDiagNoCookie)

	if err := unix.Sendto(fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("netlink send: %w", err)
	}
	buf := make([]byte, 4096)
	for {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			return fmt.Errorf("netlink receive: %w", err)
		}
		for b := buf[:n]; len(b) >= nlmsghdrLen; {
			l := int(ne.Uint32(b[0:]))
			typ := ne.Uint16(b[4:])
			if l < nlmsghdrLen || l > len(b) {
				return errors.New("netlink: truncated message")
			}
			if ne.Uint32(b[8:]) == seq && typ == unix.NLMSG_ERROR {
				if l < nlmsghdrLen+nlmsgerrLen {
					return errors.New("netlink: short error message")
				}
				if errno := -int32(ne.Uint32(b[nlmsghdrLen:])); errno != 0 {
					return fmt.Errorf("SOCK_DESTROY: %w", unix.Errno(errno))
				}
				return nil
			}
			adv := (l + unix.NLMSG_ALIGNTO - 1) &^ (unix.NLMSG_ALIGNTO - 1)
			if adv > len(b) {
				break
			}
			b = b[adv:]
		}
	}
}
