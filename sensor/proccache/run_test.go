package proccache

import (
	"context"
	"errors"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/agentfence/agentfence/sensor"
)

// fakeSource is a sensor.EventSource without a kernel.
type fakeSource struct {
	ch     chan sensor.Event
	closed chan struct{}
	lost   atomic.Uint64
	// quietAt, when set, is the time of the sensor.Quiet a Wake delivers,
	// as the ring's reader does when the ring is empty.
	quietAt atomic.Uint64
	wakes   atomic.Int64
}

func newFake() *fakeSource {
	return &fakeSource{ch: make(chan sensor.Event), closed: make(chan struct{})}
}

func (f *fakeSource) ReadEvent() (sensor.Event, error) {
	select {
	case ev := <-f.ch:
		return ev, nil
	case <-f.closed:
		return nil, os.ErrClosed
	}
}
func (f *fakeSource) Lost() (uint64, error) { return f.lost.Load(), nil }
func (f *fakeSource) Wake() {
	f.wakes.Add(1)
	if t := f.quietAt.Load(); t != 0 {
		go func() {
			select {
			case f.ch <- &sensor.Quiet{Ktime: t}:
			case <-f.closed:
			}
		}()
	}
}
func (f *fakeSource) Close() error {
	select {
	case <-f.closed:
	default:
		close(f.closed)
	}
	return nil
}

func TestRunAppliesUntilCancelled(t *testing.T) {
	c, _ := newTest(t, Config{})
	src := newFake()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx, src) }()

	src.ch <- execEv(5, sec, sec, "/bin/agent", "agent")
	wctx, wcancel := context.WithTimeout(ctx, 5*time.Second)
	defer wcancel()
	if p, ok := c.LookupWait(wctx, 5, sec); !ok || p.ExePath != "/bin/agent" {
		t.Fatalf("%+v %v", p, ok)
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Run returned %v", err)
	}
}

func TestRunReturnsSourceError(t *testing.T) {
	c, _ := newTest(t, Config{})
	src := newFake()
	src.Close()
	if err := c.Run(context.Background(), src); !errors.Is(err, os.ErrClosed) {
		t.Fatalf("Run returned %v", err)
	}
}

func TestReconcileRetiresVanished(t *testing.T) {
	root := t.TempDir()
	c, clk := newTest(t, Config{ProcRoot: root})
	c.Apply(execEv(9, sec, sec, "/gone"))
	clk.t = 10 * sec
	// pid 9 not in the (empty) fake /proc: its exit was lost.
	c.Reconcile()
	if p, _ := c.Get(Key{9, sec}); !p.Exited {
		t.Fatalf("not retired: %+v", p)
	}
}

// A process found as forked may have exec'd before the event being
// attributed; WaitFor tells by the watermark, which a quiet source would
// not move: it wakes the source, whose Quiet says the ring is empty, and
// returns at once rather than at its deadline.
func TestWaitForWakesQuietSource(t *testing.T) {
	c, _ := newTest(t, Config{})
	src := newFake()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go c.Run(ctx, src)
	src.ch <- &sensor.ForkEvent{TGID: 5, ParentTGID: 1, Ktime: sec, StartTime: sec}
	src.quietAt.Store(3 * sec)
	wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
	defer wcancel()
	if !c.WaitFor(wctx, 2*sec) {
		t.Fatal("WaitFor ran into its deadline: the source's Quiet never came")
	}
	if c.Watermark() != 3*sec || src.wakes.Load() == 0 {
		t.Fatalf("watermark %d after %d wakes, want %d", c.Watermark(), src.wakes.Load(), 3*sec)
	}
	// A lookup of a process that is not there is answered the same way.
	src.quietAt.Store(5 * sec)
	if _, ok := c.LookupWait(wctx, 6, 4*sec); ok || wctx.Err() != nil {
		t.Fatalf("unknown pid 6: found %v, deadline %v", ok, wctx.Err())
	}
}
