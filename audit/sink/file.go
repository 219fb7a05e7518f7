package sink

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/agentfence/agentfence/audit"
)

// fileTransport appends lines to a file and rotates it by size:
// path -> path.1 -> ... -> path.<maxFiles>, the oldest removed.
//
// The file is crash-consistent: it only ever holds whole lines once the
// transport has opened it. A kill -9 in the middle of a write can leave
// the start of a line at the end of the file; before appending, open cuts
// that torn tail back to the last '\n'. The records of the torn line were
// not acknowledged (the spool acknowledges a batch only after Send wrote
// all of it), so the spool delivers them again. Records whose lines were
// complete but whose acknowledgement had not been written down yet are
// delivered again too; the first open of the file skips those (see
// replayed), so the file holds each record once.
type fileTransport struct {
	path     string
	maxSize  int64
	maxFiles int
	f        *os.File
	size     int64
	log      *slog.Logger
	m        sinkMetrics
	// seen is what the file held when the transport first opened it,
	// as far as redelivered records need; nil once a record the file did
	// not hold has been written.
	seen *replayed
	// buf is Send's scratch, kept: a batch's buffer grown from nothing was
	// half of the bytes the record path allocated (BenchmarkRecordPath).
	// A batch is at most batch_size records and about maxBatchBytes.
	buf []byte
}

func newFileTransport(path string, maxSize int64, maxFiles int, log *slog.Logger, m sinkMetrics) (*fileTransport, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.Default()
	}
	t := &fileTransport{path: path, maxSize: maxSize, maxFiles: maxFiles, log: log, m: m}
	// The newest rotated file was complete when it was rotated; it can
	// only be torn by something other than this writer (an older version,
	// a system crash that lost part of the page cache). Its torn line is
	// not a record either way.
	if maxFiles >= 1 {
		if err := t.repair(path + ".1"); err != nil {
			return nil, err
		}
	}
	if err := t.open(); err != nil {
		return nil, err
	}
	seen, err := readReplayed(path, maxFiles >= 1)
	if err != nil {
		t.f.Close()
		return nil, err
	}
	t.seen = seen
	return t, nil
}

// open opens path for appending, after cutting a torn tail off it.
func (t *fileTransport) open() error {
	if err := t.repair(t.path); err != nil {
		return err
	}
	f, err := os.OpenFile(t.path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
	if err != nil {
		return err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return err
	}
	t.f, t.size = f, st.Size()
	return nil
}

// repair truncates the file at path after its last '\n', logs and counts
// what it cut, and reports errors other than the file not existing.
func (t *fileTransport) repair(path string) error {
	cut, err := repairTornTail(path)
	if err != nil {
		return fmt.Errorf("audit file %s: repair torn tail: %w", path, err)
	}
	if cut > 0 {
		t.log.Warn("audit file ended in a torn line (the writer was killed mid-write); cut it off before appending, the spool delivers its records again",
			"path", path, "bytes", cut)
		t.m.tornTails.Inc()
		t.m.tornBytes.Add(float64(cut))
	}
	return nil
}

// repairTornTail truncates the file at path right after its last '\n' (to
// empty if it has none) and returns how many bytes it cut. A missing or
// empty file, or one that ends in '\n', is left alone.
func repairTornTail(path string) (int64, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return 0, err
	}
	size := st.Size()
	end, err := lastLineEnd(f, size)
	if err != nil || end == size {
		return 0, err
	}
	if err := f.Truncate(end); err != nil {
		return 0, err
	}
	// Make the cut durable before anything is appended after it.
	return size - end, f.Sync()
}

// lastLineEnd returns the offset just after the last '\n' in the first
// size bytes of f, or 0 if there is none.
func lastLineEnd(f io.ReaderAt, size int64) (int64, error) {
	buf := make([]byte, 64<<10)
	for end := size; end > 0; {
		start := max(end-int64(len(buf)), 0)
		b := buf[:end-start]
		if _, err := f.ReadAt(b, start); err != nil && !errors.Is(err, io.EOF) {
			return 0, err
		}
		if i := bytes.LastIndexByte(b, '\n'); i >= 0 {
			return start + int64(i) + 1, nil
		}
		end = start
	}
	return 0, nil
}

