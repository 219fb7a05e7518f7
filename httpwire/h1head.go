package httpwire

import "bytes"

func (h *h1conn) requestLine(s *h1side, line []byte) bool {
	method, rest, ok := bytes.Cut(line, []byte(" "))
	target, version, ok2 := bytes.Cut(rest, []byte(" "))
	if !ok || !ok2 || requestStart(line) != matchYes || !bytes.HasPrefix(version, []byte("HTTP/1.")) || len(version) != 8 {
		return false
	}
	c := &h1call{Call: Call{Version: string(version[5:]), Method: string(method), Start: s.started, Partial: h.partial}}
	c.head = c.Method == "HEAD"
	c.tunnel = c.Method == "CONNECT"
	path, query, _ := bytes.Cut(target, []byte("?"))
	switch {
	case c.tunnel:
		c.Host = string(target)
	case bytes.Contains(path, []byte("://")):
		_, after, _ := bytes.Cut(path, []byte("://"))
		authority, p, found := bytes.Cut(after, []byte("/"))
		c.Host = string(authority)
		c.Path = "/"
		if found {
			c.Path = "/" + string(p)
		}
	default:
		c.Path = string(path)
	}
	if len(query) > 0 && !c.tunnel {
		if h.opts.hashQuery != nil {
			c.Query = h.opts.hashQuery(string(query))
		}
		c.Credentials = queryCredentials(h.opts, c.Credentials, query)
	}
	s.call = c
	return true
}

func (h *h1conn) statusLine(s *h1side, line []byte) bool {
	if len(line) < 12 || !bytes.HasPrefix(line, []byte("HTTP/1.")) || line[8] != ' ' || (len(line) > 12 && line[12] != ' ') {
		return false
	}
	for _, d := range line[9:12] {
		if d < '0' || d > '9' {
			return false
		}
		s.status = s.status*10 + int(d-'0')
	}
	if s.call == nil && len(h.queue) > 0 {
		s.call = h.queue[0]
	}
	return true
}

// header takes one header line. Only framing, Host and credential headers
// matter; other values are never copied.
func (h *h1conn) header(s *h1side, line []byte) bool {
	name, value, ok := bytes.Cut(line, []byte(":"))
	if !ok || len(name) == 0 || bytes.ContainsAny(name, " \t") {
		return false
	}
	value = trimOWS(value)
	switch {
	case asciiEqualFold(name, "content-length"):
		n, ok := parseDecimal(value)
		if !ok || (s.contentLength >= 0 && s.contentLength != n) {
			return false
		}
		s.contentLength = n
	case asciiEqualFold(name, "transfer-encoding"):
		// The last coding decides; anything but chunked is an error in
		// a request and a body to the close in a response.
		codings := bytes.Split(value, []byte(","))
		s.chunked = asciiEqualFold(trimOWS(codings[len(codings)-1]), "chunked")
		if !s.chunked {
			if s.dir == Sent {
				return false
			}
			s.contentLength = -1
		}
	case s.dir == Sent && asciiEqualFold(name, "host"):
		if s.call.Host == "" {
			s.call.Host = string(value)
		}
	case s.dir == Sent:
		s.call.Credentials = headerCredential(h.opts, s.call.Credentials, name, value)
	}
	return true
}

func parseDecimal(b []byte) (int64, bool) {
	if len(b) == 0 || len(b) > 18 {
		return 0, false
	}
	var n int64
	for _, d := range b {
		if d < '0' || d > '9' {
			return 0, false
		}
		n = n*10 + int64(d-'0')
	}
	return n, true
}

// chunkSize parses a chunk-size line, extensions ignored.
func chunkSize(line []byte) (int64, bool) {
	if i := bytes.IndexAny(line, "; \t"); i >= 0 {
		line = line[:i]
	}
	if len(line) == 0 || len(line) > 15 {
		return 0, false
	}
	var n int64
	for _, d := range line {
		switch {
		case d >= '0' && d <= '9':
			n = n<<4 | int64(d-'0')
		case d >= 'a' && d <= 'f', d >= 'A' && d <= 'F':
			n = n<<4 | int64(toLower(d)-'a'+10)
		default:
			return 0, false
		}
	}
	return n, true
}
