// Package spool is a bounded, append-only on-disk queue: a directory of
// segment files plus an acknowledged-index file. One writer appends, one
// reader delivers and acknowledges; entries survive restarts until acked.
package spool

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// ErrFull is returned by Append when the entry would exceed the size bound.
var ErrFull = errors.New("spool full")

// ErrClosed is returned after Close.
var ErrClosed = errors.New("spool closed")

const (
	headerLen  = 8 // uint32 length, uint32 CRC-32C, big endian
	segSuffix  = ".seg"
	ackFile    = "ack"
	maxEntry   = 16 << 20
	minSegment = 4 << 10
	maxSegment = 8 << 20
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

type segment struct {
	first uint64 // index of the first entry
	size  int64
}

// Entry is one queued payload and its spool-local index.
type Entry struct {
	Index uint64
	Data  []byte
}

// Spool is safe for one appending goroutine and one reading goroutine.
type Spool struct {
	dir      string
	maxBytes int64
	segBytes int64

	mu      sync.Mutex
	closed  bool
	segs    []segment // ascending; the last is the active one
	w       *os.File
	next    uint64 // index the next Append gets
	written uint64 // entries below this index are in the files; the rest in pend
	synced  uint64 // entries below this index were fsynced (Sync)
	pend    []byte // entries appended with AppendBuffered, not yet written
	lastOff int64  // offset of the newest entry, -1 if none is known
	lastSeg uint64 // first index of the segment that holds it
	ack     uint64 // entries below this index are acknowledged
	ackF    *os.File
	ackAt   time.Time // when ack was last written to ackF
	ackOut  uint64    // the value written then
	used    int64
	notify  chan struct{}
	rIdx    uint64 // next index the reader returns
	rSeg    uint64 // first index of the segment rf reads
	rf      *bufio.Reader
	rFile   *os.File
	rOff    int64

	// hot is what the last writes took (up to maxHot, in one segment),
	// kept so that a reader that keeps up takes its entries from memory:
	// reading back what was just written (a read, a copy and a checksum
	// per entry) was a tenth of the record path (BenchmarkRecordPath). It
	// starts in segment hotSeg at offset hotOff; hotIdx is the next entry
	// to read, at hot[hotRead:].
	hot     []byte
	hotSeg  uint64
	hotOff  int64
	hotIdx  uint64
	hotRead int
	// rStale says the reader took entries from hot: rf is behind them, and
	// the next read from the file starts at staleOff in segment staleSeg.
	rStale   bool
	staleSeg uint64
	staleOff int64
}

// Open opens or creates the spool in dir. maxBytes bounds the total size
// of segment files.
func Open(dir string, maxBytes int64) (*Spool, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	// Space is reclaimed a whole segment at a time, so segments must be
	// a small fraction of the bound or a full spool could never drain.
	seg := min(max(maxBytes/8, minSegment), maxSegment)
	s := &Spool{dir: dir, maxBytes: maxBytes, segBytes: seg, notify: make(chan struct{}, 1), lastOff: -1}
	if err := s.load(); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *Spool) segPath(first uint64) string {
	return filepath.Join(s.dir, fmt.Sprintf("%020d%s", first, segSuffix))
}

func (s *Spool) load() error {
	names, err := os.ReadDir(s.dir)
	if err != nil {
		return err
	}
	for _, de := range names {
		n := de.Name()
		if !strings.HasSuffix(n, segSuffix) {
			continue
		}
		first, err := strconv.ParseUint(strings.TrimSuffix(n, segSuffix), 10, 64)
		if err != nil {
			continue
		}
		info, err := de.Info()
		if err != nil {
			return err
		}
		s.segs = append(s.segs, segment{first: first, size: info.Size()})
	}
	slices.SortFunc(s.segs, func(a, b segment) int { return cmpU64(a.first, b.first) })

	if b, err := os.ReadFile(filepath.Join(s.dir, ackFile)); err == nil {
		// A torn or unchecked ack file only causes redelivery, which is
		// allowed.
		s.ack = parseAck(b)
		s.ackOut = s.ack
	}
	if len(s.segs) == 0 {
		s.next, s.written = s.ack, s.ack
		return s.newSegment(s.next)
	}
	// Scan the active segment to find its end and cut a torn tail left by
	// a crash mid-write.
	act := &s.segs[len(s.segs)-1]
	n, end, lastOff, err := scan(s.segPath(act.first))
	if err != nil {
		return err
	}
	if end != act.size {
		if err := os.Truncate(s.segPath(act.first), end); err != nil {
			return err
		}
		act.size = end
	}
	s.next = act.first + n
	s.written = s.next
	s.lastOff, s.lastSeg = lastOff, act.first
	if lastOff < 0 && len(s.segs) > 1 {
		// A crash right after a segment was started: the newest entry is
		// the previous segment's last (Ack keeps that segment for it).
		prev := s.segs[len(s.segs)-2].first
		if _, _, off, err := scan(s.segPath(prev)); err == nil {
			s.lastOff, s.lastSeg = off, prev
		}
	}
	if s.ack > s.next {
		s.ack = s.next
	}
	if s.ack < s.segs[0].first {
		s.ack = s.segs[0].first
	}
	for _, sg := range s.segs {
		s.used += sg.size
	}
	w, err := os.OpenFile(s.segPath(act.first), os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	s.w = w
	s.rIdx = s.ack
	return nil
}

func cmpU64(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// scan counts the intact entries of a segment file.
func scan(path string) (n uint64, end, lastOff int64, err error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, 0, -1, err
	}
	defer f.Close()
	br := bufio.NewReaderSize(f, 64<<10)
	lastOff = -1
	for {
		data, rerr := readEntry(br)
		if rerr != nil {
			return n, end, lastOff, nil
		}
		lastOff = end
		end += int64(headerLen + len(data))
		n++
	}
}

func readEntry(br *bufio.Reader) ([]byte, error) {
	data, _, err := readEntryInto(br, nil)
	return data, err
}

// readEntryInto reads an entry into slab's spare capacity, or a new slab's,
// and returns it and the slab.
func readEntryInto(br *bufio.Reader, slab []byte) (data, rest []byte, err error) {
	var h [headerLen]byte
	if _, err := io.ReadFull(br, h[:]); err != nil {
		return nil, slab, err
	}
	n := int(binary.BigEndian.Uint32(h[:4]))
	if n > maxEntry {
		return nil, slab, errors.New("corrupt entry length")
	}
	if cap(slab)-len(slab) < n {
		// What slab holds stays where it is, for the entries already
		// returned from it.
		slab = make([]byte, 0, max(2*cap(slab), n, 64<<10))
	}
	data, rest = slab[len(slab):len(slab)+n:len(slab)+n], slab[:len(slab)+n]
	if _, err := io.ReadFull(br, data); err != nil {
		return nil, slab, err
	}
	if crc32.Checksum(data, castagnoli) != binary.BigEndian.Uint32(h[4:]) {
		return nil, slab, errors.New("corrupt entry checksum")
	}
	return data, rest, nil
}

func (s *Spool) newSegment(first uint64) error {
	f, err := os.OpenFile(s.segPath(first), os.O_WRONLY|os.O_CREATE|os.O_APPEND|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if s.w != nil {
		s.w.Close()
	}
	s.w = f
	s.segs = append(s.segs, segment{first: first})
	s.lastOff = -1
	if len(s.segs) == 1 {
		s.rIdx = max(s.rIdx, s.ack)
	}
	return nil
}

// Append queues p, or returns ErrFull when it does not fit.
func (s *Spool) Append(p []byte) error { return s.append(p, false, false) }

// AppendForce queues p even past the size bound. It exists for the small
// gap record that reports what the bound made the spool drop.
func (s *Spool) AppendForce(p []byte) error { return s.append(p, true, false) }

// AppendBuffered is Append without the write: p is counted against the
// bound at once, but reaches the file, and the reader, with the next Flush
// (or Append, Sync, Close, or a segment's end). One write for a batch
// instead of one per entry. It returns how many entries, p among them, wait
// in memory for that write: a write that fails loses them (FlushError).
func (s *Spool) AppendBuffered(p []byte) (buffered uint64, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	err = s.appendLocked(p, false, true)
	return s.next - s.written, err
}

// FlushError says that the entries buffered since the last write are lost:
// the write failed. Lost counts them, the entry being appended among them
// if it was buffered; an append that fails never leaves its entry queued.
type FlushError struct {
	Lost uint64
	Err  error
}

func (e *FlushError) Error() string {
	return fmt.Sprintf("spool write of %d entries: %v", e.Lost, e.Err)
}

func (e *FlushError) Unwrap() error { return e.Err }

// Flush writes the buffered entries; an error is a *FlushError.
func (s *Spool) Flush() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	return s.flushLocked()
}

func (s *Spool) flushLocked() error {
	if len(s.pend) == 0 {
		return nil
	}
	_, err := s.w.Write(s.pend)
	if err != nil {
		// What was buffered is gone: take it out of the accounting.
		lost := s.next - s.written
		s.lastOff = -1 // not known any more (Last is for a spool just opened)
		act := &s.segs[len(s.segs)-1]
		act.size -= int64(len(s.pend))
		s.used -= int64(len(s.pend))
		s.next = s.written
		s.pend = s.pend[:0]
		// A short write left part of it in the segment: cut that off, or
		// the next entries would land behind it, where no offset says they
		// are (and a restart's scan would stop at it, dropping them). If
		// the cut fails, they go to a new segment.
		if terr := s.w.Truncate(act.size); terr != nil {
			if serr := s.newSegment(s.next); serr != nil {
				err = errors.Join(err, terr, serr)
			}
		}
		return &FlushError{Lost: lost, Err: err}
	}
	// Copied, not swapped: two buffers that trade places regrow in turn,
	// and fresh memory's page faults cost more than the copy.
	act := s.segs[len(s.segs)-1]
	if s.hotRead < len(s.hot) && s.hotSeg == act.first && len(s.hot)+len(s.pend) <= maxHot {
		// The reader has not caught up with hot: it follows on.
		s.hot = append(s.hot, s.pend...)
	} else {
		s.hot = append(s.hot[:0], s.pend...)
		s.hotIdx, s.hotRead = s.written, 0
		s.hotSeg, s.hotOff = act.first, act.size-int64(len(s.hot))
	}
	s.pend = s.pend[:0]
	s.written = s.next
	select {
	case s.notify <- struct{}{}:
	default:
	}
	return nil
}

func (s *Spool) append(p []byte, force, buffered bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.appendLocked(p, force, buffered)
}

func (s *Spool) appendLocked(p []byte, force, buffered bool) error {
	if len(p) > maxEntry {
		return fmt.Errorf("spool entry of %d bytes exceeds %d", len(p), maxEntry)
	}
	size := int64(headerLen + len(p))
	if s.closed {
		return ErrClosed
	}
	if !force && s.used+size > s.maxBytes {
		return ErrFull
	}
	// What was buffered goes first, and is not lost with p.
	if !buffered {
		if err := s.flushLocked(); err != nil {
			return err
		}
	}
	if act := s.segs[len(s.segs)-1]; act.size > 0 && act.size+size > s.segBytes {
		if err := s.flushLocked(); err != nil {
			return err
		}
		if err := s.newSegment(s.next); err != nil {
			return err
		}
	}
	s.pend = binary.BigEndian.AppendUint32(s.pend, uint32(len(p)))
	s.pend = binary.BigEndian.AppendUint32(s.pend, crc32.Checksum(p, castagnoli))
	s.pend = append(s.pend, p...)
	act := &s.segs[len(s.segs)-1]
	s.lastOff, s.lastSeg = act.size, act.first
	act.size += size
	s.used += size
	s.next++
	if buffered && len(s.pend) < maxPend {
		return nil
	}
	return s.flushLocked()
}

// maxPend bounds what AppendBuffered holds before it writes anyway, and
// maxHot what the reader may find in memory (hot).
const (
	maxPend = 256 << 10
	maxHot  = 4 * maxPend
)

// Notify is signalled (coalesced) after every Append.
func (s *Spool) Notify() <-chan struct{} { return s.notify }

// Pending is the number of appended entries not yet acknowledged.
func (s *Spool) Pending() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.next - s.ack
}

// Used is the bytes held in segment files.
func (s *Spool) Used() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.used
}

