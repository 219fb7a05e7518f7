package enforcer

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/agentfence/agentfence/internal/boottime"
	"github.com/agentfence/agentfence/internal/kerneltest"
	"github.com/agentfence/agentfence/scope"
)

// Inbound is in scope: a member binds only ports an in: rule names, and
// only peers its scope admits reach its sockets (gate.c, gate_ingress).
// Peers here are this test process, which is in no session.

// freePorts returns n TCP and UDP ports free on loopback right now.
func freePorts(t *testing.T, n int) []uint16 {
	t.Helper()
	var out []uint16
	for len(out) < n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		p := l.Addr().(*net.TCPAddr).AddrPort().Port()
		l.Close()
		if u, err := net.ListenPacket("udp", fmt.Sprintf("127.0.0.1:%d", p)); err == nil {
			u.Close()
			out = append(out, p)
		}
	}
	return out
}

// hostText is a's host prefix as a rule writes it.
func hostText(a netip.Addr) string {
	if a.Is6() {
		return fmt.Sprintf("[%s]/128", a)
	}
	return a.String() + "/32"
}

// rescope replaces the scope of the session in slot (generation 1) with
// rules, as narrowing or widening by the registry would.
func (f *fixture) rescope(t *testing.T, slot uint32, rules ...string) {
	t.Helper()
	var rs []scope.Rule
	for _, text := range rules {
		r, err := scope.Parse(text)
		if err != nil {
			t.Fatal(err)
		}
		rs = append(rs, r)
	}
	entries, err := scope.Compile(rs)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.g.WriteScope(slot, 1, entries); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.g.DeleteScope(slot, entries) })
}

// listener starts a member listening on addr ("": listen without bind) and
// returns its pid and port.
func listener(t *testing.T, cg, addr string) (int, uint16) {
	t.Helper()
	var op kerneltest.ListenTCP
	if addr != "" {
		op.Addr = netip.MustParseAddrPort(addr)
	}
	res := kerneltest.Start(t, cg, kerneltest.Options{}, false, op).Next()
	if res.Err != kerneltest.OK {
		t.Fatalf("member listen %s: %s", addr, res)
	}
	return res.PID, res.Port
}

// refused asserts that a connect from this process to the member listener
// at to is refused: the gate records dropping it, and the handshake never
// completes (a SYN-ACK, had there been one, came before the record).
func (f *fixture) refused(t *testing.T, pid int, to netip.AddrPort, verdict Verdict) Event {
	t.Helper()
	fd, port := kerneltest.Dial(t, to)
	ev := f.waitEvent(t, pid, func(e Event) bool { return e.Hook.Inbound() && e.Dest.Port() == port })
	if verdict == VerdictDenied && kerneltest.Connected(t, fd, 0) {
		// An open race (docs/threat-model.md, route 11): seen on 6.1 under
		// TCG and twice natively in some fifty runs, the handshake
		// completed although the gate recorded dropping a segment of this
		// peer (the final ACK, it seems: the SYN passed unrecorded). It is
		// logged with every event of the peer and what the kernel holds
		// for its port, and tried once more: twice in a row fails.
		t.Logf("open race: connect to %s from port %d completed although the gate dropped a segment; its events: %+v; sockets: %s",
			to, port, f.peerEvents(port), tcpSockets(port))
		fd, port = kerneltest.Dial(t, to)
		ev = f.waitEvent(t, pid, func(e Event) bool { return e.Hook.Inbound() && e.Dest.Port() == port })
		if kerneltest.Connected(t, fd, 0) {
			t.Errorf("connect to %s from port %d completed although the gate dropped a segment, twice in a row; its events: %+v; sockets: %s",
				to, port, f.peerEvents(port), tcpSockets(port))
		}
	}
	if ev.Verdict != verdict || ev.Reason != ReasonNoRule || ev.Local.Port() != to.Port() || ev.Protocol != unix.IPPROTO_TCP || ev.Rule != NoRule {
		t.Errorf("inbound record: %+v", ev)
	}
	return ev
}

