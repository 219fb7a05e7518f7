package attribution

import (
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/agentfence/agentfence/audit"
	"github.com/agentfence/agentfence/credential"
	"github.com/agentfence/agentfence/httpwire"
	"github.com/agentfence/agentfence/sensor/tlsprobe"
	"github.com/agentfence/agentfence/session"
)

// The TLS libraries an http record names (tls.library).
const (
	LibraryOpenSSL        = "openssl"      // libssl
	LibraryOpenSSLBundled = "openssl:node" // an executable's own OpenSSL
	LibraryGo             = "go"           // Go's crypto/tls
)

// Calls turns the TLS probes' events into http records: the plaintext of
// each connection (a process's SSL object or *tls.Conn) goes through its own
// httpwire.Conn, and every call it completes becomes a record attributed
// like the connect that opened the socket. Safe for concurrent use; the
// records are made outside its lock, since looking up a process may wait
// for the process cache.
type Calls struct {
	Joiner *Joiner
	Wire   *httpwire.Options
	// MaxConns bounds the connections followed at once; past it the one
	// heard from least recently is closed, its open calls recorded as far
	// as they were seen (default 4096).
	MaxConns int
	// Holders are the registered credentials (nil: none): a call that
	// carries one from another executable than its holder's is flagged.
	Holders *credential.Holders
	// Bundled reports whether an executable carries its own OpenSSL (node)
	// rather than using libssl (nil: none does).
	Bundled func(exe string) bool

	mu    sync.Mutex // guards conns and the connections in it
	conns map[connKey]*tlsConn
}

// done is a connection's calls that a change completed, for records.
type done struct {
	conn   tlsConn // a copy: the connection may change once mu is released
	calls  []httpwire.Call
	bootNS uint64
}

type connKey struct {
	pid uint32
	ssl uint64
}

type tlsConn struct {
	wire   *httpwire.Conn
	slot   uint32
	gen    uint64
	peer   netip.AddrPort
	last   uint64 // boot ns of the last event
	pid    uint32
	comm   string
	socket bool
	goTLS  bool // Go's crypto/tls, not OpenSSL
	// watched: a process outside sessions the config names (tls.processes).
	watched bool
}

// Handle feeds one probe event to its connection and returns the records
// of the calls it completed.
func (c *Calls) Handle(ev tlsprobe.Event) []audit.Record {
	c.mu.Lock()
	fin := c.feed(ev)
	c.mu.Unlock()
	return c.records(fin)
}

func (c *Calls) feed(ev tlsprobe.Event) []done {
	if c.conns == nil {
		c.conns = map[connKey]*tlsConn{}
	}
	k := connKey{ev.PID, ev.Conn}
	tc := c.conns[k]
	at := c.Joiner.Clock.Wall(ev.BootNS)
	if ev.Op == tlsprobe.OpFree {
		if tc == nil {
			return nil
		}
		delete(c.conns, k)
		return []done{{*tc, tc.wire.Close(at), ev.BootNS}}
	}
	var out []done
	if tc == nil {
		if len(c.conns) >= c.maxConns() {
			out = append(out, c.evict())
		}
		partial := ev.Op != tlsprobe.OpWrite || !httpwire.StartsConnection(ev.Data)
		tc = &tlsConn{wire: httpwire.NewConn(c.Wire, partial), slot: ev.Slot, gen: ev.Gen, pid: ev.PID, goTLS: ev.Go,
			watched: ev.Watched()}
		c.conns[k] = tc
	}
	tc.last, tc.comm = ev.BootNS, ev.Comm
	if ev.FD >= 0 && ev.Peer.IsValid() {
		tc.peer, tc.socket = ev.Peer, true
	}
	dir := httpwire.Sent
	if ev.Op == tlsprobe.OpRead {
		dir = httpwire.Received
	}
	if calls := tc.wire.Feed(dir, ev.Data, int(ev.Size), at); len(calls) > 0 {
		out = append(out, done{*tc, calls, ev.BootNS})
	}
	return out
}

func (c *Calls) maxConns() int {
	if c.MaxConns > 0 {
		return c.MaxConns
	}
	return 4096
}

