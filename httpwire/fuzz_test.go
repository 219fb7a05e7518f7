package httpwire

import (
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

var writeSeeds = flag.Bool("write-seeds", false, "rewrite testdata/fuzz/FuzzConn from fresh captures")

// fuzzLimits are small so the fuzzer reaches them.
var fuzzOpts = &Options{
	Fingerprint:    testFingerprint,
	HashQuery:      testFingerprint,
	MaxHeaderBytes: 2048,
	MaxStreams:     4,
	MaxTableSize:   4096,
	MaxPending:     4,
}

// fuzzBound is what a Conn under fuzzOpts may retain: a held line or sniff,
// early bytes, two HPACK tables, and the metadata of its open calls, each
// bounded by the header limit.
const fuzzBound = 2048 + len(h2Preface) + maxEarly + 2*4096 + (4+1)*2048

// encodeChunks writes chunks in the fuzz input format: a flags byte (bit 0:
// partial), then per chunk a control byte (bit 0: Received; bit 1: bytes
// missing, as many as the next byte times 16), a length byte and the data.
func encodeChunks(partial bool, chunks []chunk) []byte {
	b := []byte{0}
	if partial {
		b[0] = 1
	}
	for _, ch := range chunks {
		for data := ch.data; len(data) > 0; {
			piece := data[:min(len(data), 255)]
			data = data[len(piece):]
			ctl := byte(0)
			if ch.dir == Received {
				ctl = 1
			}
			b = append(b, ctl, byte(len(piece)))
			b = append(b, piece...)
		}
	}
	return b
}

func decodeChunks(in []byte) (partial bool, chunks []chunk) {
	if len(in) == 0 {
		return false, nil
	}
	partial, in = in[0]&1 != 0, in[1:]
	for i := 0; len(in) >= 2; i++ {
		ctl, n := in[0], int(in[1])
		in = in[2:]
		missing := 0
		if ctl&2 != 0 && len(in) > 0 {
			missing, in = int(in[0])*16, in[1:]
		}
		n = min(n, len(in))
		dir := Sent
		if ctl&1 != 0 {
			dir = Received
		}
		chunks = append(chunks, chunk{dir, in[:n], n + missing, t0.Add(time.Duration(i) * time.Millisecond)})
		in = in[n:]
	}
	return partial, chunks
}

func FuzzConn(f *testing.F) {
	f.Add([]byte("\x00\x00\x10GET / HTTP/1.1\r\n\x01\x13HTTP/1.1 200 OK\r\n\r\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		partial, chunks := decodeChunks(in)
		c := NewConn(fuzzOpts, partial)
		for _, ch := range chunks {
			for _, call := range c.Feed(ch.dir, ch.data, ch.n, ch.at) {
				checkFuzzCall(t, call)
			}
			if b := c.buffered(); b > fuzzBound {
				t.Fatalf("retains %d bytes, bound %d", b, fuzzBound)
			}
		}
		for _, call := range c.Close(t0.Add(time.Hour)) {
			checkFuzzCall(t, call)
		}
		if c.buffered() != 0 {
			t.Fatalf("retains %d bytes after Close", c.buffered())
		}
	})
}

func checkFuzzCall(t *testing.T, c Call) {
	if c.RequestBytes < 0 || c.ResponseBytes < 0 || len(c.Credentials) > maxCredentialsPerCall || (c.Version != "2" && c.StreamID != 0) {
		t.Fatalf("bad call %+v", c)
	}
}

// TestWriteSeeds regenerates the seed corpus from real captures when run
// with -write-seeds.
func TestWriteSeeds(t *testing.T) {
	if !*writeSeeds {
		t.Skip("run with -write-seeds to regenerate the corpus")
	}
	// Small exchanges: the fuzzer minimizes what it finds interesting, and
	// that is slow on inputs of many kilobytes.
	small := [][]request{
		{{method: "GET", path: "/a?x=1", header: http.Header{"Authorization": {"Bearer fuzz-token"}}}},
		{{method: "HEAD", path: "/head"}},
		{{method: "POST", path: "/post", body: strings.NewReader("body"), size: 4}},
		{{method: "POST", path: "/creq", body: io.MultiReader(strings.NewReader("chunked")), size: -1}},
	}
	h1, _ := captureExchange(t, false, small...)
	h2, _ := captureExchange(t, true, h2Requests()[1])
	seeds := map[string][]byte{
		"h1-exchange":  encodeChunks(false, h1),
		"h1-partial":   encodeChunks(true, h1[2:]),
		"h2-exchange":  encodeChunks(false, h2),
		"garbage":      {0, 0, 8, 0x16, 3, 1, 0, 0xff, 0xfe, 0, 7},
		"h1-missing":   append(encodeChunks(false, h1[:1]), 2, 4, 40, 'G', 'E', 'T', ' '),
		"h2-truncated": encodeChunks(false, h2[:len(h2)/2]),
	}
	dir := filepath.Join("testdata", "fuzz", "FuzzConn")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, b := range seeds {
		body := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", b)
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
