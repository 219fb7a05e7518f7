// Package httpwire reads the HTTP/1.1 and HTTP/2 calls out of the plaintext
// of one client connection, as TLS probes capture it, with bounded memory.
//
// The input is the sequence of chunks one TLS connection moved: each
// SSL_write is a Sent chunk (client to server), each SSL_read a Received
// chunk. A chunk carries the number of bytes the call moved and the prefix of
// them the probe captured; bytes past the prefix are missing. Inside a body
// (HTTP/1.1 Content-Length or chunk data, HTTP/2 DATA payload) missing bytes
// are only counted. Anywhere else they cost the parser its place in the
// stream: the Conn then returns every open call marked Partial, drops its
// buffers and parses no more of the connection, though Protocol still names
// what it was.
//
// Bodies are never buffered. What a Conn holds between Feed calls is bounded
// by its Options: an unfinished HTTP/1.1 header line, the two HPACK dynamic
// tables of an HTTP/2 connection (which necessarily hold header values,
// credentials included, as the peers indexed them) and an unfinished HPACK
// field, and the metadata (method, host, path) of open calls. Credential
// values are reduced to Options.Fingerprint before Feed returns.
package httpwire

import (
	"bytes"
	"time"
)

// Direction says which way a chunk went, seen from the client.
type Direction uint8

const (
	// Sent is client to server: SSL_write, requests.
	Sent Direction = iota + 1
	// Received is server to client: SSL_read, responses.
	Received
)

// Protocol names as Conn.Protocol returns them.
const (
	ProtoUnknown = ""
	ProtoHTTP1   = "http/1.1"
	ProtoH2      = "h2"
	ProtoNone    = "none"
)

// Defaults for zero Options limits.
const (
	DefaultMaxHeaderBytes  = 64 << 10
	DefaultMaxStreams      = 128
	DefaultMaxTableSize    = 64 << 10
	DefaultMaxPending      = 32
	maxCredentialsPerCall  = 16
	partialDetectionChunks = 32
	maxEarly               = 1024
)

// Options configure a Conn. One Options may be shared by many Conns; a Conn
// reads it only in NewConn.
type Options struct {
	// Fingerprint names a credential value; the daemon passes
	// credential.Key.Fingerprint. Nil records credentials by type only.
	Fingerprint func(secret string) string
	// HashQuery, when set, keeps a request's query string as
	// HashQuery(query); nil drops query strings.
	HashQuery func(query string) string
	// CredentialHeaders names further headers (case-insensitive) whose
	// value is an API key, besides x-api-key and api-key.
	CredentialHeaders []string

	// MaxHeaderBytes bounds one message's header block: HTTP/1.1 header
	// lines or HTTP/2 HPACK input, and separately the decoded header
	// list of an HTTP/2 block. Zero means DefaultMaxHeaderBytes.
	MaxHeaderBytes int
	// MaxStreams bounds the HTTP/2 streams tracked at once; a request
	// past it is returned at once, Partial. Zero means DefaultMaxStreams.
	MaxStreams int
	// MaxTableSize bounds each HPACK dynamic table. A peer allowed a larger
	// table (SETTINGS_HEADER_TABLE_SIZE) that grows past it costs the
	// connection its parse. Zero means DefaultMaxTableSize.
	MaxTableSize int
	// MaxPending bounds the HTTP/1.1 requests awaiting responses
	// (pipelining); one more stops the parse. Zero means DefaultMaxPending.
	MaxPending int
}