// peerEvents are the inbound events of the peer at port.
func (f *fixture) peerEvents(port uint16) []Event {
	f.mu.Lock()
	defer f.mu.Unlock()
	var seen []Event
	for _, e := range f.events {
		if e.Hook.Inbound() && e.Dest.Port() == port {
			seen = append(seen, e)
		}
	}
	return seen
}

// tcpSockets lists the lines of /proc/net/tcp and tcp6 with port at
// either end, for the race above.
func tcpSockets(port uint16) string {
	hex := fmt.Sprintf(":%04X ", port)
	var out []string
	for _, file := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		b, _ := os.ReadFile(file)
		for _, line := range strings.Split(string(b), "\n") {
			if strings.Contains(line, hex) {
				out = append(out, strings.Join(strings.Fields(line)[1:4], " "))
			}
		}
	}
	return strings.Join(out, "; ")
}

func admitted(t *testing.T, to netip.AddrPort) {
	t.Helper()
	fd, _ := kerneltest.Dial(t, to)
	if !kerneltest.Connected(t, fd, 10*time.Second) {
		t.Errorf("connect to %s did not complete", to)
	}
}

func TestBindNeedsInRule(t *testing.T) {
	f := setup(t)
	p := freePorts(t, 2)
	named, unnamed := p[0], p[1]
	cg := f.session(t, sessionSpec{slot: 40, rules: []string{fmt.Sprintf("in:tcp://127.0.0.1/32:%d", named)}})
	res := kerneltest.Run(t, cg, kerneltest.Options{},
		kerneltest.Bind{Addr: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), named)},
		kerneltest.Bind{Addr: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), unnamed)},
		kerneltest.Bind{Addr: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), named), UDP: true}, // the rule is TCP only
		kerneltest.Bind{Addr: netip.MustParseAddrPort("127.0.0.1:0")},                                 // an ephemeral port: judged per packet
		kerneltest.Bind{Addr: netip.AddrPortFrom(netip.MustParseAddr("::"), named)},                   // the port is the member's, whatever the address
		kerneltest.Bind{Addr: netip.AddrPortFrom(netip.MustParseAddr("::"), unnamed)},
		kerneltest.Bind{Addr: netip.AddrPortFrom(netip.MustParseAddr("::ffff:127.0.0.1"), unnamed)},
		kerneltest.Bind{Addr: netip.AddrPortFrom(netip.MustParseAddr("0.0.0.0"), unnamed)},
	)
	expect(t, res, "ok", "EPERM", "EPERM", "ok", "ok", "EPERM", "EPERM", "EPERM")
	ev := f.waitEvent(t, res[1].PID, func(e Event) bool { return e.Hook == HookBind4 && e.Verdict != VerdictAllowed })
	if ev.Verdict != VerdictDenied || ev.Reason != ReasonNoRule || ev.Dest != netip.MustParseAddrPort(fmt.Sprintf("127.0.0.1:%d", unnamed)) || ev.Protocol != unix.IPPROTO_TCP {
		t.Errorf("bind record: %+v", ev)
	}
	ev = f.waitEvent(t, res[6].PID, func(e Event) bool { return e.Hook == HookBind6 && e.Dest.Addr().Is4() })
	if ev.Verdict != VerdictDenied || ev.Dest.Port() != unnamed {
		t.Errorf("v4-mapped bind record should carry the IPv4 address: %+v", ev)
	}
	// Outside a session, binding is not judged.
	expect(t, kerneltest.Run(t, "", kerneltest.Options{}, kerneltest.Bind{Addr: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), unnamed)}), "ok")
}

