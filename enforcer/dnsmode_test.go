package enforcer

import (
	"encoding/binary"
	"io"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/agentfence/agentfence/internal/kerneltest"
	"github.com/agentfence/agentfence/internal/privtest"
	"github.com/agentfence/agentfence/scope"
)

// Kernel tests of the session's dns mode (dns_egress): the question name
// of a member's query decides whether it leaves the host at all.

// dnsq is a query for name's A records to server (ADDR:PORT) over network
// (udp or tcp), waiting for the answer.
func dnsq(network, server, name string) kerneltest.DNSQuery {
	return kerneltest.DNSQuery{Net: network, Server: netip.MustParseAddrPort(server), Name: name}
}

// dnsqHold is the query over TCP, its connection kept until a DNSReset.
func dnsqHold(server, name string) kerneltest.DNSQuery {
	q := dnsq("tcp", server, name)
	q.Hold = true
	return q
}

// queryLog is a resolver that only records the question names it receives
// (and answers NXDOMAIN), over UDP and TCP on one loopback address. UDP is
// read by one goroutine, so once the answer to a query is back, every
// datagram sent before it has been logged.
type queryLog struct {
	addr string
	mu   sync.Mutex
	got  []string
	conn sync.WaitGroup // TCP connections being served
}

func startQueryLog(t *testing.T, addr string) *queryLog {
	t.Helper()
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		privtest.Unavailable(t, "listen "+addr+": "+err.Error())
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		pc.Close()
		privtest.Unavailable(t, "listen "+addr+": "+err.Error())
	}
	q := &queryLog{addr: addr}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		buf := make([]byte, 65536)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			if a := q.answer(buf[:n]); a != nil {
				pc.WriteTo(a, from)
			}
		}
	}()
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			q.conn.Add(1)
			go func() {
				defer q.conn.Done()
				defer c.Close()
				for {
					var l [2]byte
					if _, err := io.ReadFull(c, l[:]); err != nil {
						return
					}
					msg := make([]byte, binary.BigEndian.Uint16(l[:]))
					if _, err := io.ReadFull(c, msg); err != nil {
						return
					}
					if a := q.answer(msg); a != nil {
						c.Write(append(binary.BigEndian.AppendUint16(nil, uint16(len(a))), a...))
					}
				}
			}()
		}
	}()
	t.Cleanup(func() { pc.Close(); ln.Close(); wg.Wait(); q.conn.Wait() })
	return q
}

func (q *queryLog) answer(raw []byte) []byte {
	m := new(dns.Msg)
	name := "(unparsable)"
	if err := m.Unpack(raw); err == nil && len(m.Question) == 1 {
		name = strings.TrimSuffix(m.Question[0].Name, ".")
	}
	q.mu.Lock()
	q.got = append(q.got, name)
	q.mu.Unlock()
	if name == "(unparsable)" {
		return nil
	}
	r := new(dns.Msg)
	r.SetRcode(m, dns.RcodeNameError)
	out, _ := r.Pack()
	return out
}

func (q *queryLog) names() []string {
	q.mu.Lock()
	defer q.mu.Unlock()
	return slices.Clone(q.got)
}

func (q *queryLog) expect(t *testing.T, want ...string) {
	t.Helper()
	if got := q.names(); !slices.Equal(got, want) {
		t.Errorf("the resolver received %q, want %q", got, want)
	}
}

func expectOut(t *testing.T, got []string, want ...string) {
	t.Helper()
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("action %d: got %s, want %s", i, got[i], want[i])
		}
	}
}

// waitQuery waits for the record of a refused query of slot.
func (hf *hostFixture) waitQuery(t *testing.T, slot uint32, name string) HostEvent {
	t.Helper()
	return hf.waitHost(t, func(e HostEvent) bool { return e.Kind == HostDNSQuery && e.Slot == slot && e.Name == name })
}

const tunnel = "aGVsbG8.evil.example"

