package sockdestroy

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/agentfence/agentfence/internal/privtest"
	"github.com/agentfence/agentfence/internal/sockdiag"
)

// childEnv makes the test binary run as a socket-holding helper process.
const childEnv = "AGENTFENCE_SOCKDESTROY_CHILD"

// wait bounds every blocking step of the tests; nothing sleeps.
const wait = 10 * time.Second

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) == "1" {
		// The main thread serves the commands, so that goroutines that
		// lock a thread of their own get another one.
		runtime.LockOSThread()
		runChild()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// runChild serves line commands on stdin, one reply line each on stdout:
//
//	dial <tcp|udp> <addr>  -> ok <id> <local> <remote>
//	mapped <port>          -> AF_INET6 TCP socket to ::ffff:127.0.0.1:<port>
//	listen | udplisten     -> ok <id> <local> -
//	connecting <port>      -> ok <id> <local> - (nonblocking TCP connect to
//	                          127.0.0.1:<port>, left in flight)
//	soerror <id>           -> errno <n> once the connect above has failed
//	loup                   -> ok once the loopback device is up (in a
//	                          network namespace of the child's own)
//	unshared <port>        -> ok <id> <local> - (TCP connection to
//	                          127.0.0.1:<port> held by a thread that
//	                          unshared its fd table)
//	read <id>              -> data <n> | errno <n> | fail <msg>
//	write <id>             -> ok | errno <n> | fail <msg>
//
// It exits when stdin closes.
func runChild() {
	var conns []any
	in := bufio.NewScanner(os.Stdin)
	out := bufio.NewWriter(os.Stdout)
	reply := func(format string, a ...any) {
		fmt.Fprintf(out, format+"\n", a...)
		out.Flush()
	}
	result := func(prefix string, err error) {
		var errno syscall.Errno
		switch {
		case err == nil:
			reply("%s", prefix)
		case errors.As(err, &errno):
			reply("errno %d", int(errno))
		default:
			reply("fail %s", strings.ReplaceAll(err.Error(), "\n", " "))
		}
	}
	added := func(c any, local, remote net.Addr) {
		conns = append(conns, c)
		r := "-"
		if remote != nil {
			r = remote.String()
		}
		reply("ok %d %s %s", len(conns)-1, local, r)
	}
	for in.Scan() {
		f := strings.Fields(in.Text())
		switch f[0] {
		case "dial":
			c, err := net.DialTimeout(f[1], f[2], wait)
			if err != nil {
				result("", err)
				continue
			}
			added(c, c.LocalAddr(), c.RemoteAddr())
		case "mapped":
			port, _ := strconv.Atoi(f[1])
			c, err := dialMapped(port)
			if err != nil {
				result("", err)
				continue
			}
			added(c, c.LocalAddr(), c.RemoteAddr())
		case "listen":
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				result("", err)
				continue
			}
			added(l, l.Addr(), nil)
		case "udplisten":
			u, err := net.ListenPacket("udp", "127.0.0.1:0")
			if err != nil {
				result("", err)
				continue
			}
			added(u, u.LocalAddr(), nil)
		case "connecting":
			port, _ := strconv.Atoi(f[1])
			fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				result("", err)
				continue
			}
			if err := unix.Connect(fd, &unix.SockaddrInet4{Port: port, Addr: [4]byte{127, 0, 0, 1}}); err != unix.EINPROGRESS {
				result("", fmt.Errorf("connect: %v, want EINPROGRESS", err))
				continue
			}
			sa, _ := unix.Getsockname(fd)
			added(fd, &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: sa.(*unix.SockaddrInet4).Port}, nil)
		case "loup":
			lo, err := netlink.LinkByName("lo")
			if err == nil {
				err = netlink.LinkSetUp(lo)
			}
			result("ok", err)
		case "unshared":
			port, _ := strconv.Atoi(f[1])
			local := make(chan any)
			go func() {
				// The thread keeps its own fd table until the process
				// exits: a locked goroutine that never returns.
				runtime.LockOSThread()
				if unix.Gettid() == unix.Getpid() {
					local <- errors.New("on the main thread, whose fd table /proc/<pid>/fd shows")
					return
				}
				if err := unix.Unshare(unix.CLONE_FILES); err != nil {
					local <- err
					return
				}
				fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
				if err == nil {
					err = unix.Connect(fd, &unix.SockaddrInet4{Port: port, Addr: [4]byte{127, 0, 0, 1}})
				}
				if err != nil {
					local <- err
					return
				}
				sa, _ := unix.Getsockname(fd)
				local <- &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: sa.(*unix.SockaddrInet4).Port}
				select {}
			}()
			switch l := (<-local).(type) {
			case error:
				result("", l)
			case net.Addr:
				added(nil, l, nil)
			}
		case "soerror":
			id, _ := strconv.Atoi(f[1])
			fd := conns[id].(int)
			pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
			if n, err := unix.Poll(pfd, int(wait.Milliseconds())); n != 1 {
				result("", fmt.Errorf("poll: %d, %v", n, err))
				continue
			}
			e, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR)
			if err == nil && e != 0 {
				err = unix.Errno(e)
			}
			result("ok", err)
		case "read":
			id, _ := strconv.Atoi(f[1])
			buf := make([]byte, 64)
			var n int
			var err error
			switch c := conns[id].(type) {
			case net.Conn:
				c.SetReadDeadline(time.Now().Add(wait))
				n, err = c.Read(buf)
			case net.PacketConn:
				c.SetReadDeadline(time.Now().Add(wait))
				n, _, err = c.ReadFrom(buf)
			}
			result("data "+strconv.Itoa(n), err)
		case "write":
			id, _ := strconv.Atoi(f[1])
			_, err := conns[id].(net.Conn).Write([]byte("x"))
			result("ok", err)
		}
	}
}

