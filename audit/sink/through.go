package sink

// through lets a json-format file sink whose spool holds nothing write the
// writer's batch straight into its file instead of spooling it and having
// the deliverer copy it from the spool into the file: for a local file the
// spool bought nothing but a second write, its checksum, a hand-off to the
// deliverer and the acknowledgement (docs/benchmarks.md, issue 17).
//
// What the spool guaranteed still holds:
//   - Order: a batch goes through only when the spool is empty and no gap
//     record waits, so nothing spooled earlier is behind it; once a record
//     of a batch is spooled (a failed write falls back to the spool), the
//     spool holds something and the batches after it are spooled too.
//   - Durability: a checkpoint syncs the file before the chain state says
//     the records reached disk, as it syncs the spools (Pipeline.checkpoint).
//   - Restart: the file's newest record is a place the chain has reached,
//     as a spool's newest entry is (Pipeline's New): its seq is never handed
//     out again, and it is not reported lost.
//
// All of it is owned by the pipeline's writer goroutine. The deliverer uses
// the transport only for entries it read from the spool, and the spool is
// empty whenever the writer uses it (its lock orders the two).
type through struct {
	file *fileTransport // nil unless a json-format file sink
	// decided is set by the first record of a batch, ok tells whether the
	// batch goes through.
	decided, ok bool
	buf         []byte   // the batch's lines, each ending in '\n'
	seqs        []uint64 // their seqs, for the spool should the write fail
	msgs        []message
	// dirty: lines written since the file was last synced.
	dirty bool
}

// throughMax bounds the lines a batch holds in memory before they are written.
const throughMax = maxBatchBytes

// take keeps line for the file if the batch goes through.
func (s *sink) take(line []byte, seq uint64) bool {
	th := &s.th
	if th.file == nil {
		return false
	}
	if !th.decided {
		th.decided, th.ok = true, s.spoolEmpty()
	}
	if !th.ok {
		return false
	}
	th.buf = append(append(th.buf, line...), '\n')
	th.seqs = append(th.seqs, seq)
	if len(th.buf) >= throughMax {
		s.writeThrough()
		th.decided, th.ok = true, s.spoolEmpty()
	}
	return true
}

// spoolEmpty: nothing in the spool, buffered or written, and no gap record
// waiting to go in.
func (s *sink) spoolEmpty() bool { return s.gapCount == 0 && s.spool.Pending() == 0 }

// writeThrough writes the lines take kept, or spools them if the write
// fails: the deliverer then retries them with backoff, as any spooled
// record. Ends the batch.
func (s *sink) writeThrough() {
	th := &s.th
	th.decided = false
	if len(th.seqs) == 0 {
		return
	}
	if err := th.file.appendLines(th.buf, &th.msgs); err != nil {
		s.log.Warn("audit file write failed, spooling the records for retry", "records", len(th.seqs), "err", err)
		for i, line := range th.msgs {
			s.spoolLine(line.payload, th.seqs[i])
		}
	} else {
		th.dirty = true
		s.m.delivered.Add(float64(len(th.seqs)))
	}
	th.buf, th.seqs = th.buf[:0], th.seqs[:0]
}

// syncThrough syncs the file if lines went through since the last sync and
// the deliverer is not using the transport.
func (s *sink) syncThrough() error {
	th := &s.th
	if !th.dirty || s.spool.Pending() > 0 {
		return nil
	}
	th.dirty = false
	return th.file.Sync()
}
