package enforcer

import (
	"fmt"
	"net/netip"
	"unsafe"
)

// The kernel's values of Hook, Verdict and Reason are the C enums of
// bpf/gate.h (af_hook, af_verdict, af_reason), which bpf2go generates; the
// types here are the byte the event carries.

// Hook is the program that made a decision.
type Hook uint8

const (
	HookConnect4   = Hook(gateAfHookAF_HOOK_CONNECT4)
	HookConnect6   = Hook(gateAfHookAF_HOOK_CONNECT6)
	HookSendmsg4   = Hook(gateAfHookAF_HOOK_SENDMSG4)
	HookSendmsg6   = Hook(gateAfHookAF_HOOK_SENDMSG6)
	HookSockCreate = Hook(gateAfHookAF_HOOK_SOCK_CREATE)
	// HookDNS and HookSNI are the hostname programs' (names.go).
	HookBind4    = Hook(gateAfHookAF_HOOK_BIND4) // a member binds a port
	HookBind6    = Hook(gateAfHookAF_HOOK_BIND6)
	HookIngress4 = Hook(gateAfHookAF_HOOK_INGRESS4) // a peer reaches a member's socket
	HookIngress6 = Hook(gateAfHookAF_HOOK_INGRESS6)
	// Sockets of families no cgroup hook sees (boundary.go): refused by
	// the BPF LSM, or seen at the socket syscall's exit.
	HookLSMSocket = Hook(gateAfHookAF_HOOK_LSM_SOCKET)
	// HookFmodSocket: as HookLSMSocket, from the fmod_ret layer.
	HookFmodSocket = Hook(gateAfHookAF_HOOK_FMOD_SOCKET)
	HookSysSocket  = Hook(gateAfHookAF_HOOK_SYS_SOCKET)
)

// Inbound reports whether the hook judged what a peer sent (Event.Dest is
// then the peer, Event.Local the member's side).
func (h Hook) Inbound() bool { return h == HookIngress4 || h == HookIngress6 }

// Bind reports whether the hook judged a bind (Event.Dest is the address
// bound).
func (h Hook) Bind() bool { return h == HookBind4 || h == HookBind6 }

// Verdict is the kernel's decision.
type Verdict uint8

const (
	VerdictAllowed   = Verdict(gateAfVerdictAF_VERDICT_ALLOWED)
	VerdictDenied    = Verdict(gateAfVerdictAF_VERDICT_DENIED)
	VerdictWouldDeny = Verdict(gateAfVerdictAF_VERDICT_WOULD_DENY)
)

// Reason says why the kernel decided as it did.
type Reason uint8

const (
	ReasonRule        = Reason(gateAfReasonAF_REASON_RULE)
	ReasonNoRule      = Reason(gateAfReasonAF_REASON_NO_RULE)
	ReasonExpired     = Reason(gateAfReasonAF_REASON_EXPIRED)
	ReasonRevoked     = Reason(gateAfReasonAF_REASON_REVOKED)
	ReasonQuarantined = Reason(gateAfReasonAF_REASON_QUARANTINED)
	ReasonSocketType  = Reason(gateAfReasonAF_REASON_SOCKET_TYPE)
	// ReasonSocketFamily: a socket family other than unix, netlink and
	// inet (boundary.go).
	ReasonSocketFamily = Reason(gateAfReasonAF_REASON_SOCKET_FAMILY)
)

// NoRule is Event.Rule when no rule matched.
const NoRule = -1

// ruleIndex is a kernel rule field as Event.Rule and HostEvent.Rule give it.
func ruleIndex(rule uint16) int {
	if rule == uint16(gateAfRuleNoneAF_RULE_NONE) {
		return NoRule
	}
	return int(rule)
}