// dialMapped connects an AF_INET6 TCP socket to an IPv4-mapped loopback
// address, as a dual-stack client would.
func dialMapped(port int) (net.Conn, error) {
	fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	sa := &unix.SockaddrInet6{Port: port, Addr: netip.MustParseAddr("::ffff:127.0.0.1").As16()}
	if err := unix.Connect(fd, sa); err != nil {
		unix.Close(fd)
		return nil, err
	}
	f := os.NewFile(uintptr(fd), "mapped")
	defer f.Close()
	return net.FileConn(f)
}

type child struct {
	t   testing.TB
	pid int
	in  *os.File
	out *os.File
	rd  *bufio.Reader
}

func startChild(t testing.TB) *child {
	t.Helper()
	return startChildWith(t, nil)
}

// startChildWith starts the helper with attr (namespaces of its own).
func startChildWith(t testing.TB, attr *syscall.SysProcAttr) *child {
	t.Helper()
	inR, inW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"=1")
	cmd.SysProcAttr = attr
	cmd.Stdin, cmd.Stdout, cmd.Stderr = inR, outW, os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	inR.Close()
	outW.Close()
	t.Cleanup(func() {
		inW.Close()
		cmd.Process.Kill()
		cmd.Wait()
		outR.Close()
	})
	return &child{t: t, pid: cmd.Process.Pid, in: inW, out: outR, rd: bufio.NewReader(outR)}
}

// do sends a command and returns the reply's fields, failing after wait.
func (c *child) do(format string, a ...any) []string {
	c.t.Helper()
	if _, err := fmt.Fprintf(c.in, format+"\n", a...); err != nil {
		c.t.Fatalf("child %q: %v", fmt.Sprintf(format, a...), err)
	}
	c.out.SetReadDeadline(time.Now().Add(wait))
	line, err := c.rd.ReadString('\n')
	if err != nil {
		c.t.Fatalf("child %q: reading reply: %v", fmt.Sprintf(format, a...), err)
	}
	return strings.Fields(line)
}

// childConn is a socket the child created.
type childConn struct {
	id            int
	local, remote netip.AddrPort
}

func (c *child) open(format string, a ...any) childConn {
	c.t.Helper()
	f := c.do(format, a...)
	if len(f) != 4 || f[0] != "ok" {
		c.t.Fatalf("child %q: %v", fmt.Sprintf(format, a...), f)
	}
	cc := childConn{local: netip.MustParseAddrPort(f[2])}
	cc.id, _ = strconv.Atoi(f[1])
	if f[3] != "-" {
		cc.remote = netip.MustParseAddrPort(f[3])
	}
	return cc
}

