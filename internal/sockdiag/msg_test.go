package sockdiag

import (
	"encoding/binary"

	"golang.org/x/sys/unix"
)

// The kernel's side of the codec, for the tests: replies as sock_diag
// writes them.

// appendNlmsg appends a netlink message with payload p, padded to
// NLMSG_ALIGNTO unless unpadded.
func appendNlmsg(b []byte, typ, flags uint16, seq uint32, p []byte) []byte {
	var h [sizeofHdr]byte
	binary.NativeEndian.PutUint32(h[0:], uint32(sizeofHdr+len(p)))
	binary.NativeEndian.PutUint16(h[4:], typ)
	binary.NativeEndian.PutUint16(h[6:], flags)
	binary.NativeEndian.PutUint32(h[8:], seq)
	b = append(append(b, h[:]...), p...)
	for len(b)%unix.NLMSG_ALIGNTO != 0 {
		b = append(b, 0)
	}
	return b
}

// diagPayload is m as struct inet_diag_msg.
func diagPayload(m *Msg) []byte {
	b := make([]byte, sizeofMsg)
	b[0], b[1], b[2], b[3] = m.Family, byte(m.State), m.Timer, m.Retrans
	putSockID(b[msgIDOff:], &m.ID)
	for i, v := range []uint32{m.Expires, m.RQueue, m.WQueue, m.UID, m.Inode} {
		binary.NativeEndian.PutUint32(b[52+4*i:], v)
	}
	return b
}

// errPayload is a struct nlmsgerr with the error e (0 for an ack) and, as
// NETLINK_CAP_ACK has it, the request's header without its payload.
func errPayload(e unix.Errno, seq uint32) []byte {
	b := make([]byte, sizeofErrn+sizeofHdr)
	binary.NativeEndian.PutUint32(b, uint32(-int32(e)))
	binary.NativeEndian.PutUint32(b[sizeofErrn:], sizeofHdr+sizeofReq)
	binary.NativeEndian.PutUint16(b[sizeofErrn+4:], unix.SOCK_DESTROY)
	binary.NativeEndian.PutUint16(b[sizeofErrn+6:], unix.NLM_F_REQUEST)
	binary.NativeEndian.PutUint32(b[sizeofErrn+8:], seq)
	return b
}

// donePayload is the int NLMSG_DONE carries: the dump's error, or 0.
func donePayload(e unix.Errno) []byte {
	return binary.NativeEndian.AppendUint32(nil, uint32(-int32(e)))
}

// appendMessage appends m as the kernel would send it; the inverse of
// Parse for the types Parse decodes.
func appendMessage(b []byte, m *Message) []byte {
	var p []byte
	switch m.Type {
	case unix.SOCK_DIAG_BY_FAMILY:
		p = diagPayload(&m.Diag)
	case unix.NLMSG_ERROR:
		p = errPayload(m.Errno, m.Seq)
	case unix.NLMSG_DONE:
		p = donePayload(m.Errno)
	}
	return appendNlmsg(b, m.Type, m.Flags, m.Seq, p)
}
