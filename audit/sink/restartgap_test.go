package sink

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/agentfence/agentfence/audit"
)

// Records stamped before the last checkpoint but never spooled died with
// the previous process: the next start reports them as a gap record, and
// the chain goes on after them, so verify sees an explained jump.
func TestRestartReportsRecordsLostInMemory(t *testing.T) {
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	os.MkdirAll(state, 0o700)
	out := filepath.Join(dir, "audit.jsonl")
	sinks := []audit.SinkConfig{{Name: "f", Type: "file", File: &audit.FileConfig{Path: out}}}

	// A first life: 5 records reach the file and the checkpoint.
	p, err := New(Options{StateDir: state, Host: "h"}, sinks)
	if err != nil {
		t.Fatal(err)
	}
	for range 5 {
		p.Emit(audit.Record{Kind: audit.KindSession, Event: "opened"})
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	// The process then stamped 7 more and died before spooling them.
	st := p.Chain()
	b, _ := json.Marshal(map[string]any{"seq": st.Seq + 7, "hash": strings.Repeat("ab", 32), "spooled": st.Seq})
	if err := os.WriteFile(filepath.Join(state, "chain.json"), b, 0o600); err != nil {
		t.Fatal(err)
	}

	p, err = New(Options{StateDir: state, Host: "h"}, sinks)
	if err != nil {
		t.Fatal(err)
	}
	// The gap record stands for the lost records from the start: a second
	// crash before the first checkpoint must not report them again.
	var cs struct{ Seq, Spooled uint64 }
	if b, err := os.ReadFile(filepath.Join(state, "chain.json")); err != nil || json.Unmarshal(b, &cs) != nil ||
		cs.Seq != st.Seq+7 || cs.Spooled != st.Seq+7 {
		t.Errorf("chain state right after the restart: %s (%v), want seq and spooled %d", b, err, st.Seq+7)
	}
	p.Emit(audit.Record{Kind: audit.KindSession, Event: "closed"})
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(out)
	var gap *audit.Gap
	var lastSeq uint64
	for _, line := range bytes.Split(bytes.TrimSpace(data), []byte("\n")) {
		var r audit.Record
		if err := json.Unmarshal(line, &r); err != nil {
			t.Fatal(err)
		}
		if r.Kind == audit.KindGap {
			gap = r.Gap
		}
		lastSeq = max(lastSeq, r.Seq)
	}
	if gap == nil || gap.Source != "restart" || gap.Count != 7 || gap.FirstSeq != st.Seq+1 || gap.LastSeq != st.Seq+7 {
		t.Fatalf("gap record %+v, want 7 records %d..%d from restart", gap, st.Seq+1, st.Seq+7)
	}
	if lastSeq != st.Seq+8 {
		t.Errorf("chain went on at %d, want %d", lastSeq, st.Seq+8)
	}
}
