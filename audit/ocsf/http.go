package ocsf

import (
	"strconv"
	"strings"

	"github.com/agentfence/agentfence/audit"
)

// HTTPRequest is OCSF 1.3.0's http_request, restricted to what a call
// read at the TLS library tells.
type HTTPRequest struct {
	HTTPMethod string `json:"http_method,omitempty"`
	URL        *URL   `json:"url,omitempty"`
	Version    string `json:"version,omitempty"`
}

// URL is OCSF 1.3.0's url object.
type URL struct {
	Hostname  string `json:"hostname,omitempty"`
	Path      string `json:"path,omitempty"`
	Port      uint16 `json:"port,omitempty"`
	Scheme    string `json:"scheme,omitempty"`
	URLString string `json:"url_string,omitempty"`
}

// HTTPResponse is OCSF 1.3.0's http_response. Code is omitted, and the
// object left empty, when no response was seen: OCSF requires both, and an
// invented code would read as an answer the server never gave.
type HTTPResponse struct {
	Code int `json:"code,omitempty"`
}

// NetworkTraffic is OCSF 1.3.0's network_traffic. On an http event the
// counts are the call's body sizes (what the probes count), not bytes on
// the wire; zero is a real value (a GET sends no body), hence no omitempty.
type NetworkTraffic struct {
	BytesIn  int64 `json:"bytes_in"`
	BytesOut int64 `json:"bytes_out"`
}

// httpActivityNames are HTTP Activity's activity captions in OCSF 1.3.0,
// by activity_id; their upper-case forms are the methods they stand for.
var httpActivityNames = [...]string{"Unknown", "Connect", "Delete", "Get", "Head", "Options", "Post", "Put", "Trace"}

// httpActivity is the activity of method. Methods are case-sensitive
// (RFC 9110), so "get" is not GET: it is an Other like PATCH, named as the
// client wrote it, since 1.3.0 has no activity for either.
func httpActivity(method string) (int, string) {
	id := 0
	switch method {
	case "": // Unknown: the request line went unseen
	case "CONNECT":
		id = 1
	case "DELETE":
		id = 2
	case "GET":
		id = 3
	case "HEAD":
		id = 4
	case "OPTIONS":
		id = 5
	case "POST":
		id = 6
	case "PUT":
		id = 7
	case "TRACE":
		id = 8
	default:
		return activityOther, method
	}
	return id, httpActivityNames[id]
}

// http maps an HTTP call a member made over TLS to an HTTP Activity, the
// connection's endpoint and process mapped as network does for a connect:
// an SIEM correlates the call with the connect record by those.
func http(sc *scratch, r *audit.Record) {
	ev := &sc.ev
	h := r.HTTP
	if h == nil {
		h = &audit.HTTP{} // required objects are still emitted, empty
	}
	activity, name := httpActivity(h.Method)
	sev := verdict(sc, r.Outcome)
	classify(ev, catNetwork, ClassHTTPActivity, activity, name, sev)
	addProfile(sc, "host")
	ev.Actor = actor(sc, r, processOf(sc, r.Process))
	ev.DstEndpoint = &sc.endpoint
	var dstPort uint16
	if d := r.Destination; d != nil {
		sc.endpoint = Endpoint{IP: d.IP, Port: d.Port, Hostname: d.Hostname}
		ev.ConnectionInfo = connInfo(sc, d.Protocol)
		dstPort = d.Port
	}

	sc.httpReq = HTTPRequest{HTTPMethod: h.Method, Version: h.Version}
	ev.HTTPRequest = &sc.httpReq
	host, port := splitAuthority(h.Host)
	if port == 0 {
		port = dstPort
	}
	// url needs a path or a url_string; a call seen too late for both
	// gets none rather than an invalid one.
	if host != "" || h.Path != "" {
		sc.url = URL{Hostname: host, Path: h.Path, Port: port, Scheme: "https"}
		if h.Host != "" {
			sc.url.URLString = "https://" + h.Host + h.Path
		}
		sc.httpReq.URL = &sc.url
	}
	sc.httpResp = HTTPResponse{Code: h.Status}
	ev.HTTPResponse = &sc.httpResp

	if r.HTTP != nil {
		sc.traffic = NetworkTraffic{BytesIn: h.ResponseBytes, BytesOut: h.RequestBytes}
		ev.Traffic = &sc.traffic
		// The record's time is when the call started. A wall clock
		// stepped back mid-call can make the duration negative, which
		// OCSF cannot mean.
		d := max(h.DurationMS, 0)
		ev.StartTime, ev.EndTime, ev.Duration = ev.Time, ev.Time+d, d
	}

	u := &sc.unmapped.Agentfence
	u.HTTPPartial, u.QueryHash = h.Partial, h.Query
	if t := r.TLS; t != nil {
		sc.tls = *t
		u.TLS = &sc.tls
	}
	if c := r.Credential; c != nil {
		sc.credential = *c
		u.Credential = &sc.credential
	}
	ev.Message = message(r)
}

