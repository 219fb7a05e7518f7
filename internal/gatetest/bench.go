package gatetest

import (
	"bufio"
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"time"

	"golang.org/x/sys/unix"
)

// The bench verbs time an agent's work in a process of its own: the
// benchmark's own work (the event reader, the listener, an echo) stays out
// of the measured process. Each line on stdin runs one batch of n
// operations; the reply is "WALL/CPU", nanoseconds per operation, where CPU
// is the working thread's own time, which leaves out the time it was
// preempted: on a small shared machine that is most of the noise.
func timeBatches(out *os.File, n int, op func() error) {
	runtime.LockOSThread()
	var cpu0, cpu1 unix.Timespec
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &cpu0)
		start := time.Now()
		for range n {
			if err := op(); err != nil {
				fmt.Fprintf(out, "%d %s\n", os.Getpid(), errName(err))
				return
			}
		}
		wall := time.Since(start)
		unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &cpu1)
		fmt.Fprintf(out, "%d %d/%d\n", os.Getpid(), wall.Nanoseconds()/int64(n), (cpu1.Nano()-cpu0.Nano())/int64(n))
	}
}

// benchArgs parses "ADDR N" (or "N" with addr false).
func benchArgs(out *os.File, arg string, addr bool) (netip.AddrPort, int, bool) {
	var a string
	var n int
	var ap netip.AddrPort
	var err error
	if addr {
		fmt.Sscan(arg, &a, &n)
		ap, err = netip.ParseAddrPort(a)
	} else {
		fmt.Sscan(arg, &n)
	}
	if err != nil || n <= 0 {
		fmt.Fprintf(out, "%d badarg\n", os.Getpid())
		return ap, 0, false
	}
	return ap, n, true
}

// connectBench: connect+close of a TCP socket to an IPv4 listener. It
// closes with a reset, so no TIME_WAIT pile-up skews later batches.
func connectBench(out *os.File, arg string) {
	ap, n, ok := benchArgs(out, arg, true)
	if !ok {
		return
	}
	sa := &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}
	timeBatches(out, n, func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		if err := unix.Connect(fd, sa); err != nil {
			return err
		}
		return unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
	})
}

// udpBench: sendto+recvfrom round trips to an echo, from one unconnected
// socket (so the reply is judged on the way in, too).
func udpBench(out *os.File, arg string) {
	ap, n, ok := benchArgs(out, arg, true)
	if !ok {
		return
	}
	family, sa := sockaddr(ap)
	fd, err := unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		fmt.Fprintf(out, "%d %s\n", os.Getpid(), errName(err))
		return
	}
	defer unix.Close(fd)
	unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 5})
	buf := make([]byte, 64)
	timeBatches(out, n, func() error {
		if err := unix.Sendto(fd, []byte("ping"), 0, sa); err != nil {
			return err
		}
		_, err := Read(fd, buf)
		return err
	})
}

// syscallBench: getppid, the cheapest system call, for what a program on
// every system call's exit costs everyone.
func syscallBench(out *os.File, arg string) {
	if _, n, ok := benchArgs(out, arg, false); ok {
		timeBatches(out, n, func() error { unix.Getppid(); return nil })
	}
}

// execBench: fork, exec of /bin/true and wait. CPU is the parent thread's
// only; the wall-clock time is the figure.
func execBench(out *os.File, arg string) {
	_, n, ok := benchArgs(out, arg, false)
	if !ok {
		return
	}
	attr := &os.ProcAttr{Files: []*os.File{nil, nil, nil}}
	timeBatches(out, n, func() error {
		p, err := os.StartProcess("/bin/true", []string{"true"}, attr)
		if err != nil {
			return err
		}
		_, err = p.Wait()
		return err
	})
}
