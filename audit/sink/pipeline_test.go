package sink

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/agentfence/agentfence/audit"
)

const testToken = "s3cr3t-hec-token"

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func hecSink(t *testing.T, url string, mut func(*audit.SinkConfig)) audit.SinkConfig {
	t.Helper()
	tok := filepath.Join(t.TempDir(), "token")
	os.WriteFile(tok, []byte(testToken+"\n"), 0o600)
	c := audit.SinkConfig{
		Name: "splunk", Type: audit.SinkHEC,
		HEC:   &audit.HECConfig{URL: url, TokenFile: tok, BatchSize: 10, FlushInterval: "20ms", Gzip: true},
		Retry: &audit.RetryConfig{InitialBackoff: "10ms", MaxBackoff: "100ms"},
	}
	if mut != nil {
		mut(&c)
	}
	return c
}

func newPipeline(t *testing.T, stateDir string, reg *prometheus.Registry, sinks ...audit.SinkConfig) *Pipeline {
	t.Helper()
	var r prometheus.Registerer
	if reg != nil {
		r = reg // a typed nil would not compare equal to nil inside New
	}
	p, err := New(Options{StateDir: stateDir, Host: "node-1", ProductVersion: "test", Registerer: r, Logger: quietLogger()}, sinks)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestHECBatchingGzipAuth(t *testing.T) {
	rcv := &hecReceiver{t: t, token: testToken}
	srv := startServer(t, "127.0.0.1:0", rcv)
	reg := prometheus.NewRegistry()
	p := newPipeline(t, t.TempDir(), reg, hecSink(t, "http://"+srv.addr, nil))
	const n = 45
	for i := range n {
		p.Emit(testRecord(i))
	}
	eventually(t, 10*time.Second, "45 records at HEC", func() bool { return rcv.count() >= n })
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	recs, lines := rcv.records()
	assertInOrder(t, recs, 1, n)
	verifyLines(t, lines) // json payloads are the canonical lines
	rcv.mu.Lock()
	defer rcv.mu.Unlock()
	if len(rcv.problems) > 0 {
		t.Fatalf("receiver saw bad requests: %v", rcv.problems)
	}
	for _, b := range rcv.batches {
		if b > 10 {
			t.Fatalf("batch of %d exceeds batch_size 10", b)
		}
	}
	if len(rcv.batches) >= n || rcv.gzipped != len(rcv.batches) {
		t.Fatalf("batches %v, gzipped %d", rcv.batches, rcv.gzipped)
	}
	if got := metric(t, reg, "agentfence_sink_records_delivered_total", "splunk"); got != n {
		t.Fatalf("delivered metric %v", got)
	}
	if got := metric(t, reg, "agentfence_sink_records_queued", "splunk"); got != 0 {
		t.Fatalf("queued metric %v", got)
	}
}

func TestHECWrongTokenIsRetriedAndNeverLeaked(t *testing.T) {
	rcv := &hecReceiver{t: t, token: "other"}
	srv := startServer(t, "127.0.0.1:0", rcv)
	reg := prometheus.NewRegistry()
	var logs strings.Builder
	var mu sync.Mutex
	p, err := New(Options{StateDir: t.TempDir(), Registerer: reg,
		Logger: slog.New(slog.NewTextHandler(writerFunc(func(b []byte) (int, error) {
			mu.Lock()
			defer mu.Unlock()
			return logs.Write(b)
		}), nil))}, []audit.SinkConfig{hecSink(t, "http://"+srv.addr, nil)})
	if err != nil {
		t.Fatal(err)
	}
	p.Emit(testRecord(1))
	eventually(t, 10*time.Second, "retries", func() bool {
		return metric(t, reg, "agentfence_sink_records_retried_total", "splunk") >= 2
	})
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	p.Shutdown(ctx)
	mu.Lock()
	defer mu.Unlock()
	if strings.Contains(logs.String(), testToken) {
		t.Fatal("token leaked into logs")
	}
	if !strings.Contains(logs.String(), "HTTP 401") {
		t.Fatalf("failure not logged: %s", logs.String())
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(b []byte) (int, error) { return f(b) }

// TestOutageDeliversEverythingInOrder stops the receiver, produces records,
// restarts it and expects all of them, in order.
func TestOutageDeliversEverythingInOrder(t *testing.T) {
	rcv := &hecReceiver{t: t, token: testToken}
	srv := startServer(t, "127.0.0.1:0", rcv)
	reg := prometheus.NewRegistry()
	p := newPipeline(t, t.TempDir(), reg, hecSink(t, "http://"+srv.addr, nil))
	defer p.Close()
	p.Emit(testRecord(0))
	eventually(t, 10*time.Second, "first record", func() bool { return rcv.count() == 1 })

	srv.stop()
	const n = 60
	for i := 1; i <= n; i++ {
		p.Emit(testRecord(i))
	}
	eventually(t, 10*time.Second, "failed attempts", func() bool {
		return metric(t, reg, "agentfence_sink_records_retried_total", "splunk") > 0
	})
	if q := metric(t, reg, "agentfence_sink_records_queued", "splunk"); q != n {
		t.Fatalf("queued during outage = %v, want %d", q, n)
	}
	held := metric(t, reg, "agentfence_sink_spool_bytes", "splunk")
	if max := metric(t, reg, "agentfence_sink_spool_max_bytes", "splunk"); held < n*100 || max != audit.DefaultSpoolMaxBytes {
		t.Fatalf("spool during outage: %v bytes of %v, want %d records' worth of %d", held, max, n, audit.DefaultSpoolMaxBytes)
	}
	srv.restart(t)
	eventually(t, 15*time.Second, "all records after restart", func() bool { return rcv.count() == n+1 })
	recs, lines := rcv.records()
	assertInOrder(t, recs, 1, n+1)
	verifyLines(t, lines)
}

// TestPipelineRestartMidOutageLosesNothing closes the pipeline while the
// receiver is down, starts a new one on the same state directory, and
// expects the spooled records and the new ones, with an unbroken chain.
func TestPipelineRestartMidOutageLosesNothing(t *testing.T) {
	rcv := &hecReceiver{t: t, token: testToken}
	srv := startServer(t, "127.0.0.1:0", rcv)
	addr := srv.addr
	srv.stop()
	state := t.TempDir()
	cfg := hecSink(t, "http://"+addr, nil)

	p1 := newPipeline(t, state, nil, cfg)
	for i := range 30 {
		p1.Emit(testRecord(i))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	p1.Shutdown(ctx) // receiver down: records stay spooled
	cancel()

	p2 := newPipeline(t, state, nil, cfg)
	defer p2.Close()
	for i := 30; i < 40; i++ {
		p2.Emit(testRecord(i))
	}
	if st := p2.Chain(); st.Seq != 40 {
		t.Fatalf("chain did not resume: %+v", st)
	}
	srv.restart(t)
	eventually(t, 15*time.Second, "40 records", func() bool { return rcv.count() == 40 })
	recs, lines := rcv.records()
	assertInOrder(t, recs, 1, 40)
	verifyLines(t, lines)
}

// TestSpoolOverflowProducesGapRecord fills a small spool while the
// receiver is down and expects an explicit gap record for the loss.
func TestSpoolOverflowProducesGapRecord(t *testing.T) {
	rcv := &hecReceiver{t: t, token: testToken}
	srv := startServer(t, "127.0.0.1:0", rcv)
	srv.stop()
	reg := prometheus.NewRegistry()
	cfg := hecSink(t, "http://"+srv.addr, func(c *audit.SinkConfig) {
		c.Spool = &audit.SpoolConfig{MaxBytes: 64 << 10}
	})
	p := newPipeline(t, t.TempDir(), reg, cfg)
	defer p.Close()
	const n = 400
	for i := range n {
		p.Emit(testRecord(i))
	}
	eventually(t, 10*time.Second, "drops counted", func() bool {
		return metric(t, reg, "agentfence_sink_records_dropped_total", "splunk") > 0
	})
	srv.restart(t)
	var gap *audit.Gap
	eventually(t, 20*time.Second, "gap record delivered", func() bool {
		recs, _ := rcv.records()
		for _, r := range recs {
			if r.Kind == audit.KindGap {
				gap = r.Gap
				return true
			}
		}
		return false
	})
	// Records after the overflow still flow and the stream verifies with
	// the loss explained.
	p.Emit(testRecord(n))
	eventually(t, 10*time.Second, "record after overflow", func() bool {
		recs, _ := rcv.records()
		return len(recs) > 0 && recs[len(recs)-1].Seq == n+1
	})
	dropped := metric(t, reg, "agentfence_sink_records_dropped_total", "splunk")
	if gap.Source != "spool:splunk" || float64(gap.Count) != dropped || gap.LastSeq-gap.FirstSeq+1 != gap.Count {
		t.Fatalf("gap %+v, dropped metric %v", gap, dropped)
	}
	recs, lines := rcv.records()
	rep := verifyLines(t, lines)
	if len(rep.Gaps) != 1 || rep.Records+int(gap.Count) != n+1 {
		t.Fatalf("report %+v; %d records received", rep, len(recs))
	}
}

func TestWebhookOCSFAndFileRotation(t *testing.T) {
	var mu sync.Mutex
	var got []map[string]any
	var auth string
	srv := startServer(t, "127.0.0.1:0", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var batch []map[string]any
		if err := json.NewDecoder(r.Body).Decode(&batch); err != nil {
			http.Error(w, err.Error(), 400)
			return
		}
		mu.Lock()
		got = append(got, batch...)
		auth = r.Header.Get("Authorization")
		mu.Unlock()
	}))
	dir := t.TempDir()
	hdr := filepath.Join(dir, "auth")
	os.WriteFile(hdr, []byte("Bearer abc\n"), 0o600)
	logPath := filepath.Join(dir, "out", "audit.jsonl")
	p := newPipeline(t, filepath.Join(dir, "state"), nil,
		audit.SinkConfig{Name: "hook", Type: audit.SinkWebhook, Format: audit.FormatOCSF,
			Filter:  &audit.FilterConfig{DenialsOnly: true},
			Webhook: &audit.WebhookConfig{URL: "http://" + srv.addr + "/ingest", HeaderFiles: map[string]string{"Authorization": hdr}, FlushInterval: "10ms"}},
		audit.SinkConfig{Name: "local", Type: audit.SinkFile,
			File: &audit.FileConfig{Path: logPath, MaxSizeMB: 1, MaxFiles: 2}},
	)
	const n = 30
	for i := range n {
		p.Emit(testRecord(i))
	}
	eventually(t, 10*time.Second, "denials at webhook", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(got) == n/3
	})
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if auth != "Bearer abc" {
		t.Fatalf("header file not applied: %q", auth)
	}
	for _, ev := range got {
		if ev["class_uid"] != float64(4001) || ev["action_id"] != float64(2) {
			t.Fatalf("unexpected OCSF event %v", ev)
		}
	}
	f, err := os.Open(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rep, err := audit.Verify(f)
	if err != nil || !rep.OK() || rep.Records != n {
		t.Fatalf("file sink: %+v %v", rep, err)
	}
}

func TestFileRotation(t *testing.T) {
	dir := t.TempDir()
	ft, err := newFileTransport(filepath.Join(dir, "a.log"), 1000, 2, quietLogger(), newMetrics(nil).forSink("a"))
	if err != nil {
		t.Fatal(err)
	}
	line := []byte(strings.Repeat("y", 99))
	for range 50 { // 5000 bytes: 5 files' worth, 3 kept
		if err := ft.Send(context.Background(), []message{{payload: line}}); err != nil {
			t.Fatal(err)
		}
	}
	ft.Close()
	for _, name := range []string{"a.log", "a.log.1", "a.log.2"} {
		st, err := os.Stat(filepath.Join(dir, name))
		if err != nil || st.Size() > 1000 || st.Size()%100 != 0 {
			t.Fatalf("%s: %v %v", name, st, err)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "a.log.3")); err == nil {
		t.Fatal("max_files not enforced")
	}
}

// The header decoded for the transports is the record's own.
func TestDecodeHeader(t *testing.T) {
	for _, rec := range []audit.Record{
		{Time: time.Date(2026, 11, 27, 15, 4, 5, 123456000, time.UTC), Kind: audit.KindConnect, Host: "node-1",
			Outcome: &audit.Outcome{Verdict: audit.VerdictDenied, Rule: "10.0.0.0/8"}, Session: &audit.Session{ID: "s-1"}},
		{Time: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), Kind: audit.KindGap},
	} {
		line, err := json.Marshal(rec)
		if err != nil {
			t.Fatal(err)
		}
		var got audit.Record
		if err := decodeHeader(line, &got); err != nil {
			t.Fatal(err)
		}
		if !got.Time.Equal(rec.Time) || got.Kind != rec.Kind || got.Host != rec.Host || severity(&got) != severity(&rec) ||
			(rec.Outcome != nil && (got.Outcome == nil || got.Outcome.Verdict != rec.Outcome.Verdict)) {
			t.Errorf("header of %s = %+v", line, got)
		}
	}
	if err := decodeHeader([]byte("{not json"), new(audit.Record)); err == nil {
		t.Error("a broken line decoded")
	}
}

// Records emitted in a burst (EmitBatched) reach the sinks when the burst
// ends (Flush), once wakeBatch of them wait, or at the next checkpoint,
// whichever comes first; in the order they were stamped, Emit's among
// them.
func TestEmitBatched(t *testing.T) {
	for _, c := range []struct {
		name       string
		n          int
		flush      bool
		checkpoint time.Duration
	}{
		{"flush", 10, true, time.Hour},
		{"full_batch", wakeBatch, false, time.Hour},
		{"checkpoint", 10, false, 20 * time.Millisecond},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			out := filepath.Join(dir, "audit.jsonl")
			p, err := New(Options{StateDir: filepath.Join(dir, "state"), Logger: quietLogger(),
				CheckpointInterval: c.checkpoint}, []audit.SinkConfig{{Name: "f", Type: audit.SinkFile, File: &audit.FileConfig{Path: out}}})
			if err != nil {
				t.Fatal(err)
			}
			defer p.Close()
			// One record emitted on its own first: the writer is idle, then
			// woken only by what the case tests.
			p.Emit(testRecord(0))
			eventually(t, 10*time.Second, "the single record", func() bool { return lines(out) == 1 })
			for i := 1; i <= c.n; i++ {
				p.EmitBatched(testRecord(i))
			}
			if c.flush {
				p.Flush()
			}
			eventually(t, 10*time.Second, "the batch", func() bool { return lines(out) == c.n+1 })
			p.Emit(testRecord(c.n + 1))
			eventually(t, 10*time.Second, "a record after the batch", func() bool { return lines(out) == c.n+2 })
			data, _ := os.ReadFile(out)
			var seqs []uint64
			for _, l := range bytes.Split(bytes.TrimSpace(data), []byte("\n")) {
				var r audit.Record
				if err := json.Unmarshal(l, &r); err != nil {
					t.Fatal(err)
				}
				seqs = append(seqs, r.Seq)
			}
			for i, s := range seqs {
				if i > 0 && s != seqs[i-1]+1 {
					t.Fatalf("seqs %v: not in the order stamped", seqs)
				}
			}
		})
	}
}

