package httpwire

import (
	"encoding/binary"
	"slices"
	"time"

	"golang.org/x/net/http2/hpack"
)

// Frame types and flags, RFC 9113 section 6.
const (
	frameData         = 0x0
	frameHeaders      = 0x1
	frameRSTStream    = 0x3
	frameSettings     = 0x4
	framePushPromise  = 0x5
	frameContinuation = 0x9

	flagEndStream  = 0x1
	flagAck        = 0x1
	flagEndHeaders = 0x4
	flagPadded     = 0x8
	flagPriority   = 0x20

	settingHeaderTableSize = 0x1
	initialTableSize       = 4096
	frameHeaderLen         = 9
)

// blockKind says what a header block in progress is for.
type blockKind uint8

const (
	blockIgnore   blockKind = iota // pushed or unknown stream: decoded only for HPACK state
	blockRequest                   // a new stream's request
	blockResponse                  // a response, final or interim
	blockTrailers                  // trailers, or a second response block
)

type h2stream struct {
	Call
	reqEnded, respEnded bool
	gotResp             bool // final response headers seen
	untracked           bool // over MaxStreams: returned when its headers are
}

// h2dir is the frame parser of one direction. Payloads are consumed as they
// arrive: DATA is counted, header block fragments go straight into the
// HPACK decoder, so no frame is ever held whole.
type h2dir struct {
	dir     Direction
	hdr     [frameHeaderLen]byte
	hdrN    int
	typ     uint8
	flags   uint8
	sid     uint32
	rem     uint32 // payload bytes still due
	padLeft uint32 // padding at the end of the payload
	prefix  uint32 // payload bytes before the content (priority, promised id)
	needPad bool   // the pad length byte is still due
	started time.Time

	setting  [6]byte
	settingN int

	dec        *hpack.Decoder
	allowed    uint32 // dynamic table size the peer's encoder may use
	inBlock    bool
	blockSID   uint32
	blockEnd   bool // END_STREAM on the block's HEADERS frame
	blockKind  blockKind
	blockSt    *h2stream
	blockBytes int
	decoded    int // header list bytes of the block, RFC 9113 section 6.5.2
	status     int
}

type h2conn struct {
	opts    *options
	stop    func()
	dead    bool
	sent    h2dir
	recv    h2dir
	streams map[uint32]*h2stream
	out     []Call
}

func newH2(o *options, stop func()) *h2conn {
	h := &h2conn{opts: o, stop: stop, streams: make(map[uint32]*h2stream)}
	for _, d := range []*h2dir{&h.sent, &h.recv} {
		d.allowed = min(initialTableSize, o.maxTableSize)
		d.dec = hpack.NewDecoder(d.allowed, func(f hpack.HeaderField) { h.field(d, f) })
		d.dec.SetMaxStringLength(o.maxHeaderBytes)
	}
	h.sent.dir, h.recv.dir = Sent, Received
	return h
}

func (h *h2conn) feed(dir Direction, data []byte, missing int64, at time.Time) []Call {
	d := &h.recv
	if dir == Sent {
		d = &h.sent
	}
	for len(data) > 0 && !h.dead {
		data = h.step(d, data, at)
	}
	if missing > 0 && !h.dead {
		h.skip(d, missing, at)
	}
	out := h.out
	h.out = nil
	return out
}

func (h *h2conn) step(d *h2dir, data []byte, at time.Time) []byte {
	if d.hdrN < frameHeaderLen {
		if d.hdrN == 0 {
			d.started = at
		}
		k := copy(d.hdr[d.hdrN:], data)
		d.hdrN += k
		if d.hdrN == frameHeaderLen {
			h.beginFrame(d, at)
		}
		return data[k:]
	}
	switch {
	case d.needPad:
		d.needPad = false
		d.padLeft = uint32(data[0])
		d.rem--
		if d.padLeft+d.prefix > d.rem {
			h.lose(at)
			return nil
		}
		data = data[1:]
	case d.prefix > 0:
		k := min(d.prefix, uint32(len(data)))
		d.prefix -= k
		d.rem -= k
		data = data[k:]
	case d.rem > d.padLeft:
		k := min(d.rem-d.padLeft, uint32(len(data)))
		h.content(d, data[:k], at)
		d.rem -= k
		data = data[k:]
	default:
		k := min(d.rem, uint32(len(data)))
		d.rem -= k
		data = data[k:]
	}
	if d.rem == 0 && !h.dead && !d.needPad {
		h.endFrame(d, at)
	}
	return data
}

func (h *h2conn) beginFrame(d *h2dir, at time.Time) {
	d.rem = uint32(d.hdr[0])<<16 | uint32(d.hdr[1])<<8 | uint32(d.hdr[2])
	d.typ, d.flags = d.hdr[3], d.hdr[4]
	d.sid = binary.BigEndian.Uint32(d.hdr[5:]) & (1<<31 - 1)
	d.padLeft, d.prefix, d.needPad, d.settingN = 0, 0, false, 0
	if d.inBlock != (d.typ == frameContinuation) || (d.inBlock && d.sid != d.blockSID) {
		h.lose(at) // a header block must be contiguous
		return
	}
	switch d.typ {
	case frameData, frameHeaders, framePushPromise:
		d.needPad = d.flags&flagPadded != 0
	}
	switch {
	case d.typ == frameHeaders && d.flags&flagPriority != 0:
		d.prefix = 5
	case d.typ == framePushPromise:
		d.prefix = 4
	}
	bad := (d.needPad && d.rem == 0) || d.prefix > d.rem
	switch d.typ {
	case frameHeaders, framePushPromise:
		bad = bad || d.sid == 0
	case frameSettings:
		bad = bad || d.rem%6 != 0
	case frameRSTStream:
		bad = bad || d.rem != 4 || d.sid == 0
	}
	if bad {
		h.lose(at)
		return
	}
	if d.typ == frameHeaders || d.typ == framePushPromise {
		h.beginBlock(d)
	}
	if d.rem == 0 {
		h.endFrame(d, at)
	}
}

