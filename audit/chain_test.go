package audit

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// chainLines stamps n sample records and returns their canonical lines.
func chainLines(t testing.TB, c *Chain, n int) [][]byte {
	t.Helper()
	var out [][]byte
	for i := range n {
		r := sampleRecord(i)
		line, err := c.Stamp(nil, &r)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, line)
	}
	return out
}

func join(lines [][]byte) []byte {
	var b bytes.Buffer
	for _, l := range lines {
		b.Write(l)
		b.WriteByte('\n')
	}
	return b.Bytes()
}

func TestChainStampsSeqAndHash(t *testing.T) {
	c, _ := OpenChain("")
	lines := chainLines(t, c, 3)
	for i, l := range lines {
		var r Record
		if err := json.Unmarshal(l, &r); err != nil {
			t.Fatal(err)
		}
		if r.Seq != uint64(i+1) {
			t.Fatalf("record %d: seq %d", i, r.Seq)
		}
		want := ""
		if i > 0 {
			want = HashLine(lines[i-1])
		}
		if r.PrevHash != want {
			t.Fatalf("record %d: prev_hash %q, want %q", i, r.PrevHash, want)
		}
		if r.Schema != SchemaVersion {
			t.Fatalf("schema %q", r.Schema)
		}
		// Canonical bytes are exactly what re-encoding the parsed record gives.
		again, _ := Canonical(&r)
		if !bytes.Equal(again, l) {
			t.Fatalf("canonical form not stable:\n%s\n%s", l, again)
		}
	}
	if bytes.Contains(lines[0], []byte(`\u0026`)) || bytes.HasSuffix(lines[0], []byte("\n")) {
		t.Fatal("canonical bytes must not HTML-escape or end in newline")
	}
}

func TestChainResumesAfterRestart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "chain.json")
	c, err := OpenChain(path)
	if err != nil {
		t.Fatal(err)
	}
	first := chainLines(t, c, 5)
	if err := c.Checkpoint(); err != nil {
		t.Fatal(err)
	}
	c2, err := OpenChain(path)
	if err != nil {
		t.Fatal(err)
	}
	second := chainLines(t, c2, 5)
	rep, err := Verify(bytes.NewReader(join(append(first, second...))))
	if err != nil || !rep.OK() || rep.LastSeq != 10 || rep.Records != 10 {
		t.Fatalf("report %+v err %v", rep, err)
	}
	// No temp files left behind by the atomic write.
	ents, _ := os.ReadDir(filepath.Dir(path))
	if len(ents) != 1 {
		t.Fatalf("state dir has %d entries", len(ents))
	}
}

func TestVerifyDetectsDeletedLine(t *testing.T) {
	c, _ := OpenChain("")
	lines := chainLines(t, c, 10)
	lines = append(lines[:4], lines[5:]...) // delete seq 5
	rep, err := Verify(bytes.NewReader(join(lines)))
	if err != nil {
		t.Fatal(err)
	}
	if rep.Problem == nil || rep.Problem.Kind != ProblemGap || rep.Problem.Line != 5 || rep.Problem.Seq != 6 {
		t.Fatalf("want gap at line 5 seq 6, got %+v", rep.Problem)
	}
}

func TestVerifyDetectsEditedLine(t *testing.T) {
	c, _ := OpenChain("")
	lines := chainLines(t, c, 10)
	lines[6] = bytes.Replace(lines[6], []byte(`"verdict":"allowed"`), []byte(`"verdict":"denied"`), 1)
	rep, err := Verify(bytes.NewReader(join(lines)))
	if err != nil {
		t.Fatal(err)
	}
	if rep.Problem == nil || rep.Problem.Kind != ProblemAltered || rep.Problem.Line != 7 || rep.Problem.Seq != 7 {
		t.Fatalf("want altered line 7 seq 7, got %+v", rep.Problem)
	}
}

