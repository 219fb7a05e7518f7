package sink

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/agentfence/agentfence/audit"
	"github.com/prometheus/client_golang/prometheus"
)

func testRecord(i int) audit.Record {
	v := audit.VerdictAllowed
	if i%3 == 0 {
		v = audit.VerdictDenied
	}
	return audit.Record{
		Time: time.Date(2026, 3, 1, 12, 0, 0, i*1_000_000, time.UTC), Kind: audit.KindConnect,
		Session: &audit.Session{ID: fmt.Sprintf("ses_%d", i%7), Intent: "summarise <inbox> & reply"},
		Process: &audit.Process{PID: uint32(100 + i), UID: 1000, Comm: "python3", Argv: []string{"python3", "agent.py"}},
		Destination: &audit.Destination{IP: "203.0.113.7", Port: 443, Protocol: "tcp",
			Hostname: "api.example.com"},
		Outcome: &audit.Outcome{Verdict: v, Rule: "allow api.example.com:443", Reason: strings.Repeat("x", i%13)},
	}
}

// eventually polls cond until it holds or the deadline passes; it is the
// only waiting the tests do.
func eventually(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// hecReceiver is a Splunk HEC stand-in that checks the request shape and
// keeps every event payload (as the raw JSON of "event").
type hecReceiver struct {
	t        *testing.T
	token    string
	mu       sync.Mutex
	events   []json.RawMessage
	batches  []int
	gzipped  int
	problems []string
}

func (h *hecReceiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h.mu.Lock()
	defer h.mu.Unlock()
	bad := func(code int, format string, args ...any) {
		h.problems = append(h.problems, fmt.Sprintf(format, args...))
		http.Error(w, "bad", code)
	}
	if r.Method != http.MethodPost || r.URL.Path != "/services/collector/event" {
		bad(404, "wrong request %s %s", r.Method, r.URL.Path)
		return
	}
	if got := r.Header.Get("Authorization"); got != "Splunk "+h.token {
		bad(401, "wrong Authorization header")
		return
	}
	var body io.Reader = r.Body
	if r.Header.Get("Content-Encoding") == "gzip" {
		zr, err := gzip.NewReader(r.Body)
		if err != nil {
			bad(400, "gzip: %v", err)
			return
		}
		body = zr
		h.gzipped++
	}
	dec := json.NewDecoder(body)
	n := 0
	for {
		var ev struct {
			Time       string          `json:"time"`
			Sourcetype string          `json:"sourcetype"`
			Event      json.RawMessage `json:"event"`
		}
		if err := dec.Decode(&ev); err == io.EOF {
			break
		} else if err != nil {
			bad(400, "decode: %v", err)
			return
		}
		if ev.Time == "" || ev.Sourcetype == "" || len(ev.Event) == 0 {
			bad(400, "incomplete event envelope")
			return
		}
		h.events = append(h.events, ev.Event)
		n++
	}
	h.batches = append(h.batches, n)
	w.Write([]byte(`{"text":"Success","code":0}`))
}

// records decodes received payloads, dropping at-least-once duplicates
// (same seq) the way a receiver is told to.
func (h *hecReceiver) records() (recs []audit.Record, lines [][]byte) {
	h.mu.Lock()
	defer h.mu.Unlock()
	seen := map[uint64]bool{}
	for _, e := range h.events {
		var r audit.Record
		if err := json.Unmarshal(e, &r); err != nil {
			h.t.Errorf("payload not a record: %v", err)
			continue
		}
		if r.Seq != 0 && seen[r.Seq] {
			continue
		}
		seen[r.Seq] = true
		recs = append(recs, r)
		lines = append(lines, append([]byte(nil), e...))
	}
	return recs, lines
}

func (h *hecReceiver) count() int {
	recs, _ := h.records()
	return len(recs)
}

// server is an HTTP receiver that can be stopped and restarted on the same
// loopback address, to simulate an outage.
type server struct {
	addr string
	h    http.Handler
	srv  *http.Server
}

func startServer(t *testing.T, addr string, h http.Handler) *server {
	t.Helper()
	var ln net.Listener
	var err error
	// Rebinding a just-closed port can briefly fail; retry within a bound.
	eventually(t, 5*time.Second, "listen on "+addr, func() bool {
		ln, err = net.Listen("tcp", addr)
		return err == nil
	})
	s := &server{addr: ln.Addr().String(), h: h, srv: &http.Server{Handler: h}}
	go s.srv.Serve(ln)
	t.Cleanup(func() { s.srv.Close() })
	return s
}

func (s *server) stop() { s.srv.Close() }

func (s *server) restart(t *testing.T) *server { return startServer(t, s.addr, s.h) }

func verifyLines(t *testing.T, lines [][]byte) audit.Report {
	t.Helper()
	var b bytes.Buffer
	for _, l := range lines {
		b.Write(l)
		b.WriteByte('\n')
	}
	rep, err := audit.Verify(&b)
	if err != nil {
		t.Fatal(err)
	}
	if !rep.OK() {
		t.Fatalf("received stream does not verify: %v", rep.Problem)
	}
	return rep
}

func seqs(recs []audit.Record) []uint64 {
	var out []uint64
	for _, r := range recs {
		if r.Seq != 0 {
			out = append(out, r.Seq)
		}
	}
	return out
}

func assertInOrder(t *testing.T, recs []audit.Record, from, to uint64) {
	t.Helper()
	s := seqs(recs)
	if !sort.SliceIsSorted(s, func(i, j int) bool { return s[i] < s[j] }) {
		t.Fatalf("seqs out of order: %v", s)
	}
	if uint64(len(s)) != to-from+1 || s[0] != from || s[len(s)-1] != to {
		t.Fatalf("want seq %d..%d, got %v", from, to, s)
	}
}

func metric(t *testing.T, reg *prometheus.Registry, name, sinkName string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "sink" && l.GetValue() == sinkName {
					if m.Counter != nil {
						return m.Counter.GetValue()
					}
					return m.Gauge.GetValue()
				}
			}
		}
	}
	return -1
}

func newRegistry() *prometheus.Registry { return prometheus.NewRegistry() }

func shutdownNow(p *Pipeline) {
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	p.Shutdown(ctx)
}
