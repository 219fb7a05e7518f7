package sockdiag

import (
	"encoding/binary"
	"net/netip"

	"golang.org/x/sys/unix"
)

// SockID is struct inet_diag_sockid: what sock_diag looks a socket up by.
type SockID struct {
	SrcPort, DstPort uint16   // host order here, big-endian on the wire
	Src, Dst         [16]byte // as on the wire: an IPv4 address in the first four bytes
	Ifindex          uint32   // the device the socket is bound to, 0 for none
	Cookie           uint64   // NoCookie to match by the rest alone
}

// AddrBytes lays a out as SockID.Src and Dst hold it: IPv4 in the first
// four bytes, anything else (IPv4-mapped IPv6 included) in all sixteen.
func AddrBytes(a netip.Addr) [16]byte {
	var b [16]byte
	if a.Is4() {
		v4 := a.As4()
		copy(b[:], v4[:])
		return b
	}
	return a.As16()
}

// SrcAddr is the source address as family lays it out; invalid for a
// family other than AF_INET and AF_INET6.
func (id *SockID) SrcAddr(family uint8) netip.Addr { return addrOf(family, &id.Src) }

// DstAddr is SrcAddr for the destination.
func (id *SockID) DstAddr(family uint8) netip.Addr { return addrOf(family, &id.Dst) }

func addrOf(family uint8, b *[16]byte) netip.Addr {
	switch family {
	case unix.AF_INET:
		return netip.AddrFrom4([4]byte(b[:4]))
	case unix.AF_INET6:
		return netip.AddrFrom16(*b)
	}
	return netip.Addr{}
}

func putSockID(b []byte, id *SockID) {
	binary.BigEndian.PutUint16(b[0:], id.SrcPort)
	binary.BigEndian.PutUint16(b[2:], id.DstPort)
	copy(b[4:20], id.Src[:])
	copy(b[20:36], id.Dst[:])
	binary.NativeEndian.PutUint32(b[36:], id.Ifindex)
	binary.NativeEndian.PutUint32(b[40:], uint32(id.Cookie))
	binary.NativeEndian.PutUint32(b[44:], uint32(id.Cookie>>32))
}

func sockIDAt(b []byte) SockID {
	return SockID{
		SrcPort: binary.BigEndian.Uint16(b[0:]),
		DstPort: binary.BigEndian.Uint16(b[2:]),
		Src:     [16]byte(b[4:20]),
		Dst:     [16]byte(b[20:36]),
		Ifindex: binary.NativeEndian.Uint32(b[36:]),
		Cookie:  uint64(binary.NativeEndian.Uint32(b[40:])) | uint64(binary.NativeEndian.Uint32(b[44:]))<<32,
	}
}

// Request is struct inet_diag_req_v2: which sockets a dump returns, or the
// socket SOCK_DESTROY destroys.
type Request struct {
	Family   uint8  // AF_INET or AF_INET6
	Protocol uint8  // IPPROTO_TCP or IPPROTO_UDP
	Ext      uint8  // INET_DIAG_* attributes a dump should add, as 1 << (attr - 1)
	States   uint32 // a dump's states, a mask of TCPState.Mask
	ID       SockID
}

// AppendRequest appends a netlink message of type typ carrying r.
func AppendRequest(b []byte, typ, flags uint16, seq uint32, r *Request) []byte {
	const size = sizeofHdr + sizeofReq
	off := len(b)
	b = append(b, make([]byte, size)...)
	h := b[off:]
	binary.NativeEndian.PutUint32(h[0:], size)
	binary.NativeEndian.PutUint16(h[4:], typ)
	binary.NativeEndian.PutUint16(h[6:], flags)
	binary.NativeEndian.PutUint32(h[8:], seq)
	q := h[sizeofHdr:]
	q[0], q[1], q[2] = r.Family, r.Protocol, r.Ext
	binary.NativeEndian.PutUint32(q[4:], r.States)
	putSockID(q[reqIDOff:], &r.ID)
	return b
}

// AppendDumpRequest appends a SOCK_DIAG_BY_FAMILY dump of the sockets of
// r's family, protocol and states.
func AppendDumpRequest(b []byte, seq uint32, r *Request) []byte {
	return AppendRequest(b, unix.SOCK_DIAG_BY_FAMILY, unix.NLM_F_REQUEST|unix.NLM_F_DUMP, seq, r)
}

// AppendDestroyRequest appends a SOCK_DESTROY of the socket r.ID names. It
// asks for no acknowledgement: the kernel answers only a request that
// failed.
func AppendDestroyRequest(b []byte, seq uint32, r *Request) []byte {
	return AppendRequest(b, unix.SOCK_DESTROY, unix.NLM_F_REQUEST, seq, r)
}
