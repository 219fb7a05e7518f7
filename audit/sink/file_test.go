package sink

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/agentfence/agentfence/audit"
	"github.com/agentfence/agentfence/audit/spool"
	"github.com/agentfence/agentfence/internal/fsizelimit"
	"github.com/prometheus/client_golang/prometheus"
)

// chainedLines returns n canonical lines of one chain, seq 1..n.
func chainedLines(t *testing.T, n int) [][]byte {
	t.Helper()
	c, _ := audit.OpenChain("")
	var out [][]byte
	for i := range n {
		r := testRecord(i)
		line, err := c.Stamp(nil, &r)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, line)
	}
	return out
}

var nl = []byte("\n")

// cat concatenates into a new slice.
func cat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

func joinLines(lines [][]byte) []byte {
	var b bytes.Buffer
	for _, l := range lines {
		b.Write(l)
		b.WriteByte('\n')
	}
	return b.Bytes()
}

// Opening the file cuts a torn last line back to the last '\n', and
// touches nothing else.
func TestFileRepairsTornTail(t *testing.T) {
	whole := joinLines(chainedLines(t, 3))
	torn := []byte(`{"schema":"1","seq":4,"prev`)
	only := []byte(`{"schema":"1","seq":1,"prev_hash":"","ti`)
	long := bytes.Repeat([]byte("z"), 200<<10) // a torn tail longer than one read
	for _, c := range []struct {
		name      string
		content   []byte // nil: no file
		want      []byte
		repaired  float64
		tornBytes float64
	}{
		{"torn tail", cat(whole, torn), whole, 1, float64(len(torn))},
		{"torn tail longer than a read", cat(whole, long), whole, 1, float64(len(long))},
		{"complete", whole, whole, 0, 0},
		{"empty", []byte{}, []byte{}, 0, 0},
		{"only a partial line", only, []byte{}, 1, float64(len(only))},
		{"missing", nil, []byte{}, 0, 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "audit.jsonl")
			if c.content != nil {
				if err := os.WriteFile(path, c.content, 0o640); err != nil {
					t.Fatal(err)
				}
			}
			var before os.FileInfo
			if c.repaired == 0 && c.content != nil {
				before, _ = os.Stat(path)
			}
			reg := prometheus.NewRegistry()
			ft, err := newFileTransport(path, 1<<20, 2, quietLogger(), newMetrics(reg).forSink("f"))
			if err != nil {
				t.Fatal(err)
			}
			defer ft.Close()
			got, _ := os.ReadFile(path)
			if !bytes.Equal(got, c.want) {
				t.Fatalf("after open the file holds %q, want %q", got, c.want)
			}
			if ft.size != int64(len(c.want)) {
				t.Errorf("size %d, want %d", ft.size, len(c.want))
			}
			if before != nil {
				if after, _ := os.Stat(path); !after.ModTime().Equal(before.ModTime()) {
					t.Error("a file that needed no repair was written to")
				}
			}
			if n := metric(t, reg, "agentfence_sink_file_torn_tails_repaired_total", "f"); n != c.repaired {
				t.Errorf("torn tails repaired = %v, want %v", n, c.repaired)
			}
			if n := metric(t, reg, "agentfence_sink_file_torn_bytes_repaired_total", "f"); n != c.tornBytes {
				t.Errorf("torn bytes repaired = %v, want %v", n, c.tornBytes)
			}
			// What is appended next starts on a line of its own.
			next := []byte(`{"schema":"1","seq":9}`)
			if err := ft.Send(context.Background(), []message{{payload: next}}); err != nil {
				t.Fatal(err)
			}
			got, _ = os.ReadFile(path)
			if want := cat(c.want, next, nl); !bytes.Equal(got, want) {
				t.Errorf("after a record was appended: %q, want %q", got, want)
			}
		})
	}
}

// The newest rotated file is repaired too: its torn line is no record.
func TestFileRepairsRotatedFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.jsonl")
	whole := joinLines(chainedLines(t, 2))
	os.WriteFile(path+".1", cat(whole, []byte(`{"sch`)), 0o640)
	os.WriteFile(path+".2", []byte("older, not touched"), 0o640)
	ft, err := newFileTransport(path, 1<<20, 3, quietLogger(), newMetrics(nil).forSink("f"))
	if err != nil {
		t.Fatal(err)
	}
	ft.Close()
	if got, _ := os.ReadFile(path + ".1"); !bytes.Equal(got, whole) {
		t.Errorf("%s.1 holds %q", path, got)
	}
	if got, _ := os.ReadFile(path + ".2"); string(got) != "older, not touched" {
		t.Errorf("%s.2 holds %q", path, got)
	}
}

