package httpwire

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
)

// chunk is one captured TLS call.
type chunk struct {
	dir  Direction
	data []byte
	n    int
	at   time.Time
}

var t0 = time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)

// recorder captures a client connection's plaintext as the probes would:
// each Write is a Sent chunk, recorded before the bytes leave so that the
// response can never be recorded first, and each Read a Received chunk.
type recorder struct {
	mu     sync.Mutex
	chunks []chunk
}

func (r *recorder) add(dir Direction, p []byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	at := t0.Add(time.Duration(len(r.chunks)) * time.Millisecond)
	r.chunks = append(r.chunks, chunk{dir: dir, data: append([]byte(nil), p...), n: len(p), at: at})
}

type recConn struct {
	net.Conn
	r *recorder
}

func (c *recConn) Write(p []byte) (int, error) {
	c.r.add(Sent, p)
	return c.Conn.Write(p)
}

func (c *recConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		c.r.add(Received, p[:n])
	}
	return n, err
}

// seen is what a test handler observed of one request.
type seen struct {
	method, host, path string
	status             int
	reqBytes, respSize int64
	auth               string
}

type handlerLog struct {
	mu   sync.Mutex
	reqs []seen
}

func (l *handlerLog) add(s seen) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.reqs = append(l.reqs, s)
}

// testHandler serves the paths the capture tests use, logging what it saw.
func testHandler(log *handlerLog) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, _ := io.Copy(io.Discard, r.Body)
		s := seen{method: r.Method, host: r.Host, path: r.URL.Path, reqBytes: n, status: 200, auth: r.Header.Get("Authorization")}
		switch {
		case strings.HasPrefix(r.URL.Path, "/chunked"):
			for range 3 {
				w.Write(make([]byte, 3333))
				w.(http.Flusher).Flush()
			}
			s.respSize = 3 * 3333
		case strings.HasPrefix(r.URL.Path, "/big"):
			w.Write(make([]byte, 1<<20))
			s.respSize = 1 << 20
		case r.URL.Path == "/nocontent":
			s.status = 204
			w.WriteHeader(204)
		case r.Method == http.MethodHead:
			w.Header().Set("Content-Length", "1234")
		case r.Method == http.MethodPost:
			s.status = 201
			w.WriteHeader(201)
			w.Write([]byte("created"))
			s.respSize = 7
		default:
			w.Write([]byte("hello"))
			s.respSize = 5
		}
		log.add(s)
	})
}

type request struct {
	method, path string
	body         io.Reader
	size         int64 // -1: chunked
	header       http.Header
}

func (q request) do(t testing.TB, client *http.Client, base string) {
	req, err := http.NewRequest(q.method, base+q.path, q.body)
	if err != nil {
		t.Fatal(err)
	}
	req.ContentLength = q.size
	for k, v := range q.header {
		req.Header[k] = v
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
}

// captureExchange runs requests through a real net/http client and server
// over loopback and returns the client connection's chunks and what the
// server saw. h2 selects unencrypted HTTP/2 with prior knowledge. Requests in
// one group run concurrently; groups run in order.
func captureExchange(t testing.TB, h2 bool, groups ...[]request) ([]chunk, []seen) {
	t.Helper()
	log := &handlerLog{}
	srv := httptest.NewUnstartedServer(testHandler(log))
	var protos http.Protocols
	if h2 {
		protos.SetUnencryptedHTTP2(true)
	} else {
		protos.SetHTTP1(true)
	}
	srv.Config.Protocols = &protos
	srv.Start()
	defer srv.Close()

	rec := &recorder{}
	tr := &http.Transport{
		Protocols:             &protos,
		MaxConnsPerHost:       1,
		DisableCompression:    true,
		ExpectContinueTimeout: 5 * time.Second,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			return &recConn{Conn: c, r: rec}, nil
		},
	}
	client := &http.Client{Transport: tr}
	for _, g := range groups {
		var wg sync.WaitGroup
		for _, q := range g {
			wg.Go(func() { q.do(t, client, srv.URL) })
		}
		wg.Wait()
	}
	tr.CloseIdleConnections()
	rec.mu.Lock()
	defer rec.mu.Unlock()
	return rec.chunks, log.reqs
}

// run feeds chunks to a new Conn and closes it.
func run(opts *Options, chunks []chunk) (*Conn, []Call) {
	c := NewConn(opts, false)
	var calls []Call
	for _, ch := range chunks {
		calls = append(calls, c.Feed(ch.dir, ch.data, ch.n, ch.at)...)
	}
	return c, append(calls, c.Close(t0.Add(time.Hour))...)
}

func testFingerprint(secret string) string {
	sum := sha256.Sum256([]byte(secret))
	return "fp-" + hex.EncodeToString(sum[:8])
}

var testOpts = &Options{
	Fingerprint: testFingerprint,
	HashQuery:   func(q string) string { return "q-" + testFingerprint(q) },
}

// checkAgainst compares calls with what the server saw, matched by path.
func checkAgainst(t *testing.T, calls []Call, saw []seen, version string) {
	t.Helper()
	if len(calls) != len(saw) {
		t.Fatalf("%d calls, server saw %d requests:\n%+v", len(calls), len(saw), calls)
	}
	byPath := map[string]seen{}
	for _, s := range saw {
		byPath[s.method+" "+s.path] = s
	}
	for _, c := range calls {
		s, ok := byPath[c.Method+" "+c.Path]
		if !ok {
			t.Errorf("call %s %s not seen by the server", c.Method, c.Path)
			continue
		}
		want := fmt.Sprintf("%s %s %s %d req=%d resp=%d", s.method, s.host, s.path, s.status, s.reqBytes, s.respSize)
		got := fmt.Sprintf("%s %s %s %d req=%d resp=%d", c.Method, c.Host, c.Path, c.Status, c.RequestBytes, c.ResponseBytes)
		if got != want {
			t.Errorf("call %s\n  got  %s\n  want %s", c.Path, got, want)
		}
		if c.Version != version || c.Partial || !c.End.After(c.Start) {
			t.Errorf("call %s: version %q partial %v start %v end %v", c.Path, c.Version, c.Partial, c.Start, c.End)
		}
	}
}

func sortedByStream(calls []Call) []Call {
	sort.Slice(calls, func(i, j int) bool { return calls[i].StreamID < calls[j].StreamID })
	return calls
}