// splitAuthority splits a Host header or :authority into host and port,
// with no allocation: port is 0 when absent or not a port number, and
// an IPv6 literal loses its brackets, as url.hostname wants it.
func splitAuthority(a string) (host string, port uint16) {
	rest := ""
	if strings.HasPrefix(a, "[") {
		i := strings.IndexByte(a, ']')
		if i < 0 {
			return a, 0
		}
		host, rest = a[1:i], a[i+1:]
	} else if i := strings.IndexByte(a, ':'); i >= 0 && i == strings.LastIndexByte(a, ':') {
		host, rest = a[:i], a[i:]
	} else {
		return a, 0 // no port, or an unbracketed IPv6 address
	}
	if len(rest) < 2 || len(rest) > 6 || rest[0] != ':' {
		return host, 0
	}
	n := 0
	for _, c := range []byte(rest[1:]) {
		if c < '0' || c > '9' {
			return host, 0
		}
		n = n*10 + int(c-'0')
	}
	if n > 65535 {
		return host, 0
	}
	return host, uint16(n)
}

// appendHTTPMessage appends message()'s part for a call: " POST
// api.example.com/v1/tickets 201 (bearer 3f2a…)". The credential is named
// by its type and the head of its fingerprint, enough to tell two apart
// at a glance; the whole fingerprint is in unmapped.agentfence.
func appendHTTPMessage(b []byte, h *audit.HTTP, c *audit.Credential) []byte {
	if h.Method != "" {
		b = append(b, ' ')
		b = append(b, h.Method...)
	}
	if h.Host != "" || h.Path != "" {
		b = append(b, ' ')
		b = append(b, h.Host...)
		b = append(b, h.Path...)
	}
	if h.Status != 0 {
		b = append(b, ' ')
		b = strconv.AppendInt(b, int64(h.Status), 10)
	} else {
		b = append(b, " no response"...)
	}
	if h.Partial {
		b = append(b, " partial"...)
	}
	if c != nil {
		b = append(b, " ("...)
		b = append(b, c.Type...)
		switch {
		case c.Fingerprint != "":
			b = append(b, ' ')
			b = append(b, c.Fingerprint[:min(len(c.Fingerprint), 4)]...)
			b = append(b, "…"...)
		case c.KeyID != "": // an access key id is no secret
			b = append(b, ' ')
			b = append(b, c.KeyID...)
		}
		b = append(b, ')')
	}
	return b
}

// tlsUncovered maps a member's executable whose TLS is not read: OCSF has
// no class for a sensor's blind spot, so it is an Event Log Activity,
// with the stack and the reason under unmapped.
func tlsUncovered(sc *scratch, r *audit.Record) {
	ev := &sc.ev
	classify(ev, catSystem, ClassEventLogActivity, activityOther, "Other", sevInformational)
	ev.Actor = actor(sc, r, processOf(sc, r.Process))
	if t := r.TLS; t != nil {
		sc.tls = *t
		sc.unmapped.Agentfence.TLS = &sc.tls
	}
	ev.Message = message(r)
}