// Last returns the newest entry (acknowledged or not), if any.
func (s *Spool) Last() ([]byte, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.flushLocked() != nil || s.lastOff < 0 {
		return nil, false
	}
	f, err := os.Open(s.segPath(s.lastSeg))
	if err != nil {
		return nil, false
	}
	defer f.Close()
	if _, err := f.Seek(s.lastOff, io.SeekStart); err != nil {
		return nil, false
	}
	data, err := readEntry(bufio.NewReader(f))
	return data, err == nil
}

// Next returns up to maxN entries (and about maxBytes of payload, at least
// one entry) after the last one it returned. It does not acknowledge them;
// after a restart, unacknowledged entries are returned again.
func (s *Spool) Next(maxN int, maxBytes int) ([]Entry, error) {
	out, _, err := s.NextInto(nil, nil, maxN, maxBytes)
	return out, err
}

// NextInto is Next with the entries appended to out and their data read
// into slab's spare capacity, a new slab when it runs short, which it
// returns. A reader that reuses its slab and entries once it is done with
// a batch allocates nothing: fresh memory per entry, and its page faults,
// were a fifth of the record path's CPU (BenchmarkRecordPath).
func (s *Spool) NextInto(out []Entry, slab []byte, maxN int, maxBytes int) ([]Entry, []byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return out, slab, ErrClosed
	}
	had, total := len(out), 0
	for len(out)-had < maxN && s.rIdx < s.written && (total < maxBytes || len(out) == had) {
		var data []byte
		if s.rIdx == s.hotIdx && s.hotRead < len(s.hot) {
			data, slab = s.readHot(slab)
		} else {
			if err := s.positionReader(); err != nil {
				return out, slab, err
			}
			var err error
			data, slab, err = readEntryInto(s.rf, slab)
			if err != nil {
				return out, slab, fmt.Errorf("spool %s: entry %d: %w", s.dir, s.rIdx, err)
			}
			s.rOff += int64(headerLen + len(data))
		}
		out = append(out, Entry{Index: s.rIdx, Data: data})
		s.rIdx++
		total += len(data)
	}
	return out, slab, nil
}

