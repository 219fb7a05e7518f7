package sink

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/agentfence/agentfence/audit"
)

// A file sink writes past its empty spool; a write that fails spools the
// records instead, and while the spool holds them every record after them
// is spooled too, so the file gets them in order once it can be written
// again (here by the next process, which replays the spool). Then the
// records go past the spool again.
func TestWriteThroughFallsBackToSpoolInOrder(t *testing.T) {
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	out := filepath.Join(dir, "audit.jsonl")
	// A file of lines 100 bytes short of its size bound: the next write
	// rotates it, and the rotation fails while a directory stands where
	// the rotated file goes.
	line := append(bytes.Repeat([]byte("x"), 1023), '\n')
	filler := append(bytes.Repeat(line, 1023), line[100:]...)
	if err := os.WriteFile(out, filler, 0o640); err != nil {
		t.Fatal(err)
	}
	sinks := []audit.SinkConfig{{Name: "f", Type: "file", File: &audit.FileConfig{Path: out, MaxSizeMB: 1, MaxFiles: 1},
		// The deliverer does not retry within the test.
		Retry: &audit.RetryConfig{InitialBackoff: "1h", MaxBackoff: "1h"}}}
	p := newPipeline(t, state, nil, sinks...)
	s := p.sinks[0]
	if err := os.MkdirAll(filepath.Join(out+".1", "blocker"), 0o700); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		p.Emit(testRecord(i))
	}
	eventually(t, 10*time.Second, "the failed write's records in the spool", func() bool { return s.spool.Pending() == 3 })

	// The file can be written again, but the spool holds records: the
	// next ones queue behind them.
	if err := os.RemoveAll(out + ".1"); err != nil {
		t.Fatal(err)
	}
	for i := 3; i < 6; i++ {
		p.Emit(testRecord(i))
	}
	eventually(t, 10*time.Second, "the next records in the spool", func() bool { return s.spool.Pending() == 6 })
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	p.Shutdown(ctx) // leaves the spool as it is

	p = newPipeline(t, state, nil, sinks[0])
	s = p.sinks[0]
	p.Emit(testRecord(6))
	eventually(t, 10*time.Second, "the spool delivered", func() bool { return s.spool.Pending() == 0 })
	used := s.spool.Used()
	p.Emit(testRecord(7))
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if s.spool.Used() != used {
		t.Errorf("the spool grew from %d to %d bytes: a record was spooled while it was empty", used, s.spool.Used())
	}
	data, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if got := fileSeqs(t, data); got != "[1 2 3 4 5 6 7 8]" {
		t.Errorf("seqs in the file: %s", got)
	}
	if rep, err := audit.Verify(bytes.NewReader(data)); err != nil || !rep.OK() || rep.Records != 8 {
		t.Errorf("verify: %+v %v", rep, err)
	}
	if rotated, _ := os.ReadFile(out + ".1"); !bytes.Equal(rotated, filler) {
		t.Errorf("the rotated file is not the one filled before")
	}
}

// Records written past the spool and not yet in a checkpoint when the
// process died: the next start goes on after them, as after records in a
// spool, and does not report them lost.
func TestRestartAfterWriteThrough(t *testing.T) {
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	out := filepath.Join(dir, "audit.jsonl")
	sinks := []audit.SinkConfig{{Name: "f", Type: "file", File: &audit.FileConfig{Path: out}}}
	chainPath := filepath.Join(state, "chain.json")

	p := newPipeline(t, state, nil, sinks...)
	for i := range 5 {
		p.Emit(testRecord(i))
	}
	p.Close()
	checkpoint, err := os.ReadFile(chainPath)
	if err != nil {
		t.Fatal(err)
	}
	p = newPipeline(t, state, nil, sinks...)
	for i := 5; i < 10; i++ {
		p.Emit(testRecord(i))
	}
	p.Close()
	if used := p.sinks[0].spool.Used(); used != 0 {
		t.Fatalf("the spool holds %d bytes: the records were not written past it", used)
	}
	// The crash: seq 6..10 are in the file, the checkpoint says seq 5
	// and spooled 5.
	if err := os.WriteFile(chainPath, checkpoint, 0o600); err != nil {
		t.Fatal(err)
	}

	p = newPipeline(t, state, nil, sinks...)
	p.Emit(testRecord(10))
	p.Close()
	data, _ := os.ReadFile(out)
	if got := fileSeqs(t, data); got != "[1 2 3 4 5 6 7 8 9 10 11]" {
		t.Errorf("seqs in the file: %s", got)
	}
	if rep, err := audit.Verify(bytes.NewReader(data)); err != nil || !rep.OK() || rep.Records != 11 || len(rep.Gaps) != 0 || rep.Lines != 11 {
		t.Errorf("verify: %+v %v", rep, err)
	}
}

// fileSeqs lists the seqs of the records in a json-format trail, and 0
// for a gap record.
func fileSeqs(t *testing.T, data []byte) string {
	t.Helper()
	var seqs []uint64
	for _, line := range bytes.Split(bytes.TrimSuffix(data, []byte("\n")), []byte("\n")) {
		var r audit.Record
		if err := json.Unmarshal(line, &r); err != nil {
			t.Fatalf("line %q: %v", line, err)
		}
		seqs = append(seqs, r.Seq)
	}
	return fmt.Sprint(seqs)
}