// content takes a piece of the current frame's payload, padding excluded.
func (h *h2conn) content(d *h2dir, b []byte, at time.Time) {
	switch d.typ {
	case frameData:
		h.countData(d, int64(len(b)))
	case frameHeaders, framePushPromise, frameContinuation:
		d.blockBytes += len(b)
		if d.blockBytes > h.opts.maxHeaderBytes {
			h.overLimit(d)
		}
		if _, err := d.dec.Write(b); err != nil {
			h.lose(at)
		}
	case frameSettings:
		if d.flags&flagAck != 0 {
			return
		}
		for len(b) > 0 {
			k := copy(d.setting[d.settingN:], b)
			d.settingN += k
			b = b[k:]
			if d.settingN == len(d.setting) {
				d.settingN = 0
				h.setting(d, binary.BigEndian.Uint16(d.setting[:2]), binary.BigEndian.Uint32(d.setting[2:]))
			}
		}
	}
}

// setting applies a peer's setting. SETTINGS_HEADER_TABLE_SIZE bounds the
// table of the encoder on the other side, so it goes to the decoder of the
// opposite direction, capped at MaxTableSize: an encoder that then grows its
// table past the cap makes its header blocks fail to decode.
func (h *h2conn) setting(d *h2dir, id uint16, v uint32) {
	if id != settingHeaderTableSize {
		return
	}
	other := &h.sent
	if d.dir == Sent {
		other = &h.recv
	}
	other.allowed = min(v, h.opts.maxTableSize)
	other.dec.SetAllowedMaxDynamicTableSize(other.allowed)
}

func (h *h2conn) countData(d *h2dir, k int64) {
	st := h.streams[d.sid]
	switch {
	case st == nil:
	case d.dir == Sent:
		st.RequestBytes += k
	default:
		st.ResponseBytes += k
	}
}

func (h *h2conn) endFrame(d *h2dir, at time.Time) {
	d.hdrN = 0
	switch d.typ {
	case frameData:
		if d.flags&flagEndStream != 0 {
			h.endSide(d.dir, h.streams[d.sid], at)
		}
	case frameHeaders, framePushPromise, frameContinuation:
		if d.flags&flagEndHeaders != 0 {
			h.endBlock(d, at)
		}
	case frameRSTStream:
		if st := h.streams[d.sid]; st != nil {
			st.reqEnded, st.respEnded = true, true
			h.finish(st, at)
		}
	}
}

// skip accounts for bytes the probe did not capture: only DATA payload can
// be missing without losing the frame boundaries.
func (h *h2conn) skip(d *h2dir, missing int64, at time.Time) {
	if d.hdrN < frameHeaderLen || d.typ != frameData || d.needPad || missing > int64(d.rem) {
		h.lose(at)
		return
	}
	if content := int64(d.rem) - int64(d.padLeft); content > 0 {
		h.countData(d, min(content, missing))
	}
	d.rem -= uint32(missing)
	if d.rem == 0 {
		h.endFrame(d, at)
	}
}

func (h *h2conn) endSide(dir Direction, st *h2stream, at time.Time) {
	if st == nil {
		return
	}
	if dir == Sent {
		st.reqEnded = true
	} else {
		st.respEnded = true
	}
	if st.reqEnded && st.respEnded {
		h.finish(st, at)
	}
}

func (h *h2conn) finish(st *h2stream, at time.Time) {
	st.End = at
	h.out = append(h.out, st.Call)
	delete(h.streams, st.StreamID)
}

// lose gives up on the connection: every open call is returned Partial.
func (h *h2conn) lose(at time.Time) {
	for _, st := range h.open() {
		st.Partial = true
		h.finish(st, at)
	}
	h.dead = true
	h.streams = nil
	h.sent, h.recv = h2dir{}, h2dir{}
	h.stop()
}

// open lists the calls not yet returned, by stream id.
func (h *h2conn) open() []*h2stream {
	var open []*h2stream
	for _, st := range h.streams {
		open = append(open, st)
	}
	if st := h.sent.blockSt; h.sent.inBlock && st != nil && st.untracked {
		open = append(open, st)
	}
	slices.SortFunc(open, func(a, b *h2stream) int { return int(a.StreamID) - int(b.StreamID) })
	return open
}

func (h *h2conn) close(at time.Time) []Call {
	if h.dead {
		return nil
	}
	for _, st := range h.open() {
		if h.sent.inBlock && st == h.sent.blockSt {
			st.Partial = true // its header block was cut off
		}
		h.finish(st, at)
	}
	h.dead = true
	out := h.out
	h.out = nil
	return out
}

func (h *h2conn) buffered() int {
	b := int(h.sent.allowed + h.recv.allowed)
	for _, st := range h.open() {
		b += len(st.Method) + len(st.Host) + len(st.Path) + len(st.Query)
	}
	return b
}
