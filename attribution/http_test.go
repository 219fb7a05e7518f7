package attribution

import (
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/agentfence/agentfence/audit"
	"github.com/agentfence/agentfence/credential"
	"github.com/agentfence/agentfence/httpwire"
	"github.com/agentfence/agentfence/internal/boottime"
	"github.com/agentfence/agentfence/sensor/proccache"
	"github.com/agentfence/agentfence/sensor/tlsprobe"
)

func newCalls(t *testing.T) (*Calls, *fakeSessions) {
	ss := newSessions()
	ss.add(t, 2, 9, attribution("s-http", "file tickets"))
	fp := func(s string) string { return "fp(" + strings.ToUpper(s[:1]) + ")" }
	return &Calls{Joiner: &Joiner{Sessions: ss, Clock: boottime.NewClock()}, Wire: &httpwire.Options{Fingerprint: fp}}, ss
}

func ev(op tlsprobe.Op, conn uint64, at uint64, data string) tlsprobe.Event {
	return tlsprobe.Event{BootNS: at, Conn: conn, PID: 40, TID: 40, Slot: 2, Gen: 9, Op: op, Size: uint32(len(data)),
		Data: []byte(data), FD: 5, Peer: netip.MustParseAddrPort("127.0.0.1:8443"), Comm: "curl"}
}

const (
	request  = "POST /v1/tickets?id=7 HTTP/1.1\r\nHost: api.test:8443\r\nAuthorization: Bearer s3cr3t\r\nContent-Length: 3\r\n\r\nx=1"
	response = "HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok"
)

// A request and its response on one connection make one record, with
// the session, the socket's peer, and the credential by fingerprint.
func TestCallsRecord(t *testing.T) {
	c, _ := newCalls(t)
	if recs := c.Handle(ev(tlsprobe.OpWrite, 1, 1e9, request)); len(recs) != 0 {
		t.Fatalf("a request alone made %d records", len(recs))
	}
	recs := c.Handle(ev(tlsprobe.OpRead, 1, 1e9+5e6, response))
	if len(recs) != 1 {
		t.Fatalf("%d records, want 1", len(recs))
	}
	r := recs[0]
	if r.Kind != audit.KindHTTP || r.Session == nil || r.Session.ID != "s-http" || r.Outcome.Verdict != audit.VerdictAllowed {
		t.Errorf("record %+v", r)
	}
	want := audit.HTTP{Method: "POST", Host: "api.test:8443", Path: "/v1/tickets", Status: 201, Version: "1.1",
		RequestBytes: 3, ResponseBytes: 2, DurationMS: 5}
	if *r.HTTP != want {
		t.Errorf("http %+v, want %+v", *r.HTTP, want)
	}
	if d := r.Destination; d.IP != "127.0.0.1" || d.Port != 8443 || d.Hostname != "api.test" || d.Protocol != "tcp" {
		t.Errorf("destination %+v", d)
	}
	if r.TLS == nil || r.TLS.Library != "openssl" || !r.TLS.Socket {
		t.Errorf("tls %+v", r.TLS)
	}
	if cr := r.Credential; cr == nil || cr.Type != "bearer" || cr.Fingerprint != "fp(S)" || cr.Header != "authorization" {
		t.Errorf("credential %+v", cr)
	}
	if c.Open() != 1 {
		t.Errorf("%d connections followed, want 1 (still open)", c.Open())
	}
	if recs := c.Handle(ev(tlsprobe.OpFree, 1, 2e9, "")); len(recs) != 0 || c.Open() != 0 {
		t.Errorf("SSL_free: %d records, %d connections left", len(recs), c.Open())
	}
}