// expectErrno asserts the child's read/write on conn id failed with errno.
func (c *child) expectErrno(op string, id int, errno syscall.Errno) {
	c.t.Helper()
	f := c.do("%s %d", op, id)
	if len(f) != 2 || f[0] != "errno" || f[1] != strconv.Itoa(int(errno)) {
		c.t.Errorf("child %s %d: got %v, want errno %d (%v)", op, id, f, int(errno), errno)
	}
}

func listen(t testing.TB, network, addr string) net.Listener {
	t.Helper()
	l, err := net.Listen(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

func accept(t testing.TB, l net.Listener) net.Conn {
	t.Helper()
	l.(*net.TCPListener).SetDeadline(time.Now().Add(wait))
	c, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func port(a net.Addr) uint16 { return netip.MustParseAddrPort(a.String()).Port() }

func findConn(got []Conn, local, remote netip.AddrPort) (Conn, bool) {
	for _, c := range got {
		if c.Local == local && c.Remote == remote {
			return c, true
		}
	}
	return Conn{}, false
}

// backend is one way of finding the sockets to destroy; the tests run on
// each.
type backend struct {
	name    string
	destroy func(pids []int, match func(Conn) bool) ([]Conn, error)
}

// backends returns the default path (the BPF iterator naming every socket
// of a process in one read), naming each socket through pidfd_getfd, and
// the dump of the socket tables that falls back to.
func backends(t testing.TB) []backend {
	t.Helper()
	privtest.RequireRoot(t)
	bs := []backend{
		{"pidfd", func(pids []int, match func(Conn) bool) ([]Conn, error) { return destroy(pids, match, scan) }},
		{"dump", func(pids []int, match func(Conn) bool) ([]Conn, error) { return destroy(pids, match, scanOnlyLinks) }},
	}
	it, err := loadIterator()
	if err != nil {
		// Kernels before 6.1 have no iterator of one process; on 6.1 and
		// later it must load.
		if !privtest.KernelBefore(6, 1) {
			t.Fatalf("socket iterator: %v", err)
		}
		t.Logf("iter backends not tested (kernel before 6.1): %v", err)
		return bs
	}
	t.Cleanup(it.close)
	return append([]backend{{"iter", func(pids []int, match func(Conn) bool) ([]Conn, error) { return destroy(pids, match, it.scan) }}}, bs...)
}

// eachBackend runs f as a subtest per backend.
func eachBackend(t *testing.T, f func(t *testing.T, destroy func([]int, func(Conn) bool) ([]Conn, error))) {
	for _, b := range backends(t) {
		t.Run(b.name, func(t *testing.T) { f(t, b.destroy) })
	}
}

func TestDestroyTCP4Established(t *testing.T) {
	eachBackend(t, func(t *testing.T, Destroy func([]int, func(Conn) bool) ([]Conn, error)) {
		ln := listen(t, "tcp", "127.0.0.1:0")
		ch := startChild(t)
		cc := ch.open("dial tcp %s", ln.Addr())
		peer := accept(t, ln)

		got, err := Destroy([]int{missingPID(t), ch.pid}, nil)
		if err != nil {
			t.Fatalf("Destroy: %v", err)
		}
		if len(got) != 1 {
			t.Fatalf("Destroy returned %v, want exactly the child's connection", got)
		}
		c := got[0]
		if c.PID != ch.pid || c.Proto != "tcp" || c.Local != cc.local || c.Remote != cc.remote || c.Inode == 0 {
			t.Errorf("Destroy returned %+v, want pid %d tcp %s->%s", c, ch.pid, cc.local, cc.remote)
		}
		if !c.Remote.Addr().Is4() || c.Remote.Port() != port(ln.Addr()) {
			t.Errorf("remote %s, want the listener %s", c.Remote, ln.Addr())
		}

		// The owner's next call fails with ECONNABORTED (tcp_abort sets
		// sk_err); the peer receives the RST tcp_abort sends.
		ch.expectErrno("read", cc.id, unix.ECONNABORTED)
		peer.SetReadDeadline(time.Now().Add(wait))
		if _, err := peer.Read(make([]byte, 1)); !errors.Is(err, unix.ECONNRESET) {
			t.Errorf("peer read after destroy: %v, want ECONNRESET", err)
		}
	})
}

func TestDestroyIPv6UDPAndLeavesOthersAlone(t *testing.T) {
	eachBackend(t, func(t *testing.T, Destroy func([]int, func(Conn) bool) ([]Conn, error)) {
		ln4 := listen(t, "tcp", "127.0.0.1:0")
		ln6 := listen(t, "tcp6", "[::1]:0")
		srv, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer srv.Close()

		ch := startChild(t)
		tcp6 := ch.open("dial tcp %s", ln6.Addr())
		accept(t, ln6)
		udp := ch.open("dial udp %s", srv.LocalAddr())
		mapped := ch.open("mapped %d", port(ln4.Addr()))
		accept(t, ln4)
		unconnected := ch.open("udplisten")
		listening := ch.open("listen")

		// The test process's own connection must survive.
		self, err := net.DialTimeout("tcp", ln4.Addr().String(), wait)
		if err != nil {
			t.Fatal(err)
		}
		defer self.Close()
		selfPeer := accept(t, ln4)

		var offered []Conn
		got, err := Destroy([]int{ch.pid}, func(c Conn) bool {
			offered = append(offered, c)
			return true
		})
		if err != nil {
			t.Fatalf("Destroy: %v", err)
		}
		if len(got) != 3 || len(offered) != 3 {
			t.Fatalf("Destroy offered %v and returned %v, want the child's tcp6, udp and mapped connections", offered, got)
		}
		for _, want := range []struct {
			name  string
			proto string
			cc    childConn
		}{{"tcp6", "tcp", tcp6}, {"udp", "udp", udp}, {"mapped", "tcp", mapped}} {
			c, ok := findConn(got, want.cc.local, want.cc.remote)
			if !ok {
				t.Errorf("%s %s->%s not destroyed; got %v", want.name, want.cc.local, want.cc.remote, got)
				continue
			}
			if c.PID != ch.pid || c.Proto != want.proto {
				t.Errorf("%s: got %+v, want pid %d proto %s", want.name, c, ch.pid, want.proto)
			}
		}
		if c, ok := findConn(got, mapped.local, mapped.remote); ok && (!c.Remote.Addr().Is4() || !c.Local.Addr().Is4()) {
			t.Errorf("mapped connection reported as %s->%s, want IPv4", c.Local, c.Remote)
		}
		if !tcp6.remote.Addr().Is6() {
			t.Errorf("tcp6 remote %s is not IPv6", tcp6.remote)
		}

		ch.expectErrno("read", tcp6.id, unix.ECONNABORTED)
		ch.expectErrno("read", udp.id, unix.ECONNABORTED)
		ch.expectErrno("read", mapped.id, unix.ECONNABORTED)

		// The unconnected UDP socket still receives.
		if _, err := srv.WriteTo([]byte("ping"), net.UDPAddrFromAddrPort(unconnected.local)); err != nil {
			t.Fatal(err)
		}
		if f := ch.do("read %d", unconnected.id); len(f) != 2 || f[0] != "data" || f[1] != "4" {
			t.Errorf("unconnected UDP read after Destroy: %v, want data 4", f)
		}
		// The listening socket still completes handshakes.
		if c, err := net.DialTimeout("tcp", listening.local.String(), wait); err != nil {
			t.Errorf("dial child's listener after Destroy: %v", err)
		} else {
			c.Close()
		}
		// The test's own connection still carries data.
		if _, err := self.Write([]byte("y")); err != nil {
			t.Errorf("own connection write: %v", err)
		}
		selfPeer.SetReadDeadline(time.Now().Add(wait))
		if _, err := selfPeer.Read(make([]byte, 1)); err != nil {
			t.Errorf("own connection read: %v", err)
		}
	})
}

func TestDestroyMatch(t *testing.T) {
	eachBackend(t, func(t *testing.T, Destroy func([]int, func(Conn) bool) ([]Conn, error)) {
		lnA := listen(t, "tcp", "127.0.0.1:0")
		lnB := listen(t, "tcp", "127.0.0.1:0")
		ch := startChild(t)
		a := ch.open("dial tcp %s", lnA.Addr())
		peerA := accept(t, lnA)
		b := ch.open("dial tcp %s", lnB.Addr())
		accept(t, lnB)

		offered := 0
		got, err := Destroy([]int{ch.pid}, func(c Conn) bool {
			offered++
			return c.Remote.Port() == port(lnB.Addr())
		})
		if err != nil {
			t.Fatalf("Destroy: %v", err)
		}
		if offered != 2 {
			t.Errorf("match offered %d connections, want 2", offered)
		}
		if len(got) != 1 || got[0].Local != b.local || got[0].Remote != b.remote {
			t.Fatalf("Destroy returned %v, want only %s->%s", got, b.local, b.remote)
		}
		ch.expectErrno("read", b.id, unix.ECONNABORTED)
		if f := ch.do("write %d", a.id); len(f) != 1 || f[0] != "ok" {
			t.Fatalf("write on the unmatched connection: %v", f)
		}
		peerA.SetReadDeadline(time.Now().Add(wait))
		if _, err := peerA.Read(make([]byte, 1)); err != nil {
			t.Errorf("unmatched connection's peer read: %v", err)
		}
	})
}

// A TCP connect still in flight (SYN_SENT) is destroyed too, so it cannot
// complete after a revoke: the iterator names it from the socket, the
// pidfd_getfd path (no peer address to read yet) leaves it to the dump.
func TestDestroySynSent(t *testing.T) {
	eachBackend(t, func(t *testing.T, Destroy func([]int, func(Conn) bool) ([]Conn, error)) {
		// A listener whose accept queue is full drops further SYNs, so
		// the child's connect stays in SYN_SENT, retransmitting.
		lfd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(lfd)
		if err := unix.Bind(lfd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
			t.Fatal(err)
		}
		if err := unix.Listen(lfd, 0); err != nil {
			t.Fatal(err)
		}
		sa, _ := unix.Getsockname(lfd)
		lport := sa.(*unix.SockaddrInet4).Port
		// With a backlog of 0 one established connection fills it.
		filler, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", lport), wait)
		if err != nil {
			t.Fatal(err)
		}
		defer filler.Close()
		ch := startChild(t)
		cc := ch.open("connecting %d", lport)
		got, err := Destroy([]int{ch.pid}, nil)
		if err != nil {
			t.Fatalf("Destroy: %v", err)
		}
		if len(got) != 1 || got[0].Local != cc.local || got[0].Remote.Port() != uint16(lport) {
			t.Fatalf("Destroy returned %v, want the connect in flight from %s", got, cc.local)
		}
		ch.expectErrno("soerror", cc.id, unix.ECONNABORTED)
	})
}

// missingPID returns a pid that cannot exist: pids are below pid_max.
func missingPID(t testing.TB) int {
	b, err := os.ReadFile("/proc/sys/kernel/pid_max")
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// A thread that unshared its fd table holds sockets the process's own fd
// table does not show; the iterator walks every thread's table.
func TestDestroyThreadWithItsOwnFDTable(t *testing.T) {
	eachBackend(t, func(t *testing.T, Destroy func([]int, func(Conn) bool) ([]Conn, error)) {
		ln := listen(t, "tcp", "127.0.0.1:0")
		ch := startChild(t)
		cc := ch.open("unshared %d", port(ln.Addr()))
		peer := accept(t, ln)

		got, err := Destroy([]int{ch.pid}, nil)
		if err != nil {
			t.Fatalf("Destroy: %v", err)
		}
		if len(got) != 1 || got[0].Local != cc.local || got[0].Remote.Port() != port(ln.Addr()) {
			t.Fatalf("Destroy returned %v, want the thread's connection from %s", got, cc.local)
		}
		peer.SetReadDeadline(time.Now().Add(wait))
		if _, err := peer.Read(make([]byte, 1)); !errors.Is(err, unix.ECONNRESET) {
			t.Errorf("peer read after destroy: %v, want ECONNRESET", err)
		}
	})
}

// A member in a network namespace of its own, as a container's processes
// are, has its connections destroyed in that namespace: a sock_diag socket
// in ours would not find them.
func TestDestroyInAnotherNetworkNamespace(t *testing.T) {
	eachBackend(t, func(t *testing.T, Destroy func([]int, func(Conn) bool) ([]Conn, error)) {
		ch := startChildWith(t, &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET})
		if f := ch.do("loup"); len(f) != 1 || f[0] != "ok" {
			t.Fatalf("child loup: %v", f)
		}
		ln := ch.open("listen")
		cc := ch.open("dial tcp %s", ln.local)
		got, err := Destroy([]int{ch.pid}, nil)
		if err != nil {
			t.Fatalf("Destroy: %v", err)
		}
		if len(got) != 1 || got[0].Local != cc.local || got[0].Remote != cc.remote || got[0].PID != ch.pid {
			t.Fatalf("Destroy returned %v, want the child's connection %s->%s", got, cc.local, cc.remote)
		}
		ch.expectErrno("read", cc.id, unix.ECONNABORTED)
	})
}

func TestDestroyMissingPID(t *testing.T) {
	// An exited, reaped process.
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"=1")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	for _, b := range backends(t) {
		got, err := b.destroy([]int{missingPID(t), cmd.Process.Pid, 0, -1}, nil)
		if err != nil || len(got) != 0 {
			t.Errorf("%s: Destroy of missing pids = %v, %v; want nothing, no error", b.name, got, err)
		}
	}
}

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		in   string
		ino  uint64
		isOK bool
	}{
		{"socket:[12345]", 12345, true},
		{"socket:[]", 0, false},
		{"socket:[12a]", 0, false},
		{"pipe:[12]", 0, false},
		{"/dev/null", 0, false},
		{"socket:[99999999999999999999999]", 0, false},
	} {
		ino, ok := socketInode([]byte(tc.in))
		if ino != tc.ino || ok != tc.isOK {
			t.Errorf("socketInode(%q) = %d, %v", tc.in, ino, ok)
		}
	}

	// An AF_INET6 socket of a dump with IPv4-mapped addresses.
	m := sockdiag.Msg{Family: unix.AF_INET6, State: sockdiag.TCPEstablished, Inode: 7, ID: sockdiag.SockID{
		SrcPort: 12345, DstPort: 80, Cookie: 0x1122334455667788,
		Src: netip.MustParseAddr("::ffff:10.0.0.1").As16(), Dst: netip.MustParseAddr("::ffff:192.0.2.7").As16(),
	}}
	tg, ok := fromMsg(&m, unix.IPPROTO_TCP)
	want := Conn{Inode: 7, Proto: "tcp",
		Local: netip.MustParseAddrPort("10.0.0.1:12345"), Remote: netip.MustParseAddrPort("192.0.2.7:80")}
	wantReq := sockdiag.Request{Family: unix.AF_INET6, Protocol: unix.IPPROTO_TCP, ID: m.ID}
	if !ok || tg.conn != want || tg.req != wantReq {
		t.Errorf("fromMsg = %+v, %v; want %+v, %+v", tg, ok, want, wantReq)
	}
	// A link-local peer is reported with the bound device as its zone.
	m.ID.Dst, m.ID.Ifindex = netip.MustParseAddr("fe80::1").As16(), 3
	if tg, ok := fromMsg(&m, unix.IPPROTO_UDP); !ok || tg.conn.Remote != netip.MustParseAddrPort("[fe80::1%3]:80") || tg.conn.Proto != "udp" {
		t.Errorf("fromMsg of a link-local peer = %+v, %v", tg, ok)
	}
	m.ID.DstPort = 0 // no peer
	if _, ok := fromMsg(&m, unix.IPPROTO_TCP); ok {
		t.Error("fromMsg accepted a socket without a peer")
	}
	m.ID.DstPort, m.Inode = 80, 0 // no owning file
	if _, ok := fromMsg(&m, unix.IPPROTO_TCP); ok {
		t.Error("fromMsg accepted a socket without an inode")
	}
}