// readHot copies entry hotIdx from hot into slab, as readEntryInto does
// from the file (without the checksum: it never left memory).
func (s *Spool) readHot(slab []byte) (data, rest []byte) {
	h := s.hot[s.hotRead:]
	n := int(binary.BigEndian.Uint32(h[:4]))
	if cap(slab)-len(slab) < n {
		slab = make([]byte, 0, max(2*cap(slab), n, 64<<10))
	}
	rest = append(slab, h[headerLen:headerLen+n]...)
	data = rest[len(slab):len(rest):len(rest)]
	s.hotRead += headerLen + n
	s.hotIdx++
	s.rStale, s.staleSeg, s.staleOff = true, s.hotSeg, s.hotOff+int64(s.hotRead)
	return data, rest
}

// positionReader makes rf read entry rIdx.
func (s *Spool) positionReader() error {
	i, _ := slices.BinarySearchFunc(s.segs, s.rIdx, func(sg segment, idx uint64) int {
		if sg.first <= idx {
			return -1
		}
		return 1
	})
	i-- // segment with the largest first <= rIdx
	if i < 0 {
		return fmt.Errorf("spool %s: entry %d no longer on disk", s.dir, s.rIdx)
	}
	sg := s.segs[i]
	if s.rStale {
		s.rStale = false
		if sg.first == s.staleSeg {
			// Where the entries taken from hot end.
			return s.seekReader(sg.first, s.staleOff)
		}
		// Past the hot batch's segment: its start, below.
	}
	if s.rFile != nil && s.rSeg == sg.first {
		return nil
	}
	if s.rFile != nil {
		s.rFile.Close()
	}
	f, err := os.Open(s.segPath(sg.first))
	if err != nil {
		return err
	}
	s.rFile, s.rSeg, s.rOff = f, sg.first, 0
	s.rf = bufio.NewReaderSize(f, 64<<10)
	for idx := sg.first; idx < s.rIdx; idx++ { // only after a restart
		data, err := readEntry(s.rf)
		if err != nil {
			return err
		}
		s.rOff += int64(headerLen + len(data))
	}
	return nil
}

