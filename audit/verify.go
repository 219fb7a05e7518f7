package audit

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"
)

// Problem kinds reported by Verify.
const (
	ProblemMalformed   = "malformed"   // not a JSON record
	ProblemUnsequenced = "unsequenced" // a chained record without seq
	ProblemGap         = "gap"         // seq jumped and no gap record explains it
	ProblemReorder     = "reorder"     // seq went backwards to an unseen value
	ProblemAltered     = "altered"     // a line's hash does not match the next prev_hash
	ProblemAggregate   = "aggregate"   // a count where no aggregate can be, or its times out of order
)

// MaxLineBytes bounds one record line; longer lines are malformed.
const MaxLineBytes = 1 << 20

// dupWindow is how many recent seqs Verify remembers to tell an
// at-least-once redelivery (same seq, same bytes) from tampering.
const dupWindow = 1 << 16

// Problem is the first thing Verify found wrong.
type Problem struct {
	Kind   string `json:"kind"`
	Line   int    `json:"line"` // 1-based line number of the offending record
	Seq    uint64 `json:"seq"`
	Detail string `json:"detail"`
}

func (p *Problem) Error() string {
	return fmt.Sprintf("line %d (seq %d): %s: %s", p.Line, p.Seq, p.Kind, p.Detail)
}

// ExplainedGap is a loss announced in-band by a gap record.
type ExplainedGap struct {
	Line int `json:"line"`
	Gap
}

// Report summarises a verified stream.
type Report struct {
	Lines      int            `json:"lines"`
	Records    int            `json:"records"` // distinct chained records
	Duplicates int            `json:"duplicates"`
	FirstSeq   uint64         `json:"first_seq"`
	LastSeq    uint64         `json:"last_seq"`
	Gaps       []ExplainedGap `json:"gaps,omitempty"`
	// Decisions is what the records with an outcome stand for: one each,
	// or an aggregate's count; Aggregates the records with a count.
	Decisions  uint64 `json:"decisions"`
	Aggregates int    `json:"aggregates"`
	// Partial is the length of an unterminated last line that is not a
	// record: one still being written, or torn by a crash (the daemon cuts
	// such a tail off when it starts and delivers its records again). It
	// is not counted in Lines and is not a problem.
	Partial int      `json:"partial_bytes,omitempty"`
	Problem *Problem `json:"problem,omitempty"`
}

// OK reports whether the stream verified without unexplained problems.
func (r Report) OK() bool { return r.Problem == nil }

// verifyHead is the part of a record Verify needs.
type verifyHead struct {
	Seq       uint64     `json:"seq"`
	PrevHash  string     `json:"prev_hash"`
	Kind      string     `json:"kind"`
	Gap       *Gap       `json:"gap"`
	Count     uint64     `json:"count"`
	FirstTime *time.Time `json:"first_time"`
	LastTime  *time.Time `json:"last_time"`
	Outcome   *struct {
		Verdict string `json:"verdict"`
	} `json:"outcome"`
}

// aggregateProblem says what is wrong with a record's count, if anything:
// only allowed decisions are aggregated, and an aggregate spans its first
// to its latest decision.
func (h *verifyHead) aggregateProblem() string {
	if h.Count == 0 && h.FirstTime == nil && h.LastTime == nil {
		return ""
	}
	switch {
	case h.Outcome == nil || h.Outcome.Verdict != VerdictAllowed:
		return "only allowed decisions are aggregated"
	case h.Count == 0 || h.FirstTime == nil || h.LastTime == nil:
		return "an aggregate has count, first_time and last_time"
	case h.LastTime.Before(*h.FirstTime):
		return "last_time before first_time"
	}
	return ""
}