// benchConns opens n connections of the test process to l and accepts them.
func benchConns(b *testing.B, l net.Listener, n int) (clients, peers []net.Conn) {
	for range n {
		c, err := net.DialTimeout("tcp", l.Addr().String(), wait)
		if err != nil {
			b.Fatal(err)
		}
		clients = append(clients, c)
		l.(*net.TCPListener).SetDeadline(time.Now().Add(wait))
		p, err := l.Accept()
		if err != nil {
			b.Fatal(err)
		}
		peers = append(peers, p)
	}
	return clients, peers
}

func closeAll(cs ...[]net.Conn) {
	for _, s := range cs {
		for _, c := range s {
			c.Close()
		}
	}
}

// BenchmarkDestroy100 destroys 100 established connections of one process
// per call (setup excluded from the timing), on each backend: "narrow"
// selects them with a match function among the process's 200 sockets (both
// ends), "revoke" destroys every socket of a process holding 100 client ends.
func BenchmarkDestroy100(b *testing.B) {
	l := listen(b, "tcp", "127.0.0.1:0")
	lport := port(l.Addr())
	for _, be := range backends(b) {
		b.Run(be.name+"/narrow", func(b *testing.B) {
			pids := []int{os.Getpid()}
			match := func(c Conn) bool { return c.Remote.Port() == lport }
			for b.Loop() {
				b.StopTimer()
				clients, peers := benchConns(b, l, 100)
				b.StartTimer()
				got, err := be.destroy(pids, match)
				b.StopTimer()
				if err != nil || len(got) != 100 {
					b.Fatalf("Destroy = %d conns, %v; want 100", len(got), err)
				}
				closeAll(clients, peers)
				b.StartTimer()
			}
		})
		b.Run(be.name+"/revoke", func(b *testing.B) {
			for b.Loop() {
				b.StopTimer()
				ch := startChild(b)
				for range 100 {
					ch.open("dial tcp %s", l.Addr())
					accept(b, l).Close()
				}
				b.StartTimer()
				got, err := be.destroy([]int{ch.pid}, nil)
				b.StopTimer()
				if err != nil || len(got) != 100 {
					b.Fatalf("Destroy = %d conns, %v; want 100", len(got), err)
				}
				b.StartTimer()
			}
		})
	}
}

