package httpwire

import (
	"bytes"
	"encoding/binary"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
)

func h2Requests() [][]request {
	auth := http.Header{"Authorization": {"Bearer h2-secret-token"}, "X-Padding": {strings.Repeat("p", 200)}}
	return [][]request{
		{
			{method: "GET", path: "/big"},
			{method: "POST", path: "/post", body: bytes.NewReader(make([]byte, 5000)), size: 5000, header: auth},
		},
		{{method: "GET", path: "/again?k=v", header: auth}},
	}
}

func TestH2Capture(t *testing.T) {
	chunks, saw := captureExchange(t, true, h2Requests()...)
	c, calls := run(testOpts, chunks)
	if c.Protocol() != ProtoH2 {
		t.Fatalf("protocol %q", c.Protocol())
	}
	checkAgainst(t, calls, saw, "2")
	calls = sortedByStream(calls)
	ids := []uint32{}
	for _, k := range calls {
		ids = append(ids, k.StreamID)
	}
	if !reflect.DeepEqual(ids, []uint32{1, 3, 5}) {
		t.Errorf("stream ids %v", ids)
	}
	want := []Credential{{Type: CredentialBearer, Header: "authorization", Fingerprint: testFingerprint("h2-secret-token")}}
	for _, k := range calls {
		if k.Path != "/big" && !reflect.DeepEqual(k.Credentials, want) {
			t.Errorf("%s: credentials %+v", k.Path, k.Credentials)
		}
	}
	if calls[2].Query != "q-"+testFingerprint("k=v") {
		t.Errorf("query %q", calls[2].Query)
	}
	// The last request repeats the headers of an earlier one (the POST,
	// sent first or second: the two go concurrently), so its block must
	// be mostly dynamic table references; decoding it right proves the
	// table is kept across requests.
	blocks := headerBlocks(t, sentBytes(chunks)[len(h2Preface):])
	if len(blocks) != 3 || blocks[2] > max(blocks[0], blocks[1])/2 {
		t.Errorf("request header block sizes %v: the last one is not indexed", blocks)
	}
}

// headerBlocks returns the size of each HEADERS frame's block fragment.
func headerBlocks(t *testing.T, b []byte) []int {
	fr := http2.NewFramer(nil, bytes.NewReader(b))
	var sizes []int
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			return sizes
		}
		if h, ok := f.(*http2.HeadersFrame); ok {
			sizes = append(sizes, len(h.HeaderBlockFragment()))
		}
	}
}

func TestH2Splits(t *testing.T) {
	chunks, _ := captureExchange(t, true, h2Requests()...)
	checkSplits(t, chunks)
}

// frameSpans lists the byte ranges of the DATA payloads in a stream of
// frames.
func dataPayloads(b []byte) [][2]int {
	var spans [][2]int
	for off := 0; off+frameHeaderLen <= len(b); {
		n := frameLen(b[off:])
		if b[off+3] == frameData && n > 0 && b[off+4]&flagPadded == 0 {
			spans = append(spans, [2]int{off + frameHeaderLen, off + frameHeaderLen + n})
		}
		off += frameHeaderLen + n
	}
	return spans
}

// TestH2MissingDataBytes re-chunks the responses so that the middle of each
// DATA payload is a chunk whose bytes were not captured: the calls must not
// change.
func TestH2MissingDataBytes(t *testing.T) {
	chunks, saw := captureExchange(t, true, h2Requests()...)
	var sent []chunk
	var recv []byte
	for _, ch := range chunks {
		if ch.dir == Sent {
			sent = append(sent, ch)
		} else {
			recv = append(recv, ch.data...)
		}
	}
	end := sent[len(sent)-1].at.Add(time.Second)
	var rechunked []chunk
	prev := 0
	lost := 0
	for _, s := range dataPayloads(recv) {
		if s[1]-s[0] < 100 {
			continue
		}
		mid := s[0] + 10
		rechunked = append(rechunked, chunk{Received, recv[prev:mid], mid - prev, end})
		rechunked = append(rechunked, chunk{Received, recv[mid : mid+5], s[1] - 10 - mid, end})
		lost += s[1] - 10 - mid - 5
		prev = s[1] - 10
	}
	rechunked = append(rechunked, chunk{Received, recv[prev:], len(recv) - prev, end})
	if lost < 1<<19 {
		t.Fatalf("only %d bytes dropped", lost)
	}
	_, calls := run(testOpts, append(sent, rechunked...))
	checkAgainst(t, calls, saw, "2")
}

func TestH2MissingHeaderBytes(t *testing.T) {
	chunks, _ := captureExchange(t, true, h2Requests()[1])
	sent := sentBytes(chunks)
	off := len(h2Preface)
	for off+frameHeaderLen <= len(sent) && sent[off+3] != frameHeaders {
		off += frameHeaderLen + frameLen(sent[off:])
	}
	if off+frameHeaderLen > len(sent) {
		t.Fatal("no HEADERS frame")
	}
	n := frameHeaderLen + frameLen(sent[off:])
	c := NewConn(testOpts, false)
	calls := c.Feed(Sent, sent[:off], off, t0)
	calls = append(calls, c.Feed(Sent, sent[off:off+frameHeaderLen+3], n, t0)...)
	if len(calls) != 1 || !calls[0].Partial || calls[0].StreamID != 1 {
		t.Fatalf("calls %+v", calls)
	}
	if c.Protocol() != ProtoH2 || c.buffered() != 0 {
		t.Errorf("protocol %q buffered %d", c.Protocol(), c.buffered())
	}
	if calls := c.Feed(Sent, sent[off+n:], len(sent)-off-n, t0); calls != nil {
		t.Errorf("parsed after losing sync: %+v", calls)
	}
	if calls := c.Close(t0); calls != nil {
		t.Errorf("close: %+v", calls)
	}
}

func frameLen(b []byte) int { return int(b[0])<<16 | int(binary.BigEndian.Uint16(b[1:])) }
