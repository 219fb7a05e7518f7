package enforcer

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
	"unsafe"

	"github.com/miekg/dns"

	"github.com/agentfence/agentfence/internal/kerneltest"
	"github.com/agentfence/agentfence/internal/privtest"
	"github.com/agentfence/agentfence/internal/ringreader"
	"github.com/agentfence/agentfence/scope"
)

// Kernel tests of hostname scopes. A loopback DNS server (miekg/dns) answers
// with 127.0.0.0/8 and ::1 addresses; probes (kerneltest) run in a child
// process inside the session's cgroup.

// probe runs ops in a child process placed in the cgroup at cg and returns
// each one's outcome, with the address for a Resolve: "ok 127.0.0.1".
func probe(t testing.TB, cg string, ops ...kerneltest.Op) []string {
	t.Helper()
	res := kerneltest.Run(t, cg, kerneltest.Options{}, ops...)
	out := make([]string, len(res))
	for i, r := range res {
		out[i] = r.String()
	}
	return out
}

// resolve asks server (ADDR:PORT) for name's A records.
func resolve(server, name string) kerneltest.Resolve {
	return kerneltest.Resolve{Server: netip.MustParseAddrPort(server), Name: name}
}

// resolver is a loopback DNS server with programmable answers.
type resolver struct {
	addr string
	mu   sync.Mutex
	// answer returns the answer section for a question (nil: NXDOMAIN).
	answer func(q dns.Question) []dns.RR
	raw    [][]byte // replayed for replay.corpus.test
	srv    *dns.Server
}

func startResolver(t testing.TB, addr string, answer func(q dns.Question) []dns.RR) *resolver {
	t.Helper()
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		privtest.Unavailable(t, "listen "+addr+": "+err.Error())
	}
	r := &resolver{addr: addr, answer: answer}
	started := make(chan struct{})
	r.srv = &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(r.serve), NotifyStartedFunc: func() { close(started) }}
	go r.srv.ActivateAndServe()
	<-started
	t.Cleanup(func() { r.srv.Shutdown() })
	return r
}

func (r *resolver) serve(w dns.ResponseWriter, q *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(q)
	m.Compress = true
	if len(q.Question) != 1 {
		m.Rcode = dns.RcodeFormatError
		w.WriteMsg(m)
		return
	}
	if strings.EqualFold(q.Question[0].Name, "replay.corpus.test.") {
		r.mu.Lock()
		raw := r.raw
		r.mu.Unlock()
		for _, p := range raw {
			w.Write(p)
		}
		m.Id = 0xbeef
		w.WriteMsg(m)
		return
	}
	r.mu.Lock()
	ans := r.answer(q.Question[0])
	r.mu.Unlock()
	if ans == nil {
		m.Rcode = dns.RcodeNameError
	}
	m.Answer = ans
	w.WriteMsg(m)
}

func rrA(name string, ttl uint32, a netip.Addr) dns.RR {
	if a.Is4() {
		return &dns.A{Hdr: dns.RR_Header{Name: dns.Fqdn(name), Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: ttl}, A: a.AsSlice()}
	}
	return &dns.AAAA{Hdr: dns.RR_Header{Name: dns.Fqdn(name), Rrtype: dns.TypeAAAA, Class: dns.ClassINET, Ttl: ttl}, AAAA: a.AsSlice()}
}

func rrCNAME(name, target string) dns.RR {
	return &dns.CNAME{Hdr: dns.RR_Header{Name: dns.Fqdn(name), Rrtype: dns.TypeCNAME, Class: dns.ClassINET, Ttl: 60}, Target: dns.Fqdn(target)}
}

// hostFixture is a gate with hostname options and a reader of both rings.
type hostFixture struct {
	*fixture
	mu   sync.Mutex
	host []HostEvent
}

func hostSetup(t *testing.T, opts HostnameOptions) *hostFixture {
	t.Helper()
	hf := &hostFixture{fixture: newFixture(t, Options{Hostnames: opts})}
	f := hf.fixture
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for _, ring := range []struct {
		m      func() *ringreader.Reader
		handle func([]byte)
	}{
		{func() *ringreader.Reader { rd, _ := ringreader.New(f.g.Events(), 10*time.Millisecond); return rd }, func(raw []byte) {
			ev, err := DecodeEvent(raw)
			if err != nil {
				t.Errorf("decode: %v", err)
				return
			}
			f.mu.Lock()
			f.events = append(f.events, ev)
			f.cond.Broadcast()
			f.mu.Unlock()
		}},
		{func() *ringreader.Reader { rd, _ := ringreader.New(f.g.HostEvents(), 10*time.Millisecond); return rd }, func(raw []byte) {
			ev, err := DecodeHostEvent(raw)
			if err != nil {
				t.Errorf("decode host event: %v", err)
				return
			}
			f.g.NoteHostEvent(ev)
			hf.mu.Lock()
			hf.host = append(hf.host, ev)
			hf.mu.Unlock()
			f.mu.Lock()
			f.cond.Broadcast()
			f.mu.Unlock()
		}},
	} {
		rd := ring.m()
		if rd == nil {
			t.Fatal("ring reader")
		}
		wg.Add(1)
		go func(handle func([]byte)) { defer wg.Done(); rd.Run(ctx, handle) }(ring.handle)
	}
	t.Cleanup(func() { cancel(); wg.Wait() })
	return hf
}

