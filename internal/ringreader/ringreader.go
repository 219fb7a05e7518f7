// Package ringreader drains a BPF ring buffer. Producers submit most records
// without waking the reader (BPF_RB_NO_WAKEUP), so it also wakes on a short
// timer and reads whatever has accumulated.
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

	mu      sync.Mutex
	waiters []chan struct{}
	stopped bool
}

// New opens a reader. interval bounds how long a record submitted without a
// wakeup may wait.
func New(m *ebpf.Map, interval time.Duration) (*Reader, error) {
	rd, err := ringbuf.NewReader(m)
	if err != nil {
		return nil, err
	}
	return &Reader{rd: rd, interval: interval}, nil
}

// OnCaughtUp sets fn to run whenever the reader has handled every record
// in the ring, before it waits for more: where a consumer that batches what
// handle gives it ends a batch. Set it before Run.
func (r *Reader) OnCaughtUp(fn func()) { r.caughtUp = fn }

// Run calls handle for every record until ctx is done or the reader is
// closed. The slice passed to handle is only valid during the call.
func (r *Reader) Run(ctx context.Context, handle func([]byte)) error {
	stop := context.AfterFunc(ctx, func() { r.rd.Close() })
	defer stop()
	defer func() {
		r.mu.Lock()
		r.stopped = true
		r.mu.Unlock()
		r.release(r.take())
	}()
	for {
		// Whoever waits in Sync before this read starts is answered when it
		// returns empty-handed: by then it has drained the ring.
		waiting := r.take()
		err := r.drain(time.Now().Add(r.interval), handle)
		r.release(waiting)
		// Waiters that came during the read get a drain of their own that
		// does not block, so Sync costs a drain, not a poll interval.
		for err == nil {
			late := r.take()
			if len(late) == 0 {
				break
			}
			err = r.drain(time.Now(), handle)
			r.release(late)
		}
		if err != nil {
			if errors.Is(err, ringbuf.ErrClosed) && ctx.Err() != nil {
				return nil
			}
			return err
		}
	}
}

// drain handles records until the ring is empty at the deadline or a
// flush. It returns nil then, and other errors as they are.
func (r *Reader) drain(deadline time.Time, handle func([]byte)) error {
	r.rd.SetDeadline(deadline)
	var rec ringbuf.Record
	for {
		err := r.rd.ReadInto(&rec)
		switch {
		case err == nil:
			handle(rec.RawSample)
			// Remaining, not AvailableBytes: a reader closed meanwhile (Run's
			// context done) has no ring to ask.
			if r.caughtUp != nil && rec.Remaining == 0 {
				r.caughtUp()
			}
		case errors.Is(err, os.ErrDeadlineExceeded), errors.Is(err, ringbuf.ErrFlushed):
			return nil
		default:
			return err
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
	r.rd.Flush()
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
func (r *Reader) Close() error { return r.rd.Close() }
