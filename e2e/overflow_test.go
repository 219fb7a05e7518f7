package e2e

import (
	"net"
	"net/netip"
	"syscall"
	"testing"

	"github.com/miekg/dns"

	"github.com/agentfence/agentfence/audit"
	"github.com/agentfence/agentfence/internal/kerneltest"
	"github.com/agentfence/agentfence/internal/privtest"
)

// TestRingOverflowAccounted: a member floods a ring while the daemon cannot
// read it (stopped with SIGSTOP, so the ring surely fills: the gate's and
// the hostname programs' rings hold ~7,700 decisions and ~2,700 learned
// addresses). The kernel still enforces, and what the ring could not take
// is in the trail as gap records: records and gaps add up to what the
// member did, exactly (threat model route 52).
func TestRingOverflowAccounted(t *testing.T) {
	lost := func(recs []audit.Record, source string) (n int) {
		for _, r := range recs {
			if r.Kind == audit.KindGap && r.Gap.Source == source {
				n += int(r.Gap.Count)
			}
		}
		return n
	}
	t.Run("gate", func(t *testing.T) {
		const n = 20000
		allowed := netip.MustParseAddrPort("127.0.0.1:9")
		denied := netip.MustParseAddrPort("127.0.0.1:10")
		d := startDaemon(t, "--config", configFile(t, "audit:\n  aggregate_window: 0s\n"))
		s := d.openSession(t, "--intent", "overflow", "--allow", "udp://"+allowed.String())
		var pid int
		stopped(t, d, func() {
			res := kerneltest.Run(t, s.Binding.Cgroup, kerneltest.Options{},
				kerneltest.Flood{Addr: allowed, N: n}, kerneltest.SendUDP{Addr: denied})
			if res[0].Outcome() != "ok" || res[1].Outcome() != "EPERM" {
				t.Fatalf("flood %s, send out of scope %s: the kernel must enforce with its reader stopped",
					res[0].Outcome(), res[1].Outcome())
			}
			pid = res[0].PID
		})
		var recs []audit.Record
		var got, gap int
		waitFor(t, "records and gaps for every decision", func() bool {
			recs = d.records(t)
			_, _, allowedN := decisions(recs, pid, allowed)
			_, _, deniedN := decisions(recs, pid, denied)
			got, gap = int(allowedN+deniedN), lost(recs, "kernel_ringbuf:gate")
			return got+gap >= n+1
		})
		if got+gap != n+1 || gap == 0 {
			t.Errorf("%d decisions recorded and %d in gap records, want %d in all and some lost (n must exceed the ring)", got, gap, n+1)
		}
	})
	t.Run("hostname", func(t *testing.T) {
		const answers, perAnswer = 500, 16
		const resolver = "127.0.0.156:53"
		d := startDaemon(t)
		pc, err := net.ListenPacket("udp4", resolver)
		if err != nil {
			privtest.Unavailable(t, "listen "+resolver+": "+err.Error())
		}
		defer pc.Close()
		s := d.openSession(t, "--intent", "overflow", "--allow", "udp://"+resolver, "--allow", "tcp://api.e2e.test:443")
		to := dnsMember(t, s.Binding.Cgroup, resolver, "api.e2e.test")
		answer := answerOf(t, "api.e2e.test", perAnswer)
		stopped(t, d, func() {
			for range answers {
				if _, err := pc.WriteTo(answer, to); err != nil {
					t.Fatal(err)
				}
			}
		})
		var learned, gap int
		waitFor(t, "records and gaps for every address learned", func() bool {
			recs := d.records(t)
			learned, gap = 0, lost(recs, "kernel_ringbuf:hostname")
			for _, r := range recs {
				if r.Kind == audit.KindDNS && r.Outcome != nil && r.Outcome.Reason == "learned" {
					learned++
				}
			}
			return learned+gap >= answers*perAnswer
		})
		if learned+gap != answers*perAnswer || gap == 0 {
			t.Errorf("%d addresses recorded and %d in gap records, want %d in all and some lost (the answers must exceed the ring)",
				learned, gap, answers*perAnswer)
		}
	})
}

// stopped runs fn while the daemon is stopped (SIGSTOP): nothing reads its
// rings meanwhile.
func stopped(t *testing.T, d *daemon, fn func()) {
	t.Helper()
	if err := d.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	defer d.cmd.Process.Signal(syscall.SIGCONT)
	fn()
}

// dnsMember starts a member holding, until the test ends, a UDP socket
// that has asked resolver for name, so that the kernel reads the answers
// sent to it; it returns the socket's address.
func dnsMember(tb testing.TB, cgroup, resolver, name string) *net.UDPAddr {
	tb.Helper()
	member := kerneltest.Start(tb, cgroup, kerneltest.Options{}, false,
		kerneltest.UDPSocket{Addr: netip.MustParseAddrPort("127.0.0.1:0")})
	res := member.Next()
	if res.Err != kerneltest.OK {
		tb.Fatalf("member udp socket: %s", res)
	}
	query := new(dns.Msg)
	query.SetQuestion(dns.Fqdn(name), dns.TypeA)
	q, err := query.Pack()
	if err != nil {
		tb.Fatal(err)
	}
	member.Do(kerneltest.UDPSend{To: netip.MustParseAddrPort(resolver), Data: q})
	if sent := member.Next(); sent.Err != kerneltest.OK {
		tb.Fatalf("member's query to the resolver: %s", sent)
	}
	return &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: int(res.Port)}
}

// answerOf packs an answer to an A query for name with n addresses.
func answerOf(tb testing.TB, name string, n int) []byte {
	tb.Helper()
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), dns.TypeA)
	m.Response = true
	for i := range n {
		m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: dns.Fqdn(name), Rrtype: dns.TypeA,
			Class: dns.ClassINET, Ttl: 60}, A: net.IPv4(127, 0, 1, byte(1+i))})
	}
	b, err := m.Pack()
	if err != nil {
		tb.Fatal(err)
	}
	return b
}