// Records the spool delivers again after a restart are not written a
// second time when the file (or, right after a rotation, the rotated file)
// already holds them; records the file does not hold are written.
func TestFileSkipsRedeliveredRecordsItHolds(t *testing.T) {
	lines := chainedLines(t, 8)
	gap := gapLine("h", "restart", 2, 9, 10)
	replay := func(ls ...[]byte) []message {
		var out []message
		for _, l := range ls {
			out = append(out, message{payload: l, replay: true})
		}
		return out
	}
	for _, c := range []struct {
		name        string
		file, file1 []byte // path and path.1 before the open
		send        []message
		want        []byte // path after the send
		skipped     float64
	}{{
		name: "replay of held records, then new ones",
		file: joinLines(lines[:5]),
		send: append(replay(lines[2:6]...), message{payload: lines[6]}),
		want: joinLines(lines[:7]), skipped: 3,
	}, {
		name: "the torn record is written again",
		file: cat(joinLines(lines[:4]), lines[4][:30]),
		send: replay(lines[2:6]...),
		want: joinLines(lines[:6]), skipped: 2,
	}, {
		name:  "crash right after a rotation",
		file1: joinLines(lines[:5]),
		send:  replay(lines[3:7]...),
		want:  joinLines(lines[5:7]), skipped: 2,
	}, {
		name: "a gap line after the newest record",
		file: cat(joinLines(lines[:3]), gap, nl),
		send: append(replay(lines[1], lines[2], gap), message{payload: lines[3]}),
		want: cat(joinLines(lines[:3]), gap, nl, lines[3], nl), skipped: 3,
	}, {
		name: "new records are never skipped",
		file: joinLines(lines[:5]),
		send: []message{{payload: lines[0]}},
		want: cat(joinLines(lines[:5]), lines[0], nl),
	}, {
		name: "an ocsf or foreign file is not guessed at",
		file: []byte(`{"metadata":{"sequence":5}}` + "\n"),
		send: replay(lines[0]),
		want: []byte(`{"metadata":{"sequence":5}}` + "\n" + string(lines[0]) + "\n"),
	}} {
		t.Run(c.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "audit.jsonl")
			if c.file != nil {
				os.WriteFile(path, c.file, 0o640)
			}
			if c.file1 != nil {
				os.WriteFile(path+".1", c.file1, 0o640)
			}
			reg := prometheus.NewRegistry()
			ft, err := newFileTransport(path, 1<<20, 2, quietLogger(), newMetrics(reg).forSink("f"))
			if err != nil {
				t.Fatal(err)
			}
			defer ft.Close()
			if err := ft.Send(context.Background(), c.send); err != nil {
				t.Fatal(err)
			}
			// Once the file has a record it did not hold, nothing more is
			// skipped, replay or not.
			if err := ft.Send(context.Background(), replay(lines[7])); err != nil {
				t.Fatal(err)
			}
			want := cat(c.want, lines[7], nl)
			if got, _ := os.ReadFile(path); !bytes.Equal(got, want) {
				t.Errorf("file holds\n%s\nwant\n%s", got, want)
			}
			if n := metric(t, reg, "agentfence_sink_file_redelivered_skipped_total", "f"); n != c.skipped {
				t.Errorf("skipped = %v, want %v", n, c.skipped)
			}
		})
	}
}