func TestVerifyReorderDuplicatesAndGapRecords(t *testing.T) {
	c, _ := OpenChain("")
	lines := chainLines(t, c, 10)

	// At-least-once redelivery of seq 3..5 is not a problem.
	dup := append(append(append([][]byte{}, lines[:5]...), lines[2:5]...), lines[5:]...)
	rep, _ := Verify(bytes.NewReader(join(dup)))
	if !rep.OK() || rep.Duplicates != 3 || rep.Records != 10 {
		t.Fatalf("duplicates: %+v %+v", rep, rep.Problem)
	}

	// Swapping two records is a reorder (seen as the hash link failing or
	// seq going back, whichever comes first).
	sw := append([][]byte{}, lines...)
	sw[3], sw[4] = sw[4], sw[3]
	rep, _ = Verify(bytes.NewReader(join(sw)))
	if rep.OK() {
		t.Fatal("swap not detected")
	}

	// A seq-0 gap record explains the jump that follows it.
	gap := Record{Schema: SchemaVersion, Kind: KindGap, Gap: &Gap{Source: "spool:siem", Count: 3, FirstSeq: 4, LastSeq: 6}}
	gl, _ := Canonical(&gap)
	withGap := append(append(append([][]byte{}, lines[:3]...), gl), lines[6:]...)
	rep, _ = Verify(bytes.NewReader(join(withGap)))
	if !rep.OK() || len(rep.Gaps) != 1 || rep.Gaps[0].Count != 3 {
		t.Fatalf("explained gap: %+v %+v", rep, rep.Problem)
	}

	// An unterminated last line that is not a record is being written
	// (or was torn by a crash): not a problem, and not a line.
	rep, _ = Verify(bytes.NewReader(append(join(lines[:3]), lines[3][:20]...)))
	if !rep.OK() || rep.Records != 3 || rep.Lines != 3 || rep.Partial != 20 {
		t.Fatalf("partial last line: %+v %+v", rep, rep.Problem)
	}
	// Garbage is reported with its line number.
	rep, _ = Verify(strings.NewReader(string(join(lines[:2])) + "not json\n"))
	if rep.Problem == nil || rep.Problem.Kind != ProblemMalformed || rep.Problem.Line != 3 {
		t.Fatalf("malformed: %+v", rep.Problem)
	}
}

// FuzzVerify checks that Verify never panics or errors on arbitrary input
// and that it always accepts an untouched chain.
func FuzzVerify(f *testing.F) {
	c, _ := OpenChain("")
	f.Add(join(chainLines(f, c, 3)))
	f.Add([]byte("{}\n"))
	f.Add([]byte(`{"seq":1}` + "\n" + `{"seq":1}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		rep, err := Verify(bytes.NewReader(data))
		if err != nil {
			t.Fatalf("Verify returned an I/O error on an in-memory reader: %v", err)
		}
		if rep.Records > rep.Lines {
			t.Fatalf("more records than lines: %+v", rep)
		}
		if rep.Problem != nil && (rep.Problem.Line < 1 || rep.Problem.Line > rep.Lines) {
			t.Fatalf("problem line out of range: %+v", rep)
		}
	})
}

// TestVerifyAggregates: verify sums what the records stand for and
// refuses a count where no aggregate can be.
func TestVerifyAggregates(t *testing.T) {
	stamp := func(edit func(r *Record, i int)) []byte {
		c, _ := OpenChain("")
		var lines [][]byte
		for i := range 4 {
			r := sampleRecord(i)
			edit(&r, i)
			line, err := c.Stamp(nil, &r)
			if err != nil {
				t.Fatal(err)
			}
			lines = append(lines, line)
		}
		return join(lines)
	}
	first := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	last := first.Add(time.Second)
	rep, err := Verify(bytes.NewReader(stamp(func(r *Record, i int) {
		if i == 2 {
			r.Count, r.FirstTime, r.LastTime = 19, &first, &last
		}
	})))
	if err != nil || !rep.OK() || rep.Decisions != 3+19 || rep.Aggregates != 1 {
		t.Fatalf("report %+v, %v: want 22 decisions, 1 aggregate", rep, err)
	}
	for name, edit := range map[string]func(r *Record){
		"denied":        func(r *Record) { r.Outcome.Verdict = VerdictDenied },
		"no times":      func(r *Record) { r.FirstTime, r.LastTime = nil, nil },
		"times reverse": func(r *Record) { r.FirstTime, r.LastTime = &last, &first },
		"no outcome":    func(r *Record) { r.Outcome = nil },
	} {
		rep, err := Verify(bytes.NewReader(stamp(func(r *Record, i int) {
			if i == 2 {
				r.Count, r.FirstTime, r.LastTime = 19, &first, &last
				edit(r)
			}
		})))
		if err != nil || rep.Problem == nil || rep.Problem.Kind != ProblemAggregate || rep.Problem.Line != 3 {
			t.Errorf("%s: report %+v, %v: want an aggregate problem on line 3", name, rep.Problem, err)
		}
	}
}