func TestInboundTCP(t *testing.T) {
	for _, c := range []struct {
		name, listen string
		peer         netip.Addr
		in           string // an in: rule for the peer, %d the port
	}{
		{"v4", "127.0.0.1:0", netip.MustParseAddr("127.0.0.1"), "in:tcp://127.0.0.1/32:%d"},
		{"listen without bind", "", netip.MustParseAddr("127.0.0.1"), "in:tcp://127.0.0.0/8:%d"},
		{"v6", "[::1]:0", netip.MustParseAddr("::1"), "in:tcp://[::1]:%d"},
		{"dual-stack, v4 peer", "[::]:0", netip.MustParseAddr("127.0.0.1"), "in:[::ffff:127.0.0.1]:%d"},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := setup(t)
			out := "tcp://127.0.0.1"
			if c.peer.Is6() {
				out = "tcp://[::1]"
			}
			cg := f.session(t, sessionSpec{slot: 41, rules: []string{out}})
			pid, port := listener(t, cg, c.listen)
			to := netip.AddrPortFrom(c.peer, port)

			ev := f.refused(t, pid, to, VerdictDenied)
			want := HookIngress4
			if c.peer.Is6() {
				want = HookIngress6
			}
			if ev.Hook != want || ev.Dest.Addr() != c.peer || ev.Local.Addr() != c.peer || ev.Slot != 41 {
				t.Errorf("inbound record: %+v", ev)
			}
			// A member of the same session needs no rule on loopback.
			expect(t, kerneltest.Run(t, cg, kerneltest.Options{}, kerneltest.Connect{Addr: to}), "ok")

			// An in: rule for other peers or another port changes nothing.
			other := netip.MustParseAddr("127.0.0.2")
			if c.peer.Is6() {
				other = netip.MustParseAddr("::2")
			}
			f.rescope(t, 41, out, fmt.Sprintf("in:tcp://%s:%d", hostText(other), port),
				fmt.Sprintf(c.in, port+1))
			f.refused(t, pid, to, VerdictDenied)
			// One naming the peer and the port admits it.
			f.rescope(t, 41, out, fmt.Sprintf(c.in, port))
			admitted(t, to)
		})
	}
}

// A session in audit mode lets the peer in and records would_deny.
func TestInboundAuditMode(t *testing.T) {
	f := setup(t)
	cg := f.session(t, sessionSpec{slot: 42, rules: []string{"tcp://127.0.0.1"}, mode: ModeAudit})
	pid, port := listener(t, cg, "127.0.0.1:0")
	to := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port)
	f.refused(t, pid, to, VerdictWouldDeny)
	admitted(t, to)
}

// A member's unconnected UDP socket receives replies from destinations in
// its scope, and datagrams from other peers only with an in: rule.
func TestInboundUDP(t *testing.T) {
	for _, c := range []struct {
		name, bind string
		lo         netip.Addr
	}{
		{"v4", "127.0.0.1:0", netip.MustParseAddr("127.0.0.1")},
		{"v6", "[::1]:0", netip.MustParseAddr("::1")},
		{"dual-stack, v4 peer", "[::]:0", netip.MustParseAddr("127.0.0.1")},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := setup(t)
			network := "udp4"
			if c.lo.Is6() {
				network = "udp6"
			}
			api, err := net.ListenUDP(network, net.UDPAddrFromAddrPort(netip.AddrPortFrom(c.lo, 0)))
			if err != nil {
				t.Fatal(err)
			}
			defer api.Close()
			apiAddr := api.LocalAddr().(*net.UDPAddr).AddrPort()
			out := "udp://" + apiAddr.String()
			cg := f.session(t, sessionSpec{slot: 43, rules: []string{out}})
			member := kerneltest.Start(t, cg, kerneltest.Options{}, false, kerneltest.UDPSocket{Addr: netip.MustParseAddrPort(c.bind)})
			res := member.Next()
			if res.Err != kerneltest.OK {
				t.Fatalf("member udp socket: %s", res)
			}
			pid, port := res.PID, res.Port
			memberAddr := net.UDPAddrFromAddrPort(netip.AddrPortFrom(c.lo, port))

			member.Do(kerneltest.UDPSend{To: apiAddr})
			if res := member.Next(); res.Outcome() != "ok" {
				t.Fatalf("member send to its API: %s", res)
			}
			peer, err := net.ListenUDP(network, net.UDPAddrFromAddrPort(netip.AddrPortFrom(c.lo, 0)))
			if err != nil {
				t.Fatal(err)
			}
			defer peer.Close()
			peerPort := peer.LocalAddr().(*net.UDPAddr).AddrPort().Port()

			peer.WriteToUDP([]byte("unnamed"), memberAddr)
			ev := f.waitEvent(t, pid, func(e Event) bool { return e.Hook.Inbound() && e.Dest.Port() == peerPort })
			if ev.Verdict != VerdictDenied || ev.Protocol != unix.IPPROTO_UDP || ev.Local.Port() != port || ev.Dest.Addr() != c.lo {
				t.Errorf("inbound record: %+v", ev)
			}
			// The reply of the API in scope arrives; the unnamed datagram,
			// sent first, never did.
			api.WriteToUDP([]byte("reply"), memberAddr)
			member.Do(kerneltest.UDPRecv{Until: "reply"})
			if res := member.Next(); res.Err != kerneltest.OK || !slices.Equal(res.Got, []string{"reply"}) {
				t.Errorf("member received %q (%s), want only the API's reply", res.Got, res)
			}
			// With an in: rule the peer gets through.
			f.rescope(t, 43, out, fmt.Sprintf("in:udp://%s:%d", hostText(c.lo), port))
			peer.WriteToUDP([]byte("named"), memberAddr)
			member.Do(kerneltest.UDPRecv{Until: "named"})
			if res := member.Next(); res.Err != kerneltest.OK || !slices.Equal(res.Got, []string{"named"}) {
				t.Errorf("member received %q (%s), want the named peer's datagram", res.Got, res)
			}
		})
	}
}