// A connection that ends (SSL_free), is evicted, or goes quiet gives the
// record of its unanswered call; connections are told apart by process
// and SSL object.
func TestCallsUnansweredAndBounded(t *testing.T) {
	c, _ := newCalls(t)
	c.MaxConns = 2
	c.Handle(ev(tlsprobe.OpWrite, 1, 1e9, request))
	other := ev(tlsprobe.OpWrite, 1, 1e9, request)
	other.PID = 41 // the same pointer in another process
	c.Handle(other)
	if c.Open() != 2 {
		t.Fatalf("%d connections, want 2", c.Open())
	}
	// A third evicts the one heard from least recently.
	recs := c.Handle(ev(tlsprobe.OpWrite, 3, 3e9, request))
	if len(recs) != 1 || recs[0].HTTP.Status != 0 || recs[0].HTTP.Method != "POST" || c.Open() != 2 {
		t.Fatalf("eviction gave %+v, %d open", recs, c.Open())
	}
	recs = c.Handle(ev(tlsprobe.OpFree, 3, 4e9, ""))
	if len(recs) != 1 || recs[0].HTTP.Status != 0 {
		t.Fatalf("SSL_free of an unanswered call gave %+v", recs)
	}
	if recs := c.Idle(4e9, time.Minute); len(recs) != 0 {
		t.Errorf("Idle closed a connection heard from 3 s ago: %+v", recs)
	}
	if recs := c.Idle(1e9+uint64(time.Minute), time.Minute); len(recs) != 1 || c.Open() != 0 {
		t.Errorf("Idle after a minute gave %d records, %d open", len(recs), c.Open())
	}
}

// A connection seen only from the middle (its first event a read, or a
// write that is no request) is followed from its next request, and its
// calls say so.
func TestCallsJoinedMidStream(t *testing.T) {
	c, _ := newCalls(t)
	c.Handle(ev(tlsprobe.OpWrite, 1, 1e9, "the rest of a body"))
	c.Handle(ev(tlsprobe.OpRead, 1, 1e9, response))
	c.Handle(ev(tlsprobe.OpWrite, 1, 2e9, request))
	recs := c.Handle(ev(tlsprobe.OpRead, 1, 3e9, response))
	if len(recs) != 1 || !recs[0].HTTP.Partial || recs[0].HTTP.Path != "/v1/tickets" || recs[0].HTTP.Status != 201 {
		t.Fatalf("records %+v", recs)
	}
}

// Without a socket (node's memory BIOs) the destination is the call's
// host alone.
func TestCallsWithoutSocket(t *testing.T) {
	c, _ := newCalls(t)
	c.Bundled = func(string) bool { return true }
	w := ev(tlsprobe.OpWrite, 1, 1e9, request)
	w.FD, w.Peer = -1, netip.AddrPort{}
	c.Handle(w)
	r := ev(tlsprobe.OpRead, 1, 2e9, response)
	r.FD, r.Peer = -1, netip.AddrPort{}
	recs := c.Handle(r)
	if len(recs) != 1 {
		t.Fatalf("%d records", len(recs))
	}
	if d := recs[0].Destination; d.IP != "" || d.Hostname != "api.test" || recs[0].TLS.Socket {
		t.Errorf("destination %+v, tls %+v", d, recs[0].TLS)
	}
}

func TestHostOnly(t *testing.T) {
	for in, want := range map[string]string{"api.test:443": "api.test", "api.test": "api.test", "[::1]:8443": "::1",
		"[::1]": "::1", "127.0.0.1:1": "127.0.0.1", "": ""} {
		if got := hostOnly(in); got != want {
			t.Errorf("hostOnly(%q) = %q, want %q", in, got, want)
		}
	}
}

// exes is a process cache that knows each process's executable.
type exes map[uint32]proccache.Process

func (e exes) LookupWait(_ context.Context, pid uint32, _ uint64) (proccache.Process, bool) {
	p, ok := e[pid]
	return p, ok
}
func (e exes) Lookup(pid uint32, at uint64) (proccache.Process, bool) {
	return e.LookupWait(context.Background(), pid, at)
}
func (exes) WaitFor(context.Context, uint64) bool { return true }

