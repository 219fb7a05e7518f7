// Package gatetest runs network probes from child processes placed in a
// given cgroup, for kernel tests of the egress gate. The test binary re-runs
// itself as the probe: call MaybeRunProbe first thing in TestMain.
package gatetest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

const (
	envAction = "AGENTFENCE_PROBE"
	envDepth  = "AGENTFENCE_PROBE_DEPTH"
	envDetach = "AGENTFENCE_PROBE_DETACH"
	envStdout = "AGENTFENCE_PROBE_STDOUT"
	envGate   = "AGENTFENCE_PROBE_GATE"
)

// Env returns the environment that makes the test binary, started by some
// other program (agentfence run), run actions and print results on stdout.
func Env(actions ...string) []string {
	return []string{envAction + "=" + strings.Join(actions, ";"), envStdout + "=1"}
}

// MaybeRunProbe runs the probe and exits if this process was started as
// one; otherwise it returns.
func MaybeRunProbe() {
	action := os.Getenv(envAction)
	if action == "" {
		return
	}
	out := os.NewFile(3, "result")
	if os.Getenv(envStdout) != "" {
		out = os.Stdout
	}
	depth := 0
	fmt.Sscan(os.Getenv(envDepth), &depth)
	if os.Getenv(envGate) != "" {
		// Wait for the test's go-ahead (a line on stdin) before going on,
		// so it can act on this process first (e.g. bind its pid).
		fmt.Fprintf(out, "%d ready\n", os.Getpid())
		bufio.NewReader(os.Stdin).ReadString('\n')
		os.Unsetenv(envGate)
	}
	if depth > 0 {
		// Start the next generation and, for a detached probe, exit at once
		// so the descendant is reparented like a daemon.
		cmd := exec.Command(os.Args[0])
		cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%d", envDepth, depth-1))
		cmd.ExtraFiles = []*os.File{out}
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
		if os.Getenv(envDetach) != "" {
			cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
		}
		if err := cmd.Start(); err != nil {
			fmt.Fprintf(out, "spawn: %v\n", err)
			os.Exit(1)
		}
		if os.Getenv(envDetach) == "" {
			cmd.Wait()
		}
		os.Exit(0)
	}
	for _, a := range strings.Split(action, ";") {
		switch verb, arg, _ := strings.Cut(a, " "); verb {
		case "hold":
			hold(out, arg)
			continue
		case "holdmany":
			holdMany(out, arg)
			continue
		case "connectbench":
			connectBench(out, arg)
			continue
		case "udpbench":
			udpBench(out, arg)
			continue
		case "syscallbench":
			syscallBench(out, arg)
			continue
		case "execbench":
			execBench(out, arg)
			continue
		case "listen":
			listen(out, arg)
			continue
		case "udpsock":
			udpSock(out, arg)
			continue
		}
		fmt.Fprintf(out, "%d %s\n", os.Getpid(), Probe(a))
	}
	os.Exit(0)
}

// hold connects to addr and reports "connected", then blocks reading until
// the connection breaks and reports how, then tries to connect again and
// reports that: three result lines.
func hold(out *os.File, addr string) {
	pid := os.Getpid()
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		fmt.Fprintf(out, "%d badaddr\n%d badaddr\n%d badaddr\n", pid, pid, pid)
		return
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err == nil {
		err = unix.Connect(fd, &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()})
	}
	if err != nil {
		fmt.Fprintf(out, "%d %s\n%d -\n%d -\n", pid, errName(err), pid, pid)
		return
	}
	fmt.Fprintf(out, "%d connected\n", pid)
	buf := make([]byte, 64)
	for {
		n, err := unix.Read(fd, buf)
		if err != nil {
			fmt.Fprintf(out, "%d %s\n", pid, errName(err))
			break
		}
		if n == 0 {
			fmt.Fprintf(out, "%d EOF\n", pid)
			break
		}
	}
	unix.Close(fd)
	fmt.Fprintf(out, "%d %s\n", pid, Probe("tcp "+addr))
}

// Proc is a probe started with Start, reporting line by line.
type Proc struct {
	PID   int
	cmd   *exec.Cmd
	out   *os.File
	lines *bufio.Scanner
	stdin io.WriteCloser
	tb    testing.TB
}

