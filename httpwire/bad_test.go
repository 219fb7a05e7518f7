package httpwire

import (
	"bytes"
	"math/rand/v2"
	"runtime"
	"strings"
	"testing"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// h2build writes the frames of one direction of an HTTP/2 connection.
type h2build struct {
	bytes.Buffer
	fr  *http2.Framer
	enc *hpack.Encoder
	hb  bytes.Buffer
}

func newH2Build(client bool) *h2build {
	b := &h2build{}
	if client {
		b.WriteString(h2Preface)
	}
	b.fr = http2.NewFramer(&b.Buffer, nil)
	b.fr.AllowIllegalWrites = true
	b.enc = hpack.NewEncoder(&b.hb)
	b.fr.WriteSettings()
	return b
}

// block encodes header fields, name and value pairs.
func (b *h2build) block(fields ...string) []byte {
	b.hb.Reset()
	for i := 0; i < len(fields); i += 2 {
		b.enc.WriteField(hpack.HeaderField{Name: fields[i], Value: fields[i+1]})
	}
	return append([]byte(nil), b.hb.Bytes()...)
}

func (b *h2build) headers(sid uint32, end bool, fields ...string) {
	b.rawHeaders(sid, end, b.block(fields...))
}

// rawHeaders writes a header block as HEADERS and CONTINUATION frames of
// at most 16 KiB.
func (b *h2build) rawHeaders(sid uint32, end bool, block []byte) {
	first := block[:min(len(block), 16384)]
	block = block[len(first):]
	b.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: sid, BlockFragment: first, EndStream: end, EndHeaders: len(block) == 0})
	for len(block) > 0 {
		frag := block[:min(len(block), 16384)]
		block = block[len(frag):]
		b.fr.WriteContinuation(sid, len(block) == 0, frag)
	}
}

