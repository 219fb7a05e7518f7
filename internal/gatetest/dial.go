package gatetest

import (
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Dial starts a nonblocking TCP connect from the calling process and
// returns the socket, closed at cleanup, and its local port: the handle an
// inbound record names the peer by.
func Dial(tb testing.TB, to netip.AddrPort) (int, uint16) {
	tb.Helper()
	family, sa := sockaddr(to)
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { unix.Close(fd) })
	if err := unix.Connect(fd, sa); err != nil && err != unix.EINPROGRESS {
		tb.Fatalf("connect %s: %v", to, err)
	}
	return fd, uint16(localPort(fd))
}

// Connected waits up to wait for a nonblocking connect to finish and
// reports whether it did, successfully.
func Connected(tb testing.TB, fd int, wait time.Duration) bool {
	tb.Helper()
	pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
	n, err := unix.Poll(pfd, int(wait.Milliseconds()))
	if err != nil && err != unix.EINTR {
		tb.Fatal(err)
	}
	if n == 0 {
		return false
	}
	soErr, _ := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR)
	return soErr == 0
}