// Start starts a probe like Run but returns at once. With gate set the
// probe first reports "ready" and waits for Go before acting.
func Start(tb testing.TB, cgroupPath string, opts Options, gate bool, actions ...string) *Proc {
	tb.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		tb.Fatal(err)
	}
	var env []string
	if gate {
		env = append(env, envGate+"=1")
	}
	cmd, started := command(tb, cgroupPath, opts, w, actions, env...)
	defer started()
	stdin, err := cmd.StdinPipe()
	if err != nil {
		tb.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		tb.Fatalf("start probe: %v", err)
	}
	w.Close()
	p := &Proc{PID: cmd.Process.Pid, cmd: cmd, out: r, lines: bufio.NewScanner(r), stdin: stdin, tb: tb}
	tb.Cleanup(func() { cmd.Process.Kill(); cmd.Wait(); r.Close() })
	return p
}

// Next returns the next result (without the pid) and the pid that
// reported it; it fails the test after a minute without one.
func (p *Proc) Next() (string, int) {
	p.tb.Helper()
	p.out.SetReadDeadline(time.Now().Add(time.Minute))
	if !p.lines.Scan() {
		p.tb.Fatalf("probe %d: no more results: %v", p.PID, p.lines.Err())
	}
	var pid int
	var res string
	fmt.Sscan(p.lines.Text(), &pid, &res)
	return res, pid
}

// Wait waits for the probe to exit and says how it ended.
func (p *Proc) Wait() *os.ProcessState {
	p.cmd.Wait()
	return p.cmd.ProcessState
}

// Go lets a gated probe go on.
func (p *Proc) Go() { p.stdin.Write([]byte("go\n")) }

