// Package kerneltest runs probes for kernel tests: child processes, placed
// in a cgroup, that try network operations and report each outcome. The
// test binary re-runs itself as the probe (call MaybeRunProbe first thing
// in TestMain); what it does is a list of typed operations, and every
// outcome is named one way (see Result).
package kerneltest

import (
	"net/netip"

	"golang.org/x/sys/unix"
)

// Op is one operation of a probe. Most report one Result; those marked as
// streaming report several, or wait for the test (Proc.Go, Proc.Do), and
// only run in a child.
type Op interface{ run(c *child) }

// Connect connects a TCP socket of Addr's family; with V6 an AF_INET6
// socket (an IPv4 address is sent v4-mapped).
type Connect struct {
	Addr netip.AddrPort
	V6   bool
}

// SendUDP sends Payload ("probe" when empty) with sendto from an
// unconnected UDP socket of Addr's family, or AF_INET6 with V6.
type SendUDP struct {
	Addr    netip.AddrPort
	V6      bool
	Payload []byte
}

// ConnectUDP connects a UDP socket of Addr's family.
type ConnectUDP struct{ Addr netip.AddrPort }

// FastOpen is TCP fast open: sendto with MSG_FASTOPEN, no connect.
type FastOpen struct{ Addr netip.AddrPort }

// Socket creates a socket(Family, Type, Proto).
type Socket struct{ Family, Type, Proto int }

// RawICMP is a raw ICMP socket, which CAP_NET_RAW allows.
var RawICMP = Socket{Family: unix.AF_INET, Type: unix.SOCK_RAW, Proto: unix.IPPROTO_ICMP}

// PacketSocket is a packet socket that sees every frame (htons(ETH_P_ALL)).
var PacketSocket = Socket{Family: unix.AF_PACKET, Type: unix.SOCK_RAW, Proto: 0x0300}

// Bind binds a TCP (UDP with UDP set) socket of Addr's family; a
// v4-mapped address binds an AF_INET6 socket.
type Bind struct {
	Addr netip.AddrPort
	UDP  bool
}

// Uring connects a TCP socket (IPv4) through io_uring (uring.go). The
// stages: "socket", "setup", "mmap", "enter".
type Uring struct{ Addr netip.AddrPort }

// VMRead is process_vm_readv of 8 bytes at an unmapped address of PID:
// EFAULT when the kernel let it attach, else its errno.
type VMRead struct{ PID int }

// Traceme starts /bin/true asking to be traced (PTRACE_TRACEME in the
// child before its exec, as a debugger's launch does): ok when the kernel
// let it, else the errno the start failed with.
type Traceme struct{}

// RecvSocket connects to the unix socket Unix and receives one descriptor
// over it (SCM_RIGHTS, from a sender such as SendSockets): ok when it
// arrived, ErrNoRights when the message came without it.
type RecvSocket struct{ Unix string }

// Netns, on a thread of its own, unshares the network namespace and goes
// back to the one it was in.
type Netns struct{}

// API calls the daemon's API on the unix socket Socket: list sessions, or
// with Open try to open one with scope 0.0.0.0/0. Result.Status and
// Result.Field say what the API answered.
type API struct {
	Socket string
	Open   bool
}

// DNSQuery sends a query (type A unless Type) for Name to Server over Net
// ("udp" or "tcp") and waits for the answer. With Hold (tcp only) it
// keeps the connection, without waiting, until a DNSReset. The stages:
// "connect" (tcp), "read", "answer" (ErrShort, ErrBadAnswer).
type DNSQuery struct {
	Net    string
	Server netip.AddrPort
	Name   string
	Type   uint16
	Hold   bool
}

// DNSReset resets the connections DNSQuery held (SO_LINGER 0).
type DNSReset struct{}

// Resolve queries Server over UDP for Name (type A unless Type); the
// first address of the answer is Result.Addr.
type Resolve struct {
	Server netip.AddrPort
	Name   string
	Type   uint16
}

// ResolveLoop N times resolves Name (A) through Server and at once
// connects to the answer at Port; Result.Tallies[0] counts the connects'
// outcomes. Stage "query" (Result.N: which) when a query failed.
type ResolveLoop struct {
	Server netip.AddrPort
	Name   string
	Port   uint16
	N      int
}

// DNSReplay queries Server over UDP for replay.corpus.test and reads N+1
// datagrams. Stage "read" (Result.N: which) when one did not come.
type DNSReplay struct {
	Server netip.AddrPort
	N      int
}

// DialName resolves Host (A only) through the resolver at Resolver (UDP),
// as an agent with a configured resolver would, then connects to the
// first address at Port. Stage "resolve" when that failed.
type DialName struct {
	Resolver netip.AddrPort
	Host     string
	Port     uint16
}

// TLSHello connects and sends the ClientHello crypto/tls sends for SNI
// (none when empty), in two segments when Split is the first one's length.
// The stages: "hello" (making it), "connect", "write".
type TLSHello struct {
	Addr  netip.AddrPort
	SNI   string
	Split int
}

// SendTCP connects and sends Data, or the bytes of File (read by the
// probe: a corpus is larger than an environment variable may be). The
// stages: "file", "connect", "write".
type SendTCP struct {
	Addr netip.AddrPort
	Data []byte
	File string
}