// hostSession is fixture.session plus the hostname rules.
func (hf *hostFixture) hostSession(t *testing.T, s sessionSpec) string {
	t.Helper()
	if s.gen == 0 {
		s.gen = 1
	}
	var rules []scope.Rule
	for _, text := range s.rules {
		r, err := scope.Parse(text)
		if err != nil {
			t.Fatal(err)
		}
		rules = append(rules, r)
	}
	if err := hf.g.WriteNames(s.slot, s.gen, rules); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		hf.g.DeleteNames(s.slot, rules)
		hf.g.PurgeLearned(s.slot)
	})
	cg := hf.session(t, s)
	if err := hf.g.HookHostnames(cg); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { hf.g.UnhookHostnames(cg) })
	return cg
}

// waitHost waits for a hostname event matching match.
func (hf *hostFixture) waitHost(t *testing.T, match func(HostEvent) bool) HostEvent {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	timer := time.AfterFunc(10*time.Second, func() { hf.fixture.mu.Lock(); hf.cond.Broadcast(); hf.fixture.mu.Unlock() })
	defer timer.Stop()
	hf.fixture.mu.Lock()
	defer hf.fixture.mu.Unlock()
	for {
		hf.mu.Lock()
		for _, ev := range hf.host {
			if match(ev) {
				hf.mu.Unlock()
				return ev
			}
		}
		n := len(hf.host)
		hf.mu.Unlock()
		if time.Now().After(deadline) {
			t.Fatalf("no matching hostname event among %d", n)
		}
		hf.cond.Wait()
	}
}

