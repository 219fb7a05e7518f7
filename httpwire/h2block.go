package httpwire

import (
	"strings"
	"time"

	"golang.org/x/net/http2/hpack"
)

// beginBlock starts the header block of a HEADERS or PUSH_PROMISE frame,
// deciding what its fields are for.
func (h *h2conn) beginBlock(d *h2dir) {
	d.inBlock, d.blockSID, d.blockBytes, d.decoded, d.status = true, d.sid, 0, 0, 0
	d.blockEnd = d.typ == frameHeaders && d.flags&flagEndStream != 0
	d.blockKind, d.blockSt = blockIgnore, nil
	d.dec.SetEmitEnabled(true)
	if d.typ == framePushPromise {
		return // a promised request; its pushed response is not ours
	}
	st := h.streams[d.sid]
	switch {
	case d.dir == Received && st != nil && !st.gotResp:
		d.blockKind, d.blockSt = blockResponse, st
	case st != nil:
		d.blockKind, d.blockSt = blockTrailers, st
	case d.dir == Sent && d.sid%2 == 1:
		st = &h2stream{Call: Call{Version: "2", StreamID: d.sid, Start: d.started}}
		if len(h.streams) >= h.opts.maxStreams {
			st.untracked, st.Partial = true, true
		} else {
			h.streams[d.sid] = st
		}
		d.blockKind, d.blockSt = blockRequest, st
	}
}

// field takes one decoded header field. Values are looked at here and only
// host, path and method are kept; credentials are fingerprinted at once.
func (h *h2conn) field(d *h2dir, f hpack.HeaderField) {
	d.decoded += len(f.Name) + len(f.Value) + 32
	if d.decoded > h.opts.maxHeaderBytes {
		// Many references to a large table entry decode to far more than
		// the block's size; the rest is decoded for the table only.
		h.overLimit(d)
		return
	}
	st := d.blockSt
	switch d.blockKind {
	case blockRequest:
		h.requestField(st, f)
	case blockResponse:
		if f.Name == ":status" {
			d.status = parseStatus(f.Value)
		}
	}
}

func (h *h2conn) requestField(st *h2stream, f hpack.HeaderField) {
	switch f.Name {
	case ":method":
		st.Method = f.Value
	case ":authority":
		st.Host = f.Value
	case "host":
		if st.Host == "" {
			st.Host = f.Value
		}
	case ":path":
		path, query, _ := strings.Cut(f.Value, "?")
		st.Path = path
		if query != "" {
			if h.opts.hashQuery != nil {
				st.Query = h.opts.hashQuery(query)
			}
			st.Credentials = queryCredentials(h.opts, st.Credentials, query)
		}
	default:
		st.Credentials = headerCredential(h.opts, st.Credentials, f.Name, f.Value)
	}
}

// overLimit stops emitting the block's fields, keeping its HPACK state, and
// marks its call as missing some.
func (h *h2conn) overLimit(d *h2dir) {
	d.dec.SetEmitEnabled(false)
	if d.blockSt != nil {
		d.blockSt.Partial = true
	}
}

func (h *h2conn) endBlock(d *h2dir, at time.Time) {
	d.inBlock = false
	if err := d.dec.Close(); err != nil {
		h.lose(at)
		return
	}
	st := d.blockSt
	d.blockSt = nil
	switch d.blockKind {
	case blockIgnore:
		return
	case blockRequest:
		if st.untracked {
			// Over MaxStreams: returned with its request only.
			st.End = at
			h.out = append(h.out, st.Call)
			return
		}
	case blockResponse:
		if d.status >= 100 && d.status < 200 {
			return // interim; the final response follows
		}
		st.Status = d.status
		st.gotResp = true
	}
	if d.blockEnd {
		h.endSide(d.dir, st, at)
	}
}

func parseStatus(s string) int {
	if len(s) != 3 {
		return 0
	}
	n := 0
	for i := range 3 {
		if s[i] < '0' || s[i] > '9' {
			return 0
		}
		n = n*10 + int(s[i]-'0')
	}
	return n
}