// Probe performs one network action in this process and returns "ok" or
// the errno name. Actions:
//
//	tcp ADDR:PORT      connect a TCP socket of ADDR's family
//	tcp6 ADDR:PORT     connect from an AF_INET6 socket (v4 addresses are sent v4-mapped)
//	udp ADDR:PORT      sendto from an unconnected UDP socket of ADDR's family
//	udp6 ADDR:PORT     sendto from an AF_INET6 UDP socket
//	udpconnect ADDR:PORT  connect a UDP socket
//	tfo ADDR:PORT      TCP fast open: sendto with MSG_FASTOPEN, no connect
//	raw                create a raw ICMP socket
//	dialname DNS HOST:PORT  resolve HOST (A only) through the resolver at DNS
//	                   (UDP), then connect to the first address
//	loop A D STOPFILE  connect to A and D in turn until STOPFILE exists; counts
//	hold ADDR          (MaybeRunProbe only) hold a connection, report how it ends
//	holdmany ADDR N    (MaybeRunProbe only) hold N connections until all break
//	connectbench ADDR N (MaybeRunProbe only) for each line on stdin, N
//	                   connect+close to ADDR (IPv4); reports wall-clock and
//	                   thread CPU ns per connect, as "WALL/CPU" (bench.go)
//	syscallbench N     (MaybeRunProbe only) the same for getppid
//	execbench N        (MaybeRunProbe only) the same for fork+exec+wait of /bin/true
//	bindtcp ADDR:PORT  bind a TCP socket of ADDR's family ([::ffff:a.b.c.d] binds an AF_INET6 socket)
//	bindudp ADDR:PORT  the same for UDP
//	listen ADDR:PORT|- (MaybeRunProbe only) bind (not with -) and listen on a
//	                   TCP socket, report the port, and hold it until stdin closes
//	udpsock ADDR:PORT  (MaybeRunProbe only) bind a UDP socket, report the port,
//	                   then for each line on stdin: "send ADDR:PORT" sends
//	                   "ping" there; "recv MARKER" reads datagrams until one
//	                   says MARKER and reports them all, comma separated
//	udpbench ADDR N    (MaybeRunProbe only) like connectbench: for each line on
//	                   stdin, N sendto+recvfrom round trips to a UDP echo at ADDR
//	socket F T P       socket(F, T, P), numbers as in C: "ok" or the errno
//	uring ADDR:PORT    connect a TCP socket (IPv4) through io_uring
//	flood ADDR N RATE  sendto N datagrams (paced to RATE/s, 0: flat out); the rate achieved
//	api-list SOCKET    list sessions through the daemon's API: the HTTP status
//	dnsq ADDR:PORT NAME  send a DNS query (A) for NAME over UDP and wait for
//	                   the answer: "ok", or the errno of the send
//	api-open SOCKET    try to open a session with scope 0.0.0.0/0: the HTTP
//	                   status and the error's field, e.g. 400:scope[0]
//	vmread PID         process_vm_readv of 8 bytes at an unmapped address of
//	                   PID: EFAULT when the kernel let it attach, else its errno
//	netns              on a thread of its own, unshare(CLONE_NEWNET), then
//	                   setns back to the namespace it was in: "ok" or the
//	                   errno of the first call that failed
func Probe(action string) string {
	verb, arg, _ := strings.Cut(action, " ")
	switch verb {
	case "api-list", "api-open":
		return apiProbe(verb, arg)
	case "loop":
		return loop(arg)
	case "flood":
		return flood(arg)
	case "dialname":
		return dialName(arg)
	case "uring":
		return uringConnect(arg)
	case "dnsq":
		return dnsQuery(arg)
	case "netns":
		return netnsRoundTrip()
	case "vmread":
		pid, err := strconv.Atoi(arg)
		if err != nil {
			return "badargs"
		}
		buf := make([]byte, 8)
		_, err = unix.ProcessVMReadv(pid, []unix.Iovec{{Base: &buf[0], Len: 8}}, []unix.RemoteIovec{{Base: 8, Len: 8}}, 0)
		return errName(err)
	}
	if verb == "socket" {
		var family, typ, proto int
		if _, err := fmt.Sscan(arg, &family, &typ, &proto); err != nil {
			return "badargs"
		}
		fd, err := unix.Socket(family, typ, proto)
		if err != nil {
			return errName(err)
		}
		unix.Close(fd)
		return "ok"
	}
	if verb == "bindtcp" || verb == "bindudp" {
		return bindProbe(verb, arg)
	}
	if verb == "raw" {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_ICMP)
		if err != nil {
			return errName(err)
		}
		unix.Close(fd)
		return "ok"
	}
	ap, err := netip.ParseAddrPort(arg)
	if err != nil {
		return "badaddr"
	}
	v6 := verb == "tcp6" || verb == "udp6" || (ap.Addr().Is6() && !ap.Addr().Is4In6())
	typ := unix.SOCK_STREAM
	if strings.HasPrefix(verb, "udp") {
		typ = unix.SOCK_DGRAM
	}
	family := unix.AF_INET6
	var sa unix.Sockaddr = &unix.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()}
	if !v6 {
		family = unix.AF_INET
		sa = &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().Unmap().As4()}
	}
	fd, err := unix.Socket(family, typ|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return "socket:" + errName(err)
	}
	defer unix.Close(fd)
	switch verb {
	case "tcp", "tcp6", "udpconnect":
		err = unix.Connect(fd, sa)
	case "udp", "udp6":
		err = unix.Sendto(fd, []byte("probe"), 0, sa)
	case "tfo":
		err = unix.Sendto(fd, []byte("probe"), unix.MSG_FASTOPEN, sa)
	default:
		return "badverb"
	}
	if err != nil {
		return errName(err)
	}
	return "ok"
}

// loop connects to an allowed and a denied TCP address in turn until the
// stop file appears (at most 10 minutes) and counts the outcomes:
// a=allowed connects that worked, af=that failed, d=denied connects that
// worked, df=that failed (with EPERM), err=the first failure of an
// allowed connect.
func loop(arg string) string {
	var allowed, denied, stop string
	fmt.Sscan(arg, &allowed, &denied, &stop)
	var a, af, d, df int
	firstErr := "none"
	deadline := time.Now().Add(10 * time.Minute)
	for i := 0; time.Now().Before(deadline); i++ {
		if i%50 == 0 {
			if _, err := os.Stat(stop); err == nil {
				break
			}
		}
		if r := Probe("tcp " + allowed); r == "ok" {
			a++
		} else {
			if af == 0 {
				firstErr = r
			}
			af++
		}
		if Probe("tcp "+denied) == "EPERM" {
			df++
		} else {
			d++
		}
	}
	return fmt.Sprintf("a=%d,af=%d,d=%d,df=%d,err=%s", a, af, d, df, firstErr)
}