// waitAnyEvent waits for a gate event from any process matching match.
func (hf *hostFixture) waitAnyEvent(t *testing.T, match func(Event) bool) Event {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	timer := time.AfterFunc(10*time.Second, func() { hf.fixture.mu.Lock(); hf.cond.Broadcast(); hf.fixture.mu.Unlock() })
	defer timer.Stop()
	hf.fixture.mu.Lock()
	defer hf.fixture.mu.Unlock()
	for {
		for _, ev := range hf.events {
			if match(ev) {
				return ev
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no matching event among %d", len(hf.events))
		}
		hf.cond.Wait()
	}
}

func hostStats(t testing.TB, g *Gate) HostStats {
	t.Helper()
	st, err := g.HostStats()
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// Resolve, then connect at once to the new address, 10,000 times, each
// answer a fresh address: the answer is learned in cgroup_skb ingress
// before recvmsg returns, so not one connect is denied.
func TestHostnameResolveThenConnect(t *testing.T) {
	hf := hostSetup(t, HostnameOptions{})
	var n uint32
	res := startResolver(t, "127.0.53.1:53", func(q dns.Question) []dns.RR {
		if !strings.EqualFold(q.Name, "burst.example.test.") || q.Qtype != dns.TypeA {
			return nil
		}
		n++
		return []dns.RR{rrA(q.Name, 0, netip.AddrFrom4([4]byte{127, 20, byte(n >> 8), byte(n)}))}
	})
	cg := hf.hostSession(t, sessionSpec{slot: 40, gen: 3, rules: []string{"udp://" + res.addr, "tcp://burst.example.test:443"}})
	rounds := privtest.Rounds(10000)
	loop := kerneltest.Run(t, cg, kerneltest.Options{},
		kerneltest.ResolveLoop{Server: netip.MustParseAddrPort(res.addr), Name: "burst.example.test", Port: 443, N: rounds})[0]
	t.Logf("%d resolve-then-connect rounds: %s %v", rounds, loop, loop.Tallies)
	// ECONNREFUSED: allowed, and nothing listens.
	if want := []map[string]int{{"ECONNREFUSED": rounds}}; loop.Err != kerneltest.OK || !reflect.DeepEqual(loop.Tallies, want) {
		t.Errorf("got %s %v, want %v (EPERM = false denials)", loop, loop.Tallies, want)
	}
	// A connect allowed through a learned name carries it.
	ev := hf.waitAnyEvent(t, func(e Event) bool { return e.Slot == 40 && e.ViaName })
	if name := hf.g.Hostname(40, ev.NameHash); name != "burst.example.test" || ev.Rule != 1 {
		t.Errorf("connect event: hostname %q, rule %d: %+v", name, ev.Rule, ev)
	}
	learned := hf.waitHost(t, func(e HostEvent) bool { return e.Kind == HostDNSLearned && e.Slot == 40 })
	if learned.Name != "burst.example.test" || !learned.Addr.Is4() || learned.TTL != defaultTTLMin || learned.Rule != 1 {
		t.Errorf("learned event: %+v", learned)
	}
	st := hostStats(t, hf.g)
	t.Logf("hostname stats: %+v", st)
	if st.Busy != 0 {
		t.Logf("note: %d nested runs bailed out", st.Busy)
	}
}

func TestHostnameNotInScope(t *testing.T) {
	hf := hostSetup(t, HostnameOptions{})
	res := startResolver(t, "127.0.53.1:53", func(q dns.Question) []dns.RR {
		switch strings.ToLower(q.Name) {
		case "api.example.test.":
			return []dns.RR{rrA(q.Name, 60, netip.MustParseAddr("127.21.0.1"))}
		case "other.example.test.":
			return []dns.RR{rrA(q.Name, 60, netip.MustParseAddr("127.21.0.2"))}
		}
		return nil
	})
	cg := hf.hostSession(t, sessionSpec{slot: 41, rules: []string{"udp://" + res.addr, "tcp://api.example.test:443"}})
	out := probe(t, cg,
		resolve(res.addr, "other.example.test"), kerneltest.Connect{Addr: netip.MustParseAddrPort("127.21.0.2:443")},
		resolve(res.addr, "api.example.test"), kerneltest.Connect{Addr: netip.MustParseAddrPort("127.21.0.1:443")}, kerneltest.Connect{Addr: netip.MustParseAddrPort("127.21.0.1:444")}, kerneltest.SendUDP{Addr: netip.MustParseAddrPort("127.21.0.1:443")})
	want := []string{"ok 127.21.0.2", "EPERM", "ok 127.21.0.1", "ECONNREFUSED", "EPERM", "EPERM"}
	for i := range want {
		if out[i] != want[i] {
			t.Errorf("action %d: got %s, want %s", i, out[i], want[i])
		}
	}
	ev := hf.waitHost(t, func(e HostEvent) bool { return e.Kind == HostDNSUnscoped && e.Slot == 41 })
	if ev.Name != "other.example.test" || ev.Reason != ReasonNameUnscoped || ev.QType != dns.TypeA || ev.Addr != netip.MustParseAddr("127.0.53.1") || ev.Comm == "" {
		t.Errorf("unscoped event: %+v", ev)
	}
}

func TestHostnameWildcard(t *testing.T) {
	hf := hostSetup(t, HostnameOptions{})
	addrs := map[string]string{
		"a.wild.example.test.": "127.24.0.1", "a.b.wild.example.test.": "127.24.0.2",
		"wild.example.test.": "127.24.0.3", "b.wild.example.test.": "127.24.0.4",
	}
	res := startResolver(t, "127.0.53.1:53", func(q dns.Question) []dns.RR {
		if a, ok := addrs[strings.ToLower(q.Name)]; ok {
			return []dns.RR{rrA(q.Name, 60, netip.MustParseAddr(a))}
		}
		return nil
	})
	cg := hf.hostSession(t, sessionSpec{slot: 42, rules: []string{"udp://" + res.addr, "*.wild.example.test:443"}})
	out := probe(t, cg,
		resolve(res.addr, "a.wild.example.test"), resolve(res.addr, "a.b.wild.example.test"),
		resolve(res.addr, "wild.example.test"), resolve(res.addr, "B.Wild.EXAMPLE.test"),
		kerneltest.Connect{Addr: netip.MustParseAddrPort("127.24.0.1:443")}, kerneltest.Connect{Addr: netip.MustParseAddrPort("127.24.0.2:443")}, kerneltest.Connect{Addr: netip.MustParseAddrPort("127.24.0.3:443")}, kerneltest.Connect{Addr: netip.MustParseAddrPort("127.24.0.4:443")})
	want := []string{"ok 127.24.0.1", "ok 127.24.0.2", "ok 127.24.0.3", "ok 127.24.0.4", "ECONNREFUSED", "EPERM", "EPERM", "ECONNREFUSED"}
	for i := range want {
		if out[i] != want[i] {
			t.Errorf("action %d: got %s, want %s", i, out[i], want[i])
		}
	}
	// The audit name of a wildcard match is the answer's name, from the
	// learned event.
	ev := hf.waitAnyEvent(t, func(e Event) bool {
		return e.Slot == 42 && e.ViaName && e.Dest.Addr() == netip.MustParseAddr("127.24.0.1")
	})
	hf.waitHost(t, func(e HostEvent) bool { return e.Kind == HostDNSLearned && e.NameHash == ev.NameHash })
	if name := hf.g.Hostname(42, ev.NameHash); name != "a.wild.example.test" {
		t.Errorf("wildcard connect named %q", name)
	}
	// The names a session learned an address for, as the joiner asks
	// whether a denial's destination is a declared MCP server's.
	for _, q := range []struct {
		gen  uint64
		addr string
		want []string
	}{
		{1, "127.24.0.1", []string{"a.wild.example.test"}},
		{1, "::ffff:127.24.0.1", []string{"a.wild.example.test"}}, // looked up as v4
		{2, "127.24.0.1", nil},                                    // another session in the slot
		{1, "127.24.0.2", nil},                                    // answered, not admitted
	} {
		if got := hf.g.LearnedNames(42, q.gen, netip.MustParseAddr(q.addr)); !slices.Equal(got, q.want) {
			t.Errorf("LearnedNames(42, %d, %s) = %q, want %q", q.gen, q.addr, got, q.want)
		}
	}
}

func TestHostnameTTLExpiry(t *testing.T) {
	hf := hostSetup(t, HostnameOptions{TTLMin: time.Millisecond, TTLMax: 300 * time.Millisecond})
	res := startResolver(t, "127.0.53.1:53", func(q dns.Question) []dns.RR {
		return []dns.RR{rrA(q.Name, 3600, netip.MustParseAddr("127.25.0.1"))}
	})
	cg := hf.hostSession(t, sessionSpec{slot: 43, gen: 5, rules: []string{"udp://" + res.addr, "ttl.example.test"}})
	out := probe(t, cg, resolve(res.addr, "ttl.example.test"), kerneltest.Connect{Addr: netip.MustParseAddrPort("127.25.0.1:80")})
	if out[0] != "ok 127.25.0.1" || out[1] != "ECONNREFUSED" {
		t.Fatalf("before expiry: %q", out)
	}
	learned, err := hf.g.Learned(43, 5)
	if err != nil || len(learned) != 1 || len(learned[0].Expires) != 1 {
		t.Fatalf("learned %+v, %v", learned, err)
	}
	deadline := learned[0].Expires[0]
	if d := time.Duration(deadline - bootNS()); d > 300*time.Millisecond {
		t.Errorf("TTL 3600 kept for %s; clamp is 300ms", d)
	}
	// Wait on the boot clock for the kernel's expiry; nobody in userspace
	// removes the address.
	for bootNS() <= deadline {
		time.Sleep(time.Duration(deadline-bootNS()) + time.Millisecond)
	}
	if out := probe(t, cg, kerneltest.Connect{Addr: netip.MustParseAddrPort("127.25.0.1:80")}); out[0] != "EPERM" {
		t.Errorf("after expiry: %s", out[0])
	}
	// A fresh answer admits it again.
	if out := probe(t, cg, resolve(res.addr, "ttl.example.test"), kerneltest.Connect{Addr: netip.MustParseAddrPort("127.25.0.1:80")}); out[1] != "ECONNREFUSED" {
		t.Errorf("after a new answer: %q", out)
	}
}

// CNAME chains and compressed names: the address of the chain's end is
// learned for the question; a record for a name outside the chain is not.
func TestHostnameCNAMEAndCompression(t *testing.T) {
	hf := hostSetup(t, HostnameOptions{})
	res := startResolver(t, "127.0.53.1:53", func(q dns.Question) []dns.RR {
		switch strings.ToLower(q.Name) {
		case "chain.example.test.":
			if q.Qtype == dns.TypeAAAA {
				return []dns.RR{rrCNAME(q.Name, "mid.example.net"), rrCNAME("mid.example.net", "edge.cdn.test"), rrA("edge.cdn.test", 60, netip.MustParseAddr("::1"))}
			}
			return []dns.RR{rrCNAME(q.Name, "mid.example.net"), rrCNAME("mid.example.net", "edge.cdn.test"),
				rrA("edge.cdn.test", 60, netip.MustParseAddr("127.26.0.1")), rrA("edge.cdn.test", 60, netip.MustParseAddr("127.26.0.2"))}
		case "stray.example.test.":
			return []dns.RR{rrA("evil.cdn.test", 60, netip.MustParseAddr("127.26.0.9")), rrA(q.Name, 60, netip.MustParseAddr("127.26.0.3"))}
		}
		return nil
	})
	// The answers really are compressed.
	m := new(dns.Msg)
	m.SetQuestion("chain.example.test.", dns.TypeA)
	m.Answer = res.answer(m.Question[0])
	m.Compress = true
	packed, _ := m.Pack()
	if !bytes.Contains(packed, []byte{0xc0, 0x0c}) {
		t.Fatalf("test answer is not compressed: %x", packed)
	}
	cg := hf.hostSession(t, sessionSpec{slot: 44, rules: []string{"udp://" + res.addr, "tcp://chain.example.test:443", "tcp://stray.example.test:443"}})
	out := probe(t, cg,
		resolve(res.addr, "chain.example.test"), kerneltest.Resolve{Server: netip.MustParseAddrPort(res.addr), Name: "chain.example.test", Type: dns.TypeAAAA}, resolve(res.addr, "stray.example.test"),
		kerneltest.Connect{Addr: netip.MustParseAddrPort("127.26.0.1:443")}, kerneltest.Connect{Addr: netip.MustParseAddrPort("127.26.0.2:443")}, kerneltest.Connect{Addr: netip.MustParseAddrPort("[::1]:443")}, kerneltest.Connect{Addr: netip.MustParseAddrPort("127.26.0.3:443")}, kerneltest.Connect{Addr: netip.MustParseAddrPort("127.26.0.9:443")}, kerneltest.Connect{Addr: netip.MustParseAddrPort("[::1]:444")})
	want := []string{"ok 127.26.0.1", "ok ::1", "ok 127.26.0.9", "ECONNREFUSED", "ECONNREFUSED", "ECONNREFUSED", "ECONNREFUSED", "EPERM", "EPERM"}
	for i := range want {
		if out[i] != want[i] {
			t.Errorf("action %d: got %s, want %s", i, out[i], want[i])
		}
	}
}

// The resolver must be in scope: a query to another one is refused, and
// an answer from an in-scope peer that is not a DNS port is not learned.
func TestHostnameResolverNotInScope(t *testing.T) {
	hf := hostSetup(t, HostnameOptions{})
	answer := func(q dns.Question) []dns.RR {
		return []dns.RR{rrA(q.Name, 60, netip.MustParseAddr("127.27.0.1"))}
	}
	inScope := startResolver(t, "127.0.53.1:53", answer)
	other := startResolver(t, "127.0.53.2:53", answer)
	highPort := startResolver(t, "127.0.53.3:5353", answer)
	cg := hf.hostSession(t, sessionSpec{slot: 45, rules: []string{"udp://" + inScope.addr, "udp://" + highPort.addr, "tcp://api.example.test:443"}})
	out := probe(t, cg,
		resolve(other.addr, "api.example.test"), kerneltest.SendUDP{Addr: netip.MustParseAddrPort(other.addr)},
		resolve(highPort.addr, "api.example.test"), kerneltest.Connect{Addr: netip.MustParseAddrPort("127.27.0.1:443")},
		resolve(inScope.addr, "api.example.test"), kerneltest.Connect{Addr: netip.MustParseAddrPort("127.27.0.1:443")})
	want := []string{"EPERM", "EPERM", "ok 127.27.0.1", "EPERM", "ok 127.27.0.1", "ECONNREFUSED"}
	for i := range want {
		if out[i] != want[i] {
			t.Errorf("action %d: got %s, want %s", i, out[i], want[i])
		}
	}
}

// sniServer accepts on a loopback address and counts the bytes each
// listener received.
type sniServer struct {
	ln  net.Listener
	mu  sync.Mutex
	got []byte
}

func startSNIServer(t *testing.T, addr string) *sniServer {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	s := &sniServer{ln: ln}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				buf := make([]byte, 4096)
				for {
					c.SetReadDeadline(time.Now().Add(30 * time.Second))
					n, err := c.Read(buf)
					s.mu.Lock()
					s.got = append(s.got, buf[:n]...)
					s.mu.Unlock()
					if err != nil {
						return
					}
				}
			}()
		}
	}()
	return s
}

