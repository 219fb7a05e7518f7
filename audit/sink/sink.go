package sink

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/agentfence/agentfence/audit"
	"github.com/agentfence/agentfence/audit/ocsf"
	"github.com/agentfence/agentfence/audit/spool"
)

// maxBatchBytes caps one delivery so a single request stays well under
// common HEC and webhook body limits.
const maxBatchBytes = 1 << 20

type sink struct {
	name      string
	typ       string
	format    string
	filter    audit.Filter
	spool     *spool.Spool
	t         transport
	enc       ocsf.Encoder
	log       *slog.Logger
	m         sinkMetrics
	host      string
	batchSize int
	flush     time.Duration
	initial   time.Duration
	maxWait   time.Duration
	draining  atomic.Bool
	acked     chan struct{}
	// replayLeft counts down the entries that were spooled and not
	// acknowledged when the sink started (owned by deliver).
	replayLeft uint64
	// described is what the sink has had of processes' details.
	described described
	// slab holds the data of the batch being delivered, batch its entries
	// and msgs its messages, reused for the next once it is acknowledged
	// (owned by deliver).
	slab  []byte
	batch []spool.Entry
	msgs  []message

	// Spool overflow being accumulated into one gap record; owned by the
	// pipeline's writer goroutine.
	gapCount, gapFirst, gapLast uint64
	// Records appended to the spool's buffer and not yet written, by seq;
	// owned by the writer goroutine too.
	unflushed, unflushedFirst, unflushedLast uint64
	// th is the writer's way past the spool (through.go).
	th through
}

func newSink(opts Options, c audit.SinkConfig, m *metrics) (*sink, error) {
	s := &sink{
		name: c.Name, typ: c.Type, format: c.EffectiveFormat(),
		filter: audit.NewFilter(c.Filter), described: described{byPID: map[uint32]uint64{}},
		enc: ocsf.Encoder{ProductVersion: opts.ProductVersion},
		log: opts.Logger.With("sink", c.Name),
		m:   m.forSink(c.Name), host: opts.Host,
		batchSize: 1, initial: audit.DefaultInitialBackoff, maxWait: audit.DefaultMaxBackoff,
		acked: make(chan struct{}, 1),
	}
	if c.Retry != nil {
		s.initial = audit.DurationOr(c.Retry.InitialBackoff, s.initial)
		s.maxWait = max(audit.DurationOr(c.Retry.MaxBackoff, s.maxWait), s.initial)
	}
	var err error
	switch c.Type {
	case audit.SinkStdout:
		s.t, s.batchSize = &writerTransport{w: opts.Stdout}, 512
	case audit.SinkFile:
		size := int64(c.File.MaxSizeMB)
		if size == 0 {
			size = audit.DefaultFileMaxSizeMB
		}
		files := c.File.MaxFiles
		if files == 0 {
			files = audit.DefaultFileMaxFiles
		}
		var ft *fileTransport
		ft, err = newFileTransport(c.File.Path, size<<20, files, s.log, s.m)
		s.t, s.batchSize = ft, 512
		if s.format == audit.FormatJSON {
			s.th.file = ft
		}
	case audit.SinkSyslog:
		s.t, err = newSyslogTransport(c.Syslog)
		s.batchSize = 256
	case audit.SinkHEC:
		s.t, err = newHECTransport(c.HEC)
		s.batchSize = orDefault(c.HEC.BatchSize, audit.DefaultBatchSize)
		s.flush = audit.DurationOr(c.HEC.FlushInterval, audit.DefaultFlushInterval)
	case audit.SinkWebhook:
		s.t, err = newWebhookTransport(c.Webhook)
		s.batchSize = orDefault(c.Webhook.BatchSize, audit.DefaultBatchSize)
		s.flush = audit.DurationOr(c.Webhook.FlushInterval, audit.DefaultFlushInterval)
	default:
		err = fmt.Errorf("type: unknown %q", c.Type)
	}
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(opts.StateDir, "spool", c.Name)
	maxBytes := int64(audit.DefaultSpoolMaxBytes)
	if c.Spool != nil {
		if c.Spool.Dir != "" {
			dir = c.Spool.Dir
		}
		if c.Spool.MaxBytes > 0 {
			maxBytes = c.Spool.MaxBytes
		}
	}
	if s.spool, err = spool.Open(dir, maxBytes); err != nil {
		s.t.Close()
		return nil, fmt.Errorf("spool: %w", err)
	}
	s.replayLeft = s.spool.Pending()
	s.m.queued.Set(float64(s.replayLeft))
	m.spools.add(c.Name, s.spool)
	return s, nil
}