// flood sends N datagrams with sendto, as fast as it can or paced to RATE
// per second, and returns the rate it achieved per second.
func flood(arg string) string {
	var addr string
	var n, rate int
	fmt.Sscan(arg, &addr, &n, &rate)
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return "badaddr"
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return errName(err)
	}
	defer unix.Close(fd)
	sa := &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}
	start := time.Now()
	for i := range n {
		if rate > 0 && i%100 == 0 {
			// Pace in steps of 100 datagrams: the load generator's clock.
			if ahead := time.Duration(i)*time.Second/time.Duration(rate) - time.Since(start); ahead > 0 {
				time.Sleep(ahead)
			}
		}
		if err := unix.Sendto(fd, []byte("x"), 0, sa); err != nil {
			return errName(err)
		}
	}
	return fmt.Sprintf("%.0f", float64(n)/time.Since(start).Seconds())
}

// holdMany opens n connections to addr and reports "held", then blocks
// until they are all broken and reports how many broke.
// sockaddr is ap as the socket address of its family; a v4-mapped address
// gets an AF_INET6 socket.
func sockaddr(ap netip.AddrPort) (int, unix.Sockaddr) {
	if ap.Addr().Is4() {
		return unix.AF_INET, &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}
	}
	return unix.AF_INET6, &unix.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()}
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

// bound is a socket of typ bound to arg ("-": not bound).
func bound(typ int, arg string) (int, error) {
	family, sa := unix.AF_INET, unix.Sockaddr(nil)
	if arg != "-" {
		ap, err := netip.ParseAddrPort(arg)
		if err != nil {
			return -1, err
		}
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

func bindProbe(verb, arg string) string {
	typ := unix.SOCK_STREAM
	if verb == "bindudp" {
		typ = unix.SOCK_DGRAM
	}
	fd, err := bound(typ, arg)
	if err != nil {
		return errName(err)
	}
	unix.Close(fd)
	return "ok"
}

// listen reports the port of a listening socket and holds it until stdin
// closes.
func listen(out *os.File, arg string) {
	fd, err := bound(unix.SOCK_STREAM, arg)
	if err == nil {
		err = unix.Listen(fd, 128)
	}
	if err != nil {
		fmt.Fprintf(out, "%d %s\n", os.Getpid(), errName(err))
		return
	}
	fmt.Fprintf(out, "%d %d\n", os.Getpid(), localPort(fd))
	io.Copy(io.Discard, os.Stdin)
	unix.Close(fd)
}

// udpSock is a member's UDP socket driven line by line (see Probe).
func udpSock(out *os.File, arg string) {
	pid := os.Getpid()
	fd, err := bound(unix.SOCK_DGRAM, arg)
	if err != nil {
		fmt.Fprintf(out, "%d %s\n", pid, errName(err))
		return
	}
	defer unix.Close(fd)
	unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 20})
	fmt.Fprintf(out, "%d %d\n", pid, localPort(fd))
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		cmd, a, _ := strings.Cut(in.Text(), " ")
		switch cmd {
		case "send":
			ap, err := netip.ParseAddrPort(a)
			if err != nil {
				fmt.Fprintf(out, "%d badaddr\n", pid)
				continue
			}
			_, sa := sockaddr(ap)
			res := "ok"
			if err := unix.Sendto(fd, []byte("ping"), 0, sa); err != nil {
				res = errName(err)
			}
			fmt.Fprintf(out, "%d %s\n", pid, res)
		case "recv":
			var got []string
			buf := make([]byte, 512)
			for {
				n, err := Read(fd, buf)
				if err != nil {
					got = append(got, errName(err))
					break
				}
				got = append(got, string(buf[:n]))
				if string(buf[:n]) == a {
					break
				}
			}
			fmt.Fprintf(out, "%d %s\n", pid, strings.Join(got, ","))
		}
	}
}

