package httpwire

import (
	"bytes"
	"time"
)

type h1state uint8

const (
	h1Start      h1state = iota // start line next
	h1Headers                   // header lines
	h1Body                      // Content-Length body, remaining bytes
	h1ChunkSize                 // chunk-size line
	h1ChunkData                 // chunk data, remaining bytes
	h1ChunkEnd                  // the CRLF after chunk data
	h1Trailers                  // trailer lines
	h1UntilClose                // response body delimited by the close
	h1AwaitSync                 // partial connection: responses not yet trusted
)

// h1call is a Call with the progress of its two messages.
type h1call struct {
	Call
	reqDone, respDone bool
	head, tunnel      bool // HEAD: no response body; CONNECT: a tunnel on 2xx
}

// h1side parses the messages of one direction.
type h1side struct {
	dir       Direction
	state     h1state
	line      []byte // an unfinished line, held across chunks
	hdrBytes  int    // header block bytes of the current message
	remaining int64  // body or chunk bytes still due
	started   time.Time
	call      *h1call // the message's call; nil for a response to nothing

	contentLength int64 // -1: none
	chunked       bool
	status        int
}

type h1conn struct {
	opts    *options
	partial bool
	stop    func(notHTTP bool)
	seen    bool // a request line was parsed
	dead    bool
	req     h1side
	resp    h1side
	queue   []*h1call // requests awaiting their responses, in order
	out     []Call
}

func newH1(o *options, partial bool, stop func(notHTTP bool)) *h1conn {
	h := &h1conn{opts: o, partial: partial, stop: stop}
	h.req.dir, h.resp.dir = Sent, Received
	if partial {
		h.resp.state = h1AwaitSync
	}
	return h
}

func (h *h1conn) side(dir Direction) *h1side {
	if dir == Sent {
		return &h.req
	}
	return &h.resp
}

func (h *h1conn) feed(dir Direction, data []byte, missing int64, at time.Time) []Call {
	if h.dead {
		return nil
	}
	s := h.side(dir)
	if s.state == h1AwaitSync && len(data)+int(missing) > 0 {
		// Joined mid-stream: the first response trusted is one that
		// starts a chunk after a request was seen.
		if len(h.queue) == 0 || !bytes.HasPrefix(data, []byte("HTTP/1.")) {
			return nil
		}
		s.state = h1Start
	}
	for len(data) > 0 && !h.dead {
		data = h.step(s, data, at)
	}
	if missing > 0 && !h.dead {
		h.skip(s, missing, at)
	}
	out := h.out
	h.out = nil
	return out
}

// step consumes a prefix of data and returns the rest.
func (h *h1conn) step(s *h1side, data []byte, at time.Time) []byte {
	switch s.state {
	case h1Body, h1ChunkData, h1UntilClose:
		k := int64(len(data))
		if s.state != h1UntilClose {
			k = min(k, s.remaining)
		}
		h.count(s, k, at)
		return data[k:]
	}
	if s.state == h1Start && len(s.line) == 0 {
		s.started = at
	}
	limit := h.opts.maxHeaderBytes - s.hdrBytes
	eol := bytes.IndexByte(data, '\n')
	if eol < 0 {
		if len(s.line)+len(data) > limit {
			h.lose(at)
			return nil
		}
		s.line = append(s.line, data...)
		return nil
	}
	line, rest := data[:eol], data[eol+1:]
	if len(s.line) > 0 {
		s.line = append(s.line, line...)
		line = s.line
	}
	if len(line)+1 > limit {
		h.lose(at)
		return nil
	}
	if s.state != h1ChunkSize && s.state != h1ChunkEnd {
		s.hdrBytes += len(line) + 1
	}
	h.line(s, bytes.TrimSuffix(line, []byte("\r")), at)
	h.dropLine(s)
	return rest
}

// dropLine forgets the held line; its bytes may be a credential, so they are
// cleared rather than left in a reused buffer.
func (h *h1conn) dropLine(s *h1side) {
	clear(s.line)
	if cap(s.line) > 4<<10 {
		s.line = nil
	} else {
		s.line = s.line[:0]
	}
}

func (h *h1conn) line(s *h1side, line []byte, at time.Time) {
	switch s.state {
	case h1Start:
		if len(line) == 0 {
			return // stray CRLF between messages, allowed by RFC 9112
		}
		s.contentLength, s.chunked, s.status = -1, false, 0
		var ok bool
		if s.dir == Sent {
			ok = h.requestLine(s, line)
		} else {
			ok = h.statusLine(s, line)
		}
		if !ok {
			h.lose(at)
			return
		}
		h.seen = true
		s.state = h1Headers
	case h1Headers:
		if len(line) == 0 {
			h.headersDone(s, at)
			return
		}
		if !h.header(s, line) {
			h.lose(at)
		}
	case h1ChunkSize:
		size, ok := chunkSize(line)
		switch {
		case !ok:
			h.lose(at)
		case size == 0:
			s.state, s.hdrBytes = h1Trailers, 0
		default:
			s.state, s.remaining = h1ChunkData, size
		}
	case h1ChunkEnd:
		if len(line) != 0 {
			h.lose(at)
			return
		}
		s.state = h1ChunkSize
	case h1Trailers:
		if len(line) == 0 {
			h.messageDone(s, at)
		}
	}
}

