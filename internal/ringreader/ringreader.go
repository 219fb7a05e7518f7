// Package ringreader drains a BPF ring buffer. Producers submit most records
// without waking the reader (BPF_RB_NO_WAKEUP), so it also wakes on a short
// timer and reads whatever has accumulated; while the ring stays empty, the
// timer backs off (NextWait).
//
// Between reads the reader waits in the Go runtime's poller, not in a
// blocking epoll_wait: a goroutine blocked in a system call holds its P, and
// the runtime's monitor thread takes such a P back after 10 ms and then
// polls every 20 µs for the next millisecond. A reader blocked for its 50 ms
// interval made that happen 20 times a second per ring while records flowed:
// more than half of the daemon's context switches under load
// (docs/benchmarks.md, issue 17).
package ringreader

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/ringbuf"
	"golang.org/x/sys/unix"
)

// Reader reads records from one ring buffer map.
type Reader struct {
	rd       *ringbuf.Reader
	interval time.Duration
	caughtUp func()
	// park is an epoll instance that holds the ring edge-triggered (an
	// event per kernel wakeup, not one per look that finds records), and
	// that the runtime's poller watches through conn.
	park *os.File
	conn syscall.RawConn
	evs  [1]unix.EpollEvent

	closed atomic.Bool

	mu      sync.Mutex
	waiters []chan struct{}
	stopped bool
}

// IdleWait is the longest a poll interval grows to while a ring stays
// empty. An idle daemon polled its four rings every 10 to 50 ms, and those
// wakeups (and the Go runtime's monitor thread they kept busy) were most of
// its CPU at rest (docs/benchmarks.md).
const IdleWait = 500 * time.Millisecond

// NextWait is the poll interval after one of cur: back to base when the
// poll found records, else twice as long, up to IdleWait (or base, if that
// is longer). A record submitted without a wakeup then waits at most
// IdleWait after a quiet spell, base while records flow.
func NextWait(cur, base time.Duration, found bool) time.Duration {
	if found {
		return base
	}
	return min(2*cur, max(IdleWait, base))
}

// New opens a reader. interval bounds how long a record submitted without a
// wakeup may wait while records flow (NextWait after a quiet spell).
func New(m *ebpf.Map, interval time.Duration) (*Reader, error) {
	rd, err := ringbuf.NewReader(m)
	if err != nil {
		return nil, err
	}
	// Reads never block: the reader waits in park.
	rd.SetDeadline(time.Unix(1, 0))
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
		rd.Close()
		return nil, fmt.Errorf("ring reader: epoll: %w", err)
	}
	park := os.NewFile(uintptr(ep), "ringbuf-wakeups")
	conn, err := park.SyscallConn()
	if err != nil {
		park.Close()
		rd.Close()
		return nil, err
	}
	return &Reader{rd: rd, interval: interval, park: park, conn: conn}, nil
}

// OnCaughtUp sets fn to run whenever the reader has handled every record
// in the ring, before it waits for more: where a consumer that batches what
// handle gives it ends a batch. Set it before Run.
func (r *Reader) OnCaughtUp(fn func()) { r.caughtUp = fn }

// Run calls handle for every record until ctx is done or the reader is
// closed. The slice passed to handle is only valid during the call.
func (r *Reader) Run(ctx context.Context, handle func([]byte)) error {
	stop := context.AfterFunc(ctx, func() { r.Close() })
	defer stop()
	defer func() {
		r.mu.Lock()
		r.stopped = true
		r.mu.Unlock()
		r.release(r.take())
	}()
	wait := r.interval
	for {
		// Whoever waits in Sync before this read starts is answered after
		// it: by then it has drained the ring.
		waiting := r.take()
		n, err := r.drain(handle)
		r.release(waiting)
		if err == nil {
			wait = NextWait(wait, r.interval, n > 0)
			err = r.wait(time.Now().Add(wait))
		}
		if err != nil {
			if r.closed.Load() && ctx.Err() != nil {
				return nil // whatever the closed files said
			}
			return err
		}
	}
}

// drain handles the records in the ring and says how many.
func (r *Reader) drain(handle func([]byte)) (n int, err error) {
	var rec ringbuf.Record
	for {
		err := r.rd.ReadInto(&rec)
		switch {
		case err == nil:
			n++
			handle(rec.RawSample)
			// Remaining, not AvailableBytes: a reader closed meanwhile (Run's
			// context done) has no ring to ask.
			if r.caughtUp != nil && rec.Remaining == 0 {
				r.caughtUp()
			}
		case errors.Is(err, os.ErrDeadlineExceeded), errors.Is(err, ringbuf.ErrFlushed):
			return n, nil
		default:
			return n, err
		}
	}
}

// wait returns at deadline, when the kernel wakes the ring's reader, or
// when Sync asks for a read.
func (r *Reader) wait(deadline time.Time) error {
	if err := r.park.SetReadDeadline(deadline); err != nil {
		return err
	}
	// A Sync that came before the deadline was set could not cut it short.
	r.mu.Lock()
	asked := len(r.waiters) > 0
	r.mu.Unlock()
	if asked {
		return nil
	}
	err := r.conn.Read(func(fd uintptr) bool {
		// Takes the wakeups since the last look: the poller reports only
		// new ones (edge-triggered), so none is lost between a read and
		// the next wait.
		n, err := unix.EpollWait(int(fd), r.evs[:], 0)
		return n > 0 || (err != nil && err != unix.EINTR)
	})
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return nil
	}
	return err
}

// Sync returns once every record submitted before the call has been handled
// (or ctx is done).
func (r *Reader) Sync(ctx context.Context) {
	done := make(chan struct{})
	r.mu.Lock()
	if r.stopped {
		r.mu.Unlock()
		return
	}
	r.waiters = append(r.waiters, done)
	r.mu.Unlock()
	r.park.SetReadDeadline(time.Now()) // cuts a wait short
	select {
	case <-done:
	case <-ctx.Done():
	}
}

func (r *Reader) take() []chan struct{} {
	r.mu.Lock()
	defer r.mu.Unlock()
	w := r.waiters
	r.waiters = nil
	return w
}

func (r *Reader) release(w []chan struct{}) {
	for _, c := range w {
		close(c)
	}
}

// Close stops Run.
func (r *Reader) Close() error {
	r.closed.Store(true)
	err := r.rd.Close()
	if perr := r.park.Close(); err == nil && !errors.Is(perr, os.ErrClosed) {
		err = perr
	}
	return err
}