// A scoped session asks only for names its hostname rules cover; a query
// for any other name fails at sendto with EPERM and never reaches the
// resolver, which the allowed marker query sent after it proves.
func TestDNSQueryScoped(t *testing.T) {
	hf := hostSetup(t, HostnameOptions{})
	res := startQueryLog(t, "127.0.54.1:53")
	cg := hf.hostSession(t, sessionSpec{slot: 60, dns: scope.DNSScoped,
		rules: []string{"udp://" + res.addr, "api.example.test:443", "*.wild.example.test:443"}})
	out := probe(t, cg,
		dnsq("udp", res.addr, "api.example.test"),
		dnsq("udp", res.addr, tunnel),
		dnsq("udp", res.addr, "a.b.wild.example.test"),
		dnsq("udp", res.addr, "wild.example.test"),
		kerneltest.SendUDP{Addr: netip.MustParseAddrPort(res.addr), Payload: []byte{0}},
		dnsq("udp", res.addr, "API.Example.Test"),
		dnsq("udp", res.addr, "marker.wild.example.test"))
	expectOut(t, out, "ok", "EPERM", "EPERM", "EPERM", "EPERM", "ok", "ok")
	res.expect(t, "api.example.test", "API.Example.Test", "marker.wild.example.test")

	ev := hf.waitQuery(t, 60, tunnel)
	if ev.Verdict != VerdictDenied || ev.Reason != ReasonDNSUnscoped || ReasonString(ev.Reason) != "dns_name_unscoped" ||
		ev.Addr != netip.MustParseAddr("127.0.54.1") || ev.Port != 53 || ev.QType != dns.TypeA || ev.Comm == "" || ev.PID == 0 {
		t.Errorf("record of the tunnel query: %+v", ev)
	}
	hf.waitQuery(t, 60, "a.b.wild.example.test")
	bad := hf.waitHost(t, func(e HostEvent) bool {
		return e.Kind == HostDNSQuery && e.Slot == 60 && e.Reason == ReasonDNSMalformed
	})
	if bad.Verdict != VerdictDenied {
		t.Errorf("record of the malformed query: %+v", bad)
	}
	st, err := hf.g.Session(60)
	if err != nil || st.Violations != 4 || st.DNS != scope.DNSScoped {
		t.Errorf("session after 4 refused queries: %+v, %v", st, err)
	}
}

// Over TCP the refused segment is dropped and the stream stays blocked;
// the resolver's end of that connection sees nothing before the reset.
func TestDNSQueryScopedTCP(t *testing.T) {
	hf := hostSetup(t, HostnameOptions{})
	res := startQueryLog(t, "127.0.54.2:53")
	cg := hf.hostSession(t, sessionSpec{slot: 61, dns: scope.DNSScoped,
		rules: []string{"tcp://" + res.addr, "api.example.test:443"}})
	out := probe(t, cg,
		dnsq("tcp", res.addr, "api.example.test"),
		dnsqHold(res.addr, tunnel),
		dnsq("tcp", res.addr, "api.example.test"),
		kerneltest.DNSReset{})
	expectOut(t, out, "ok", "ok", "ok", "ok")
	ev := hf.waitQuery(t, 61, tunnel)
	if ev.Verdict != VerdictDenied || ev.Reason != ReasonDNSUnscoped {
		t.Errorf("record: %+v", ev)
	}
	// Every connection has ended (the held one by its reset): what the
	// resolver logged is all it will ever get.
	res.conn.Wait()
	res.expect(t, "api.example.test", "api.example.test")
}

