package sink

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/maphash"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/agentfence/agentfence/audit"
	"github.com/prometheus/client_golang/prometheus"
)

// Options configures a Pipeline. Only StateDir is required.
type Options struct {
	// StateDir holds the chain state (chain.json) and, unless a sink sets
	// spool.dir, the spools (spool/<sink name>/).
	StateDir string
	// Host is stamped into records that have none.
	Host string
	// ProductVersion is the agentfence version reported in OCSF metadata.
	ProductVersion string
	// Registerer receives the sink metrics; nil registers nothing.
	Registerer prometheus.Registerer
	Logger     *slog.Logger
	// QueueSize bounds the in-memory hand-off between Emit and the spools
	// (default 65536); when it is full, Emit waits.
	QueueSize int
	// Stdout is where stdout sinks write (default os.Stdout).
	Stdout io.Writer
	// CheckpointInterval is how often the chain state and spools are
	// synced to disk (default 100ms).
	CheckpointInterval time.Duration
}

type item struct {
	rec  audit.Record
	line []byte
	// takes says which sinks' filters take rec, in p.sinks' order: matched
	// once, before slim, for the details and the fan-out.
	takes []bool
	// proc holds rec's process when slim leaves its details out.
	proc audit.Process
}

// items recycles what emit queues once the writer has copied it into the
// spools: a record's line, fresh each time, was the largest allocation of
// the record path (BenchmarkRecordPath).
var items = sync.Pool{New: func() any { return new(item) }}

// recycle returns it to items once the spools copied its line; the
// record's parts belong to whoever made it.
func (it *item) recycle() {
	*it = item{line: it.line[:0], takes: it.takes[:0]}
	items.Put(it)
}

// Pipeline stamps records into the hash chain and fans them out to sinks.
type Pipeline struct {
	opts    Options
	log     *slog.Logger
	chain   *audit.Chain
	sinks   []*sink
	in      chan *item
	wake    chan struct{} // the writer's: records wait in in
	mu      sync.RWMutex  // guards closed against Emit racing Close
	closed  bool
	emitMu  sync.Mutex
	ticking atomic.Bool  // the writer's checkpoints tick (writer)
	seed    maphash.Seed // of process details' hashes (details.go)
	writerD chan struct{}
	ctx     context.Context
	cancel  context.CancelFunc
	wg      sync.WaitGroup
}

// New opens the chain state and every sink's spool and starts delivery.
// sinks must have passed audit.ValidateSinks.
func New(opts Options, sinks []audit.SinkConfig) (*Pipeline, error) {
	if opts.StateDir == "" {
		return nil, errors.New("audit pipeline: StateDir is required")
	}
	if err := audit.ValidateSinks(sinks); err != nil {
		return nil, err
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.QueueSize <= 0 {
		opts.QueueSize = 1 << 16
	}
	if opts.Stdout == nil {
		opts.Stdout = os.Stdout
	}
	if opts.CheckpointInterval <= 0 {
		opts.CheckpointInterval = 100 * time.Millisecond
	}
	if err := os.MkdirAll(opts.StateDir, 0o700); err != nil {
		return nil, err
	}
	chain, err := audit.OpenChain(filepath.Join(opts.StateDir, "chain.json"))
	if err != nil {
		return nil, err
	}
	m := newMetrics(opts.Registerer)
	// The queue holds pointers: an empty slot costs 8 bytes rather than an
	// item's ~200, so its bound costs memory only while records fill it
	// (by value, 65,536 items were 13 MiB up front).
	p := &Pipeline{
		opts: opts, log: opts.Logger, chain: chain,
		in: make(chan *item, opts.QueueSize), wake: make(chan struct{}, 1), writerD: make(chan struct{}),
		seed: maphash.MakeSeed(),
	}
	p.ctx, p.cancel = context.WithCancel(context.Background())
	var newest uint64
	for i, sc := range sinks {
		s, err := newSink(opts, sc, m)
		if err != nil {
			p.closeSinks()
			return nil, fmt.Errorf("sinks[%d] (%s): %w", i, sc.Name, err)
		}
		p.sinks = append(p.sinks, s)
		// After a crash the spools may hold records newer than the last
		// checkpoint; their seqs must never be handed out again.
		if last, ok := s.spool.Last(); ok {
			var h struct {
				Seq uint64 `json:"seq"`
			}
			if json.Unmarshal(last, &h) == nil && h.Seq > 0 {
				chain.Advance(audit.ChainState{Seq: h.Seq, Hash: audit.HashLine(last)})
				newest = max(newest, h.Seq)
			}
		}
		// So may a file the writer wrote through (through.go).
		if ft, ok := s.t.(*fileTransport); ok {
			if st, ok := ft.newest(); ok {
				chain.Advance(st)
				newest = max(newest, st.Seq)
			}
		}
	}
	// Records stamped but still in memory when the last process died are
	// gone; say so in every sink rather than leave a silent hole.
	if first, last, ok := chain.Lost(newest); ok {
		p.log.Warn("audit records lost with the previous process", "first_seq", first, "last_seq", last)
		line := gapLine(opts.Host, "restart", last-first+1, first, last)
		for _, s := range p.sinks {
			s.m.dropped.Add(float64(last - first + 1))
			s.enqueueGap(line)
		}
		// The gap record now stands for them in every spool: say so on
		// disk at once, or a crash before the first checkpoint would
		// report the same loss again at the next start.
		chain.MarkSpooled(last)
		p.checkpoint()
	}
	go p.writer()
	for _, s := range p.sinks {
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			s.deliver(p.ctx)
		}()
	}
	return p, nil
}