// replayed is the end of what a json-format file held when the transport
// opened it: the newest chained seq in it and the unchained gap lines
// written after that record. The spool delivers again, in order, what was
// not acknowledged before a crash; a redelivered record the file already
// holds is one with a seq up to upTo, or one of those gap lines, or a gap
// record about seqs before upTo (gap records precede, in the spool, every
// record after the seqs they report).
type replayed struct {
	upTo uint64
	hash string // of the line of upTo
	gaps map[string]bool
}

// replayHead is what holds needs of a line.
type replayHead struct {
	Seq  uint64 `json:"seq"`
	Kind string `json:"kind"`
	Gap  *struct {
		LastSeq uint64 `json:"last_seq"`
	} `json:"gap"`
}

func (r *replayed) holds(payload []byte) bool {
	if r.gaps[string(payload)] {
		return true
	}
	var h replayHead
	if json.Unmarshal(payload, &h) != nil {
		return false
	}
	if h.Seq > 0 {
		return h.Seq <= r.upTo
	}
	return h.Kind == audit.KindGap && h.Gap != nil && h.Gap.LastSeq > 0 && h.Gap.LastSeq < r.upTo
}

// replayTailBytes bounds how much of the end of a file readReplayed reads
// to find the newest chained record.
const replayTailBytes = 4 << 20

// readReplayed reads the end of the audit file at path (and, when path
// holds no chained record yet, of path.1: a crash right after a rotation).
// It returns nil when the file's end is not json-format records (ocsf, or
// not ours), so that nothing is ever skipped on a guess.
func readReplayed(path string, rotated bool) (*replayed, error) {
	r := &replayed{gaps: map[string]bool{}}
	done, err := r.readTail(path)
	if err != nil || done {
		return r.orNil(), err
	}
	if rotated {
		if _, err := r.readTail(path + ".1"); err != nil {
			return nil, err
		}
	}
	return r.orNil(), nil
}

func (r *replayed) orNil() *replayed {
	if r == nil || (r.upTo == 0 && len(r.gaps) == 0) {
		return nil
	}
	return r
}

// readTail reads lines from the end of the file at path back to the newest
// chained record, collecting the gap lines after it. done is false when the
// file holds no chained record but might be preceded by a rotated file
// that does; a line that is not a json-format record ends the search
// (r.upTo stays 0).
func (r *replayed) readTail(path string) (done bool, err error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return true, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return true, err
	}
	start := max(st.Size()-replayTailBytes, 0)
	b := make([]byte, st.Size()-start)
	if _, err := f.ReadAt(b, start); err != nil && !errors.Is(err, io.EOF) {
		return true, err
	}
	b = bytes.TrimSuffix(b, []byte("\n"))
	for len(b) > 0 {
		i := bytes.LastIndexByte(b, '\n')
		if i < 0 && start > 0 {
			return true, nil // the line begins before what was read
		}
		line := b[i+1:]
		b = b[:max(i, 0)]
		var h replayHead
		if json.Unmarshal(line, &h) != nil {
			return true, nil
		}
		switch {
		case h.Seq > 0:
			r.upTo, r.hash = h.Seq, audit.HashLine(line)
			return true, nil
		case h.Kind == audit.KindGap:
			r.gaps[string(line)] = true
		default:
			return true, nil
		}
	}
	return false, nil
}

