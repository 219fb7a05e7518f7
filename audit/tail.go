package audit

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"time"
)

// tailPoll is how often a followed file is checked for growth. Polling
// keeps Tail portable and free of inotify limits; audit files grow slowly
// enough that a quarter second is invisible to a human reader.
const tailPoll = 250 * time.Millisecond

// Tail prints the records in the native JSON file at path human-readably,
// one line per record. With follow it keeps printing appended records,
// reopening the file when it is rotated or truncated, until ctx is done.
func Tail(ctx context.Context, path string, w io.Writer, follow bool) error {
	bw := bufio.NewWriter(w)
	poll := time.Duration(0)
	if follow {
		poll = tailPoll
	}
	err := Follow(ctx, path, poll, func(line []byte) bool {
		writeHuman(bw, line)
		// Followed, each record shows as it comes.
		return !follow || bw.Flush() == nil
	})
	return errors.Join(err, bw.Flush())
}

// Follow calls line with each line of the file at path, from its start,
// until line returns false. At the end of the file it checks for more every
// poll, reopening the file when it is rotated or truncated, until ctx is
// done; with poll 0 it returns there instead. Lines longer than
// MaxLineBytes are dropped.
//
// Only complete lines are passed: bytes after the last '\n' are a line
// still being written, held back until its '\n' arrives. If instead the
// writer died mid-line and the next one cut that torn tail off before
// appending (as agentfence's file sink does), the held-back bytes are
// dropped and reading goes on where the cut was. With poll 0, an
// unterminated last line is passed only if it is a whole JSON value (a
// file written without a final newline); otherwise it is not a record yet.
func Follow(ctx context.Context, path string, poll time.Duration, line func([]byte) bool) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer func() { f.Close() }()
	var (
		partial []byte
		offset  int64
		buf     = make([]byte, 64<<10)
		check   []byte
		ticker  *time.Ticker
		next    *os.File // what path names now, once f was rotated away
	)
	defer func() {
		if next != nil {
			next.Close()
		}
	}()
	for {
		if len(partial) > 0 {
			// The bytes held back must still be in the file where they were
			// read; if they are not, a torn tail was cut off (and perhaps
			// new lines appended in its place): read on from the cut.
			start := offset - int64(len(partial))
			if cap(check) < len(partial) {
				check = make([]byte, len(partial))
			}
			check = check[:len(partial)]
			if n, _ := f.ReadAt(check, start); n != len(check) || !bytes.Equal(check, partial) {
				if _, err := f.Seek(start, io.SeekStart); err != nil {
					return err
				}
				offset, partial = start, partial[:0]
			}
		}
		n, rerr := f.Read(buf)
		if n > 0 {
			offset += int64(n)
			partial = append(partial, buf[:n]...)
			for {
				i := bytes.IndexByte(partial, '\n')
				if i < 0 {
					break
				}
				if !line(partial[:i]) {
					return nil
				}
				partial = partial[i+1:]
			}
			if len(partial) > MaxLineBytes {
				partial = partial[:0] // never grow without bound on garbage
			}
			continue
		}
		if rerr != nil && !errors.Is(rerr, io.EOF) {
			return rerr
		}
		if next != nil {
			// The rotated file is read to its end: go on with the new one.
			// A partial line left in it was torn, never to be completed.
			f.Close()
			f, next, offset, partial = next, nil, 0, partial[:0]
			continue
		}
		if poll == 0 {
			if rest := bytes.TrimSpace(partial); len(rest) > 0 && json.Valid(rest) {
				line(partial)
			}
			return nil
		}
		if ticker == nil {
			ticker = time.NewTicker(poll)
			defer ticker.Stop()
		}
		select {
		case <-ctx.Done():
			return nil
		case <-ticker.C:
		}
		if rotated(f, path, offset-int64(len(partial))) {
			nf, err := os.Open(path)
			if err != nil {
				continue // the writer has not recreated it yet
			}
			// Lines may have reached f after the last read and before the
			// rotation: f is read to its end before nf.
			next = nf
		}
	}
}

// rotated reports whether path now names a different file than the one
// being read, or one shorter than the complete lines read from it.
func rotated(f *os.File, path string, offset int64) bool {
	cur, err := f.Stat()
	if err != nil {
		return true
	}
	now, err := os.Stat(path)
	if err != nil {
		return false
	}
	return !os.SameFile(cur, now) || now.Size() < offset
}

func writeHuman(w *bufio.Writer, line []byte) {
	line = bytes.TrimRight(line, "\r")
	if len(bytes.TrimSpace(line)) == 0 {
		return
	}
	var r Record
	if err := json.Unmarshal(line, &r); err != nil {
		fmt.Fprintf(w, "?? unparsable line: %v\n", err)
		return
	}
	w.WriteString(FormatHuman(&r))
	w.WriteByte('\n')
}

// FormatHuman renders r on one line: time, kind, verdict, session,
// process, destination.
func FormatHuman(r *Record) string {
	var b strings.Builder
	b.WriteString(r.Time.UTC().Format("2006-01-02T15:04:05.000Z"))
	fmt.Fprintf(&b, " #%d %-7s", r.Seq, r.Kind)
	verdict := "-"
	if r.Outcome != nil {
		verdict = r.Outcome.Verdict
	}
	fmt.Fprintf(&b, " %-10s", verdict)
	if r.Session != nil {
		fmt.Fprintf(&b, " session=%s intent=%q", r.Session.ID, r.Session.Intent)
	}
	if r.Event != "" {
		fmt.Fprintf(&b, " event=%s", r.Event)
	}
	if r.Actor != "" {
		fmt.Fprintf(&b, " actor=%s", r.Actor)
	}
	if p := r.Process; p != nil {
		fmt.Fprintf(&b, " pid=%d comm=%s", p.PID, p.Comm)
	}
	if d := r.Destination; d != nil {
		b.WriteString(" -> ")
		if d.Hostname != "" {
			b.WriteString(d.Hostname)
			b.WriteByte('/')
		}
		b.WriteString(net.JoinHostPort(d.IP, strconv.Itoa(int(d.Port))))
		if d.Protocol != "" {
			b.WriteByte('/')
			b.WriteString(d.Protocol)
		}
	}
	if o := r.Outcome; o != nil {
		if o.Rule != "" {
			fmt.Fprintf(&b, " rule=%q", o.Rule)
		}
		if o.Reason != "" {
			fmt.Fprintf(&b, " reason=%s", o.Reason)
		}
	}
	if r.Count > 0 && r.FirstTime != nil && r.LastTime != nil {
		fmt.Fprintf(&b, " count=%d over=%s", r.Count, r.LastTime.Sub(*r.FirstTime))
	}
	if h := r.HTTP; h != nil {
		fmt.Fprintf(&b, " %s %s%s %d", h.Method, h.Host, h.Path, h.Status)
	}
	if c := r.Credential; c != nil {
		fmt.Fprintf(&b, " credential=%s:%s", c.Type, c.Fingerprint)
		if c.Holder != "" {
			fmt.Fprintf(&b, " holder=%s", c.Holder)
		}
	}
	if t := r.TLS; t != nil && t.Uncovered != "" {
		fmt.Fprintf(&b, " tls=%s uncovered=%q", t.Library, t.Uncovered)
	}
	if g := r.Gap; g != nil {
		fmt.Fprintf(&b, " source=%s lost=%d seq=%d..%d", g.Source, g.Count, g.FirstSeq, g.LastSeq)
	}
	return b.String()
}