func (s *sniServer) addr() netip.AddrPort { return s.ln.Addr().(*net.TCPAddr).AddrPort() }

func (s *sniServer) received() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.got)
}

// waitReceived waits until the server has n bytes (bounded).
func (s *sniServer) waitReceived(t *testing.T, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for s.received() < n {
		if time.Now().After(deadline) {
			t.Fatalf("server got %d bytes, want %d", s.received(), n)
		}
		time.Sleep(time.Millisecond)
	}
}

// TLS SNI: on an address allowed only through a learned name, the first
// segment must be a ClientHello naming an allowed host.
func TestHostnameSNI(t *testing.T) {
	hf := hostSetup(t, HostnameOptions{})
	res := startResolver(t, "127.0.53.1:53", func(q dns.Question) []dns.RR {
		if strings.EqualFold(q.Name, "sni.example.test.") {
			return []dns.RR{rrA(q.Name, 60, netip.MustParseAddr("127.28.0.1"))}
		}
		return nil
	})
	cases := []struct {
		name   string
		action func(addr netip.AddrPort) kerneltest.Op
		reason Reason // 0: allowed
		sni    string
	}{
		{"allowed", func(a netip.AddrPort) kerneltest.Op { return kerneltest.TLSHello{Addr: a, SNI: "sni.example.test"} }, 0, ""},
		{"allowed-case", func(a netip.AddrPort) kerneltest.Op { return kerneltest.TLSHello{Addr: a, SNI: "SNI.Example.Test"} }, 0, ""},
		{"other-allowed-name", func(a netip.AddrPort) kerneltest.Op { return kerneltest.TLSHello{Addr: a, SNI: "x.also.example.test"} }, 0, ""},
		{"mismatch", func(a netip.AddrPort) kerneltest.Op { return kerneltest.TLSHello{Addr: a, SNI: "evil.example.test"} }, ReasonSNIMismatch, "evil.example.test"},
		{"wrong-port-for-name", func(a netip.AddrPort) kerneltest.Op { return kerneltest.TLSHello{Addr: a, SNI: "port.example.test"} }, ReasonSNIMismatch, "port.example.test"},
		{"missing", func(a netip.AddrPort) kerneltest.Op { return kerneltest.TLSHello{Addr: a} }, ReasonSNIMissing, ""},
		{"plaintext", func(a netip.AddrPort) kerneltest.Op {
			return kerneltest.SendTCP{Addr: a, Data: []byte("GET / HTTP/1.1\r\nHost: evil\r\n\r\n")}
		}, ReasonSNIMissing, ""},
		{"split-before-sni", func(a netip.AddrPort) kerneltest.Op {
			return kerneltest.TLSHello{Addr: a, SNI: "sni.example.test", Split: 20}
		}, ReasonSNIIncomplete, ""},
	}
	var servers []*sniServer
	for i := range cases {
		servers = append(servers, startSNIServer(t, fmt.Sprintf("127.28.0.1:%d", 0)))
		_ = i
	}
	rules := []string{"udp://" + res.addr, "tcp://sni.example.test", "tcp://*.also.example.test", "tcp://port.example.test:1"}
	cg := hf.hostSession(t, sessionSpec{slot: 46, rules: rules})
	actions := []kerneltest.Op{resolve(res.addr, "sni.example.test")}
	for i, c := range cases {
		actions = append(actions, c.action(servers[i].addr()))
	}
	out := probe(t, cg, actions...)
	if out[0] != "ok 127.28.0.1" {
		t.Fatalf("resolve: %s", out[0])
	}
	for i, c := range cases {
		if out[i+1] != "ok" {
			t.Errorf("%s: connect/write %s", c.name, out[i+1])
			continue
		}
		port := servers[i].addr().Port()
		if c.reason == 0 {
			servers[i].waitReceived(t, 1)
			continue
		}
		ev := hf.waitHost(t, func(e HostEvent) bool { return e.Kind == HostSNI && e.Port == port })
		if ev.Reason != c.reason || ev.Name != c.sni || ev.Verdict != VerdictDenied || ev.Addr != netip.MustParseAddr("127.28.0.1") ||
			hf.g.Hostname(46, ev.NameHash) != "sni.example.test" || ev.Rule != 1 || ev.PID == 0 {
			t.Errorf("%s: event %+v (reason %s)", c.name, ev, ReasonString(ev.Reason))
		}
		// Dropped in egress before the event was written: none of it
		// reached the server.
		if n := servers[i].received(); n != 0 {
			t.Errorf("%s: server received %d bytes", c.name, n)
		}
	}
	// An address allowed by an address rule is not checked.
	ipOnly := startSNIServer(t, "127.28.0.2:0")
	cg2 := hf.hostSession(t, sessionSpec{slot: 47, rules: []string{"tcp://" + ipOnly.addr().String()}})
	if out := probe(t, cg2, kerneltest.SendTCP{Addr: ipOnly.addr(), Data: []byte{0}}); out[0] != "ok" {
		t.Fatal(out)
	}
	ipOnly.waitReceived(t, 1)
}