func (t *fileTransport) rotate() error {
	if err := t.f.Close(); err != nil {
		return err
	}
	t.f = nil
	os.Remove(fmt.Sprintf("%s.%d", t.path, t.maxFiles))
	for i := t.maxFiles - 1; i >= 1; i-- {
		os.Rename(fmt.Sprintf("%s.%d", t.path, i), fmt.Sprintf("%s.%d", t.path, i+1))
	}
	if t.maxFiles >= 1 {
		if err := os.Rename(t.path, t.path+".1"); err != nil {
			return err
		}
	} else if err := os.Remove(t.path); err != nil {
		return err
	}
	return t.open()
}

func (*fileTransport) headless() {}

// Send appends the batch. It returns nil only once every line of it is
// completely in the file, so the spool never acknowledges a record whose
// line a crash could still tear.
func (t *fileTransport) Send(_ context.Context, batch []message) error {
	if t.f == nil {
		if err := t.open(); err != nil {
			return err
		}
	}
	buf := t.buf[:0]
	defer func() { t.buf = buf[:0] }()
	skipped, wrote := 0, false
	for _, m := range batch {
		if t.seen != nil && !wrote && m.replay && t.seen.holds(m.payload) {
			skipped++
			continue
		}
		wrote = true
		n := int64(len(m.payload) + 1)
		// Rotate before a line that would overflow, so each file holds
		// whole lines and a file never exceeds maxSize unless one line does.
		if t.size > 0 && t.size+int64(len(buf))+n > t.maxSize {
			if err := t.write(buf); err != nil {
				return err
			}
			buf = buf[:0]
			if err := t.rotate(); err != nil {
				return err
			}
		}
		buf = append(buf, m.payload...)
		buf = append(buf, '\n')
	}
	if err := t.write(buf); err != nil {
		return err
	}
	if skipped > 0 {
		t.m.replaySkipped.Add(float64(skipped))
		t.log.Info("audit records delivered again after a restart were already in the file; not written twice",
			"path", t.path, "records", skipped, "up_to_seq", t.seen.upTo)
	}
	if wrote {
		t.seen = nil
	}
	return nil
}

// write appends buf. A write that fails part-way leaves the start of a
// line at the end of the file, and the batch is sent again: it is cut off
// first, so the retry does not glue a record onto half of another. If the
// cut fails too, the file is reopened (which repairs it) before the retry.
func (t *fileTransport) write(buf []byte) error {
	if len(buf) == 0 {
		return nil
	}
	n, err := t.f.Write(buf)
	if err == nil {
		t.size += int64(n)
		return nil
	}
	if n > 0 {
		if terr := t.f.Truncate(t.size); terr != nil {
			t.f.Close()
			t.f = nil
		}
	}
	return err
}

// appendLines appends lines, each ending in '\n', for the pipeline's
// writer (through.go): at once when no rotation falls within them, else
// line by line through Send. On an error msgs holds the lines, for the
// spool.
func (t *fileTransport) appendLines(lines []byte, msgs *[]message) error {
	if t.f != nil && t.size+int64(len(lines)) <= t.maxSize {
		if err := t.write(lines); err == nil {
			t.seen = nil
			return nil
		}
	}
	*msgs = (*msgs)[:0]
	for rest := lines; len(rest) > 0; {
		i := bytes.IndexByte(rest, '\n')
		*msgs = append(*msgs, message{payload: rest[:i]})
		rest = rest[i+1:]
	}
	return t.Send(context.Background(), *msgs)
}

// Sync makes what was written durable (through.go).
func (t *fileTransport) Sync() error {
	if t.f == nil {
		return nil
	}
	return t.f.Sync()
}

// newest is the newest chained record the file held when it was opened.
func (t *fileTransport) newest() (audit.ChainState, bool) {
	if t.seen == nil || t.seen.upTo == 0 {
		return audit.ChainState{}, false
	}
	return audit.ChainState{Seq: t.seen.upTo, Hash: t.seen.hash}, true
}

func (t *fileTransport) Close() error {
	if t.f == nil {
		return nil
	}
	err := t.f.Sync()
	if cerr := t.f.Close(); err == nil {
		err = cerr
	}
	t.f = nil
	return err
}