func (h *h1conn) headersDone(s *h1side, at time.Time) {
	c := s.call
	if s.dir == Sent {
		if len(h.queue) >= h.opts.maxPending {
			h.lose(at)
			return
		}
		h.queue = append(h.queue, c)
		h.startBody(s, at)
		return
	}
	if c != nil {
		c.Status = s.status
	}
	switch {
	case s.status == 101 || (c != nil && c.tunnel && s.status/100 == 2):
		// The connection now carries another protocol.
		if c != nil {
			c.reqDone, c.respDone = true, true
			h.finish(c, at)
		}
		h.lose(at)
	case s.status/100 == 1:
		// Interim (100 Continue, 103 Early Hints); the final response
		// follows.
		s.state, s.hdrBytes = h1Start, 0
	case s.status == 204 || s.status == 304 || (c != nil && c.head):
		h.messageDone(s, at)
	case s.chunked:
		h.startBody(s, at)
	case s.contentLength >= 0:
		h.startBody(s, at)
	default:
		s.state = h1UntilClose
	}
}

func (h *h1conn) startBody(s *h1side, at time.Time) {
	s.hdrBytes = 0
	switch {
	case s.chunked:
		s.state = h1ChunkSize
	case s.contentLength > 0:
		s.state, s.remaining = h1Body, s.contentLength
	default:
		h.messageDone(s, at)
	}
}

// count adds k body bytes of the current message.
func (h *h1conn) count(s *h1side, k int64, at time.Time) {
	if c := s.call; c != nil {
		if s.dir == Sent {
			c.RequestBytes += k
		} else {
			c.ResponseBytes += k
		}
	}
	if s.state == h1UntilClose {
		return
	}
	s.remaining -= k
	if s.remaining > 0 {
		return
	}
	if s.state == h1ChunkData {
		s.state = h1ChunkEnd
		return
	}
	h.messageDone(s, at)
}

// skip accounts for bytes the probe did not capture: only a body can lose
// bytes without losing the message boundaries.
func (h *h1conn) skip(s *h1side, missing int64, at time.Time) {
	switch {
	case s.state == h1UntilClose, s.state == h1AwaitSync:
		h.count(s, missing, at)
	case (s.state == h1Body || s.state == h1ChunkData) && missing <= s.remaining:
		h.count(s, missing, at)
	default:
		h.lose(at)
	}
}

func (h *h1conn) messageDone(s *h1side, at time.Time) {
	c := s.call
	s.call, s.state, s.hdrBytes, s.remaining = nil, h1Start, 0, 0
	if c == nil {
		return
	}
	if s.dir == Sent {
		c.reqDone = true
	} else {
		c.respDone = true
		h.queue = h.queue[1:]
	}
	c.End = at
	if c.reqDone && c.respDone {
		h.finish(c, at)
	}
}

func (h *h1conn) finish(c *h1call, at time.Time) {
	c.End = at
	h.out = append(h.out, c.Call)
}

// lose gives up on the connection: every open call is returned Partial.
func (h *h1conn) lose(at time.Time) {
	for _, c := range h.open() {
		c.Partial = true
		h.finish(c, at)
	}
	h.dead = true
	h.req, h.resp, h.queue = h1side{}, h1side{}, nil
	h.stop(!h.seen)
}

// open lists the calls not yet returned, oldest first.
func (h *h1conn) open() []*h1call {
	var open []*h1call
	for _, c := range h.queue {
		if !(c.reqDone && c.respDone) {
			open = append(open, c)
		}
	}
	// The request being sent is queued once its header block is done, and
	// leaves the queue early when its response came first.
	if c := h.req.call; c != nil && !(c.reqDone && c.respDone) && (len(open) == 0 || open[len(open)-1] != c) {
		open = append(open, c)
	}
	return open
}

func (h *h1conn) close(at time.Time) []Call {
	if h.dead {
		return nil
	}
	for _, c := range h.open() {
		if c == h.req.call && h.req.state <= h1Headers {
			c.Partial = true // its header block was cut off
		}
		h.finish(c, at)
	}
	h.dead = true
	out := h.out
	h.out = nil
	return out
}

func (h *h1conn) buffered() int {
	b := cap(h.req.line) + cap(h.resp.line)
	for _, c := range h.open() {
		b += len(c.Method) + len(c.Host) + len(c.Path) + len(c.Query)
	}
	return b
}