func orDefault(v, def int) int {
	if v > 0 {
		return v
	}
	return def
}

// enqueue spools one stamped record, or keeps it for the file (through).
// If the spool is full the record is dropped and folded into a pending gap
// record, written ahead of the next record that fits so the receiver
// learns of the loss in order.
func (s *sink) enqueue(line []byte, seq uint64) {
	if !s.take(line, seq) {
		s.spoolLine(line, seq)
	}
}

func (s *sink) spoolLine(line []byte, seq uint64) {
	if s.gapCount > 0 {
		s.flushSpool() // what is buffered goes before the gap record, or into it
		gap := s.gapRecord()
		// Leave room for the gap record itself and the record behind it.
		if s.spool.Used()+int64(len(gap)+len(line)+32) > s.maxBytes() {
			s.dropped(seq)
			return
		}
		if s.spool.AppendForce(gap) == nil {
			s.gapCount = 0
		}
	}
	var lost *spool.FlushError
	buffered, err := s.spool.AppendBuffered(line)
	switch {
	case err == nil:
		s.m.queued.Inc()
		if s.unflushed = buffered; buffered == 1 {
			s.unflushedFirst = seq
		}
		s.unflushedLast = seq
	case err == spool.ErrFull:
		s.dropped(seq)
	case errors.As(err, &lost):
		s.writeFailed(err)
		s.dropped(seq)
	default:
		s.log.Error("audit spool append", "err", err)
		s.dropped(seq)
	}
}

// flushSpool writes what enqueue kept: into the file or the spool.
func (s *sink) flushSpool() {
	s.writeThrough()
	if err := s.spool.Flush(); err != nil {
		s.writeFailed(err)
	}
	s.unflushed = 0
}

// writeFailed counts the records a failed spool write lost as dropped: a
// gap record will stand for them. Gap records themselves are appended
// unbuffered.
func (s *sink) writeFailed(err error) {
	s.log.Error("audit spool write", "err", err)
	var lost *spool.FlushError
	if errors.As(err, &lost) && s.unflushed > 0 {
		s.m.queued.Sub(float64(s.unflushed))
		s.droppedRange(s.unflushedFirst, s.unflushedLast, s.unflushed)
	}
	s.unflushed = 0
}

func (s *sink) maxBytes() int64 { return s.spool.MaxBytes() }

func (s *sink) dropped(seq uint64) { s.droppedRange(seq, seq, 1) }

func (s *sink) droppedRange(first, last, n uint64) {
	if s.gapCount == 0 {
		s.gapFirst = first
		s.log.Warn("audit spool full, dropping records", "first_seq", first)
	}
	s.gapCount += n
	s.gapLast = last
	s.m.dropped.Add(float64(n))
	s.described.forget.Store(true)
}

func (s *sink) gapRecord() []byte {
	return gapLine(s.host, "spool:"+s.name, s.gapCount, s.gapFirst, s.gapLast)
}

// flushGap writes a pending gap record once the spool has room again, so a
// loss is reported even if no further records arrive.
func (s *sink) flushGap() {
	s.flushSpool()
	if s.gapCount == 0 {
		return
	}
	gap := s.gapRecord()
	if s.spool.Used()+int64(len(gap)+16) > s.maxBytes() {
		return
	}
	if s.spool.AppendForce(gap) == nil {
		s.gapCount = 0
		s.m.queued.Inc()
	}
}

