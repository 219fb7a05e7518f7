// Package ringreader drains a BPF ring buffer. Producers submit most records
// without waking the reader (BPF_RB_NO_WAKEUP), so it also wakes on a short
// timer and reads whatever has accumulated.
package ringreader

import (
	"context"
	"errors"
	"os"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/ringbuf"
)

// Reader reads records from one ring buffer map.
type Reader struct {
	rd       *ringbuf.Reader
	interval time.Duration
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

// Run calls handle for every record until ctx is done or the reader is
// closed. The slice passed to handle is only valid during the call.
func (r *Reader) Run(ctx context.Context, handle func([]byte)) error {
	stop := context.AfterFunc(ctx, func() { r.rd.Close() })
	defer stop()
	var rec ringbuf.Record
	for {
		r.rd.SetDeadline(time.Now().Add(r.interval))
		err := r.rd.ReadInto(&rec)
		switch {
		case err == nil:
			handle(rec.RawSample)
		case errors.Is(err, os.ErrDeadlineExceeded):
		case errors.Is(err, ringbuf.ErrClosed):
			if ctx.Err() != nil {
				return nil
			}
			return err
		default:
			return err
		}
	}
}

// Close stops Run.
func (r *Reader) Close() error { return r.rd.Close() }