func lines(path string) int {
	data, _ := os.ReadFile(path)
	return bytes.Count(data, []byte("\n"))
}

// An idle pipeline stops its checkpoint ticks once the chain state is
// written, and a record EmitBatched queues then still reaches the sink
// without a Flush: it wakes the writer itself.
func TestIdleWriterStopsTicking(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "audit.jsonl")
	p, err := New(Options{StateDir: filepath.Join(dir, "state"), Logger: quietLogger(),
		CheckpointInterval: 20 * time.Millisecond}, []audit.SinkConfig{{Name: "f", Type: audit.SinkFile, File: &audit.FileConfig{Path: out}}})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	for round := 1; round <= 3; round++ {
		p.EmitBatched(testRecord(round)) // no Flush, as a burst that never ends
		eventually(t, 10*time.Second, "the record", func() bool { return lines(out) == round })
		eventually(t, 10*time.Second, "the ticks to stop", func() bool { return !p.ticking.Load() })
		var st audit.ChainState
		b, _ := os.ReadFile(filepath.Join(dir, "state", "chain.json"))
		if err := json.Unmarshal(b, &st); err != nil || st.Seq != uint64(round) {
			t.Fatalf("round %d: chain state %s (%v) when the ticks stopped", round, b, err)
		}
	}
}
