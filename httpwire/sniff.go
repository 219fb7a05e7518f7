package httpwire

import (
	"bytes"
)

const maxMethodLen = 16

// sniffProtocol classifies the first Sent bytes of a connection. It returns
// ProtoUnknown while b is too short to tell, unless final says no more bytes
// are coming.
func sniffProtocol(b []byte, final bool) string {
	if bytes.HasPrefix([]byte(h2Preface), b) {
		if len(b) == len(h2Preface) {
			return ProtoH2
		}
		if !final {
			return ProtoUnknown
		}
	}
	switch requestStart(b) {
	case matchYes:
		return ProtoHTTP1
	case matchMore:
		if !final {
			return ProtoUnknown
		}
	}
	return ProtoNone
}

// StartsConnection reports whether b, the first bytes a client sent on a
// connection, are its beginning: the HTTP/2 preface or an HTTP/1 request
// line. Anything else was joined mid-stream (NewConn's partial).
func StartsConnection(b []byte) bool { return sniffProtocol(b, true) != ProtoNone }

type match uint8

const (
	matchNo match = iota
	matchMore
	matchYes
)

// requestStart matches the start of an HTTP/1 request line: a method of
// upper-case letters, a space and a target beginning "/", "*" or "http"
// (absolute form, as sent to proxies), or any target for CONNECT.
func requestStart(b []byte) match {
	i := 0
	for i < len(b) && i <= maxMethodLen && b[i] >= 'A' && b[i] <= 'Z' {
		i++
	}
	switch {
	case i == len(b) && i <= maxMethodLen:
		return matchMore
	case i == 0 || i > maxMethodLen || b[i] != ' ':
		return matchNo
	}
	method, t := b[:i], b[i+1:]
	if len(t) == 0 {
		return matchMore
	}
	if string(method) == "CONNECT" && t[0] > ' ' && t[0] < 0x7f {
		return matchYes
	}
	if t[0] == '/' || t[0] == '*' {
		return matchYes
	}
	const abs = "http"
	n := min(len(t), len(abs))
	if !asciiEqualFold(t[:n], abs[:n]) {
		return matchNo
	}
	if n < len(abs) {
		return matchMore
	}
	return matchYes
}

// isRequestLine is the stricter test for a connection joined mid-stream,
// where a body may happen to begin like a request: the whole first line must
// be in data and end in an HTTP/1 version.
func isRequestLine(data []byte) bool {
	if requestStart(data) != matchYes {
		return false
	}
	eol := bytes.IndexByte(data, '\n')
	if eol < 0 {
		return false
	}
	line := bytes.TrimSuffix(data[:eol], []byte("\r"))
	sp := bytes.LastIndexByte(line, ' ')
	return sp > 0 && bytes.HasPrefix(line[sp+1:], []byte("HTTP/1."))
}

// asciiEqualFold compares b to s, ignoring ASCII case, without allocating.
func asciiEqualFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := range len(b) {
		if toLower(b[i]) != toLower(s[i]) {
			return false
		}
	}
	return true
}

func toLower(c byte) byte {
	if c >= 'A' && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}

// lower returns s in ASCII lower case, allocating only when it changes.
func lower(s string) string {
	for i := range len(s) {
		if c := s[i]; c >= 'A' && c <= 'Z' {
			b := []byte(s)
			for j := i; j < len(b); j++ {
				b[j] = toLower(b[j])
			}
			return string(b)
		}
	}
	return s
}

// trimOWS strips the optional white space around a header value.
func trimOWS(b []byte) []byte {
	return bytes.Trim(b, " \t")
}
