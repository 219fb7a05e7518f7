package enforcer

import (
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/miekg/dns"
	"golang.org/x/sys/unix"

	"github.com/agentfence/agentfence/internal/privtest"
	"github.com/agentfence/agentfence/scope"
)

// BenchmarkDNSQueryMode measures what judging a member's query costs: one
// DNS query for an allowed name, sent by a member of a scoped session and
// answered on loopback (sendto, the resolver's recvfrom and sendto, the
// member's recvfrom), with dns_egress attached and with a program that
// returns at once swapped into its link, in alternating batches of one run.
// The benchmark process is the member (a pid binding).
func BenchmarkDNSQueryMode(b *testing.B) {
	g, _ := rootGate(b, Options{})
	if g.host == nil {
		b.Fatal("no hostname programs")
	}
	const slot, gen = 61, 1
	var rules []scope.Rule
	for _, s := range []string{"udp://127.0.0.0/8", "tcp://bench.example.test:443"} {
		r, err := scope.Parse(s)
		if err != nil {
			b.Fatal(err)
		}
		rules = append(rules, r)
	}
	entries, err := scope.Compile(rules)
	if err != nil {
		b.Fatal(err)
	}
	if err := g.WriteScope(slot, gen, entries); err != nil {
		b.Fatal(err)
	}
	if err := g.WriteNames(slot, gen, rules); err != nil {
		b.Fatal(err)
	}
	defer g.DeleteNames(slot, rules)
	if err := g.PutSession(slot, SessionState{Gen: gen, State: StateActive, DNS: scope.DNSScoped}); err != nil {
		b.Fatal(err)
	}
	// The resolver's socket, made before this process joins (a member
	// may not bind port 53).
	srv, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		b.Fatal(err)
	}
	defer unix.Close(srv)
	srvAddr := &unix.SockaddrInet4{Port: 53, Addr: [4]byte{127, 0, 56, 1}}
	if err := unix.Bind(srv, srvAddr); err != nil {
		privtest.Unavailable(b, "bind 127.0.56.1:53: "+err.Error())
	}
	pid := uint32(os.Getpid())
	if err := g.BindPid(pid, slot, gen); err != nil {
		b.Fatal(err)
	}
	defer func() {
		g.UnbindPid(pid)
		g.PutSession(slot, SessionState{Gen: gen})
	}()

	var egress link.Link
	for _, l := range g.links {
		if info, err := l.Info(); err == nil {
			if id, _ := g.host.objs.DnsEgress.Info(); id != nil {
				if pid, ok := id.ID(); ok && info.Program == pid {
					egress = l
				}
			}
		}
	}
	if egress == nil {
		b.Fatal("dns_egress is not attached")
	}
	pass, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.CGroupSKB, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 1), asm.Return()}})
	if err != nil {
		b.Fatal(err)
	}
	defer pass.Close()
	defer egress.Update(g.host.objs.DnsEgress)

	// The member's socket, made after the binding: a member socket.
	cli, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		b.Fatal(err)
	}
	defer unix.Close(cli)
	m := new(dns.Msg)
	m.SetQuestion("bench.example.test.", dns.TypeA)
	query, _ := m.Pack()
	r := new(dns.Msg)
	r.SetRcode(m, dns.RcodeNameError)
	answer, _ := r.Pack()
	buf := make([]byte, 512)
	round := func() error {
		if err := unix.Sendto(cli, query, 0, srvAddr); err != nil {
			return fmt.Errorf("member sendto: %w", err)
		}
		_, from, err := unix.Recvfrom(srv, buf, 0)
		if err != nil {
			return err
		}
		if err := unix.Sendto(srv, answer, 0, from); err != nil {
			return err
		}
		_, _, err = unix.Recvfrom(cli, buf, 0)
		return err
	}
	if err := round(); err != nil {
		b.Fatal(err)
	}
	before := hostStats(b, g)

	cfgs := []struct {
		prog *ebpf.Program
		d    time.Duration
		n    int
	}{{prog: g.host.objs.DnsEgress}, {prog: pass}}
	const batch = 200
	rounds := (b.N + batch - 1) / batch
	b.ResetTimer()
	for k := 0; k < rounds; k++ {
		for i := range cfgs {
			c := &cfgs[i]
			if err := egress.Update(c.prog); err != nil {
				b.Fatal(err)
			}
			start := time.Now()
			for j := 0; j < batch; j++ {
				if err := round(); err != nil {
					b.Fatal(err)
				}
			}
			c.d += time.Since(start)
			c.n += batch
		}
	}
	b.StopTimer()
	after := hostStats(b, g)
	if got := after.QueryOK - before.QueryOK; got < uint64(cfgs[0].n) {
		b.Fatalf("dns_egress judged %d queries, want %d", got, cfgs[0].n)
	}
	per := func(i int) float64 { return float64(cfgs[i].d.Nanoseconds()) / float64(cfgs[i].n) }
	b.ReportMetric(per(0), "ns/query-attached")
	b.ReportMetric(per(1), "ns/query-detached")
	b.ReportMetric(per(0)/per(1), "ratio")
	b.ReportMetric(0, "ns/op")
}
