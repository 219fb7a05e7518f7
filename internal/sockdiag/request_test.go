package sockdiag

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"

	"golang.org/x/sys/unix"
)

// The request as the kernel reads it, field by field at the offsets of
// struct nlmsghdr and struct inet_diag_req_v2.
func TestAppendDestroyRequestLayout(t *testing.T) {
	r := Request{Family: unix.AF_INET6, Protocol: unix.IPPROTO_UDP, States: 0xabcd, ID: SockID{
		SrcPort: 0x1234, DstPort: 53,
		Src:     netip.MustParseAddr("2001:db8::1").As16(),
		Dst:     netip.MustParseAddr("2001:db8::2").As16(),
		Ifindex: 9,
		Cookie:  0x0102030405060708,
	}}
	prefix := []byte{0xee}
	b := AppendDestroyRequest(prefix, 77, &r)
	if b[0] != 0xee || len(b) != 1+16+56 {
		t.Fatalf("appended %d bytes after the prefix, want 72", len(b)-1)
	}
	h := b[1:]
	ne := binary.NativeEndian
	for _, f := range []struct {
		name      string
		got, want uint64
	}{
		{"nlmsg_len", uint64(ne.Uint32(h[0:])), 72},
		{"nlmsg_type", uint64(ne.Uint16(h[4:])), unix.SOCK_DESTROY},
		{"nlmsg_flags", uint64(ne.Uint16(h[6:])), unix.NLM_F_REQUEST},
		{"nlmsg_seq", uint64(ne.Uint32(h[8:])), 77},
		{"nlmsg_pid", uint64(ne.Uint32(h[12:])), 0},
		{"sdiag_family", uint64(h[16]), unix.AF_INET6},
		{"sdiag_protocol", uint64(h[17]), unix.IPPROTO_UDP},
		{"idiag_states", uint64(ne.Uint32(h[20:])), 0xabcd},
		{"idiag_sport (big-endian)", uint64(binary.BigEndian.Uint16(h[24:])), 0x1234},
		{"idiag_dport (big-endian)", uint64(binary.BigEndian.Uint16(h[26:])), 53},
		{"idiag_if", uint64(ne.Uint32(h[60:])), 9},
		{"idiag_cookie[0]", uint64(ne.Uint32(h[64:])), 0x05060708},
		{"idiag_cookie[1]", uint64(ne.Uint32(h[68:])), 0x01020304},
	} {
		if f.got != f.want {
			t.Errorf("%s = %#x, want %#x", f.name, f.got, f.want)
		}
	}
	if !bytes.Equal(h[28:44], r.ID.Src[:]) || !bytes.Equal(h[44:60], r.ID.Dst[:]) {
		t.Errorf("addresses = % x / % x", h[28:44], h[44:60])
	}
}

func TestAppendDumpRequest(t *testing.T) {
	r := Request{Family: unix.AF_INET, Protocol: unix.IPPROTO_TCP, States: TCPEstablished.Mask() | TCPSynSent.Mask()}
	b := AppendDumpRequest(nil, 5, &r)
	if got := binary.NativeEndian.Uint16(b[6:]); got != unix.NLM_F_REQUEST|unix.NLM_F_DUMP {
		t.Errorf("flags = %#x", got)
	}
	if got := binary.NativeEndian.Uint16(b[4:]); got != unix.SOCK_DIAG_BY_FAMILY {
		t.Errorf("type = %d", got)
	}
	if got := binary.NativeEndian.Uint32(b[20:]); got != 0b110 {
		t.Errorf("states = %#b, want 0b110", got)
	}
	// Two requests in one buffer, back to back (56 + 16 is 4-aligned).
	b = AppendDumpRequest(b, 6, &r)
	if len(b) != 144 || binary.NativeEndian.Uint32(b[72+8:]) != 6 {
		t.Errorf("second request: len %d, seq %d", len(b), binary.NativeEndian.Uint32(b[72+8:]))
	}
}

func TestSockIDRoundTrip(t *testing.T) {
	for _, id := range []SockID{
		{},
		{SrcPort: 1, DstPort: 65535, Src: AddrBytes(netip.MustParseAddr("127.0.0.1")), Dst: AddrBytes(netip.MustParseAddr("10.1.2.3")), Cookie: NoCookie},
		{SrcPort: 443, DstPort: 50000, Src: AddrBytes(netip.MustParseAddr("::ffff:192.0.2.1")), Dst: AddrBytes(netip.MustParseAddr("fe80::1")), Ifindex: 1 << 31, Cookie: 1 << 40},
	} {
		var b [sizeofSockID]byte
		putSockID(b[:], &id)
		if got := sockIDAt(b[:]); got != id {
			t.Errorf("round trip of %+v = %+v", id, got)
		}
	}
}

func TestAddrs(t *testing.T) {
	v4 := netip.MustParseAddr("192.0.2.9")
	mapped := netip.MustParseAddr("::ffff:192.0.2.9")
	v6 := netip.MustParseAddr("2001:db8::9")
	id := SockID{Src: AddrBytes(v4), Dst: AddrBytes(mapped)}
	if want := [16]byte{192, 0, 2, 9}; id.Src != want {
		t.Errorf("AddrBytes(%v) = % x, want the first four bytes", v4, id.Src)
	}
	if got := id.SrcAddr(unix.AF_INET); got != v4 {
		t.Errorf("SrcAddr(AF_INET) = %v", got)
	}
	// A mapped address stays mapped: it is what an AF_INET6 socket holds.
	if got := id.DstAddr(unix.AF_INET6); got != mapped {
		t.Errorf("DstAddr(AF_INET6) = %v", got)
	}
	id.Dst = AddrBytes(v6)
	if got := id.DstAddr(unix.AF_INET6); got != v6 {
		t.Errorf("DstAddr(AF_INET6) = %v", got)
	}
	if got := id.SrcAddr(unix.AF_UNIX); got.IsValid() {
		t.Errorf("SrcAddr(AF_UNIX) = %v, want invalid", got)
	}
}