// BenchmarkScan100 is the cost of a call that destroys nothing: scanning a
// process with 200 sockets (100 connections, both ends) and walking the
// socket tables.
func BenchmarkScan100(b *testing.B) {
	l := listen(b, "tcp", "127.0.0.1:0")
	for _, be := range backends(b) {
		b.Run(be.name, func(b *testing.B) {
			clients, peers := benchConns(b, l, 100)
			defer closeAll(clients, peers)
			pids := []int{os.Getpid()}
			for b.Loop() {
				if _, err := be.destroy(pids, func(Conn) bool { return false }); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// Destroy requests ask for no acknowledgement; a failed one is still
// answered and must not be reported as destroyed. A stale cookie is the
// failure (ENOENT) a socket replaced by another on the same 4-tuple gives.
func TestDestroyReportsOnlyWhatTheKernelDestroyed(t *testing.T) {
	privtest.RequireRoot(t)
	ln := listen(t, "tcp", "127.0.0.1:0")
	var fds []int
	var targets []target
	for range 3 {
		c, err := net.DialTimeout("tcp", ln.Addr().String(), wait)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		accept(t, ln)
		f, err := c.(*net.TCPConn).File()
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		tg, n := describe(int(f.Fd()))
		if n != named {
			t.Fatalf("describe: %v", n)
		}
		fds = append(fds, int(f.Fd()))
		targets = append(targets, tg)
	}
	targets[1].req.ID.Cookie ^= 0xff // wrong cookie
	c, err := sockdiag.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	done, err := destroyTargets(c, targets)
	if err != nil {
		t.Fatalf("destroy: %v", err)
	}
	if len(done) != 2 || done[0] != targets[0].conn || done[1] != targets[2].conn {
		t.Fatalf("destroyed %v, want the first and the last", done)
	}
	for i, fd := range fds {
		_, err := unix.Getpeername(fd)
		if alive := err == nil; alive != (i == 1) {
			t.Errorf("connection %d alive=%v after destroy (getpeername: %v)", i, alive, err)
		}
	}
}

// More records than the kernel's iterator buffer holds (32 KiB, 512
// records) take several reads; none is lost or doubled.
func TestIteratorReadsManySockets(t *testing.T) {
	privtest.RequireRoot(t)
	privtest.NeedsKernel(t, 6, 1, "task iterator of one process (the socket iterator)")
	it, err := loadIterator()
	if err != nil {
		t.Fatal(err)
	}
	defer it.close()
	srv, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	const n = 700
	want := make(map[netip.AddrPort]bool)
	for range n {
		c, err := net.Dial("udp", srv.LocalAddr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		want[c.LocalAddr().(*net.UDPAddr).AddrPort()] = true
	}
	found, _, err := it.scan([]int{os.Getpid()})
	if err != nil {
		t.Fatal(err)
	}
	got := 0
	for _, tg := range found {
		if tg.conn.Remote.Port() == port(srv.LocalAddr()) {
			if !want[tg.conn.Local] {
				t.Fatalf("unexpected or doubled socket %v", tg.conn)
			}
			delete(want, tg.conn.Local)
			got++
		}
	}
	if got != n {
		t.Fatalf("named %d of the %d connected UDP sockets", got, n)
	}
}