// evict closes the connection heard from least recently.
func (c *Calls) evict() done {
	var oldest connKey
	var tc *tlsConn
	for k, v := range c.conns {
		if tc == nil || v.last < tc.last {
			oldest, tc = k, v
		}
	}
	delete(c.conns, oldest)
	return done{*tc, tc.wire.Close(c.Joiner.Clock.Wall(tc.last)), tc.last}
}

// Idle closes the connections not heard from for quiet by boot time now
// (a process killed before SSL_free) and returns the records of their
// open calls.
func (c *Calls) Idle(now uint64, quiet time.Duration) []audit.Record {
	var fin []done
	c.mu.Lock()
	for k, tc := range c.conns {
		if now > tc.last && now-tc.last >= uint64(quiet) {
			delete(c.conns, k)
			fin = append(fin, done{*tc, tc.wire.Close(c.Joiner.Clock.Wall(tc.last)), tc.last})
		}
	}
	c.mu.Unlock()
	return c.records(fin)
}

// Open is the number of connections followed.
func (c *Calls) Open() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.conns)
}

func (c *Calls) records(fin []done) []audit.Record {
	var out []audit.Record
	for i := range fin {
		for _, call := range fin[i].calls {
			out = append(out, c.record(&fin[i].conn, call, fin[i].bootNS))
		}
	}
	return out
}

// record is one call's record. The process is looked up as it was at the
// event that completed the call.
func (c *Calls) record(tc *tlsConn, call httpwire.Call, bootNS uint64) audit.Record {
	j := c.Joiner
	rec := audit.Record{Schema: audit.SchemaVersion, Time: call.Start, Kind: audit.KindHTTP,
		Process: &audit.Process{PID: tc.pid, Comm: tc.comm},
		Outcome: &audit.Outcome{Verdict: audit.VerdictAllowed},
		HTTP: &audit.HTTP{Method: call.Method, Host: call.Host, Path: call.Path, Query: call.Query, Status: call.Status,
			Version: call.Version, RequestBytes: call.RequestBytes, ResponseBytes: call.ResponseBytes,
			DurationMS: call.End.Sub(call.Start).Milliseconds(), Partial: call.Partial},
		TLS: &audit.TLS{Library: LibraryOpenSSL, Socket: tc.socket}}
	if rec.Time.IsZero() {
		rec.Time = j.Clock.Wall(bootNS)
	}
	j.fillProcess(rec.Process, tc.pid, bootNS)
	switch {
	case tc.goTLS:
		rec.TLS.Library = LibraryGo
	case c.Bundled != nil && rec.Process.Exe != "" && c.Bundled(rec.Process.Exe):
		rec.TLS.Library = LibraryOpenSSLBundled
	}
	var s *session.Attribution
	if !tc.watched { // a watched process has no session to name
		s, _ = j.attribute(&rec, tc.slot, tc.gen, -1)
	}
	dst := &audit.Destination{Protocol: "tcp", Hostname: hostOnly(call.Host)}
	if tc.socket {
		dst.IP, dst.Port = tc.peer.Addr().Unmap().String(), tc.peer.Port()
	}
	rec.Destination = dst
	if len(call.Credentials) > 0 {
		cr := call.Credentials[0]
		rec.Credential = &audit.Credential{Type: string(cr.Type), Header: cr.Header, Fingerprint: cr.Fingerprint, KeyID: cr.KeyID}
		// The process's hash counts only when the cache computed it.
		holder, registered, held := c.Holders.Check(cr.Fingerprint, rec.Process.Exe, rec.Process.SHA256)
		rec.Credential.Holder = holder
		switch {
		case registered && !held:
			rec.Outcome = &audit.Outcome{Verdict: audit.VerdictFlagged, Reason: audit.ReasonCredentialOutsideHolder}
		case !registered && s != nil && s.Credentials == credential.ModeRegisteredOnly:
			rec.Outcome = &audit.Outcome{Verdict: audit.VerdictFlagged, Reason: audit.ReasonCredentialUnregistered}
		}
	}
	return rec
}

// hostOnly drops the port from an authority.
func hostOnly(authority string) string {
	if host, _, err := net.SplitHostPort(authority); err == nil {
		return host
	}
	return strings.Trim(authority, "[]")
}
