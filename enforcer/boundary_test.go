package enforcer

import (
	"slices"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/agentfence/agentfence/internal/kerneltest"
	"github.com/agentfence/agentfence/internal/privdrop"
)

// Probes of sockets no cgroup hook judges, and of local ones.
var (
	probePacket  = kerneltest.PacketSocket
	probeNetlink = kerneltest.Socket{Family: unix.AF_NETLINK, Type: unix.SOCK_RAW, Proto: unix.NETLINK_ROUTE}
	probeUnix    = kerneltest.Socket{Family: unix.AF_UNIX, Type: unix.SOCK_STREAM}
)

// The seccomp filter of `agentfence run` and the kernel programs let the
// same families through.
func TestLocalFamiliesMatchSeccomp(t *testing.T) {
	var seccomp []int
	for _, f := range privdrop.LocalFamilies {
		seccomp = append(seccomp, int(f))
	}
	slices.Sort(seccomp)
	kernel := slices.Sorted(slices.Values(LocalFamilies))
	if !slices.Equal(seccomp, kernel) {
		t.Errorf("seccomp filter allows %v, the kernel programs %v", seccomp, kernel)
	}
}

// familyFixture loads the gate with the boundary layer ceiling at most
// ("" for the strongest) and opens a session with a budget, in which
// sockets of other families are tried. A layer the host refuses, so that a
// weaker one ran, skips: the weaker one has a test of its own.
func familyFixture(t *testing.T, slot uint32, ceiling FamilyLayer, st SessionState) (*fixture, string, FamilyLayer) {
	t.Helper()
	f := setupWith(t, Options{Boundary: ceiling})
	layer, err := f.g.SocketFamilies()
	if layer == FamiliesNone {
		// The exit program loads on every kernel the project supports
		// (docs/kernels.md); a host where it does not is a finding.
		t.Fatalf("no socket family layer: %v", err)
	}
	if ceiling != "" && layer != ceiling {
		if ceiling == FamiliesSyscallExit {
			t.Fatalf("layer %s with ceiling %s", layer, ceiling)
		}
		t.Skipf("the kernel refused layer %s: %v", ceiling, err)
	}
	ln := kerneltest.Listen(t, "tcp4", "127.0.0.1:0")
	cg := f.session(t, sessionSpec{slot: slot, rules: []string{ln.String()}})
	st.Gen, st.State = 1, StateActive
	if err := f.g.PutSession(slot, st); err != nil {
		t.Fatal(err)
	}
	return f, cg, layer
}

// eachLayer runs test with the strongest layer the host has, and with each
// weaker one forced.
func eachLayer(t *testing.T, test func(t *testing.T, ceiling FamilyLayer)) {
	for _, ceiling := range []FamilyLayer{"", FamiliesFmodRet, FamiliesSyscallExit} {
		name := string(ceiling)
		if name == "" {
			name = "strongest"
		}
		t.Run(name, func(t *testing.T) { test(t, ceiling) })
	}
}

// socketHook is the hook of a layer's socket events.
func socketHook(layer FamilyLayer) Hook {
	switch layer {
	case FamiliesLSM:
		return HookLSMSocket
	case FamiliesFmodRet:
		return HookFmodSocket
	}
	return HookSysSocket
}

func socketEvent(f *fixture, t *testing.T, pid int) Event {
	t.Helper()
	return f.waitEvent(t, pid, func(e Event) bool { return e.Socket != nil })
}