// Call is one HTTP request and what was seen of its response.
type Call struct {
	Version string // "1.1" or "2"
	Method  string
	Host    string // Host header or :authority
	Path    string // request target without its query string
	Query   string // Options.HashQuery(query) when set and there was a query
	Status  int    // final status; 0 when no response was seen
	// RequestBytes and ResponseBytes count body bytes as the application
	// sent them: Content-Length bytes or the sum of chunk sizes for
	// HTTP/1.1, DATA payload without padding for HTTP/2. Missing (not
	// captured) body bytes count.
	RequestBytes, ResponseBytes int64
	// Start is the time of the chunk carrying the request's first byte;
	// End that of the chunk completing the response, or of the Close, the
	// RST_STREAM or the loss of sync that ended the call.
	Start, End  time.Time
	StreamID    uint32 // HTTP/2 only
	Credentials []Credential
	// Partial says the capture could not be trusted for this call: the
	// connection was joined mid-stream (HTTP/1.1), bytes outside a body
	// were missing, or a limit was hit. Fields may be missing.
	Partial bool
}

// Conn parses one connection. It is not safe for concurrent use.
type Conn struct {
	opts    options
	partial bool
	proto   string
	dead    bool // parsing stopped; no buffers held

	sniff      []byte // first Sent bytes, until the protocol is known
	early      []byte // Received bytes before the protocol is known
	sentChunks int    // Sent chunks tried by partial detection

	h1 *h1conn
	h2 *h2conn
}

// options is Options resolved: limits filled in, header names lower-cased.
type options struct {
	fingerprint       func(string) string
	hashQuery         func(string) string
	credentialHeaders []string
	maxHeaderBytes    int
	maxStreams        int
	maxTableSize      uint32
	maxPending        int
}

func resolve(o *Options) options {
	r := options{
		maxHeaderBytes: DefaultMaxHeaderBytes,
		maxStreams:     DefaultMaxStreams,
		maxTableSize:   DefaultMaxTableSize,
		maxPending:     DefaultMaxPending,
	}
	if o == nil {
		return r
	}
	r.fingerprint = o.Fingerprint
	r.hashQuery = o.HashQuery
	for _, h := range o.CredentialHeaders {
		r.credentialHeaders = append(r.credentialHeaders, lower(h))
	}
	if o.MaxHeaderBytes > 0 {
		r.maxHeaderBytes = o.MaxHeaderBytes
	}
	if o.MaxStreams > 0 {
		r.maxStreams = o.MaxStreams
	}
	if o.MaxTableSize > 0 && o.MaxTableSize < 1<<30 {
		r.maxTableSize = uint32(o.MaxTableSize)
	}
	if o.MaxPending > 0 {
		r.maxPending = o.MaxPending
	}
	return r
}

// NewConn starts parsing a connection. partial says it was opened before
// capture began, so its first chunks may be the middle of a message.
//
// A partial connection is tried chunk by chunk: a Sent chunk beginning with
// the HTTP/2 client preface starts HTTP/2 as on a fresh connection (nothing
// has been sent yet, so no state was missed); one beginning with an HTTP/1.1
// request line starts HTTP/1.1, with every call marked Partial because a
// response to an earlier request may still be due. HTTP/2 frames cannot be
// found mid-stream without the preface, and the HPACK state before capture
// is lost anyway, so a partial connection that yields neither within
// partialDetectionChunks Sent chunks becomes ProtoNone.
func NewConn(opts *Options, partial bool) *Conn {
	return &Conn{opts: resolve(opts), partial: partial}
}

// Protocol reports what the connection was found to carry: ProtoHTTP1,
// ProtoH2, ProtoUnknown before the first request bytes, or ProtoNone when it
// is not HTTP and the Conn stopped parsing.
func (c *Conn) Protocol() string { return c.proto }

// Feed parses one chunk: dir is its direction, n the bytes the TLS call
// moved and data the captured prefix of them (len(data) <= n). It returns
// the calls the chunk completed.
func (c *Conn) Feed(dir Direction, data []byte, n int, at time.Time) []Call {
	if n < len(data) {
		n = len(data)
	}
	missing := int64(n - len(data))
	if c.dead || (dir != Sent && dir != Received) {
		return nil
	}
	switch {
	case c.h1 != nil:
		return c.h1.feed(dir, data, missing, at)
	case c.h2 != nil:
		return c.h2.feed(dir, data, missing, at)
	}
	return c.detect(dir, data, missing, at)
}

