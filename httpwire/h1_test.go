package httpwire

import (
	"bytes"
	"io"
	"net/http"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"
)

func h1Requests() [][]request {
	auth := http.Header{"Authorization": {"Bearer h1-secret-token"}}
	cont := http.Header{"Expect": {"100-continue"}}
	return [][]request{
		{{method: "GET", path: "/a?x=1", header: auth}},
		{{method: "GET", path: "/chunked"}},
		{{method: "HEAD", path: "/head"}},
		{{method: "GET", path: "/nocontent"}},
		{{method: "POST", path: "/upload", body: bytes.NewReader(make([]byte, 20000)), size: 20000}},
		{{method: "POST", path: "/continue", body: bytes.NewReader(make([]byte, 3000)), size: 3000, header: cont}},
		{{method: "POST", path: "/chunkedreq", body: io.MultiReader(bytes.NewReader(make([]byte, 7000))), size: -1}},
		{{method: "GET", path: "/last"}},
	}
}

func TestH1Capture(t *testing.T) {
	chunks, saw := captureExchange(t, false, h1Requests()...)
	c, calls := run(testOpts, chunks)
	if c.Protocol() != ProtoHTTP1 {
		t.Fatalf("protocol %q", c.Protocol())
	}
	checkAgainst(t, calls, saw, "1.1")
	if len(calls) > 0 {
		first := calls[0]
		if first.Query != "q-"+testFingerprint("x=1") {
			t.Errorf("query %q", first.Query)
		}
		want := []Credential{{Type: CredentialBearer, Header: "authorization", Fingerprint: testFingerprint("h1-secret-token")}}
		if !reflect.DeepEqual(first.Credentials, want) {
			t.Errorf("credentials %+v", first.Credentials)
		}
	}
	// The capture really was one keep-alive connection.
	if n := bytes.Count(sentBytes(chunks), []byte(" HTTP/1.1\r\n")); n != len(saw) {
		t.Errorf("%d requests on the connection, %d served", n, len(saw))
	}
}

func sentBytes(chunks []chunk) []byte {
	var b []byte
	for _, ch := range chunks {
		if ch.dir == Sent {
			b = append(b, ch.data...)
		}
	}
	return b
}

// rechunk splits chunk i at k.
func rechunk(chunks []chunk, i, k int) []chunk {
	out := append([]chunk(nil), chunks[:i]...)
	ch := chunks[i]
	out = append(out, chunk{ch.dir, ch.data[:k], k, ch.at}, chunk{ch.dir, ch.data[k:], len(ch.data) - k, ch.at})
	return append(out, chunks[i+1:]...)
}

func byteByByte(chunks []chunk) []chunk {
	var out []chunk
	for _, ch := range chunks {
		for i := range ch.data {
			out = append(out, chunk{ch.dir, ch.data[i : i+1], 1, ch.at})
		}
	}
	return out
}

// checkSplits asserts that re-chunking the capture anywhere changes nothing:
// byte by byte, and split in two at every point of every chunk (sampled in
// chunks larger than 2 KiB, which are body).
func checkSplits(t *testing.T, chunks []chunk) {
	_, want := run(testOpts, chunks)
	if _, got := run(testOpts, byteByByte(chunks)); !reflect.DeepEqual(got, want) {
		t.Fatalf("byte by byte:\n got %+v\nwant %+v", got, want)
	}
	for i, ch := range chunks {
		step := 1
		if len(ch.data) > 2048 {
			step = len(ch.data)/64 + 1
		}
		for k := 1; k < len(ch.data); k += step {
			if _, got := run(testOpts, rechunk(chunks, i, k)); !reflect.DeepEqual(got, want) {
				t.Fatalf("chunk %d split at %d:\n got %+v\nwant %+v", i, k, got, want)
			}
		}
	}
}

func TestH1Splits(t *testing.T) {
	chunks, _ := captureExchange(t, false, h1Requests()...)
	checkSplits(t, chunks)
}

// truncate cuts every chunk's captured data to limit bytes, as the probe's
// per-call capture size does.
func truncate(chunks []chunk, limit int) ([]chunk, int) {
	out := make([]chunk, len(chunks))
	cut := 0
	for i, ch := range chunks {
		out[i] = ch
		if len(ch.data) > limit {
			out[i].data = ch.data[:limit]
			cut++
		}
	}
	return out, cut
}

func TestH1MissingBodyBytes(t *testing.T) {
	chunks, saw := captureExchange(t, false, h1Requests()...)
	short, cut := truncate(chunks, 8192)
	if cut == 0 {
		t.Fatal("no chunk was larger than the capture limit; the test proves nothing")
	}
	_, calls := run(testOpts, short)
	checkAgainst(t, calls, saw, "1.1")
}