// dialName resolves a name through one resolver, as an agent with a
// configured resolver would, and connects to what it got.
func dialName(arg string) string {
	resolver, target, _ := strings.Cut(arg, " ")
	host, port, err := net.SplitHostPort(target)
	if err != nil {
		return "badaddr"
	}
	r := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "udp", resolver)
	}}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	addrs, err := r.LookupNetIP(ctx, "ip4", host)
	if err != nil {
		return "resolve:" + errName(err)
	}
	if len(addrs) == 0 {
		return "resolve:none"
	}
	return Probe("tcp " + net.JoinHostPort(addrs[0].String(), port))
}

// Send writes a line to the probe's stdin (connectbench's "run").
func (p *Proc) Send(line string) { p.stdin.Write([]byte(line + "\n")) }

func holdMany(out *os.File, arg string) {
	var addr string
	var n int
	fmt.Sscan(arg, &addr, &n)
	ap, _ := netip.ParseAddrPort(addr)
	var fds []int
	for range n {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err == nil {
			err = unix.Connect(fd, &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()})
		}
		if err != nil {
			fmt.Fprintf(out, "%d %s\n", os.Getpid(), errName(err))
			return
		}
		fds = append(fds, fd)
	}
	fmt.Fprintf(out, "%d held\n", os.Getpid())
	broken := 0
	buf := make([]byte, 8)
	for _, fd := range fds {
		if _, err := unix.Read(fd, buf); err != nil {
			broken++
		}
	}
	fmt.Fprintf(out, "%d broken=%d\n", os.Getpid(), broken)
}

// apiProbe calls the daemon's API on the unix socket arg and returns the
// HTTP status code, or the errno of a failed connect.
func apiProbe(verb, socket string) string {
	c := http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", socket)
	}}, Timeout: 10 * time.Second}
	var resp *http.Response
	var err error
	if verb == "api-list" {
		resp, err = c.Get("http://agentfenced/v1/sessions")
	} else {
		resp, err = c.Post("http://agentfenced/v1/sessions", "application/json",
			strings.NewReader(`{"intent":"widen","scope":["0.0.0.0/0"]}`))
	}
	if err != nil {
		return errName(err)
	}
	defer resp.Body.Close()
	var body struct {
		Error struct{ Field string } `json:"error"`
	}
	json.NewDecoder(resp.Body).Decode(&body)
	if body.Error.Field != "" {
		return fmt.Sprintf("%d:%s", resp.StatusCode, body.Error.Field)
	}
	return fmt.Sprint(resp.StatusCode)
}

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

func errName(err error) string {
	var errno unix.Errno
	if errors.As(err, &errno) {
		if n := unix.ErrnoName(errno); n != "" {
			return n
		}
	}
	return err.Error()
}

// Options shape a probe run.
type Options struct {
	// Depth > 0 runs the probe in a descendant that many generations down.
	Depth int
	// Detach makes each intermediate generation exit without waiting, so
	// the probe runs in a reparented, setsid'd daemon.
	Detach bool
	// Credential runs the probe as another user.
	Credential *syscall.Credential
	// Binary is the probe executable (default: this test binary). A probe
	// run as another user needs a copy it may execute.
	Binary string
}

// Result is one probe outcome.
type Result struct {
	PID    int
	Result string
}

// command builds a probe: the test binary (or opts.Binary) with the actions
// in its environment and its results going to w, to be started directly in
// the cgroup at cgroupPath. Call the returned func once it has started.
func command(tb testing.TB, cgroupPath string, opts Options, w *os.File, actions []string, env ...string) (*exec.Cmd, func()) {
	tb.Helper()
	bin := os.Args[0]
	if opts.Binary != "" {
		bin = opts.Binary
	}
	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(), envAction+"="+strings.Join(actions, ";"), fmt.Sprintf("%s=%d", envDepth, opts.Depth))
	if opts.Detach {
		cmd.Env = append(cmd.Env, envDetach+"=1")
	}
	cmd.Env = append(cmd.Env, env...)
	cmd.ExtraFiles = []*os.File{w}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: opts.Credential}
	if cgroupPath == "" {
		return cmd, func() {}
	}
	cg, err := os.Open(cgroupPath)
	if err != nil {
		tb.Fatal(err)
	}
	cmd.SysProcAttr.UseCgroupFD = true
	cmd.SysProcAttr.CgroupFD = int(cg.Fd())
	return cmd, func() { cg.Close() }
}