// Close ends the connection and returns the calls still open: those whose
// request was seen and whose response was not complete, with what is known.
// A response delimited by the connection's end completes here.
func (c *Conn) Close(at time.Time) []Call {
	var calls []Call
	switch {
	case c.h1 != nil:
		calls = c.h1.close(at)
	case c.h2 != nil:
		calls = c.h2.close(at)
	}
	c.stop()
	return calls
}

// stop drops all parser state; Protocol is kept.
func (c *Conn) stop() {
	c.dead = true
	c.sniff = nil
	c.early = nil
	c.h1 = nil
	c.h2 = nil
}

// stopH1 is how the HTTP/1.1 parser gives up; notHTTP says the very first
// request line was not one, so the connection was never HTTP.
func (c *Conn) stopH1(notHTTP bool) {
	if notHTTP {
		c.proto = ProtoNone
	}
	c.stop()
}

// h2Preface is what an HTTP/2 client sends first.
const h2Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

// detect decides the protocol from the first Sent bytes, which may come a
// byte at a time, so up to len(h2Preface) of them are held in c.sniff.
func (c *Conn) detect(dir Direction, data []byte, missing int64, at time.Time) []Call {
	if dir == Received {
		if c.partial {
			return nil
		}
		// Clients speak first in HTTP, but an HTTP/2 server's SETTINGS
		// may be read before the client's preface is seen; a little
		// is held for that. More is a protocol where the server talks
		// first.
		if missing > 0 || len(c.early)+len(data) > maxEarly {
			c.proto = ProtoNone
			c.stop()
			return nil
		}
		c.early = append(c.early, data...)
		return nil
	}
	if c.partial {
		return c.detectPartial(data, missing, at)
	}
	held := len(c.sniff)
	c.sniff = append(c.sniff, data[:min(len(data), len(h2Preface)-held)]...)
	switch sniffProtocol(c.sniff, missing > 0 || len(c.sniff) == len(h2Preface)) {
	case ProtoUnknown:
		return nil
	case ProtoH2:
		h := newH2(&c.opts, c.stop)
		c.h2, c.proto = h, ProtoH2
		rest := data[len(h2Preface)-held:]
		early := c.early
		c.sniff, c.early = nil, nil
		calls := h.feed(Received, early, 0, at)
		return append(calls, h.feed(Sent, rest, missing, at)...)
	case ProtoHTTP1:
		h := newH1(&c.opts, false, c.stopH1)
		c.h1, c.proto = h, ProtoHTTP1
		prev := c.sniff[:held]
		c.sniff, c.early = nil, nil
		calls := h.feed(Sent, prev, 0, at)
		return append(calls, h.feed(Sent, data, missing, at)...)
	}
	c.proto = ProtoNone
	c.stop()
	return nil
}

func (c *Conn) detectPartial(data []byte, missing int64, at time.Time) []Call {
	c.sentChunks++
	switch {
	case bytes.HasPrefix(data, []byte(h2Preface)):
		c.h2 = newH2(&c.opts, c.stop)
		c.proto = ProtoH2
		return c.h2.feed(Sent, data[len(h2Preface):], missing, at)
	case isRequestLine(data):
		c.h1 = newH1(&c.opts, true, c.stopH1)
		c.proto = ProtoHTTP1
		return c.h1.feed(Sent, data, missing, at)
	}
	if c.sentChunks >= partialDetectionChunks {
		c.proto = ProtoNone
		c.stop()
	}
	return nil
}

// buffered reports the bytes the Conn retains between Feed calls, for tests
// of its bounds: held input, HPACK tables at their allowed size, and the
// strings of open calls.
func (c *Conn) buffered() int {
	b := cap(c.sniff) + cap(c.early)
	if c.h1 != nil {
		b += c.h1.buffered()
	}
	if c.h2 != nil {
		b += c.h2.buffered()
	}
	return b
}