// Audit mode: an SNI mismatch is recorded as would_deny and let through.
func TestHostnameSNIAuditMode(t *testing.T) {
	hf := hostSetup(t, HostnameOptions{})
	res := startResolver(t, "127.0.53.1:53", func(q dns.Question) []dns.RR {
		return []dns.RR{rrA(q.Name, 60, netip.MustParseAddr("127.28.1.1"))}
	})
	srv := startSNIServer(t, "127.28.1.1:0")
	cg := hf.hostSession(t, sessionSpec{slot: 48, mode: ModeAudit, rules: []string{"udp://" + res.addr, "tcp://audit.example.test"}})
	out := probe(t, cg, resolve(res.addr, "audit.example.test"), kerneltest.TLSHello{Addr: srv.addr(), SNI: "evil.example.test"})
	if out[1] != "ok" {
		t.Fatal(out)
	}
	srv.waitReceived(t, 1)
	ev := hf.waitHost(t, func(e HostEvent) bool { return e.Kind == HostSNI && e.Slot == 48 })
	if ev.Verdict != VerdictWouldDeny || ev.Reason != ReasonSNIMismatch {
		t.Errorf("audit SNI event %+v", ev)
	}
}

func TestHashNameMatchesKernel(t *testing.T) {
	if HashName("API.Example.com.") != HashName("api.example.com") {
		t.Error("HashName must ignore case and a trailing dot")
	}
	// FNV-1a 64 of "a".
	if got := HashName("a"); got != 0xaf63dc4c8601ec8c {
		t.Errorf("HashName(a) = %#x", got)
	}
}