// A registered credential sent by its holder's executable is allowed and
// names the holder; sent by any other process it is flagged
// credential_outside_holder. An unregistered one is neither.
func TestCallsCredentialHolder(t *testing.T) {
	c, ss := newCalls(t)
	c.Joiner.Processes = exes{
		40: {ExePath: "/opt/mcp/tickets", HashState: proccache.HashOK, ExeSHA256: "aa"},
		41: {ExePath: "/usr/bin/curl", HashState: proccache.HashOK, ExeSHA256: "bb"},
	}
	c.Joiner.Wait = time.Second
	c.Holders = credential.NewHolders([]credential.Holder{{Name: "tickets-api", Fingerprint: "fp(S)",
		Executables: []credential.Executable{{Path: "/opt/mcp/tickets"}}}})
	call := func(pid uint32, req string) audit.Record {
		t.Helper()
		w := ev(tlsprobe.OpWrite, uint64(pid), 1e9, req)
		w.PID = pid
		c.Handle(w)
		r := ev(tlsprobe.OpRead, uint64(pid), 2e9, response)
		r.PID = pid
		recs := c.Handle(r)
		if len(recs) != 1 {
			t.Fatalf("%d records", len(recs))
		}
		return recs[0]
	}
	if r := call(40, request); r.Outcome.Verdict != audit.VerdictAllowed || r.Credential.Holder != "tickets-api" {
		t.Errorf("the holder's call: %+v, credential %+v", r.Outcome, r.Credential)
	}
	if r := call(41, request); r.Outcome.Verdict != audit.VerdictFlagged || r.Outcome.Reason != audit.ReasonCredentialOutsideHolder ||
		r.Credential.Holder != "tickets-api" {
		t.Errorf("another process's call: %+v, credential %+v", r.Outcome, r.Credential)
	}
	other := strings.Replace(request, "Bearer s3cr3t", "Bearer other", 1)
	if r := call(42, other); r.Outcome.Verdict != audit.VerdictAllowed || r.Credential.Holder != "" {
		t.Errorf("an unregistered credential: %+v, credential %+v", r.Outcome, r.Credential)
	}

	// In a registered-only session, a credential no holder owns is
	// flagged; a registered one from its holder is not.
	ro := attribution("s-ro", "registered only")
	ro.Credentials = credential.ModeRegisteredOnly
	ss.add(t, 2, 9, ro)
	if r := call(43, other); r.Outcome.Verdict != audit.VerdictFlagged || r.Outcome.Reason != audit.ReasonCredentialUnregistered {
		t.Errorf("an unregistered credential in a registered-only session: %+v", r.Outcome)
	}
	if r := call(40, request); r.Outcome.Verdict != audit.VerdictAllowed {
		t.Errorf("the holder in a registered-only session: %+v", r.Outcome)
	}
}

// A call from a session the daemon does not know (its state was lost) is
// recorded as such, its credential with it.
func TestCallsUnknownSession(t *testing.T) {
	c, _ := newCalls(t)
	w, r := ev(tlsprobe.OpWrite, 1, 1e9, request), ev(tlsprobe.OpRead, 1, 2e9, response)
	w.Slot, r.Slot = 5, 5
	c.Handle(w)
	recs := c.Handle(r)
	if len(recs) != 1 || recs[0].Session == nil || recs[0].Session.ID != "unknown" ||
		recs[0].Credential == nil || recs[0].Outcome.Verdict != audit.VerdictAllowed {
		t.Fatalf("records %+v", recs)
	}
}

// A call of a process outside sessions that tls.processes names carries
// no session, and a registered credential it sends outside its holders is
// flagged as a member's would be.
func TestCallsWatchedProcess(t *testing.T) {
	c, _ := newCalls(t)
	c.Holders = credential.NewHolders([]credential.Holder{{Name: "tickets-api", Fingerprint: "fp(S)",
		Executables: []credential.Executable{{Path: "/opt/mcp/tickets"}}}})
	w, r := ev(tlsprobe.OpWrite, 1, 1e9, request), ev(tlsprobe.OpRead, 1, 2e9, response)
	w.Slot, w.Gen, r.Slot, r.Gen = 0, 0, 0, 0
	if !w.Watched() {
		t.Fatal("slot 0, generation 0 is not the watched binding")
	}
	c.Handle(w)
	recs := c.Handle(r)
	if len(recs) != 1 {
		t.Fatalf("%d records", len(recs))
	}
	rec := recs[0]
	if rec.Session != nil || rec.Agent != nil || rec.Origin != nil {
		t.Errorf("session %+v, agent %+v, origin %+v", rec.Session, rec.Agent, rec.Origin)
	}
	if rec.Outcome.Verdict != audit.VerdictFlagged || rec.Outcome.Reason != audit.ReasonCredentialOutsideHolder {
		t.Errorf("outcome %+v", rec.Outcome)
	}
}

// Go's crypto/tls calls are named so, whatever else the executable is.
func TestCallsGo(t *testing.T) {
	c, _ := newCalls(t)
	c.Bundled = func(string) bool { return true }
	w, r := ev(tlsprobe.OpWrite, 1, 1e9, request), ev(tlsprobe.OpRead, 1, 2e9, response)
	w.Go, r.Go = true, true
	c.Handle(w)
	recs := c.Handle(r)
	if len(recs) != 1 || recs[0].TLS == nil || recs[0].TLS.Library != LibraryGo || !recs[0].TLS.Socket {
		t.Fatalf("records %+v", recs)
	}
}