// A crash leaves a torn line and records in the spool whose
// acknowledgement was not written down: the next pipeline cuts the line
// off, writes the torn record again from the spool, skips what the file
// already holds, and the trail verifies with every record exactly once.
func TestPipelineRepairsFileAfterCrash(t *testing.T) {
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	out := filepath.Join(dir, "audit.jsonl")
	sinks := []audit.SinkConfig{{Name: "f", Type: "file", File: &audit.FileConfig{Path: out}}}

	p := newPipeline(t, state, nil, sinks...)
	for i := range 10 {
		p.Emit(testRecord(i))
	}
	p.Close()
	// The crash: seq 6..10 were in the spool (the writer spools while the
	// deliverer holds a backlog), all written to the file, none
	// acknowledged, and the write of seq 9 and 10 was cut short.
	data, _ := os.ReadFile(out)
	lines := bytes.SplitAfter(data, []byte("\n"))
	sp, err := spool.Open(filepath.Join(state, "spool", "f"), audit.DefaultSpoolMaxBytes)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range lines[5:10] {
		if err := sp.Append(bytes.TrimSuffix(line, []byte("\n"))); err != nil {
			t.Fatal(err)
		}
	}
	sp.Close()
	torn := append(bytes.Join(lines[:8], nil), lines[8][:len(lines[8])/2]...)
	os.WriteFile(out, torn, 0o640)

	reg := prometheus.NewRegistry()
	p = newPipeline(t, state, reg, sinks...)
	p.Emit(testRecord(10))
	p.Close()
	data, _ = os.ReadFile(out)
	if !bytes.HasSuffix(data, []byte("\n")) {
		t.Fatal("the file does not end in a newline")
	}
	if got := fileSeqs(t, data); got != "[1 2 3 4 5 6 7 8 9 10 11]" {
		t.Errorf("seqs in the file: %s", got)
	}
	rep, err := audit.Verify(bytes.NewReader(data))
	if err != nil || !rep.OK() || rep.Duplicates != 0 || rep.Records != 11 {
		t.Errorf("verify: %+v %v", rep, rep.Problem)
	}
	for name, want := range map[string]float64{
		"agentfence_sink_file_torn_tails_repaired_total": 1,
		"agentfence_sink_file_redelivered_skipped_total": 3, // seq 6..8
	} {
		if n := metric(t, reg, name, "f"); n != want {
			t.Errorf("%s = %v, want %v", name, n, want)
		}
	}
}

// A write that fails part-way (here: the file size limit) leaves half a
// line; it is cut off, so the retry does not glue two records together.
func TestFileWriteFailureLeavesWholeLines(t *testing.T) {
	dir, child := fsizelimit.Child(t)
	if !child {
		return
	}
	path := filepath.Join(dir, "audit.jsonl")
	ft, err := newFileTransport(path, 1<<20, 2, quietLogger(), newMetrics(nil).forSink("f"))
	if err != nil {
		t.Fatal(err)
	}
	defer ft.Close()
	lines := chainedLines(t, 4)
	if err := ft.Send(context.Background(), []message{{payload: lines[0]}}); err != nil {
		t.Fatal(err)
	}
	restore := fsizelimit.Set(t, int64(len(lines[0])+1+len(lines[1])+1+10))
	batch := []message{{payload: lines[1]}, {payload: lines[2]}, {payload: lines[3]}}
	if err := ft.Send(context.Background(), batch); err == nil {
		t.Fatal("a write past the file size limit succeeded")
	}
	if got, _ := os.ReadFile(path); !bytes.Equal(got, joinLines(lines[:1])) {
		t.Fatalf("after the failed write: %q", got)
	}
	restore()
	if err := ft.Send(context.Background(), batch); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(path); !bytes.Equal(got, joinLines(lines)) {
		t.Fatalf("after the retry: %q", got)
	}
}

// crashHelperEnv makes the test binary a pipeline that writes records
// until it is killed (see TestPipelineSurvivesKill9).
const crashHelperEnv = "AGENTFENCE_CRASH_HELPER"

func crashSinks(dir string) []audit.SinkConfig {
	return []audit.SinkConfig{{Name: "f", Type: "file",
		File: &audit.FileConfig{Path: filepath.Join(dir, "audit.jsonl"), MaxSizeMB: 1, MaxFiles: 100}}}
}

