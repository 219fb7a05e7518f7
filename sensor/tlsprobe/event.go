//go:build linux

package tlsprobe

import (
	"encoding/binary"
	"fmt"
	"net/netip"

	"golang.org/x/sys/unix"
)

// Op is what a probed call did.
type Op uint8

const (
	OpWrite = Op(tlsAfTlsOpAF_TLS_WRITE) // SSL_write, SSL_write_ex: the client sent
	OpRead  = Op(tlsAfTlsOpAF_TLS_READ)  // SSL_read, SSL_read_ex: it received
	OpFree  = Op(tlsAfTlsOpAF_TLS_FREE)  // SSL_free: the connection ended

	opGo = byte(tlsAfTlsOpAF_TLS_GO) // the flag of Go's crypto/tls calls
)

// Event is one probed call of a session member.
type Event struct {
	BootNS uint64
	// Conn names the connection within the process (the SSL object, or
	// Go's *tls.Conn).
	Conn uint64
	// Go is set for Go's crypto/tls ((*tls.Conn).Write, Read, Close).
	Go       bool
	PID, TID uint32
	Slot     uint32
	Gen      uint64
	Op       Op
	// Size is the bytes the call moved; Data the first of them (at most
	// 8 KiB less one byte), a copy the caller may keep.
	Size uint32
	Data []byte
	// FD and Peer are the socket the connection was seen on (FD -1 and
	// Peer invalid until the library made a system call on it inside a
	// probed call), Cookie its cookie (0: none was ever made).
	FD     int32
	Peer   netip.AddrPort
	Cookie uint64
	Comm   string
}

// Watched reports an event of a process outside every session that runs an
// executable Probes.Watch named (tls.processes): it has no session.
func (ev Event) Watched() bool {
	return ev.Slot == uint32(tlsAfTlsWatchedAF_TLS_WATCHED_SLOT) && ev.Gen == uint64(tlsAfTlsWatchedAF_TLS_WATCHED_GEN)
}

// headerSize is where tls_event's data starts (layout_test.go pins it to
// the generated type).
const headerSize = 92

// decode reads a tls_event as the ring holds it: the header and the
// captured bytes only.
func decode(b []byte) (Event, error) {
	if len(b) < headerSize {
		return Event{}, fmt.Errorf("tls event of %d bytes, want at least %d", len(b), headerSize)
	}
	le := binary.NativeEndian
	ev := Event{
		BootNS: le.Uint64(b[0:]),
		Conn:   le.Uint64(b[8:]),
		Cookie: le.Uint64(b[16:]),
		Gen:    le.Uint64(b[24:]),
		Slot:   le.Uint32(b[32:]),
		PID:    le.Uint32(b[36:]),
		TID:    le.Uint32(b[40:]),
		Size:   le.Uint32(b[44:]),
		FD:     int32(le.Uint32(b[52:])),
		Op:     Op(b[56] &^ opGo),
		Go:     b[56]&opGo != 0,
	}
	captured := int(le.Uint32(b[48:]))
	if captured > len(b)-headerSize || uint32(captured) > ev.Size && ev.Op != OpFree {
		return Event{}, fmt.Errorf("tls event says %d bytes captured of %d, carries %d", captured, ev.Size, len(b)-headerSize)
	}
	port := binary.BigEndian.Uint16(b[58:])
	switch b[57] {
	case unix.AF_INET:
		ev.Peer = netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[60:64])), port)
	case unix.AF_INET6:
		ev.Peer = netip.AddrPortFrom(netip.AddrFrom16([16]byte(b[60:76])), port)
	}
	comm := b[76:92]
	for i, c := range comm {
		if c == 0 {
			comm = comm[:i]
			break
		}
	}
	ev.Comm = string(comm)
	ev.Data = append([]byte(nil), b[headerSize:headerSize+captured]...)
	return ev, nil
}
