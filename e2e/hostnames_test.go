package e2e

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/agentfence/agentfence/api/client"
	v1 "github.com/agentfence/agentfence/api/v1"

	"github.com/miekg/dns"

	"github.com/agentfence/agentfence/audit"
	"github.com/agentfence/agentfence/internal/kerneltest"
	"github.com/agentfence/agentfence/internal/privtest"
)

// The daemon puts the hostname programs where members are, whatever binds
// them: a session's cgroup, a child session below it, a process bound by
// pid. Each DNS answer is learned, and recorded, exactly once.
func TestHostnameSessionsThroughTheDaemon(t *testing.T) {
	d := startDaemon(t)
	c := client.New(d.socket)
	const resolver = "127.0.0.154:53"
	pc, err := net.ListenPacket("udp", resolver)
	if err != nil {
		privtest.Unavailable(t, "listen "+resolver+": "+err.Error())
	}
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(q)
		if len(q.Question) == 1 && q.Question[0].Qtype == dns.TypeA {
			ip := net.IPv4(127, 0, 0, 1)
			if strings.HasPrefix(q.Question[0].Name, "other.") {
				ip = net.IPv4(127, 0, 0, 2)
			}
			m.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: q.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: ip}}
		}
		w.WriteMsg(m)
	})}
	go srv.ActivateAndServe()
	defer srv.Shutdown()
	ln := kerneltest.Listen(t, "tcp4", "127.0.0.1:0")
	port := ln.Port()
	scope := []string{"udp://" + resolver, fmt.Sprintf("tcp://api.e2e.test:%d", port)}
	dial := func(host string) kerneltest.DialName {
		return kerneltest.DialName{Resolver: netip.MustParseAddrPort(resolver), Host: host, Port: port}
	}

	open := func(req v1.OpenRequest) v1.Session {
		t.Helper()
		s, err := c.Open(context.Background(), req)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	// dns any: the out-of-scope name resolves, so its connect is what is
	// refused (with the default, scoped, the query itself would be:
	// TestBypassDNSTunnel).
	parent := open(v1.OpenRequest{Intent: "names", Scope: scope, DNS: "any"})
	child := open(v1.OpenRequest{Intent: "child", Scope: scope, Parent: parent.ID})
	expectResults(t, kerneltest.Run(t, parent.Binding.Cgroup, kerneltest.Options{}, dial("api.e2e.test"), dial("other.e2e.test")), "ok", "EPERM")
	fromChild := kerneltest.Run(t, child.Binding.Cgroup, kerneltest.Options{}, dial("api.e2e.test"))
	expectResults(t, fromChild, "ok")

	// A process outside both cgroups, bound by pid.
	p := kerneltest.Start(t, "", kerneltest.Options{}, true, dial("api.e2e.test"))
	if res := p.Next(); res.Outcome() != kerneltest.Ready {
		t.Fatalf("probe: %s", res)
	}
	if _, err := c.Bind(context.Background(), parent.ID, v1.BindRequest{PID: uint32(p.PID)}); err != nil {
		t.Fatal(err)
	}
	p.Go()
	if res := p.Next(); res.Outcome() != "ok" {
		t.Errorf("pid-bound member: %s, want ok", res)
	}

	// Closing drains the events still in the rings first.
	for _, id := range []string{child.ID, parent.ID} {
		if err := c.Close(context.Background(), id); err != nil {
			t.Fatal(err)
		}
	}
	learned := map[uint32]int{}
	for _, r := range d.records(t) {
		if r.Kind == audit.KindDNS && r.Outcome != nil && r.Outcome.Reason == "learned" && r.Process != nil {
			learned[r.Process.PID]++
		}
	}
	for _, pid := range []uint32{uint32(fromChild[0].PID), uint32(p.PID)} {
		if learned[pid] != 1 {
			t.Errorf("pid %d: %d learned records for its one answer, want 1 (all: %v)", pid, learned[pid], learned)
		}
	}
}
