package sink

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/agentfence/agentfence/audit"
)

// Schema 2: a process's argv and ancestry go on the first record of it
// each sink takes, and again when they change; exec records always carry
// them; a sink that lost records gets them again.
func TestProcessDetailsOncePerSink(t *testing.T) {
	dir := t.TempDir()
	all, denials := filepath.Join(dir, "all.jsonl"), filepath.Join(dir, "denials.jsonl")
	p, err := New(Options{StateDir: filepath.Join(dir, "state"), Logger: quietLogger()}, []audit.SinkConfig{
		{Name: "all", Type: audit.SinkFile, File: &audit.FileConfig{Path: all}},
		{Name: "denials", Type: audit.SinkFile, File: &audit.FileConfig{Path: denials}, Filter: &audit.FilterConfig{DenialsOnly: true}},
	})
	if err != nil {
		t.Fatal(err)
	}
	agent, other := []string{"python3", "agent.py"}, []string{"curl", "-s", "http://127.0.0.1:9/"}
	rec := func(kind, verdict string, pid uint32, argv []string) audit.Record {
		r := audit.Record{Time: time.Now().UTC(), Kind: kind, Session: &audit.Session{ID: "s-1", Intent: "test"},
			Process: &audit.Process{PID: pid, Comm: argv[0], Exe: "/usr/bin/" + argv[0], Argv: argv, Ancestry: []string{"/usr/bin/bash"}}}
		if kind != audit.KindExec {
			r.Outcome = &audit.Outcome{Verdict: verdict}
		}
		return r
	}
	const allowed, denied = audit.VerdictAllowed, audit.VerdictDenied
	steps := []struct {
		r    audit.Record
		full bool // argv and ancestry on the line
	}{
		{rec(audit.KindConnect, allowed, 10, agent), true}, // all has not had pid 10
		{rec(audit.KindConnect, allowed, 10, agent), false},
		{rec(audit.KindSendmsg, denied, 10, agent), true}, // denials has not
		{rec(audit.KindConnect, denied, 10, agent), false},
		{rec(audit.KindExec, "", 10, other), true},          // always
		{rec(audit.KindConnect, allowed, 10, other), false}, // the exec had them
		{rec(audit.KindConnect, allowed, 10, other), false},
		{rec(audit.KindConnect, allowed, 11, agent), true}, // another process
		{rec(audit.KindConnect, denied, 10, other), true},  // denials had agent's
	}
	for _, s := range steps {
		r := s.r
		p.Emit(r)
		if !slices.Equal(r.Process.Argv, s.r.Process.Argv) || len(r.Process.Ancestry) != 1 {
			t.Fatalf("the emitter's process was changed: %+v", r.Process)
		}
	}
	// The denials sink lost records: what it gets next has the details.
	// (What the writer does when it drops records, droppedRange, checked
	// below once the writer is gone.)
	p.sinks[1].described.forget.Store(true)
	steps = append(steps, struct {
		r    audit.Record
		full bool
	}{rec(audit.KindConnect, denied, 10, other), true})
	p.Emit(steps[len(steps)-1].r)
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if p.sinks[0].droppedRange(1, 1, 1); !p.sinks[0].described.forget.Load() {
		t.Error("a sink that dropped records still counts on the details it had")
	}

	var wantAll, wantDenials []bool
	for _, s := range steps {
		wantAll = append(wantAll, s.full)
		if s.r.Outcome != nil && s.r.Outcome.Verdict == denied {
			wantDenials = append(wantDenials, s.full)
		}
	}
	check := func(path string, want []bool) {
		t.Helper()
		data, _ := os.ReadFile(path)
		var got []bool
		for _, l := range bytes.Split(bytes.TrimSpace(data), []byte("\n")) {
			var r audit.Record
			if err := json.Unmarshal(l, &r); err != nil {
				t.Fatal(err)
			}
			if r.Kind == audit.KindGap {
				continue
			}
			if r.Schema != "2" {
				t.Errorf("schema %q", r.Schema)
			}
			if (len(r.Process.Argv) > 0) != (len(r.Process.Ancestry) > 0) {
				t.Errorf("seq %d: argv %q and ancestry %q not together", r.Seq, r.Process.Argv, r.Process.Ancestry)
			}
			got = append(got, len(r.Process.Argv) > 0)
		}
		if !slices.Equal(got, want) {
			t.Errorf("%s: details on records %v, want %v", filepath.Base(path), got, want)
		}
	}
	check(all, wantAll)
	check(denials, wantDenials)
}