// allocated reports the bytes f allocates.
func allocated(f func()) uint64 {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	f()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

func TestGarbage(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for _, g := range [][]byte{
		{0x16, 0x03, 0x01, 0x02, 0x00},
		[]byte("SSH-2.0-OpenSSH_9.6\r\n"),
		[]byte("get / HTTP/1.1\r\n"),
		[]byte("GET\x00/ HTTP/1.1\r\n"),
		[]byte("PRI * HTTP/2.0\r\n\r\nXX"),
		bytes.Repeat([]byte{0xff}, 100000),
	} {
		c := NewConn(nil, false)
		for i := range g {
			c.Feed(Sent, g[i:i+1], 1, t0)
		}
		if c.Protocol() != ProtoNone || c.buffered() != 0 {
			t.Errorf("%q: protocol %q buffered %d", g[:min(len(g), 20)], c.Protocol(), c.buffered())
		}
	}
	c := NewConn(nil, false)
	c.Feed(Received, []byte("220 smtp ready\r\n"), 16, t0)
	c.Feed(Sent, []byte("EHLO me\r\n"), 9, t0)
	if c.Protocol() != ProtoNone {
		t.Errorf("server first: protocol %q", c.Protocol())
	}
	c = NewConn(nil, true)
	for range partialDetectionChunks {
		b := make([]byte, 1000)
		for i := range b {
			b[i] = byte(r.Uint32())
		}
		c.Feed(Sent, b, len(b), t0)
	}
	if c.Protocol() != ProtoNone || c.buffered() != 0 {
		t.Errorf("partial garbage: protocol %q buffered %d", c.Protocol(), c.buffered())
	}
}

func TestHPACKBomb(t *testing.T) {
	b := newH2Build(true)
	head := b.block(":method", "GET", ":authority", "h", ":path", "/bomb")
	// One 4000-byte entry in the dynamic table, then 40000 one-byte
	// references to it: 40 KiB of block decoding to 160 MB of headers.
	big := append([]byte{0x40, 0x01, 'x', 0x7f, 0xa1, 0x1e}, bytes.Repeat([]byte("a"), 4000)...)
	bomb := append(append(head, big...), bytes.Repeat([]byte{0xbe}, 40000)...)
	b.rawHeaders(1, true, bomb)
	r := newH2Build(false)
	r.headers(1, true, ":status", "200")

	c := NewConn(nil, false)
	var calls []Call
	if n := allocated(func() { calls = feedAll(c, b.String(), r.String()) }); n > 4<<20 {
		t.Errorf("allocated %d bytes", n)
	}
	if len(calls) != 1 || !calls[0].Partial || calls[0].Path != "/bomb" || calls[0].Status != 200 {
		t.Fatalf("calls %+v", calls)
	}
}

func TestH2HugeHeaderBlock(t *testing.T) {
	b := newH2Build(true)
	var fields []string
	for range 300 {
		fields = append(fields, "x-filler", strings.Repeat("f", 1000))
	}
	b.enc.SetMaxDynamicTableSizeLimit(0) // literals, not indexed
	b.headers(1, true, append([]string{":method", "GET", ":path", "/huge"}, fields...)...)
	b.headers(3, true, ":method", "GET", ":path", "/next", ":authority", "h")
	r := newH2Build(false)
	r.headers(1, true, ":status", "200")
	r.headers(3, true, ":status", "404")
	calls := sortedByStream(feedAll(NewConn(nil, false), b.String(), r.String()))
	if len(calls) != 2 || !calls[0].Partial || calls[0].Path != "/huge" {
		t.Fatalf("calls %+v", calls)
	}
	if calls[1].Partial || calls[1].Path != "/next" || calls[1].Status != 404 {
		t.Errorf("the connection did not recover: %+v", calls[1])
	}
}

func TestH2HugeFrame(t *testing.T) {
	b := newH2Build(true)
	b.headers(1, false, ":method", "POST", ":path", "/up")
	b.Write([]byte{0xff, 0xff, 0xff, frameData, 0, 0, 0, 0, 1})
	b.Write(make([]byte, 100000))
	c := NewConn(nil, false)
	if n := allocated(func() { feedAll(c, b.String()) }); n > 1<<20 {
		t.Errorf("allocated %d bytes", n)
	}
	if c.buffered() > 2*initialTableSize+100 {
		t.Errorf("buffered %d", c.buffered())
	}
	calls := c.Close(t0)
	if len(calls) != 1 || calls[0].RequestBytes != 100000 {
		t.Errorf("calls %+v", calls)
	}
}

func TestH2Truncated(t *testing.T) {
	chunks, _ := captureExchange(t, true, h2Requests()...)
	for cut := 1; cut < len(chunks); cut++ {
		_, calls := run(testOpts, chunks[:cut])
		for _, k := range calls {
			if k.StreamID == 0 || k.StreamID%2 == 0 {
				t.Fatalf("cut %d: %+v", cut, k)
			}
		}
	}
}

func TestH2TableSizeOverLimit(t *testing.T) {
	for _, tc := range []struct {
		size    uint32
		partial bool
	}{{32 << 10, false}, {1 << 20, true}} {
		b := newH2Build(true)
		r := newH2Build(false)
		r.fr.WriteSettings(http2.Setting{ID: http2.SettingHeaderTableSize, Val: tc.size})
		b.enc.SetMaxDynamicTableSizeLimit(tc.size)
		b.enc.SetMaxDynamicTableSize(tc.size)
		b.headers(1, true, ":method", "GET", ":path", "/t", "x-big", strings.Repeat("b", 20000))
		settings := r.String()
		r.Reset()
		r.headers(1, true, ":status", "200")
		c := NewConn(nil, false)
		calls := feedAll(c, "", settings, b.String(), r.String())
		calls = append(calls, c.Close(t0)...)
		if len(calls) != 1 || calls[0].Partial != tc.partial || (!tc.partial && (calls[0].Status != 200 || calls[0].Path != "/t")) {
			t.Errorf("table size %d: calls %+v", tc.size, calls)
		}
	}
}

func TestH2MaxStreams(t *testing.T) {
	b := newH2Build(true)
	for sid := uint32(1); sid <= 5; sid += 2 {
		b.headers(sid, true, ":method", "GET", ":path", "/s")
	}
	c := NewConn(&Options{MaxStreams: 2}, false)
	calls := c.Feed(Sent, b.Bytes(), b.Len(), t0)
	if len(calls) != 1 || calls[0].StreamID != 5 || !calls[0].Partial || calls[0].Path != "/s" {
		t.Fatalf("calls %+v", calls)
	}
	if calls := c.Close(t0); len(calls) != 2 {
		t.Errorf("close: %+v", calls)
	}
}
