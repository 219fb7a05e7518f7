package kerneltest

import (
	"os"
	"runtime"
	"time"

	"golang.org/x/sys/unix"
)

// The bench operations time an agent's work in a process of its own: the
// benchmark's own work (the event reader, the listener, an echo) stays out
// of the measured process. Each Proc.Go runs one batch of n operations; the
// result is the wall-clock and CPU time per operation, where CPU is the
// working thread's own time, which leaves out the time it was preempted:
// on a small shared machine that is most of the noise.
func timeBatches(c *child, n int, op func() error) {
	if n <= 0 {
		c.report(Result{Err: unix.ErrnoName(unix.EINVAL)})
		return
	}
	runtime.LockOSThread()
	var cpu0, cpu1 unix.Timespec
	for c.line() {
		unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &cpu0)
		start := time.Now()
		for range n {
			if err := op(); err != nil {
				c.report(result(err))
				return
			}
		}
		wall := time.Since(start)
		unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &cpu1)
		c.report(Result{Err: OK, Wall: wall / time.Duration(n), CPU: time.Duration((cpu1.Nano() - cpu0.Nano()) / int64(n))})
	}
}

// run: connect+close of a TCP socket to an IPv4 listener. It closes with
// a reset, so no TIME_WAIT pile-up skews later batches.
func (o ConnectBench) run(c *child) {
	sa := &unix.SockaddrInet4{Port: int(o.Addr.Port()), Addr: o.Addr.Addr().As4()}
	timeBatches(c, o.N, func() error {
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

// run: sendto+recvfrom round trips to an echo, from one unconnected socket
// (so the reply is judged on the way in, too).
func (o UDPBench) run(c *child) {
	family, sa := sockaddr(o.Addr)
	fd, err := unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		c.report(result(err))
		return
	}
	defer unix.Close(fd)
	unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 5})
	buf := make([]byte, 64)
	timeBatches(c, o.N, func() error {
		if err := unix.Sendto(fd, []byte("ping"), 0, sa); err != nil {
			return err
		}
		_, err := Read(fd, buf)
		return err
	})
}

// run: getppid, the cheapest system call, for what a program on every
// system call's exit costs everyone.
func (o SyscallBench) run(c *child) {
	timeBatches(c, o.N, func() error { unix.Getppid(); return nil })
}

// run: fork, exec and wait. CPU is the parent thread's only; the
// wall-clock time is the figure.
func (o ExecBench) run(c *child) {
	path, argv := "/bin/true", []string{"true"}
	if len(o.Argv) > 0 {
		path, argv = o.Argv[0], o.Argv
	}
	attr := &os.ProcAttr{Files: []*os.File{nil, nil, nil}}
	timeBatches(c, o.N, func() error {
		p, err := os.StartProcess(path, argv, attr)
		if err != nil {
			return err
		}
		_, err = p.Wait()
		return err
	})
}