var updateCorpus = flag.Bool("update-corpus", false, "rewrite testdata/hostname-corpus from the generator")

const corpusDir = "testdata/hostname-corpus"

// corpusDNS builds malformed variants of a response for an allowed name:
// every one is broken within its answer walk, so none may teach an address.
func corpusDNS() [][]byte {
	m := new(dns.Msg)
	m.SetQuestion("corpus.example.test.", dns.TypeA)
	m.Response = true
	m.Compress = true
	m.Answer = []dns.RR{rrCNAME("corpus.example.test", "edge.corpus.test"),
		rrA("edge.corpus.test", 60, netip.MustParseAddr("127.29.0.1")), rrA("edge.corpus.test", 60, netip.MustParseAddr("127.29.0.2"))}
	base, err := m.Pack()
	if err != nil {
		panic(err)
	}
	var out [][]byte
	mut := func(f func(b []byte) []byte) {
		b := f(bytes.Clone(base))
		if b != nil {
			out = append(out, b)
		}
	}
	for n := 0; n < len(base); n++ { // every truncation
		mut(func(b []byte) []byte { return b[:n] })
	}
	for i := 12; i+1 < len(base); i++ { // every compression pointer, sent nowhere valid
		if base[i]&0xC0 != 0xC0 {
			continue
		}
		for _, target := range []int{i, i + 1, i + 2, len(base), 0x3FFF} {
			mut(func(b []byte) []byte { b[i] = 0xC0 | byte(target>>8)&0x3F; b[i+1] = byte(target); return b })
		}
	}
	qend := 12 + len("corpus.example.test") + 2
	for _, l := range []byte{63, 0x40, 0x80, 0xBF} { // bad label lengths in the question
		mut(func(b []byte) []byte { b[12] = l; return b })
	}
	for _, c := range []byte{' ', 0, 0xFF, '.', '*'} { // not hostname characters
		mut(func(b []byte) []byte { b[14] = c; return b })
	}
	mut(func(b []byte) []byte { b[2] &^= 0x80; return b }) // a query, not a response
	mut(func(b []byte) []byte { b[2] |= 0x08; return b })  // opcode IQUERY
	mut(func(b []byte) []byte { b[5] = 0; return b })      // no question
	mut(func(b []byte) []byte { b[5] = 2; return b })      // two questions
	mut(func(b []byte) []byte { b[7]++; return b })        // one answer more than present
	mut(func(b []byte) []byte { b[6], b[7] = 0xFF, 0xFF; return b })
	mut(func(b []byte) []byte { return append(b[:qend+4], b[qend+4+2:]...) }) // first answer's owner cut short
	// rdlength of each record made wrong.
	for off, i := qend+4, 0; i < 3; i++ {
		nameEnd := off
		for base[nameEnd] != 0 && base[nameEnd]&0xC0 != 0xC0 {
			nameEnd += int(base[nameEnd]) + 1
		}
		if base[nameEnd] == 0 {
			nameEnd++
		} else {
			nameEnd += 2
		}
		rdl := nameEnd + 8
		for _, d := range []int{-1, 1, 0xFFFF} {
			mut(func(b []byte) []byte {
				v := int(b[rdl])<<8 | int(b[rdl+1])
				v = (v + d) & 0xFFFF
				if d == 0xFFFF {
					v = 0xFFFF
				}
				b[rdl], b[rdl+1] = byte(v>>8), byte(v)
				return b
			})
		}
		off = rdl + 2 + (int(base[rdl])<<8 | int(base[rdl+1]))
	}
	// A name longer than 255 bytes in the question.
	mut(func(b []byte) []byte {
		long := []byte{}
		for i := 0; i < 5; i++ {
			long = append(long, 63)
			long = append(long, bytes.Repeat([]byte{'a'}, 63)...)
		}
		return append(append(b[:12:12], long...), b[12:]...)
	})
	// Random bytes behind a plausible header.
	rng := uint64(0x9E3779B97F4A7C15)
	for i := 0; i < 64; i++ {
		n := 12 + int(rng%300)
		b := make([]byte, n)
		for j := range b {
			rng ^= rng << 13
			rng ^= rng >> 7
			rng ^= rng << 17
			b[j] = byte(rng)
		}
		b[2], b[3], b[4], b[5] = 0x81, 0x80, 0, 1
		out = append(out, b)
	}
	return out
}

