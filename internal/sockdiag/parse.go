package sockdiag

import (
	"encoding/binary"
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// Msg is struct inet_diag_msg: one socket of a dump.
type Msg struct {
	Family  uint8
	State   TCPState
	Timer   uint8
	Retrans uint8
	ID      SockID
	Expires uint32
	RQueue  uint32
	WQueue  uint32
	UID     uint32
	Inode   uint32 // 0 for a socket no file owns (TIME_WAIT, NEW_SYN_RECV)
}

func msgAt(b []byte) Msg {
	return Msg{
		Family:  b[0],
		State:   TCPState(b[1]),
		Timer:   b[2],
		Retrans: b[3],
		ID:      sockIDAt(b[msgIDOff:]),
		Expires: binary.NativeEndian.Uint32(b[52:]),
		RQueue:  binary.NativeEndian.Uint32(b[56:]),
		WQueue:  binary.NativeEndian.Uint32(b[60:]),
		UID:     binary.NativeEndian.Uint32(b[64:]),
		Inode:   binary.NativeEndian.Uint32(b[68:]),
	}
}

// Message is one netlink message of a reply from sock_diag.
type Message struct {
	Type  uint16 // SOCK_DIAG_BY_FAMILY, NLMSG_DONE, NLMSG_ERROR, or another the caller may skip
	Flags uint16 // NLM_F_MULTI, NLM_F_DUMP_INTR, ...
	Seq   uint32
	// Diag is the socket a SOCK_DIAG_BY_FAMILY message describes.
	Diag Msg
	// Errno is what an NLMSG_ERROR or NLMSG_DONE message reports: 0 for an
	// acknowledgement or the end of a dump.
	Errno unix.Errno
}

// ErrMalformed is wrapped by the errors Parse returns for input that is
// not a well-formed sock_diag reply.
var ErrMalformed = errors.New("malformed sock_diag reply")

// Parse decodes the netlink messages of one datagram read from a sock_diag
// socket and calls fn for each, in order; m is valid only during the call.
// It stops at the first error fn returns and returns it as it is. A
// message whose header or payload is cut short is an error wrapping
// ErrMalformed, so are bytes left over after the last message; the
// messages before it have been passed to fn.
func Parse(b []byte, fn func(m *Message) error) error {
	var m Message
	for off := 0; off < len(b); {
		rest := b[off:]
		if len(rest) < sizeofHdr {
			return fmt.Errorf("%w: %d bytes at offset %d, short of a netlink header", ErrMalformed, len(rest), off)
		}
		l := binary.NativeEndian.Uint32(rest[0:])
		if l < sizeofHdr || uint64(l) > uint64(len(rest)) {
			return fmt.Errorf("%w: message at offset %d claims %d bytes, %d left", ErrMalformed, off, l, len(rest))
		}
		m = Message{
			Type:  binary.NativeEndian.Uint16(rest[4:]),
			Flags: binary.NativeEndian.Uint16(rest[6:]),
			Seq:   binary.NativeEndian.Uint32(rest[8:]),
		}
		p := rest[sizeofHdr:l]
		switch m.Type {
		case unix.SOCK_DIAG_BY_FAMILY:
			if len(p) < sizeofMsg {
				return fmt.Errorf("%w: inet_diag_msg at offset %d has %d bytes, want %d", ErrMalformed, off, len(p), sizeofMsg)
			}
			m.Diag = msgAt(p)
		case unix.NLMSG_ERROR:
			if len(p) < sizeofErrn {
				return fmt.Errorf("%w: NLMSG_ERROR at offset %d has %d bytes, want at least %d", ErrMalformed, off, len(p), sizeofErrn)
			}
			m.Errno = errnoAt(p)
		case unix.NLMSG_DONE:
			// The kernel sends the dump's error; a bare NLMSG_DONE, which
			// netlink allows, is a clean end.
			if len(p) >= sizeofErrn {
				m.Errno = errnoAt(p)
			}
		}
		if err := fn(&m); err != nil {
			return err
		}
		// The last message of a datagram may lack its alignment padding.
		off += min(nlmsgAlign(int(l)), len(rest))
	}
	return nil
}

// errnoAt reads the negative errno the kernel sends; a value that is not
// negative means success.
func errnoAt(p []byte) unix.Errno {
	e := int64(int32(binary.NativeEndian.Uint32(p)))
	if e >= 0 {
		return 0
	}
	return unix.Errno(-e)
}

func nlmsgAlign(l int) int { return (l + unix.NLMSG_ALIGNTO - 1) &^ (unix.NLMSG_ALIGNTO - 1) }