// TestCrashHelper is not a test: run by TestPipelineSurvivesKill9, it emits
// records as fast as it can until it is killed, or N records when the
// environment says so and then closes the pipeline.
func TestCrashHelper(t *testing.T) {
	dir := os.Getenv(crashHelperEnv)
	if dir == "" {
		t.Skip("helper process for TestPipelineSurvivesKill9")
	}
	p, err := New(Options{StateDir: filepath.Join(dir, "state"), Host: "node-1", Logger: quietLogger()}, crashSinks(dir))
	if err != nil {
		t.Fatal(err)
	}
	n, _ := strconv.Atoi(os.Getenv(crashHelperEnv + "_N"))
	for i := 0; n == 0 || i < n; i++ {
		p.Emit(testRecord(i))
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
}

// A pipeline killed with -9 while it writes, again and again, at different
// moments (and once with a torn line left behind): afterwards every line
// of the file and its rotations parses, no record is there twice, and the
// chain verifies from the first record to the last, any loss explained by
// a restart gap record.
func TestPipelineSurvivesKill9(t *testing.T) {
	if testing.Short() {
		t.Skip("kills a child process 8 times")
	}
	dir := t.TempDir()
	audit1 := filepath.Join(dir, "audit.jsonl")
	start := func(n int) *exec.Cmd {
		cmd := exec.Command(os.Args[0], "-test.run=^TestCrashHelper$", "-test.count=1")
		cmd.Env = append(os.Environ(), crashHelperEnv+"="+dir, fmt.Sprintf("%s_N=%d", crashHelperEnv, n))
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if cmd.ProcessState == nil {
				cmd.Process.Kill()
				cmd.Wait()
			}
		})
		return cmd
	}
	// Kill after the file grew by this many bytes: 0 is as soon as the
	// process runs, before it writes anything.
	growth := []int64{0, 1, 300 << 10, 1 << 10, 1500 << 10, 64 << 10, 1, 700 << 10}
	for round, g := range growth {
		before := trailSize(dir)
		cmd := start(0)
		eventually(t, 30*time.Second, fmt.Sprintf("round %d: %d bytes written", round, g), func() bool {
			return trailSize(dir) >= before+g
		})
		cmd.Process.Kill()
		cmd.Wait()
		if round == 3 {
			// As a kill in the middle of a write would leave it.
			f, err := os.OpenFile(audit1, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
			if err != nil {
				t.Fatal(err)
			}
			f.WriteString(`{"schema":"1","seq":`)
			f.Close()
		}
	}
	cmd := start(100)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("last run: %v", err)
	}

	// Oldest rotation first. A kill in the middle of a rotation's renames
	// leaves a hole in the numbering (.4 and .6, no .5): the order holds.
	files, _ := filepath.Glob(audit1 + ".*")
	var nums []int
	for _, f := range files {
		n, err := strconv.Atoi(strings.TrimPrefix(f, audit1+"."))
		if err != nil {
			t.Fatalf("unexpected file %s next to the trail", f)
		}
		nums = append(nums, n)
	}
	slices.Sort(nums)
	var all bytes.Buffer
	for _, n := range slices.Backward(nums) {
		b, err := os.ReadFile(fmt.Sprintf("%s.%d", audit1, n))
		if err != nil {
			t.Fatal(err)
		}
		all.Write(b)
	}
	b, _ := os.ReadFile(audit1)
	all.Write(b)
	if len(files) == 0 {
		t.Error("the files never rotated; the test wrote too little")
	}
	data := all.Bytes()
	if !bytes.HasSuffix(data, []byte("\n")) {
		t.Fatal("the trail does not end in a newline")
	}
	seen := map[uint64]bool{}
	for i, line := range bytes.Split(bytes.TrimSuffix(data, []byte("\n")), []byte("\n")) {
		var r audit.Record
		if err := json.Unmarshal(line, &r); err != nil {
			t.Fatalf("line %d %q: %v", i+1, line, err)
		}
		if r.Seq != 0 && seen[r.Seq] {
			t.Errorf("seq %d is in the trail twice", r.Seq)
		}
		seen[r.Seq] = true
	}
	rep, err := audit.Verify(bytes.NewReader(data))
	if err != nil || !rep.OK() {
		t.Fatalf("verify: %+v %v", rep, rep.Problem)
	}
	if rep.FirstSeq != 1 || rep.Duplicates != 0 {
		t.Errorf("verify: %+v", rep)
	}
	t.Logf("%d records in %d files, seq %d..%d, %d gap records: %+v", rep.Records, len(files)+1, rep.FirstSeq, rep.LastSeq, len(rep.Gaps), rep.Gaps)
}

// trailSize is the bytes in the audit file and its rotations.
func trailSize(dir string) int64 {
	files, _ := filepath.Glob(filepath.Join(dir, "audit.jsonl*"))
	var n int64
	for _, f := range files {
		if st, err := os.Stat(f); err == nil && !strings.HasSuffix(f, ".tmp") {
			n += st.Size()
		}
	}
	return n
}