// A root member's packet socket: the socket_create hook refuses it where
// a hook layer runs; elsewhere it is created, seen at the syscall's exit, and the session is
// quarantined at once, whatever its budget. Local families are untouched,
// and outside a session the packet socket works.
func TestPacketSocketOfRootMember(t *testing.T) {
	eachLayer(t, func(t *testing.T, ceiling FamilyLayer) {
		f, cg, layer := familyFixture(t, 40, ceiling, SessionState{Budget: 100, QuarantineOnBudget: true})
		res := kerneltest.Run(t, cg, kerneltest.Options{}, probePacket, probeNetlink, probeUnix)
		ev := socketEvent(f, t, res[0].PID)
		if ev.Socket.Family != unix.AF_PACKET || ev.Socket.Type != unix.SOCK_RAW || ev.Reason != ReasonSocketFamily {
			t.Errorf("event %+v %+v", ev, *ev.Socket)
		}
		st, err := f.g.Session(40)
		if err != nil {
			t.Fatal(err)
		}
		switch layer {
		case FamiliesLSM, FamiliesFmodRet:
			expect(t, res, "EPERM", "ok", "ok")
			if ev.Hook != socketHook(layer) || ev.Verdict != VerdictDenied {
				t.Errorf("hook event %+v", ev)
			}
			if st.State != StateActive || st.Violations != 1 {
				t.Errorf("session after a refusal: %+v", st)
			}
		case FamiliesSyscallExit:
			expect(t, res, "ok", "ok", "ok")
			if ev.Hook != HookSysSocket || ev.Verdict != 0 || ev.Socket.Result < 0 || !ev.QuarantinedNow {
				t.Errorf("exit event %+v %+v", ev, *ev.Socket)
			}
			if st.State != StateQuarantined {
				t.Errorf("session after a packet socket: %+v", st)
			}
		}
		f.mu.Lock()
		for _, e := range f.events {
			if e.Socket != nil && e.Socket.Family != unix.AF_PACKET {
				t.Errorf("an event for a local family: %+v", *e.Socket)
			}
		}
		f.mu.Unlock()
		expect(t, kerneltest.Run(t, "", kerneltest.Options{}, probePacket), "ok")
	})
}

// A member without CAP_NET_RAW is refused by the kernel (or first at the
// socket_create hook), and the refusal is recorded as a violation.
func TestPacketSocketOfUnprivilegedMember(t *testing.T) {
	eachLayer(t, func(t *testing.T, ceiling FamilyLayer) {
		f, cg, layer := familyFixture(t, 41, ceiling, SessionState{Budget: 100, QuarantineOnBudget: true})
		bin := kerneltest.ExecutableCopy(t)
		res := kerneltest.Run(t, cg, kerneltest.Options{Binary: bin, Credential: &syscall.Credential{Uid: 65534, Gid: 65534}},
			probePacket)
		expect(t, res, "EPERM")
		ev := socketEvent(f, t, res[0].PID)
		if ev.Hook != socketHook(layer) || ev.Verdict != VerdictDenied || ev.UID != 65534 {
			t.Errorf("event %+v", ev)
		}
		if layer == FamiliesSyscallExit && ev.Socket.Result != -int64(unix.EPERM) {
			t.Errorf("result %d, want -EPERM", ev.Socket.Result)
		}
		if st, _ := f.g.Session(41); st.State != StateActive || st.Violations != 1 {
			t.Errorf("session after a refusal: %+v", st)
		}
	})
}

// With the kill drift action, a member that got a packet socket past every
// layer is killed before the socket syscall returns to it: it never runs
// another instruction, so its next probe never reports.
func TestPacketSocketKillsOnDrift(t *testing.T) {
	f, cg, _ := familyFixture(t, 42, FamiliesSyscallExit, SessionState{Budget: 100, QuarantineOnBudget: true, KillOnDrift: true})
	res, state, out := kerneltest.RunStatus(t, cg, kerneltest.Options{}, probePacket, probeUnix)
	if len(res) != 0 {
		t.Errorf("the member went on after its packet socket: %s", out)
	}
	ws, ok := state.Sys().(syscall.WaitStatus)
	if !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("member ended %v, want killed by SIGKILL", state)
	}
	ev := socketEvent(f, t, state.Pid())
	if ev.Hook != HookSysSocket || !ev.QuarantinedNow {
		t.Errorf("event %+v", ev)
	}
}