// dns none refuses every query, even for a name a hostname rule names and
// through a resolver an address rule admits.
func TestDNSQueryNone(t *testing.T) {
	hf := hostSetup(t, HostnameOptions{})
	res := startQueryLog(t, "127.0.54.3:53")
	cg := hf.hostSession(t, sessionSpec{slot: 62, dns: scope.DNSNone,
		rules: []string{res.addr, "api.example.test:443"}})
	out := probe(t, cg,
		dnsq("udp", res.addr, "api.example.test"),
		dnsqHold(res.addr, "api.example.test"),
		kerneltest.DNSReset{})
	expectOut(t, out, "EPERM", "ok", "ok")
	ev := hf.waitQuery(t, 62, "api.example.test")
	if ev.Verdict != VerdictDenied || ev.Reason != ReasonDNSNone {
		t.Errorf("record: %+v", ev)
	}
	res.conn.Wait()
	// A non-member's query through the same resolver is untouched, and
	// being answered it marks that nothing of the member's came before.
	c, err := net.Dial("udp", res.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	m := new(dns.Msg)
	m.SetQuestion("outside.example.test.", dns.TypeA)
	co := &dns.Conn{Conn: c}
	co.SetDeadline(time.Now().Add(5 * time.Second))
	if err := co.WriteMsg(m); err != nil {
		t.Fatal(err)
	}
	if _, err := co.ReadMsg(); err != nil {
		t.Fatal(err)
	}
	res.expect(t, "outside.example.test")
}

// A session with address rules only and the default mode (scoped) may ask
// for nothing: no hostname rule covers any name.
func TestDNSQueryAddressRulesOnly(t *testing.T) {
	hf := hostSetup(t, HostnameOptions{})
	res := startQueryLog(t, "127.0.54.4:53")
	cg := hf.session(t, sessionSpec{slot: 63, dns: scope.DefaultDNSMode, rules: []string{"udp://" + res.addr}})
	out := probe(t, cg, dnsq("udp", res.addr, "api.example.test"))
	expectOut(t, out, "EPERM")
	hf.waitQuery(t, 63, "api.example.test")
	res.expect(t)
}

// dns any is the behaviour before dns modes: the tunnel query leaves.
func TestDNSQueryAny(t *testing.T) {
	hf := hostSetup(t, HostnameOptions{})
	res := startQueryLog(t, "127.0.54.5:53")
	cg := hf.session(t, sessionSpec{slot: 64, dns: scope.DNSAny, rules: []string{res.addr}})
	out := probe(t, cg, dnsq("udp", res.addr, tunnel), dnsq("tcp", res.addr, tunnel))
	expectOut(t, out, "ok", "ok")
	res.expect(t, tunnel, tunnel)
}

// In audit mode the query leaves and the record says would_deny.
func TestDNSQueryAuditMode(t *testing.T) {
	hf := hostSetup(t, HostnameOptions{})
	res := startQueryLog(t, "127.0.54.6:53")
	cg := hf.hostSession(t, sessionSpec{slot: 65, dns: scope.DNSScoped, mode: ModeAudit,
		rules: []string{res.addr, "api.example.test:443"}})
	out := probe(t, cg, dnsq("udp", res.addr, tunnel), dnsq("tcp", res.addr, tunnel))
	expectOut(t, out, "ok", "ok")
	res.expect(t, tunnel, tunnel)
	ev := hf.waitQuery(t, 65, tunnel)
	if ev.Verdict != VerdictWouldDeny || ev.Reason != ReasonDNSUnscoped {
		t.Errorf("record: %+v", ev)
	}
}

// Without the DNS egress program (a kernel that refuses the hostname
// programs) the gate refuses the DNS port itself for a scoped or none
// session: no name can be read, so nothing may be asked.
func TestDNSQueryWithoutEgressProgram(t *testing.T) {
	f := setupWith(t, Options{NoHostnames: true})
	res := startQueryLog(t, "127.0.54.7:53")
	cg := f.session(t, sessionSpec{slot: 66, dns: scope.DNSScoped, rules: []string{res.addr}})
	out := probe(t, cg, dnsq("udp", res.addr, "api.example.test"), dnsq("tcp", res.addr, "api.example.test"))
	expectOut(t, out, "EPERM", "connect:EPERM")
	any := f.session(t, sessionSpec{slot: 67, name: "any", dns: scope.DNSAny, rules: []string{res.addr}})
	expectOut(t, probe(t, any, dnsq("udp", res.addr, tunnel)), "ok")
	res.expect(t, tunnel)
	// Denials wake the reader at once; both records come.
	deadline := time.Now().Add(10 * time.Second)
	timer := time.AfterFunc(10*time.Second, func() { f.mu.Lock(); f.cond.Broadcast(); f.mu.Unlock() })
	defer timer.Stop()
	f.mu.Lock()
	defer f.mu.Unlock()
	for {
		var hooks []Hook
		for _, ev := range f.events {
			if ev.Slot == 66 && ev.Reason == ReasonDNSNone && ev.Verdict == VerdictDenied {
				hooks = append(hooks, ev.Hook)
			}
		}
		if len(hooks) == 2 {
			if !slices.Contains(hooks, HookSendmsg4) || !slices.Contains(hooks, HookConnect4) {
				t.Errorf("dns_none records from hooks %v, want sendmsg4 and connect4", hooks)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d gate records with reason dns_none, want 2", len(hooks))
		}
		f.cond.Wait()
	}
}
