package kerneltest

import "net/netip"

// The streaming operations: each reports several results or waits for the
// test, so they run only in a child.

// Hold connects to Addr (IPv4) and reports it, then blocks reading until
// the connection breaks and reports how (ErrEOF or the errno), then tries
// to connect again and reports that: three results.
type Hold struct{ Addr netip.AddrPort }

// HoldMany opens N connections to Addr (IPv4) and reports it, then blocks
// until every one is broken and reports how many broke (Result.N).
type HoldMany struct {
	Addr netip.AddrPort
	N    int
}

// Loop connects to Allowed and Denied in turn until the file Stop exists
// (at most 10 minutes); Result.Tallies counts the outcomes of each, and
// Result.FirstErr is the first failure of an allowed connect.
type Loop struct {
	Allowed, Denied netip.AddrPort
	Stop            string
}

// Flood sends N datagrams to Addr (IPv4) with sendto, flat out or paced to
// Rate a second; Result.Rate is the rate achieved. With Ports above 1,
// datagram i goes to port Addr.Port()+i%Ports: Ports destinations.
type Flood struct {
	Addr  netip.AddrPort
	N     int
	Rate  int
	Ports int
}

// ListenTCP binds (unless Addr is the zero value) and listens on a TCP socket,
// reports its port (Result.Port) and holds it until stdin closes.
type ListenTCP struct{ Addr netip.AddrPort }

// UDPSocket binds a UDP socket to Addr and reports its port (Result.Port),
// then runs the UDPSend and UDPRecv operations sent to it with Proc.Do.
type UDPSocket struct{ Addr netip.AddrPort }

// UDPSend, sent to a UDPSocket, sends Data ("ping" if empty) to To.
type UDPSend struct {
	To   netip.AddrPort
	Data []byte
}

// UDPRecv, sent to a UDPSocket, reads datagrams until one says Until;
// Result.Got is every one, in order.
type UDPRecv struct{ Until string }

// The bench operations time an agent's work in a process of its own (see
// bench.go): each Proc.Go runs a batch of N and reports Result.Wall and
// Result.CPU per operation.

// ConnectBench is connect+close to Addr (IPv4).
type ConnectBench struct {
	Addr netip.AddrPort
	N    int
}

// UDPBench is sendto+recvfrom round trips to a UDP echo at Addr.
type UDPBench struct {
	Addr netip.AddrPort
	N    int
}

// SyscallBench is getppid.
type SyscallBench struct{ N int }

// ExecBench is fork+exec+wait of Argv (an absolute path, then its
// arguments; empty: /bin/true).
type ExecBench struct {
	Argv []string
	N    int
}
