package kerneltest

import (
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// The test's own side of a probe: listeners to connect to, connects from
// the test process, and the programs attached to a cgroup.

// Listen opens a TCP listener on a loopback address for allowed connects to
// land on; it is closed when the test ends.
func Listen(tb testing.TB, network, addr string) netip.AddrPort {
	tb.Helper()
	l, err := net.Listen(network, addr)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { l.Close() })
	return l.Addr().(*net.TCPAddr).AddrPort()
}

// Serve opens a TCP listener on a loopback address that accepts and closes
// every connection, for probes that connect many times.
func Serve(tb testing.TB, addr string) netip.AddrPort {
	tb.Helper()
	l, err := net.Listen("tcp4", addr)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	return l.Addr().(*net.TCPAddr).AddrPort()
}

// SendSockets listens on a unix socket in a directory of its own and sends
// each connection file's descriptor (SCM_RIGHTS) once, for RecvSocket: a
// socket handed over, as a server could hand its connection to an agent.
// It returns the socket's path.
func SendSockets(tb testing.TB, file *os.File) string {
	tb.Helper()
	path := filepath.Join(tb.TempDir(), "pass.sock")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { l.Close() })
	// Probes that run as another uid must reach it.
	os.Chmod(filepath.Dir(path), 0o755)
	os.Chmod(path, 0o777)
	go func() {
		for {
			c, err := l.AcceptUnix()
			if err != nil {
				return
			}
			c.WriteMsgUnix([]byte{0}, unix.UnixRights(int(file.Fd())), nil)
			c.Close()
		}
	}()
	return path
}

// SendConnection connects a TCP socket to to and serves it as SendSockets
// does: a connection handed over, as a server could hand its own.
func SendConnection(tb testing.TB, to netip.AddrPort) string {
	tb.Helper()
	conn, err := net.DialTCP("tcp", nil, net.TCPAddrFromAddrPort(to))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { conn.Close() })
	file, err := conn.File()
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { file.Close() })
	return SendSockets(tb, file)
}

// ServeUDP echoes every datagram sent to a UDP socket on addr back to its
// sender.
func ServeUDP(tb testing.TB, addr string) netip.AddrPort {
	tb.Helper()
	c, err := net.ListenPacket("udp", addr)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Close() })
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := c.ReadFrom(buf)
			if err != nil {
				return
			}
			c.WriteTo(buf[:n], from)
		}
	}()
	return c.LocalAddr().(*net.UDPAddr).AddrPort()
}

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

// Attached counts the connect4 programs attached to a cgroup, to check
// that the gate attaches once and detaches completely.
func Attached(tb testing.TB, cgroup string) int {
	tb.Helper()
	return AttachedOf(tb, cgroup, ebpf.AttachCGroupInet4Connect)
}

// AttachedOf counts the programs of one attach type on a cgroup.
func AttachedOf(tb testing.TB, cgroup string, typ ebpf.AttachType) int {
	tb.Helper()
	f, err := os.Open(cgroup)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	res, err := link.QueryPrograms(link.QueryOptions{Target: int(f.Fd()), Attach: typ})
	if err != nil {
		tb.Fatal(err)
	}
	return len(res.Programs)
}