// A flood of refused peers is recorded at most AF_INBOUND_RECORDS a second
// per session; the rest are counted and reported with the next record.
func TestInboundRecordsRateLimited(t *testing.T) {
	f := setup(t)
	cg := f.session(t, sessionSpec{slot: 44, rules: []string{"udp://127.0.0.1:9"}})
	member := kerneltest.Start(t, cg, kerneltest.Options{}, false, kerneltest.UDPSocket{Addr: netip.MustParseAddrPort("127.0.0.1:0")})
	res := member.Next()
	if res.Err != kerneltest.OK {
		t.Fatalf("member udp socket: %s", res)
	}
	pid, port := res.PID, int(res.Port)
	peer, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	to := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port}
	before, _ := f.g.Stats()
	const flood = 500
	start := time.Now()
	for range flood {
		peer.WriteToUDP([]byte("x"), to)
	}
	after, _ := f.g.Stats()
	if got := after.Denied - before.Denied; got != flood {
		t.Errorf("gate counted %d refusals, want %d", got, flood)
	}
	if time.Since(start) > time.Second {
		t.Skip("the flood took over a second: the window reopened")
	}
	// The first window's records, then one more after it carries the count.
	// The window opened at the first record (its BootNS, the kernel's
	// clock), not when the flood began: on a loaded host the two are far
	// enough apart for a packet sent a second after the flood began to
	// land in the first window still.
	first := f.waitEvent(t, pid, func(e Event) bool { return e.Hook.Inbound() })
	for now := boottime.Now(); now <= first.BootNS+uint64(time.Second); now = boottime.Now() {
		time.Sleep(time.Duration(first.BootNS+uint64(time.Second)-now) + time.Millisecond)
	}
	peer.WriteToUDP([]byte("x"), to)
	ev := f.waitEvent(t, pid, func(e Event) bool { return e.Hook.Inbound() && e.Suppressed > 0 })
	f.mu.Lock()
	n := 0
	for _, e := range f.events {
		if e.Hook.Inbound() && int(e.PID) == pid {
			n++
		}
	}
	f.mu.Unlock()
	if n != 33 || ev.Suppressed != flood-32 {
		t.Errorf("%d inbound records, the last reporting %d suppressed; want 33 and %d", n, ev.Suppressed, flood-32)
	}
}