// enqueueGap spools a gap record that is not this sink's own overflow
// (queue loss). It is forced past the bound: losing the loss report would
// make the loss silent.
func (s *sink) enqueueGap(line []byte) {
	s.flushSpool()
	if err := s.spool.AppendForce(line); err != nil {
		s.log.Error("audit spool append gap", "err", err)
		return
	}
	s.m.queued.Inc()
}

// deliver drains the spool through the transport until ctx is done.
func (s *sink) deliver(ctx context.Context) {
	for ctx.Err() == nil {
		batch, slab, err := s.spool.NextInto(s.batch[:0], s.slab[:0], s.batchSize, maxBatchBytes)
		s.batch, s.slab = batch, slab
		if err != nil {
			s.log.Error("audit spool read", "err", err)
			if !s.wait(ctx, s.maxWait) {
				return
			}
			continue
		}
		if len(batch) == 0 {
			select {
			case <-ctx.Done():
				return
			case <-s.spool.Notify():
			}
			continue
		}
		if len(batch) < s.batchSize && s.flush > 0 && !s.draining.Load() {
			// Let a batch fill up for at most the flush interval.
			if !s.wait(ctx, s.flush) {
				return
			}
			batch, s.slab, _ = s.spool.NextInto(batch, s.slab, s.batchSize-len(batch), maxBatchBytes)
			s.batch = batch
		}
		msgs := s.messages(s.msgs[:0], batch)
		s.msgs = msgs
		for attempt := 0; ; attempt++ {
			err := s.t.Send(ctx, msgs)
			if err == nil {
				break
			}
			if ctx.Err() != nil {
				return
			}
			s.m.retried.Add(float64(len(msgs)))
			if attempt == 0 || attempt%10 == 0 {
				s.log.Warn("audit sink delivery failed, retrying", "attempt", attempt+1, "records", len(msgs), "err", err)
			}
			if !s.wait(ctx, backoff(attempt, s.initial, s.maxWait)) {
				return
			}
		}
		if err := s.spool.Ack(batch[len(batch)-1].Index + 1); err != nil {
			s.log.Error("audit spool ack", "err", err)
		}
		s.m.delivered.Add(float64(len(msgs)))
		s.m.queued.Set(float64(s.spool.Pending()))
		select {
		case s.acked <- struct{}{}:
		default:
		}
	}
}

func (s *sink) wait(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// messages appends spooled canonical lines to out as transport messages. An entry
// that no longer decodes (disk corruption the CRC missed) is sent raw in
// json format rather than dropped.
//
// Decoding a line is most of a sink's work, so it is done only as far as
// needed: not at all for a json-format file or stdout sink, the record's
// header (time, host, kind, verdict) for the other transports, the whole
// record only to re-encode it as OCSF.
func (s *sink) messages(out []message, batch []spool.Entry) []message {
	_, bare := s.t.(headless)
	for _, e := range batch {
		replay := s.replayLeft > 0
		if replay {
			s.replayLeft--
		}
		if s.format != audit.FormatOCSF && bare {
			out = append(out, message{payload: e.Data, replay: replay})
			continue
		}
		r := new(audit.Record)
		var err error
		if s.format == audit.FormatOCSF {
			err = json.Unmarshal(e.Data, r)
		} else {
			err = decodeHeader(e.Data, r)
		}
		if err != nil {
			s.log.Error("audit spool entry undecodable", "index", e.Index, "err", err)
			r = &audit.Record{Kind: "unknown", Host: s.host}
			out = append(out, message{rec: r, payload: e.Data, replay: replay})
			continue
		}
		m := message{rec: r, payload: e.Data, replay: replay}
		if s.format == audit.FormatOCSF {
			p, err := s.enc.Append(nil, r)
			if err == nil {
				m.payload = p
			}
		}
		out = append(out, m)
	}
	return out
}

// drain waits until everything spooled was delivered or ctx is done.
func (s *sink) drain(ctx context.Context) {
	s.draining.Store(true)
	for s.spool.Pending() > 0 {
		select {
		case <-ctx.Done():
			return
		case <-s.acked:
		}
	}
}

func (s *sink) close() error {
	err := s.t.Close()
	if serr := s.spool.Close(); err == nil {
		err = serr
	}
	return err
}
