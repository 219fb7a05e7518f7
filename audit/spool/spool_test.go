package spool

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/agentfence/agentfence/internal/fsizelimit"
)

func TestAppendNextAckReopen(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 100 {
		if err := s.Append([]byte(fmt.Sprintf("entry-%03d", i))); err != nil {
			t.Fatal(err)
		}
	}
	batch, err := s.Next(30, 1<<20)
	if err != nil || len(batch) != 30 || string(batch[29].Data) != "entry-029" {
		t.Fatalf("batch %d %v", len(batch), err)
	}
	if err := s.Ack(batch[len(batch)-1].Index + 1); err != nil {
		t.Fatal(err)
	}
	// Read but unacknowledged entries come back after a restart.
	if _, err := s.Next(10, 1<<20); err != nil {
		t.Fatal(err)
	}
	s.Close()

	s, err = Open(dir, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if s.Pending() != 70 {
		t.Fatalf("pending %d", s.Pending())
	}
	batch, _ = s.Next(1000, 1<<20)
	if len(batch) != 70 || string(batch[0].Data) != "entry-030" || string(batch[69].Data) != "entry-099" {
		t.Fatalf("after reopen: %d entries, first %q", len(batch), batch[0].Data)
	}
	if last, ok := s.Last(); !ok || string(last) != "entry-099" {
		t.Fatalf("last %q", last)
	}
}

func TestTornTailIsCut(t *testing.T) {
	dir := t.TempDir()
	s, _ := Open(dir, 1<<20)
	s.Append([]byte("one"))
	s.Append([]byte("two"))
	s.Close()
	segs, _ := filepath.Glob(filepath.Join(dir, "*.seg"))
	f, _ := os.OpenFile(segs[0], os.O_APPEND|os.O_WRONLY, 0)
	f.Write([]byte{0, 0, 0, 9, 1, 2}) // half a header: a crash mid-write
	f.Close()
	s, err := Open(dir, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.Append([]byte("three"))
	batch, err := s.Next(10, 1<<20)
	if err != nil || len(batch) != 3 || string(batch[2].Data) != "three" {
		t.Fatalf("%v %v", batch, err)
	}
}

func TestBoundAndReclaim(t *testing.T) {
	s, _ := Open(t.TempDir(), 64<<10)
	defer s.Close()
	payload := bytes.Repeat([]byte("z"), 1000)
	n := 0
	for ; n < 1000; n++ {
		if err := s.Append(payload); err == ErrFull {
			break
		}
	}
	if n == 0 || n == 1000 || s.Used() > 64<<10 {
		t.Fatalf("appended %d, used %d", n, s.Used())
	}
	batch, _ := s.Next(n, 1<<30)
	s.Ack(batch[len(batch)-1].Index + 1)
	if err := s.Append(payload); err != nil {
		t.Fatalf("space not reclaimed after ack: %v (used %d)", err, s.Used())
	}
}

// Acks are written down at most every ackEvery (and at Close); a position
// not yet written only makes a crashed daemon deliver again, never skip.
func TestAckWrittenLazilyNeverAhead(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 10 {
		if err := s.Append([]byte(fmt.Sprintf("entry-%d", i))); err != nil {
			t.Fatal(err)
		}
	}
	for i := uint64(1); i <= 10; i++ {
		if err := s.Ack(i); err != nil {
			t.Fatal(err)
		}
		b, _ := os.ReadFile(filepath.Join(dir, ackFile))
		if got := parseAck(b); got > i {
			t.Fatalf("ack file says %d after Ack(%d)", got, i)
		}
	}
	// A crash now (no Close) redelivers what the file does not cover.
	b, _ := os.ReadFile(filepath.Join(dir, ackFile))
	if crashed := parseAck(b); crashed < 1 {
		t.Errorf("the first ack was not written at once: %d", crashed)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	b, _ = os.ReadFile(filepath.Join(dir, ackFile))
	if got := parseAck(b); got != 10 {
		t.Errorf("ack file after Close says %d, want 10", got)
	}
}

func TestParseAck(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want uint64
	}{
		{string(formatAck(12345)), 12345},
		{"678\n", 678},                         // written by earlier versions
		{"00000000000000012345 00000000\n", 0}, // checksum does not match: torn
		{"", 0},
		{"garbage", 0},
	} {
		if got := parseAck([]byte(tc.in)); got != tc.want {
			t.Errorf("parseAck(%q) = %d, want %d", tc.in, got, tc.want)
		}
	}
}

// Buffered entries reach the file, and the reader, at Flush, in order
// with unbuffered ones (an Append writes what was buffered first); across
// a segment's end too.
func TestAppendBuffered(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	s.segBytes = minSegment // a few entries a segment
	entry := func(i int) []byte { return []byte(fmt.Sprintf("entry-%04d-%s", i, bytes.Repeat([]byte("x"), 500))) }
	for i := range 3 {
		if _, err := s.AppendBuffered(entry(i)); err != nil {
			t.Fatal(err)
		}
	}
	if got, _ := s.Next(100, 1<<20); len(got) != 0 {
		t.Fatalf("%d buffered entries readable before a flush", len(got))
	}
	if err := s.Append(entry(3)); err != nil { // writes the three first
		t.Fatal(err)
	}
	for i := 4; i < 40; i++ {
		if _, err := s.AppendBuffered(entry(i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Flush(); err != nil {
		t.Fatal(err)
	}
	if len(s.segs) < 2 {
		t.Fatalf("%d segments: the test wants entries across a segment's end", len(s.segs))
	}
	got, err := s.Next(100, 1<<20)
	if err != nil || len(got) != 40 {
		t.Fatalf("read %d entries (%v), want 40", len(got), err)
	}
	for i, e := range got {
		if !bytes.Equal(e.Data, entry(i)) || e.Index != uint64(i) {
			t.Fatalf("entry %d: index %d, %.12q", i, e.Index, e.Data)
		}
	}
	s.Close()
	s, err = Open(dir, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if last, ok := s.Last(); !ok || !bytes.Equal(last, entry(39)) || s.Pending() != 40 {
		t.Errorf("reopened: last %.12q, %d pending; want entry 39 and 40", last, s.Pending())
	}
}

// A failed write loses what was buffered, says how much, and leaves the
// accounting as if it had never been appended.
func TestFlushErrorLosesOnlyTheBuffer(t *testing.T) {
	s, err := Open(t.TempDir(), 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Append([]byte("written")); err != nil {
		t.Fatal(err)
	}
	used := s.Used()
	for range 3 {
		if _, err := s.AppendBuffered([]byte("buffered")); err != nil {
			t.Fatal(err)
		}
	}
	s.w.Close() // the next write fails
	var fe *FlushError
	if err := s.Flush(); !errors.As(err, &fe) || fe.Lost != 3 {
		t.Fatalf("flush: %v, want a FlushError losing 3", err)
	}
	if s.Used() != used || s.Pending() != 1 {
		t.Errorf("after the failed write: %d bytes, %d pending; want %d and 1", s.Used(), s.Pending(), used)
	}
	if got, _ := s.Next(10, 1<<20); len(got) != 1 || string(got[0].Data) != "written" {
		t.Errorf("readable after the failed write: %d entries, want the one written", len(got))
	}
}

// A crash just after a segment was started, its first entry still
// buffered, with every entry before it delivered and acknowledged: the
// reopened spool still knows its newest entry, which is how the pipeline
// learns where the hash chain was when its checkpoint is older (a lost
// newest entry made a restarted daemon hand out the same seqs again).
func TestNewestEntrySurvivesAcks(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	s.segBytes = minSegment
	entry := func(i int) []byte { return []byte(fmt.Sprintf("entry-%04d-%s", i, bytes.Repeat([]byte("x"), 500))) }
	i := 0
	for ; len(s.segs) == 1; i++ {
		if _, err := s.AppendBuffered(entry(i)); err != nil {
			t.Fatal(err)
		}
	}
	// The segment boundary flushed entries 0..i-2; entry i-1 opened the
	// new segment and waits in the buffer.
	got, err := s.Next(100, 1<<20)
	if err != nil || len(got) != i-1 {
		t.Fatalf("read %d entries (%v), want %d", len(got), err, i-1)
	}
	if err := s.Ack(got[len(got)-1].Index + 1); err != nil {
		t.Fatal(err)
	}
	crashed, err := Open(dir, 1<<20) // s is never closed: its buffer is lost
	if err != nil {
		t.Fatal(err)
	}
	defer crashed.Close()
	if last, ok := crashed.Last(); !ok || !bytes.Equal(last, entry(i-2)) {
		t.Fatalf("after the crash: last %.12q (%v), want entry %d", last, ok, i-2)
	}
	// Once the new segment's entry is on disk and delivered, the old
	// segment goes.
	if err := s.Flush(); err != nil {
		t.Fatal(err)
	}
	if got, err = s.Next(100, 1<<20); err != nil || len(got) != 1 {
		t.Fatalf("read %d entries (%v) after the flush, want 1", len(got), err)
	}
	if err := s.Ack(got[0].Index + 1); err != nil {
		t.Fatal(err)
	}
	if len(s.segs) != 1 {
		t.Errorf("%d segments once everything was delivered, want 1", len(s.segs))
	}
	s.Close()
}

// NextInto reads into the caller's slab; a second call appending to the
// same slab (a batch topped up) leaves the first call's entries intact,
// also when the slab runs short and a new one is made.
func TestNextIntoKeepsEarlierEntries(t *testing.T) {
	s, err := Open(t.TempDir(), 8<<20)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	entry := func(i int) []byte { return bytes.Repeat([]byte{byte('a' + i%26)}, 1000+i) }
	for i := range 200 {
		if err := s.Append(entry(i)); err != nil {
			t.Fatal(err)
		}
	}
	slab := make([]byte, 0, 3000) // room for two entries
	first, slab, err := s.NextInto(nil, slab, 5, 1<<20)
	if err != nil || len(first) != 5 {
		t.Fatalf("%d entries, %v", len(first), err)
	}
	more, slab, err := s.NextInto(nil, slab, 195, 1<<20)
	if err != nil || len(more) != 195 {
		t.Fatalf("%d more entries, %v", len(more), err)
	}
	for i, e := range append(first, more...) {
		if !bytes.Equal(e.Data, entry(i)) {
			t.Fatalf("entry %d changed: %d bytes of %q", i, len(e.Data), e.Data[:1])
		}
	}
	if cap(slab) <= 3000 {
		t.Errorf("the slab did not grow: cap %d", cap(slab))
	}
}

// A reader that keeps up takes the newest batch from memory, one that
// falls behind from the files; either way, and switching between them
// mid-batch and across segments, it gets every entry once, in order. The
// interleaving is random (seeded, bounded).
func TestReaderBetweenMemoryAndFiles(t *testing.T) {
	for seed := range uint64(20) {
		rng := rand.New(rand.NewPCG(seed, 1))
		dir := t.TempDir()
		s, err := Open(dir, 1<<30)
		if err != nil {
			t.Fatal(err)
		}
		s.segBytes = minSegment
		entry := func(i int) []byte {
			return []byte(fmt.Sprintf("entry-%05d-%s", i, bytes.Repeat([]byte{'a' + byte(i%26)}, rng.IntN(900))))
		}
		var want [][]byte
		read := 0
		fromHot := 0
		for step := 0; step < 400; step++ {
			switch rng.IntN(4) {
			case 0, 1: // a burst of buffered appends, sometimes flushed
				for range rng.IntN(12) + 1 {
					e := entry(len(want))
					want = append(want, e)
					if _, err := s.AppendBuffered(e); err != nil {
						t.Fatal(err)
					}
				}
				if rng.IntN(2) == 0 {
					if err := s.Flush(); err != nil {
						t.Fatal(err)
					}
				}
			case 2: // an unbuffered append
				e := entry(len(want))
				want = append(want, e)
				if err := s.Append(e); err != nil {
					t.Fatal(err)
				}
			case 3: // the reader takes a few
				hotBefore := s.hotIdx
				n := rng.IntN(7) + 1
				if rng.IntN(3) == 0 {
					n = 1000 // catch up
				}
				got, err := s.Next(n, 1<<20)
				if err != nil {
					t.Fatalf("seed %d step %d: %v", seed, step, err)
				}
				fromHot += int(s.hotIdx - hotBefore)
				for _, e := range got {
					if e.Index != uint64(read) || !bytes.Equal(e.Data, want[read]) {
						t.Fatalf("seed %d step %d: entry %d is %q, want %d %q", seed, step, e.Index, e.Data[:min(12, len(e.Data))], read, want[read][:12])
					}
					read++
				}
				if rng.IntN(3) == 0 && read > 0 {
					if err := s.Ack(uint64(read)); err != nil {
						t.Fatal(err)
					}
				}
			}
		}
		if err := s.Flush(); err != nil {
			t.Fatal(err)
		}
		for read < len(want) {
			got, err := s.Next(50, 1<<20)
			if err != nil || len(got) == 0 {
				t.Fatalf("seed %d: %d of %d read: %v", seed, read, len(want), err)
			}
			for _, e := range got {
				if e.Index != uint64(read) || !bytes.Equal(e.Data, want[read]) {
					t.Fatalf("seed %d: entry %d, want %d", seed, e.Index, read)
				}
				read++
			}
		}
		if fromHot == 0 || fromHot == read {
			t.Errorf("seed %d: %d of %d entries from memory: the test did not mix the two", seed, fromHot, read)
		}
		s.Close()
	}
}

// A write cut short (a full disk, here the file size limit) leaves part of
// the buffer in the segment. It is cut off, so the entries appended after
// it are where the spool says they are: readable in this process and after
// a restart, with nothing lost but the failed write's own.
func TestShortWriteCutOff(t *testing.T) {
	dir, child := fsizelimit.Child(t)
	if !child {
		return
	}
	s, err := Open(dir, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Append([]byte("before")); err != nil {
		t.Fatal(err)
	}
	restore := fsizelimit.Set(t, s.Used()+20)
	if _, err := s.AppendBuffered(bytes.Repeat([]byte("x"), 100)); err != nil {
		t.Fatal(err)
	}
	var fe *FlushError
	if err := s.Flush(); !errors.As(err, &fe) || fe.Lost != 1 {
		t.Fatalf("flush past the limit: %v, want a FlushError losing 1", err)
	}
	restore()
	if err := s.Append([]byte("after")); err != nil {
		t.Fatal(err)
	}
	want := "[before after]"
	if got := readAll(t, s); got != want {
		t.Errorf("read in this process: %s, want %s", got, want)
	}
	s.Close()
	if s, err = Open(dir, 1<<20); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if got := readAll(t, s); got != want {
		t.Errorf("read after a restart: %s, want %s", got, want)
	}
}

// readAll reads every entry of s not read yet.
func readAll(t *testing.T, s *Spool) string {
	t.Helper()
	var got []string
	for range 10 {
		batch, err := s.Next(10, 1<<20)
		if err != nil {
			t.Fatal(err)
		}
		if len(batch) == 0 {
			break
		}
		for _, e := range batch {
			got = append(got, string(e.Data))
		}
	}
	return fmt.Sprint(got)
}