// Verify reads native JSON records, one per line, and checks that seqs are
// continuous and that each prev_hash is the SHA-256 of the previous line.
// An unterminated last line that does not decode is reported as Partial
// (a line being written, or one torn by a crash), not as a problem.
// Redelivered duplicates (same seq, identical bytes) are counted and
// skipped; gap records with seq 0 (spool overflow) explain the jump that
// follows them. It stops at the first problem, which is returned in the
// Report; the error is only for I/O failures. The first record's prev_hash
// cannot be checked, nor can an edit to the very last line: compare
// LastSeq and the hash with the daemon's chain state for that.
func Verify(r io.Reader) (Report, error) {
	var rep Report
	br := bufio.NewReaderSize(r, 64<<10)
	var (
		have      bool
		lastSeq   uint64
		lastHash  string
		lastLine  int
		allowJump *Gap // set by a seq-0 gap record until the next record
		seen      = make(map[uint64]string)
		ring      = make([]uint64, 0, 64)
		ringPos   int
	)
	remember := func(seq uint64, h string) {
		if len(ring) < dupWindow {
			ring = append(ring, seq)
		} else {
			delete(seen, ring[ringPos])
			ring[ringPos] = seq
			ringPos = (ringPos + 1) % dupWindow
		}
		seen[seq] = h
	}
	fail := func(kind string, line int, seq uint64, format string, args ...any) (Report, error) {
		rep.Problem = &Problem{Kind: kind, Line: line, Seq: seq, Detail: fmt.Sprintf(format, args...)}
		return rep, nil
	}
	for {
		line, err := readLine(br)
		if len(line) > 0 || err == nil {
			rep.Lines++
		}
		if err != nil && !errors.Is(err, io.EOF) {
			if errors.Is(err, errLineTooLong) {
				return fail(ProblemMalformed, rep.Lines, 0, "line longer than %d bytes", MaxLineBytes)
			}
			return rep, err
		}
		if len(bytes.TrimSpace(line)) == 0 {
			if err != nil {
				return rep, nil
			}
			continue
		}
		n := rep.Lines
		var h verifyHead
		if uerr := json.Unmarshal(line, &h); uerr != nil {
			if err != nil {
				// No '\n' yet: not a line, let alone a record.
				rep.Lines--
				rep.Partial = len(line)
				return rep, nil
			}
			return fail(ProblemMalformed, n, 0, "%v", uerr)
		}
		if h.Seq == 0 {
			if h.Kind == KindGap && h.Gap != nil {
				rep.Gaps = append(rep.Gaps, ExplainedGap{Line: n, Gap: *h.Gap})
				allowJump = h.Gap
				if err != nil {
					return rep, nil
				}
				continue
			}
			return fail(ProblemUnsequenced, n, 0, "record of kind %q has no seq", h.Kind)
		}
		hash := HashLine(line)
		switch {
		case !have:
			rep.FirstSeq = h.Seq
		case h.Seq <= lastSeq:
			prev, ok := seen[h.Seq]
			switch {
			case ok && prev == hash:
				rep.Duplicates++
				if err != nil {
					return rep, nil
				}
				continue
			case ok:
				return fail(ProblemAltered, n, h.Seq, "differs from the earlier copy of seq %d", h.Seq)
			default:
				return fail(ProblemReorder, n, h.Seq, "seq %d after seq %d", h.Seq, lastSeq)
			}
		case h.Seq == lastSeq+1 && allowJump == nil:
			if h.PrevHash != lastHash {
				return fail(ProblemAltered, lastLine, lastSeq,
					"hash of line %d does not match prev_hash of line %d (seq %d): line %d was altered", lastLine, n, h.Seq, lastLine)
			}
		case h.Seq > lastSeq+1 && allowJump == nil:
			return fail(ProblemGap, n, h.Seq, "seq %d..%d missing before this line", lastSeq+1, h.Seq-1)
		}
		if why := h.aggregateProblem(); why != "" {
			return fail(ProblemAggregate, n, h.Seq, "count %d: %s", h.Count, why)
		}
		if h.Outcome != nil {
			rep.Decisions += max(h.Count, 1)
		}
		if h.Count > 0 {
			rep.Aggregates++
		}
		// A gap record vouches for the jump (and the broken hash link) to
		// the record right after it only.
		allowJump = nil
		have = true
		rep.Records++
		rep.LastSeq = h.Seq
		lastSeq, lastHash, lastLine = h.Seq, hash, n
		remember(h.Seq, hash)
		if err != nil {
			return rep, nil
		}
	}
}

var errLineTooLong = errors.New("line too long")

// readLine returns the next line without its '\n'. At EOF it returns the
// unterminated remainder with io.EOF.
func readLine(br *bufio.Reader) ([]byte, error) {
	var out []byte
	for {
		frag, err := br.ReadSlice('\n')
		if len(out)+len(frag) > MaxLineBytes+1 {
			return nil, errLineTooLong
		}
		if err == bufio.ErrBufferFull {
			out = append(out, frag...)
			continue
		}
		if err == nil {
			frag = frag[:len(frag)-1]
		}
		if out == nil {
			return frag, err
		}
		return append(out, frag...), err
	}
}