// Run starts the test binary as a probe inside the cgroup at cgroupPath
// (clone3 CLONE_INTO_CGROUP) and returns each action's result, in order.
// It returns when every process holding the result pipe has exited.
func Run(tb testing.TB, cgroupPath string, opts Options, actions ...string) []Result {
	tb.Helper()
	out, _, output := RunStatus(tb, cgroupPath, opts, actions...)
	if len(out) != len(actions) {
		tb.Fatalf("probe gave %d results for %d actions: %s", len(out), len(actions), output)
	}
	return out
}

// RunStatus is Run for a probe that may not finish its actions (one the
// kernel kills): the results it gave, how it ended, and what it wrote.
func RunStatus(tb testing.TB, cgroupPath string, opts Options, actions ...string) ([]Result, *os.ProcessState, string) {
	tb.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		tb.Fatal(err)
	}
	defer r.Close()
	cmd, started := command(tb, cgroupPath, opts, w, actions)
	defer started()
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		w.Close()
		tb.Fatalf("start probe: %v", err)
	}
	w.Close()
	r.SetReadDeadline(time.Now().Add(30 * time.Second))
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(r); err != nil {
		tb.Fatalf("read probe results: %v (stderr: %s)", err, stderr.String())
	}
	cmd.Wait()
	var out []Result
	for _, line := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		if line == "" {
			continue
		}
		var res Result
		if _, err := fmt.Sscan(line, &res.PID, &res.Result); err != nil {
			tb.Fatalf("bad probe output %q (stderr: %s)", buf.String(), stderr.String())
		}
		out = append(out, res)
	}
	return out, cmd.ProcessState, fmt.Sprintf("%q (stderr: %s)", buf.String(), stderr.String())
}

// ExecutableCopy copies the test binary to a directory every user may read
// and returns its path, for probes run with another Credential.
func ExecutableCopy(tb testing.TB) string {
	tb.Helper()
	dir, err := os.MkdirTemp("", "agentfence-probe")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { os.RemoveAll(dir) })
	b, err := os.ReadFile(os.Args[0])
	if err != nil {
		tb.Fatal(err)
	}
	path := dir + "/probe"
	if err := os.WriteFile(path, b, 0o755); err != nil {
		tb.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		tb.Fatal(err)
	}
	return path
}

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

// dnsQuery sends one standard A query and waits for any answer to it.
func dnsQuery(arg string) string {
	var addr, name string
	if _, err := fmt.Sscan(arg, &addr, &name); err != nil {
		return "badargs"
	}
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return "badaddr"
	}
	// Header: id 0x6166, RD, one question; then the name and type A, class IN.
	msg := []byte{0x61, 0x66, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0}
	for _, l := range strings.Split(strings.TrimSuffix(name, "."), ".") {
		msg = append(append(msg, byte(len(l))), l...)
	}
	msg = append(msg, 0, 0, 1, 0, 1)
	family, sa := sockaddr(ap)
	fd, err := unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return "socket:" + errName(err)
	}
	defer unix.Close(fd)
	if err := unix.Sendto(fd, msg, 0, sa); err != nil {
		return errName(err)
	}
	unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 5})
	buf := make([]byte, 4096)
	n, err := Read(fd, buf)
	if err != nil {
		return "recv:" + errName(err)
	}
	if n < 2 || buf[0] != 0x61 || buf[1] != 0x66 {
		return "badanswer"
	}
	return "ok"
}

// netnsRoundTrip leaves the network namespace and comes back, on a locked
// thread that exits with its goroutine: the other threads never move.
func netnsRoundTrip() string {
	res := make(chan error)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread goes with the goroutine
		fd, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			res <- err
			return
		}
		defer unix.Close(fd)
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			res <- err
			return
		}
		res <- unix.Setns(fd, unix.CLONE_NEWNET)
	}()
	if err := <-res; err != nil {
		return errName(err)
	}
	return "ok"
}
