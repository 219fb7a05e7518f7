package ringreader

import (
	"errors"
	"fmt"
	"os"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// Waiter waits for a ring buffer's wakeups in the Go runtime's poller, not
// in a blocking epoll_wait: a goroutine blocked in a system call holds its
// P, and the runtime's monitor thread takes such a P back after 10 ms and
// then polls every 20 µs for the next millisecond. A reader blocked for its
// 50 ms poll interval made that happen 20 times a second per ring while
// records flowed: more than half of the daemon's context switches under
// load (docs/benchmarks.md, issue 17).
//
// The ring is held edge-triggered (an event per kernel wakeup, not one per
// look that finds records) by an epoll instance of the waiter's own, which
// the runtime's poller watches. Reads of the ring must not block: set the
// ringbuf.Reader's deadline in the past.
type Waiter struct {
	park  *os.File
	conn  syscall.RawConn
	evs   [1]unix.EpollEvent
	asked atomic.Bool
	// closed: the poller's errors for a closed file are not os.ErrClosed.
	closed atomic.Bool
}

// NewWaiter watches m, a ring buffer map.
func NewWaiter(m *ebpf.Map) (*Waiter, error) {
	ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err == nil {
		ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLET, Fd: int32(m.FD())}
		if err = unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, m.FD(), &ev); err == nil {
			err = unix.SetNonblock(ep, true)
		}
		if err != nil {
			unix.Close(ep)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("ring waiter: epoll: %w", err)
	}
	park := os.NewFile(uintptr(ep), "ringbuf-wakeups")
	conn, err := park.SyscallConn()
	if err != nil {
		park.Close()
		return nil, err
	}
	return &Waiter{park: park, conn: conn}, nil
}

// Wait returns at deadline, when the kernel wakes the ring's reader, or
// when Interrupt was called since the last Asked. Only one goroutine may
// wait. After Close it returns os.ErrClosed.
func (w *Waiter) Wait(deadline time.Time) error {
	if err := w.park.SetReadDeadline(deadline); err != nil {
		return w.closedOr(err)
	}
	// An Interrupt that came before the deadline was set could not cut it
	// short.
	if w.asked.Load() {
		return nil
	}
	err := w.conn.Read(func(fd uintptr) bool {
		// Takes the wakeups since the last look: the poller reports only
		// new ones, so none is lost between a read and the next wait.
		n, err := unix.EpollWait(int(fd), w.evs[:], 0)
		return n > 0 || (err != nil && err != unix.EINTR)
	})
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return nil
	}
	return w.closedOr(err)
}

func (w *Waiter) closedOr(err error) error {
	if w.closed.Load() {
		return os.ErrClosed
	}
	return err
}

// Interrupt cuts the current wait short, or the next one if none is under
// way, until Asked is called.
func (w *Waiter) Interrupt() {
	w.asked.Store(true)
	w.park.SetReadDeadline(time.Now())
}

// Asked reports whether Interrupt was called since the last call, and
// forgets it.
func (w *Waiter) Asked() bool { return w.asked.Swap(false) }

// Close ends the current and every later Wait with an error. It may be
// called more than once.
func (w *Waiter) Close() error {
	w.closed.Store(true)
	if err := w.park.Close(); err != nil && !errors.Is(err, os.ErrClosed) {
		return err
	}
	return nil
}