// Event is one gate decision, decoded: byte orders converted, v4 addresses
// as IPv4, the rule index as an int.
type Event struct {
	BootNS   uint64 // CLOCK_BOOTTIME
	CgroupID uint64
	Slot     uint32
	Gen      uint64
	PID, TID uint32
	UID, GID uint32
	Comm     string
	Hook     Hook
	Verdict  Verdict
	Reason   Reason
	Protocol uint8 // IPPROTO_TCP, IPPROTO_UDP, ...
	// Dest is the address of the call (connect, send, bind), or for an
	// inbound hook the peer.
	Dest netip.AddrPort
	// Local is the member's address and port an inbound attempt was for;
	// Suppressed the session's inbound refusals not recorded one by one
	// since its previous inbound record (gate.h, AF_INBOUND_RECORDS).
	Local          netip.AddrPort
	Suppressed     uint32
	Rule           int
	QuarantinedNow bool
	// ViaName: the destination was allowed through an address learned from
	// a DNS answer for a hostname rule; NameHash is that name's hash
	// (Gate.Hostname names it).
	ViaName  bool
	NameHash uint64
	// Socket is set for HookLSMSocket, HookFmodSocket and HookSysSocket.
	Socket *SocketAttempt
	// Count is the number of allowed decisions an Event of FlushRepeats
	// stands for, timed from BootNS to LastNS; 0 for an Event that is one
	// decision.
	Count  uint64
	LastNS uint64
}

// SocketAttempt is a member's socket of a family no cgroup hook sees.
type SocketAttempt struct {
	Family   int // AF_PACKET, AF_XDP, ...
	Type     int // SOCK_RAW, SOCK_DGRAM, ... without SOCK_NONBLOCK and SOCK_CLOEXEC
	Protocol int // for AF_PACKET the ethertype, in network byte order
	// Result is the socket syscall's result, a descriptor or a negative
	// errno, for HookSysSocket; 0 for the hook layers.
	Result int64
}

// EventSize is the size of a raw gate event.
const EventSize = int(unsafe.Sizeof(gateGateEvent{}))

// DecodeEvent decodes one raw ring buffer record.
func DecodeEvent(raw []byte) (Event, error) {
	if len(raw) < EventSize {
		return Event{}, fmt.Errorf("enforcer: event is %d bytes, want %d", len(raw), EventSize)
	}
	e := rawStruct[gateGateEvent](raw)
	ev := Event{
		BootNS: e.TsNs, CgroupID: e.CgroupId, Slot: e.SessionSlot, Gen: e.SessionGen,
		PID: e.Pid, TID: e.Tid, UID: e.Uid, GID: e.Gid,
		Comm:    cString(e.Comm[:]),
		Hook:    Hook(e.Hook),
		Verdict: Verdict(e.Verdict), Reason: Reason(e.Reason), Protocol: e.Protocol,
		Rule:           ruleIndex(e.Rule),
		QuarantinedNow: e.QuarantinedNow != 0,
		ViaName:        e.NameFlags&uint32(gateAfEventNameFlagAF_EVENT_VIA_NAME) != 0,
		NameHash:       e.NameHash,
	}
	if ev.Hook == HookLSMSocket || ev.Hook == HookFmodSocket || ev.Hook == HookSysSocket {
		ev.Socket = &SocketAttempt{Family: int(e.SockFamily), Type: int(e.SockType), Protocol: int(e.Port),
			Result: int64(e.NameHash)}
		ev.NameHash = 0
		return ev, nil
	}
	ev.Dest = addrPort(e.Family, e.Addr, e.Port)
	if ev.Hook.Inbound() {
		ev.Local = addrPort(e.Family, e.LocalAddr, e.LocalPort)
		ev.Suppressed = e.Suppressed
	}
	return ev, nil
}

// rawStruct copies the start of raw, a record the kernel wrote in the
// host's byte order, into a T laid out as the C struct (bpf2go's types
// are). It is binary.Read with binary.NativeEndian without the reflection,
// which was most of decoding a gate event (BenchmarkDecodeEvent);
// TestRawStructIsBinaryRead checks that they agree. raw must hold a T.
func rawStruct[T any](raw []byte) T {
	var v T
	copy(unsafe.Slice((*byte)(unsafe.Pointer(&v)), unsafe.Sizeof(v)), raw)
	return v
}

// addrPort converts an address of a family (4: the first four bytes) and a
// port in host order; family 0 is no address.
func addrPort(family uint8, addr [16]uint8, port uint16) netip.AddrPort {
	switch family {
	case 4:
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte(addr[:4])), port)
	case 6:
		return netip.AddrPortFrom(netip.AddrFrom16(addr), port)
	}
	return netip.AddrPort{}
}

func cString(b []int8) string {
	out := make([]byte, 0, len(b))
	for _, c := range b {
		if c == 0 {
			break
		}
		out = append(out, byte(c))
	}
	return string(out)
}
