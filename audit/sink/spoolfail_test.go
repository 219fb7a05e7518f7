package sink

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/agentfence/agentfence/audit"
	"github.com/agentfence/agentfence/internal/fsizelimit"
)

// A spool write that fails (a full disk, here the file size limit) loses
// that write's records, and only those: after records that were written
// fine, the loss counted and the gap record name exactly the failed ones.
func TestSpoolWriteFailureCountsItsOwnRecords(t *testing.T) {
	dir, child := fsizelimit.Child(t)
	if !child {
		return
	}
	// stdout: a sink that always goes through its spool.
	out, err := os.Create(filepath.Join(dir, "stdout.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	reg := prometheus.NewRegistry()
	p, err := New(Options{StateDir: filepath.Join(dir, "state"), Host: "node-1", Stdout: out, Registerer: reg,
		Logger: quietLogger()}, []audit.SinkConfig{{Name: "s", Type: audit.SinkStdout}})
	if err != nil {
		t.Fatal(err)
	}
	s := p.sinks[0]
	for i := range 5 {
		p.Emit(testRecord(i))
	}
	eventually(t, 10*time.Second, "five records delivered", func() bool {
		return metric(t, reg, "agentfence_sink_records_delivered_total", "s") == 5
	})

	restore := fsizelimit.Set(t, s.spool.Used()+20)
	for i := 5; i < 8; i++ {
		p.Emit(testRecord(i))
	}
	eventually(t, 10*time.Second, "the failed records counted", func() bool {
		return metric(t, reg, "agentfence_sink_records_dropped_total", "s") >= 3
	})
	restore()
	p.Emit(testRecord(8))
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}

	if n := metric(t, reg, "agentfence_sink_records_dropped_total", "s"); n != 3 {
		t.Errorf("dropped = %v, want 3", n)
	}
	data, _ := os.ReadFile(out.Name())
	var gaps []audit.Gap
	var seqs []uint64
	for _, line := range bytes.Split(bytes.TrimSuffix(data, []byte("\n")), []byte("\n")) {
		var r audit.Record
		if err := json.Unmarshal(line, &r); err != nil {
			t.Fatalf("line %q: %v", line, err)
		}
		if r.Gap != nil {
			gaps = append(gaps, *r.Gap)
		}
		if r.Seq > 0 {
			seqs = append(seqs, r.Seq)
		}
	}
	if len(gaps) != 1 || gaps[0].Count != 3 || gaps[0].FirstSeq != 6 || gaps[0].LastSeq != 8 {
		t.Errorf("gap records %+v, want one of 3 records, seq 6 to 8", gaps)
	}
	if len(seqs) != 6 || seqs[5] != 9 {
		t.Errorf("records delivered: seqs %v, want 1 to 5 and 9", seqs)
	}
}
