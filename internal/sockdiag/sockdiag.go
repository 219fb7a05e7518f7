// Package sockdiag is the project's codec for inet_diag over
// NETLINK_SOCK_DIAG: SOCK_DIAG_BY_FAMILY dumps of the TCP and UDP socket
// tables and SOCK_DESTROY requests, with a small netlink socket (Conn) that
// sends them and reads the replies.
//
// The layouts are those of include/uapi/linux/inet_diag.h. All fields are
// host-endian except the ports and addresses, which the kernel keeps in
// network byte order; the cookie is two host-endian u32 halves, low half
// first, which the kernel joins as cookie[0] | cookie[1] << 32.
package sockdiag

import "golang.org/x/sys/unix"

// Sizes and offsets of the inet_diag structures (include/uapi/linux/inet_diag.h).
const (
	// sizeofSockID is struct inet_diag_sockid.
	sizeofSockID = 48
	// sizeofReq is struct inet_diag_req_v2.
	sizeofReq = 8 + sizeofSockID
	// sizeofMsg is struct inet_diag_msg.
	sizeofMsg = 4 + sizeofSockID + 20

	reqIDOff   = 8 // the sockid in inet_diag_req_v2
	msgIDOff   = 4 // the sockid in inet_diag_msg
	sizeofHdr  = unix.SizeofNlMsghdr
	sizeofErrn = 4 // the error field that opens struct nlmsgerr
)

// NoCookie in the cookie of a request (INET_DIAG_NOCOOKIE, both halves all
// ones) tells sock_diag to match by the socket id alone.
const NoCookie = ^uint64(0)

// TCPState is a kernel socket state (include/net/tcp_states.h). UDP sockets
// use two of them: TCPEstablished when connected, TCPClose otherwise.
type TCPState uint8

// The states of include/net/tcp_states.h; Request.States is a mask of
// 1 << state.
const (
	TCPEstablished TCPState = 1
	TCPSynSent     TCPState = 2
	TCPSynRecv     TCPState = 3
	TCPFinWait1    TCPState = 4
	TCPFinWait2    TCPState = 5
	TCPTimeWait    TCPState = 6
	TCPClose       TCPState = 7
	TCPCloseWait   TCPState = 8
	TCPLastAck     TCPState = 9
	TCPListen      TCPState = 10
	TCPClosing     TCPState = 11
	TCPNewSynRecv  TCPState = 12
)

// Mask is the bit of s in Request.States.
func (s TCPState) Mask() uint32 { return 1 << s }