// corpusTLS builds malformed or unacceptable first segments: a ClientHello
// for a name not in scope, cut, bent and replaced by noise. None may pass.
func corpusTLS() [][]byte {
	base, err := kerneltest.ClientHello("evil.corpus.test")
	if err != nil {
		panic(err)
	}
	var out [][]byte
	mut := func(f func(b []byte) []byte) { out = append(out, f(bytes.Clone(base))) }
	sni := bytes.Index(base, []byte("evil.corpus.test"))
	for n := 1; n < len(base); n++ { // truncations: all around the SNI, every 13th elsewhere
		if (n > sni-12 && n < sni+20) || n%13 == 0 {
			mut(func(b []byte) []byte { return b[:n] })
		}
	}
	for _, c := range []byte{0, ' ', 0xFF, '*', '.'} { // bad characters in the name
		mut(func(b []byte) []byte { b[sni+4] = c; return b })
	}
	mut(func(b []byte) []byte { b[sni-3] = 1; return b })               // name_type not host_name
	mut(func(b []byte) []byte { b[sni-1] = 0xFF; return b })            // name longer than the extension
	mut(func(b []byte) []byte { b[sni-1] = 0; return b })               // empty name
	mut(func(b []byte) []byte { b[sni-4] = 0; b[sni-5] = 0; return b }) // list length 0
	mut(func(b []byte) []byte { b[sni-6] = 0; b[sni-7] = 2; return b }) // extension too short
	mut(func(b []byte) []byte { b[0] = 0x17; return b })                // application data, not a handshake
	mut(func(b []byte) []byte { b[5] = 2; return b })                   // ServerHello
	mut(func(b []byte) []byte { b[3], b[4] = 0, 10; return b })         // record shorter than the hello
	mut(func(b []byte) []byte { b[3], b[4] = 0xFF, 0xFF; return b })
	mut(func(b []byte) []byte { b[43] = 0xFF; return b }) // session id runs past the end
	mut(func(b []byte) []byte {
		return append([]byte("GET / HTTP/1.1\r\nHost: corpus.example.test\r\n\r\n"), b...)
	})
	rng := uint64(0xD1B54A32D192ED03)
	for i := 0; i < 32; i++ {
		n := 1 + int(rng%600)
		b := make([]byte, n)
		for j := range b {
			rng ^= rng << 13
			rng ^= rng >> 7
			rng ^= rng << 17
			b[j] = byte(rng)
		}
		if i%2 == 0 && n > 6 {
			b[0], b[1], b[5] = 0x16, 3, 1
		}
		out = append(out, b)
	}
	return out
}

func loadCorpus(t *testing.T, kind string, gen func() [][]byte) ([][]byte, []string) {
	t.Helper()
	dir := filepath.Join(corpusDir, kind)
	if *updateCorpus {
		os.RemoveAll(dir)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for i, b := range gen() {
			if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("%04d.bin", i)), b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	files, err := filepath.Glob(filepath.Join(dir, "*.bin"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no corpus in %s (go test -run TestHostnameCorpus -update-corpus): %v", dir, err)
	}
	var out [][]byte
	for i, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, b)
		if files[i], err = filepath.Abs(f); err != nil {
			t.Fatal(err)
		}
	}
	return out, files
}

