// Package ringreader drains a BPF ring buffer. Producers submit most records
// without waking the reader (BPF_RB_NO_WAKEUP), so it also wakes on a short
// timer and reads whatever has accumulated; while the ring stays empty, the
// timer backs off (NextWait).
//
// Between reads the reader waits in the Go runtime's poller (Waiter).
package ringreader

import (
	"context"
	"errors"
	"os"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/ringbuf"
)

// Reader reads records from one ring buffer map.
type Reader struct {
	rd       *ringbuf.Reader
	interval time.Duration
	caughtUp func()
	w        *Waiter

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
	rd.SetDeadline(time.Unix(1, 0)) // reads never block: the reader waits in w
	w, err := NewWaiter(m)
	if err != nil {
		rd.Close()
		return nil, err
	}
	return &Reader{rd: rd, interval: interval, w: w}, nil
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
		// it: by then it has drained the ring. Their interrupts are served
		// by it too.
		r.w.Asked()
		waiting := r.take()
		n, err := r.drain(handle)
		r.release(waiting)
		if err == nil {
			wait = NextWait(wait, r.interval, n > 0)
			err = r.w.Wait(time.Now().Add(wait))
		}
		if err != nil {
			if errors.Is(err, os.ErrClosed) && ctx.Err() != nil {
				return nil
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
		case errors.Is(err, os.ErrDeadlineExceeded):
			return n, nil
		default:
			return n, err
		}
	}
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
	r.w.Interrupt()
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
	return errors.Join(r.rd.Close(), r.w.Close())
}