func TestH1MissingHeaderBytes(t *testing.T) {
	req := "GET /x HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer abc\r\n\r\n"
	c := NewConn(testOpts, false)
	calls := c.Feed(Sent, []byte(req[:20]), len(req), t0)
	if len(calls) != 1 || !calls[0].Partial || calls[0].Method != "GET" || calls[0].Path != "/x" {
		t.Fatalf("calls %+v", calls)
	}
	if c.Protocol() != ProtoHTTP1 || c.buffered() != 0 {
		t.Errorf("protocol %q buffered %d", c.Protocol(), c.buffered())
	}
	if calls := c.Feed(Received, []byte("HTTP/1.1 200 OK\r\n\r\n"), 19, t0); calls != nil {
		t.Errorf("parsed after losing sync: %+v", calls)
	}
	if calls := c.Close(t0); calls != nil {
		t.Errorf("close: %+v", calls)
	}
}

// feedAll feeds alternating Sent and Received strings, one chunk each.
func feedAll(c *Conn, parts ...string) []Call {
	var calls []Call
	for i, p := range parts {
		dir := Sent
		if i%2 == 1 {
			dir = Received
		}
		calls = append(calls, c.Feed(dir, []byte(p), len(p), t0.Add(time.Duration(i)*time.Second))...)
	}
	return calls
}

func TestH1Pipelining(t *testing.T) {
	c := NewConn(testOpts, false)
	calls := feedAll(c,
		"GET /1 HTTP/1.1\r\nHost: h\r\n\r\nHEAD /2 HTTP/1.1\r\nHost: h\r\n\r\nPOST /3 HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n\r\nabcd",
		"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\nHTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 500 No\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX: y\r\n\r\n",
	)
	got := ""
	for _, k := range calls {
		got += k.Method + " " + k.Path + " " + http.StatusText(k.Status) + " " + itoa(k.RequestBytes) + "/" + itoa(k.ResponseBytes) + ";"
	}
	if want := "GET /1 OK 0/2;HEAD /2 OK 0/0;POST /3 Internal Server Error 4/3;"; got != want {
		t.Errorf("got %s\nwant %s", got, want)
	}
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

func TestH1UntilClose(t *testing.T) {
	c := NewConn(nil, false)
	calls := feedAll(c, "GET / HTTP/1.1\r\nHost: h\r\n\r\n", "HTTP/1.1 200 OK\r\n\r\nsome body", "", "more")
	if len(calls) != 0 {
		t.Fatalf("completed before close: %+v", calls)
	}
	calls = c.Close(t0.Add(time.Minute))
	if len(calls) != 1 || calls[0].ResponseBytes != 13 || calls[0].Partial || !calls[0].End.Equal(t0.Add(time.Minute)) {
		t.Fatalf("close: %+v", calls)
	}
}

func TestH1Upgrade(t *testing.T) {
	c := NewConn(nil, false)
	calls := feedAll(c, "GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n\r\n", "HTTP/1.1 101 Switching\r\n\r\n\x81\x05hello")
	if len(calls) != 1 || calls[0].Status != 101 || calls[0].Partial {
		t.Fatalf("calls %+v", calls)
	}
	if calls := feedAll(c, "\x81\x85garbage"); calls != nil {
		t.Errorf("parsed the websocket: %+v", calls)
	}
}

func TestH1HeaderLimit(t *testing.T) {
	c := NewConn(&Options{MaxHeaderBytes: 1024}, false)
	req := "GET /big HTTP/1.1\r\nHost: h\r\nX: " + strings.Repeat("a", 100000) + "\r\n\r\n"
	calls := feedAll(c, req)
	if len(calls) != 1 || !calls[0].Partial || calls[0].Host != "h" || calls[0].Path != "/big" {
		t.Fatalf("calls %+v", calls)
	}
	if c.buffered() != 0 {
		t.Errorf("buffered %d", c.buffered())
	}
}

func TestH1Partial(t *testing.T) {
	c := NewConn(nil, true)
	calls := feedAll(c,
		"tail of an earlier body", "HTTP/1.1 200 OK\r\n\r\n",
		"GET /p HTTP/1.1\r\nHost: h\r\n\r\n", "HTTP/1.1 204 No Content\r\n\r\n",
	)
	if c.Protocol() != ProtoHTTP1 || len(calls) != 1 || calls[0].Path != "/p" || calls[0].Status != 204 || !calls[0].Partial {
		t.Fatalf("protocol %q calls %+v", c.Protocol(), calls)
	}
}