// Chain exposes the chain position (for the CLI and health checks).
func (p *Pipeline) Chain() audit.ChainState { return p.chain.State() }

// Emit stamps r with the next seq and prev_hash and queues it for every
// sink whose filter matches. It does no I/O itself, but waits while the
// in-memory queue is full.
func (p *Pipeline) Emit(r audit.Record) { p.emit(r, true) }

// EmitBatched is Emit for a caller that emits records in bursts, a ring
// reader: the writer is woken once wakeBatch records wait, or by the
// caller's Flush at the end of its burst, and at the latest at the next
// checkpoint, instead of once a record. Two goroutine hand-offs per record
// (to the writer, then to each sink) were a large share of the daemon's
// CPU per record (docs/benchmarks.md, issue 17).
func (p *Pipeline) EmitBatched(r audit.Record) { p.emit(r, false) }

// Flush wakes the writer for the records EmitBatched queued.
func (p *Pipeline) Flush() { p.signal() }

// wakeBatch is how many records EmitBatched lets wait before it wakes the
// writer itself.
const wakeBatch = 256

func (p *Pipeline) signal() {
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

func (p *Pipeline) emit(r audit.Record, wake bool) {
	if r.Host == "" {
		r.Host = p.opts.Host
	}
	// Stamping and queueing happen in one order, so the spools see seqs in
	// sequence whoever emits.
	p.emitMu.Lock()
	defer p.emitMu.Unlock()
	p.mu.RLock()
	defer p.mu.RUnlock()
	if p.closed {
		return
	}
	it := items.Get().(*item)
	it.takes = it.takes[:0]
	for _, s := range p.sinks {
		it.takes = append(it.takes, s.filter.Match(&r))
	}
	p.slim(&r, it)
	line, err := p.chain.Stamp(it.line[:0], &r)
	if err != nil {
		it.recycle()
		p.log.Error("audit record not encodable", "kind", r.Kind, "err", err)
		return
	}
	it.rec, it.line = r, line
	// A full queue holds the caller back rather than dropping a stamped
	// record (which would leave a hole in the chain): upstream, the kernel
	// ring buffers absorb the burst, and what they cannot hold is counted
	// there and reported as a gap record.
	select {
	case p.in <- it:
	default:
		p.signal()
		p.in <- it
	}
	if wake || len(p.in) >= wakeBatch || !p.ticking.Load() {
		p.signal()
	}
}

// The writer's checkpoints tick while records flow and stop after two
// quiet intervals: an idle daemon woke ten times a second for nothing
// (docs/benchmarks.md). While they are stopped, EmitBatched wakes the
// writer as Emit does, so no record waits for a tick that is not coming.
func (p *Pipeline) writer() {
	defer close(p.writerD)
	tick := time.NewTicker(p.opts.CheckpointInterval)
	defer tick.Stop()
	p.ticking.Store(true)
	quiet, spooled := 0, 0 // quiet ticks in a row; records spooled since the last tick
	for {
		checkpoint := false
		select {
		case <-p.wake:
			if !p.ticking.Load() {
				tick.Reset(p.opts.CheckpointInterval)
				p.ticking.Store(true)
			}
		case <-tick.C:
			checkpoint = true
		}
		n, open := p.spoolQueued()
		if checkpoint || !open {
			p.checkpoint()
		}
		if !open {
			return
		}
		if spooled += n; !checkpoint {
			continue
		}
		if quiet = quiet + 1; spooled > 0 || p.gapPending() {
			quiet = 0
		}
		spooled = 0
		if quiet >= 2 {
			tick.Stop()
			p.ticking.Store(false)
			// A record queued before the store saw the ticks on and did not
			// wake the writer: look once more.
			if len(p.in) > 0 {
				p.signal()
			}
			quiet = 0
		}
	}
}

// spoolQueued moves the queued records into the spools, at most
// spoolBatch of them, in one write per spool, and says how many; false
// once the queue is closed and empty.
func (p *Pipeline) spoolQueued() (n int, open bool) {
	var spooled uint64
	defer func() {
		for _, s := range p.sinks {
			s.flushSpool()
		}
		// Once a batch: the chain's lock is the emitters' too.
		p.chain.MarkSpooled(spooled)
	}()
	for ; n < spoolBatch; n++ {
		select {
		case it, ok := <-p.in:
			if !ok {
				return n, false
			}
			p.fanout(it)
			spooled = it.rec.Seq
			it.recycle()
		default:
			return n, true
		}
	}
	p.signal() // more wait: come back, after a checkpoint if one is due
	return n, true
}

// gapPending reports a sink's gap record waiting for room in its spool,
// which a checkpoint writes once there is (writer).
func (p *Pipeline) gapPending() bool {
	for _, s := range p.sinks {
		if s.gapCount > 0 {
			return true
		}
	}
	return false
}

// spoolBatch bounds a batch, so that checkpoints keep their interval while
// the queue never empties.
const spoolBatch = 4096

func (p *Pipeline) fanout(it *item) {
	for i, s := range p.sinks {
		if it.takes[i] {
			s.enqueue(it.line, it.rec.Seq)
		}
	}
}

func (p *Pipeline) checkpoint() {
	for _, s := range p.sinks {
		s.flushGap()
		if err := s.spool.Sync(); err != nil {
			p.log.Warn("audit spool sync", "sink", s.name, "err", err)
		}
		if err := s.syncThrough(); err != nil {
			p.log.Warn("audit file sync", "sink", s.name, "err", err)
		}
	}
	// The chain state is written after the spools and files so that it never runs
	// ahead of what a restart can find on disk.
	if err := p.chain.Checkpoint(); err != nil {
		p.log.Error("audit chain checkpoint", "err", err)
	}
}

// Close stops accepting records, drains the queue into the spools and
// waits up to 5 seconds for the sinks to deliver them. See Shutdown.
func (p *Pipeline) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return p.Shutdown(ctx)
}