// seekReader makes rf read segment first from off.
func (s *Spool) seekReader(first uint64, off int64) error {
	if s.rFile == nil || s.rSeg != first {
		if s.rFile != nil {
			s.rFile.Close()
			s.rFile, s.rf = nil, nil
		}
		f, err := os.Open(s.segPath(first))
		if err != nil {
			return err
		}
		s.rFile, s.rSeg = f, first
	}
	if _, err := s.rFile.Seek(off, io.SeekStart); err != nil {
		return err
	}
	if s.rf == nil {
		s.rf = bufio.NewReaderSize(s.rFile, 64<<10)
	} else {
		s.rf.Reset(s.rFile)
	}
	s.rOff = off
	return nil
}

// Ack acknowledges every entry with index < upTo, persisting the position
// and deleting fully acknowledged segments.
func (s *Spool) Ack(upTo uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if upTo <= s.ack {
		return nil
	}
	s.ack = min(upTo, s.next)
	deleted := false
	// A segment goes once every entry in it is acknowledged and the next
	// one holds an entry on disk: the newest entry written stays, so that a
	// restart finds it (Last) even when every record was delivered, and
	// never hands out its sequence numbers again (the chain's checkpoint
	// may be older).
	for len(s.segs) > 1 && s.segs[1].first <= s.ack && s.segs[1].first < s.written {
		deleted = true
		sg := s.segs[0]
		if s.rFile != nil && s.rSeg == sg.first {
			s.rFile.Close()
			s.rFile, s.rf = nil, nil
		}
		if err := os.Remove(s.segPath(sg.first)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		s.used -= sg.size
		s.segs = s.segs[1:]
	}
	// Losing the newest acks only redelivers, which at-least-once allows.
	// Writing the position for every record (a file and a rename each)
	// took a fifth of the daemon's CPU at a trickle of records, so it is
	// written at most every ackEvery, and always when segments went.
	if time.Since(s.ackAt) < ackEvery && !deleted {
		return nil
	}
	return s.saveAck()
}

// ackEvery bounds how often Ack writes the position down.
const ackEvery = 100 * time.Millisecond

// saveAck overwrites the ack file in place with the position and a checksum
// of it (no rename: one pwrite into one sector). No fsync.
func (s *Spool) saveAck() error {
	if s.ackF == nil {
		f, err := os.OpenFile(filepath.Join(s.dir, ackFile), os.O_RDWR|os.O_CREATE, 0o600)
		if err != nil {
			return err
		}
		s.ackF = f
	}
	s.ackAt = time.Now()
	if _, err := s.ackF.WriteAt(formatAck(s.ack), 0); err != nil {
		return err
	}
	s.ackOut = s.ack
	return nil
}

// formatAck is the ack file's one line: the position, 20 digits wide so
// that every write covers the last, and its CRC-32.
func formatAck(ack uint64) []byte {
	n := fmt.Sprintf("%020d", ack)
	return fmt.Appendf(nil, "%s %08x\n", n, crc32.ChecksumIEEE([]byte(n)))
}

// parseAck reads formatAck's line; a line whose checksum does not match (a
// write torn by a crash) counts as no acknowledgement at all. A bare number
// is what earlier versions wrote through a rename.
func parseAck(b []byte) uint64 {
	n, sum, checked := strings.Cut(strings.TrimSpace(string(b)), " ")
	if checked && sum != fmt.Sprintf("%08x", crc32.ChecksumIEEE([]byte(n))) {
		return 0
	}
	ack, _ := strconv.ParseUint(n, 10, 64)
	return ack
}

// Sync writes what is buffered and flushes the active segment to stable
// storage.
func (s *Spool) Sync() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	if err := s.flushLocked(); err != nil {
		return err
	}
	// An idle pipeline checkpoints too: nothing written, nothing to sync.
	if s.synced == s.written {
		return nil
	}
	if err := s.w.Sync(); err != nil {
		return err
	}
	s.synced = s.written
	return nil
}

// Close syncs and closes the files; unacknowledged entries stay queued.
func (s *Spool) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	if s.rFile != nil {
		s.rFile.Close()
	}
	var errs []error
	if s.ack != s.ackOut {
		errs = append(errs, s.saveAck())
	}
	if s.ackF != nil {
		errs = append(errs, s.ackF.Close())
	}
	errs = append(errs, s.flushLocked(), s.w.Sync(), s.w.Close())
	return errors.Join(errs...)
}

// MaxBytes is the configured bound.
func (s *Spool) MaxBytes() int64 { return s.maxBytes }