// The committed corpus of malformed DNS answers and first segments, replayed
// through the real programs: nothing is learned, nothing passes the SNI
// check, nothing crashes, and the parsers still work afterwards.
func TestHostnameCorpus(t *testing.T) {
	dnsCorpus, _ := loadCorpus(t, "dns", corpusDNS)
	tlsCorpus, tlsFiles := loadCorpus(t, "tls", corpusTLS)
	hf := hostSetup(t, HostnameOptions{})
	res := startResolver(t, "127.0.53.1:53", func(q dns.Question) []dns.RR {
		if strings.EqualFold(q.Name, "corpus.example.test.") {
			return []dns.RR{rrA(q.Name, 60, netip.MustParseAddr("127.29.0.5"))}
		}
		return nil
	})
	res.raw = dnsCorpus
	cg := hf.hostSession(t, sessionSpec{slot: 49, gen: 2, rules: []string{"udp://" + res.addr, "tcp://corpus.example.test"}})
	before := hostStats(t, hf.g)
	out := probe(t, cg, kerneltest.DNSReplay{Server: netip.MustParseAddrPort(res.addr), N: len(dnsCorpus)})
	if out[0] != "ok" {
		t.Fatalf("replay: %s", out[0])
	}
	learned, err := hf.g.Learned(49, 2)
	if err != nil || len(learned) != 0 {
		t.Fatalf("the malformed corpus taught %+v (%v)", learned, err)
	}
	after := hostStats(t, hf.g)
	t.Logf("DNS corpus: %d responses, %d parsed, %d given up as malformed", len(dnsCorpus), after.Answers-before.Answers, after.Malformed-before.Malformed)

	// The parser still works, and the learned address carries the SNI replay.
	srv := startSNIServer(t, "127.29.0.5:0")
	actions := []kerneltest.Op{resolve(res.addr, "corpus.example.test")}
	for _, f := range tlsFiles {
		actions = append(actions, kerneltest.SendTCP{Addr: srv.addr(), File: f})
	}
	before = hostStats(t, hf.g)
	out = probe(t, cg, actions...)
	if out[0] != "ok 127.29.0.5" {
		t.Fatalf("resolve after the corpus: %s", out[0])
	}
	for i, o := range out[1:] {
		if o != "ok" {
			t.Errorf("TLS corpus %d: %s", i, o)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		st := hostStats(t, hf.g)
		if st.SNIOK != before.SNIOK {
			t.Fatalf("%d corpus segments passed the SNI check", st.SNIOK-before.SNIOK)
		}
		if st.SNIDrop-before.SNIDrop >= uint64(len(tlsCorpus)) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("SNI drops %d of %d", st.SNIDrop-before.SNIDrop, len(tlsCorpus))
		}
		time.Sleep(time.Millisecond)
	}
	if n := srv.received(); n != 0 {
		t.Errorf("the server received %d bytes of the TLS corpus", n)
	}
	t.Logf("TLS corpus: %d segments, all dropped", len(tlsCorpus))
}

// The hostname object declares the gate's maps with the same shapes; a
// mismatch would fail MapReplacements at load, this fails it at build.
func TestHostnameMapLayouts(t *testing.T) {
	gs, err := loadGate()
	if err != nil {
		t.Fatal(err)
	}
	hs, err := loadHostname()
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"sessions", "scope4", "scope6", "exact4", "exact6", "host_names", "learned", "session_socks"} {
		a, b := gs.Maps[name], hs.Maps[name]
		if a == nil || b == nil {
			t.Errorf("map %s missing", name)
			continue
		}
		if a.Type != b.Type || a.KeySize != b.KeySize || a.ValueSize != b.ValueSize || a.MaxEntries != b.MaxEntries || a.Flags != b.Flags {
			t.Errorf("map %s: gate %+v, hostname %+v", name, a, b)
		}
	}
	if m := gs.Maps["host_names"]; m.ValueSize != uint32(unsafe.Sizeof(gateNameVal{})) || m.KeySize != uint32(unsafe.Sizeof(gateNameKey{})) {
		t.Errorf("host_names %d/%d", m.KeySize, m.ValueSize)
	}
	if m := gs.Maps["learned"]; m.ValueSize != uint32(unsafe.Sizeof(gateLearnedVal{})) || m.KeySize != uint32(unsafe.Sizeof(gateLearnedKey{})) {
		t.Errorf("learned %d/%d", m.KeySize, m.ValueSize)
	}
	if HostEventSize%8 != 0 || len(gateNameVal{}.Scope.Rules) != scope.MaxPortRules || len(gateNameVal{}.Name) <= scope.MaxHostLen {
		t.Errorf("host event %d bytes", HostEventSize)
	}
}

// FuzzDecodeHostEvent: any record either fails to decode or decodes into
// an event whose name is at most what the kernel can write.
func FuzzDecodeHostEvent(f *testing.F) {
	f.Add(make([]byte, HostEventSize))
	f.Add([]byte{1, 2, 3})
	full := make([]byte, HostEventSize)
	for i := range full {
		full[i] = 0xff
	}
	f.Add(full)
	f.Fuzz(func(t *testing.T, raw []byte) {
		ev, err := DecodeHostEvent(raw)
		if err != nil {
			if len(raw) >= HostEventSize {
				t.Fatalf("a %d-byte record failed: %v", len(raw), err)
			}
			return
		}
		if len(ev.Name) > 256 || strings.IndexByte(ev.Name, 0) >= 0 {
			t.Fatalf("name %q", ev.Name)
		}
	})
}