// Shutdown stops accepting records and delivers what is spooled until ctx
// is done; whatever is left stays in the spools for the next start.
func (p *Pipeline) Shutdown(ctx context.Context) error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	close(p.in)
	p.signal()
	p.mu.Unlock()
	<-p.writerD
	for _, s := range p.sinks {
		s.drain(ctx)
	}
	p.cancel()
	p.wg.Wait()
	return p.closeSinks()
}

func (p *Pipeline) closeSinks() error {
	var errs []error
	for _, s := range p.sinks {
		errs = append(errs, s.close())
	}
	return errors.Join(errs...)
}

// gapLine encodes an unchained (seq 0) gap record: it describes records
// that were stamped but never reached this sink, so it cannot be part of
// the chain other sinks see.
func gapLine(host, source string, count, first, last uint64) []byte {
	r := audit.Record{
		Schema: audit.SchemaVersion, Time: time.Now().UTC(), Kind: audit.KindGap, Host: host,
		Gap: &audit.Gap{Source: source, Count: count, FirstSeq: first, LastSeq: last},
	}
	line, _ := audit.Canonical(&r) // a Record of plain fields always encodes
	return line
}

// backoff returns the wait before retry attempt n (0-based): exponential
// from initial, capped at maxWait, with ±20% jitter so many hosts do not
// retry in lockstep.
func backoff(n int, initial, maxWait time.Duration) time.Duration {
	d := initial
	for i := 0; i < n && d < maxWait; i++ {
		d *= 2
	}
	d = min(d, maxWait)
	j := time.Duration(rand.Int64N(int64(d)/5 + 1))
	if rand.IntN(2) == 0 {
		return d - j
	}
	return min(d+j, maxWait)
}
