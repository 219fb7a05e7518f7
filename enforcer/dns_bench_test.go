package enforcer

import (
	"io"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/sys/unix"

	"github.com/agentfence/agentfence/internal/kerneltest"
	"github.com/agentfence/agentfence/internal/privtest"
	"github.com/agentfence/agentfence/scope"
)

// BenchmarkHostnames measures, in one run, the cost the hostname programs
// add: per DNS response delivered to a session socket (parse, match, learn)
// and per TCP connection allowed through a learned name (gate fallback plus
// the SNI check of the first segment), each against the same traffic with
// every program detached. The benchmark process itself is the session
// member (a pid binding). Configurations alternate in short batches so
// machine noise hits them alike; ratios are reported as metrics.
func BenchmarkHostnames(b *testing.B) {
	g, root := rootGate(b, Options{})
	const slot, gen = 60, 1
	var rules []scope.Rule
	for _, s := range []string{"udp://127.0.0.0/8", "tcp://bench.example.test", "tcp://127.30.0.2"} {
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
	if err := g.PutSession(slot, SessionState{Gen: gen, State: StateActive}); err != nil {
		b.Fatal(err)
	}
	pid := uint32(os.Getpid())
	if err := g.BindPid(pid, slot, gen); err != nil {
		b.Fatal(err)
	}
	// Bound by pid, the member may be in any cgroup: hooked at the root, as
	// the registry does.
	if err := g.HookHostnames(root); err != nil {
		b.Fatal(err)
	}
	defer func() {
		g.UnbindPid(pid)
		g.PutSession(slot, SessionState{Gen: gen})
	}()

	// A resolver socket and a client socket connected to it; the response
	// is a CNAME chain with two addresses, compressed.
	srv, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.MustParseAddrPort("127.0.53.9:53")))
	if err != nil {
		privtest.Unavailable(b, err.Error())
	}
	defer srv.Close()
	cli, err := net.DialUDP("udp4", nil, srv.LocalAddr().(*net.UDPAddr))
	if err != nil {
		b.Fatal(err)
	}
	defer cli.Close()
	if _, err := cli.Write([]byte("query")); err != nil { // marks the socket
		b.Fatal(err)
	}
	m := new(dns.Msg)
	m.SetQuestion("bench.example.test.", dns.TypeA)
	m.Response = true
	m.Compress = true
	m.Answer = []dns.RR{rrCNAME("bench.example.test", "edge.bench.test"),
		rrA("edge.bench.test", 300, netip.MustParseAddr("127.30.0.1")), rrA("edge.bench.test", 300, netip.MustParseAddr("127.30.0.3"))}
	resp, _ := m.Pack()
	to := cli.LocalAddr().(*net.UDPAddr)
	buf := make([]byte, 2048)
	dnsRound := func() {
		if _, err := srv.WriteToUDP(resp, to); err != nil {
			b.Fatal(err)
		}
		if _, err := cli.Read(buf); err != nil {
			b.Fatal(err)
		}
	}
	dnsRound()
	if l, _ := g.Learned(slot, gen); len(l) != 2 {
		b.Fatalf("learned %+v", l)
	}

	// TCP servers on the learned address and on an address-rule address.
	hello, err := kerneltest.ClientHello("bench.example.test")
	if err != nil {
		b.Fatal(err)
	}
	named := benchServer(b, "127.30.0.1:0")
	byAddr := benchServer(b, "127.30.0.2:0")
	conn := func(to netip.AddrPort) func() {
		sa := &unix.SockaddrInet4{Port: int(to.Port()), Addr: to.Addr().As4()}
		return func() {
			fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				b.Fatal(err)
			}
			unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
			if err := unix.Connect(fd, sa); err != nil {
				b.Fatal(err)
			}
			if _, err := unix.Write(fd, hello); err != nil {
				b.Fatal(err)
			}
			unix.Close(fd)
		}
	}
	connNamed, connAddr := conn(named), conn(byAddr)
	before, _ := g.HostStats()

	type cfg struct {
		attached bool
		op       func()
		total    time.Duration
		n        int
	}
	run := func(b *testing.B, cfgs []*cfg) {
		const batch = 200
		rounds := (b.N + batch - 1) / batch
		attached := true
		for r := 0; r < rounds; r++ {
			for i := range cfgs {
				c := cfgs[(i+r)%len(cfgs)]
				if c.attached != attached {
					if c.attached {
						if err := g.attach(root); err != nil {
							b.Fatal(err)
						}
					} else {
						g.detach()
					}
					attached = c.attached
				}
				start := time.Now()
				for j := 0; j < batch; j++ {
					c.op()
				}
				c.total += time.Since(start)
				c.n += batch
			}
		}
		if !attached {
			if err := g.attach(root); err != nil {
				b.Fatal(err)
			}
		}
	}
	per := func(c *cfg) float64 { return float64(c.total.Nanoseconds()) / float64(c.n) }

	b.Run("dns", func(b *testing.B) {
		on, off := &cfg{attached: true, op: dnsRound}, &cfg{op: dnsRound}
		run(b, []*cfg{on, off})
		b.ReportMetric(per(on), "ns/response-attached")
		b.ReportMetric(per(off), "ns/response-detached")
		b.ReportMetric(per(on)/per(off), "ratio")
		b.ReportMetric(0, "ns/op")
	})
	b.Run("sni", func(b *testing.B) {
		name, addr, off := &cfg{attached: true, op: connNamed}, &cfg{attached: true, op: connAddr}, &cfg{op: connNamed}
		run(b, []*cfg{name, addr, off})
		b.ReportMetric(per(name), "ns/conn-learned-name+sni")
		b.ReportMetric(per(addr), "ns/conn-address-rule")
		b.ReportMetric(per(off), "ns/conn-detached")
		b.ReportMetric(per(name)/per(off), "ratio-name")
		b.ReportMetric(per(addr)/per(off), "ratio-addr")
		b.ReportMetric(0, "ns/op")
	})
	after, _ := g.HostStats()
	if after.SNIDrop != before.SNIDrop {
		b.Errorf("%d benchmark connections were dropped by the SNI check", after.SNIDrop-before.SNIDrop)
	}
}

func benchServer(b *testing.B, addr string) netip.AddrPort {
	ln, err := net.Listen("tcp4", addr)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(io.Discard, c); c.Close() }()
		}
	}()
	return ln.Addr().(*net.TCPAddr).AddrPort()
}
