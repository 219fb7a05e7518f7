package sockdiag

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"reflect"
	"testing"

	"golang.org/x/sys/unix"
)

// sampleTCP4 and sampleTCP6 are sockets as a dump of a busy host shows
// them.
var (
	sampleTCP4 = Msg{Family: unix.AF_INET, State: TCPEstablished, Timer: 2, Retrans: 1, Expires: 180000, RQueue: 3, WQueue: 1448, UID: 1000, Inode: 48213, ID: SockID{
		SrcPort: 41234, DstPort: 443,
		Src: AddrBytes(netip.MustParseAddr("10.0.0.5")), Dst: AddrBytes(netip.MustParseAddr("192.0.2.80")),
		Cookie: 0x2a31,
	}}
	sampleTCP6 = Msg{Family: unix.AF_INET6, State: TCPSynSent, UID: 0, Inode: 7, ID: SockID{
		SrcPort: 50002, DstPort: 8443,
		Src: AddrBytes(netip.MustParseAddr("fe80::5")), Dst: AddrBytes(netip.MustParseAddr("fe80::1")),
		Ifindex: 2, Cookie: 0x100000002,
	}}
)

// parseAll collects what Parse passes to fn.
func parseAll(b []byte) ([]Message, error) {
	var out []Message
	err := Parse(b, func(m *Message) error {
		out = append(out, *m)
		return nil
	})
	return out, err
}

func TestParseDump(t *testing.T) {
	want := []Message{
		{Type: unix.SOCK_DIAG_BY_FAMILY, Flags: unix.NLM_F_MULTI, Seq: 3, Diag: sampleTCP4},
		{Type: unix.SOCK_DIAG_BY_FAMILY, Flags: unix.NLM_F_MULTI | unix.NLM_F_DUMP_INTR, Seq: 3, Diag: sampleTCP6},
		{Type: unix.NLMSG_DONE, Flags: unix.NLM_F_MULTI, Seq: 3},
	}
	var b []byte
	for i := range want {
		b = appendMessage(b, &want[i])
	}
	got, err := parseAll(b)
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("Parse = %+v, %v\nwant %+v", got, err, want)
	}
}

func TestParseErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		b    []byte
		want Message
	}{
		{"destroy failed", appendNlmsg(nil, unix.NLMSG_ERROR, 0, 9, errPayload(unix.ENOENT, 9)),
			Message{Type: unix.NLMSG_ERROR, Seq: 9, Errno: unix.ENOENT}},
		{"ack", appendNlmsg(nil, unix.NLMSG_ERROR, 0, 9, errPayload(0, 9)),
			Message{Type: unix.NLMSG_ERROR, Seq: 9}},
		{"errno alone", appendNlmsg(nil, unix.NLMSG_ERROR, 0, 1, donePayload(unix.EPERM)),
			Message{Type: unix.NLMSG_ERROR, Seq: 1, Errno: unix.EPERM}},
		{"dump failed", appendNlmsg(nil, unix.NLMSG_DONE, unix.NLM_F_MULTI, 4, donePayload(unix.EINVAL)),
			Message{Type: unix.NLMSG_DONE, Flags: unix.NLM_F_MULTI, Seq: 4, Errno: unix.EINVAL}},
		{"bare done", appendNlmsg(nil, unix.NLMSG_DONE, 0, 4, nil),
			Message{Type: unix.NLMSG_DONE, Seq: 4}},
		{"positive errno is success", appendNlmsg(nil, unix.NLMSG_ERROR, 0, 2, donePayload(unix.Errno(1<<32-5))),
			Message{Type: unix.NLMSG_ERROR, Seq: 2}},
		{"most negative int", appendNlmsg(nil, unix.NLMSG_ERROR, 0, 2, donePayload(unix.Errno(1<<31))),
			Message{Type: unix.NLMSG_ERROR, Seq: 2, Errno: 1 << 31}},
		{"unknown type passed on", appendNlmsg(nil, unix.NLMSG_NOOP, 0, 2, []byte{1, 2, 3}),
			Message{Type: unix.NLMSG_NOOP, Seq: 2}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseAll(tc.b)
			if err != nil || len(got) != 1 || got[0] != tc.want {
				t.Errorf("Parse = %+v, %v; want %+v", got, err, tc.want)
			}
		})
	}
}

func TestParseMalformed(t *testing.T) {
	good := appendMessage(nil, &Message{Type: unix.SOCK_DIAG_BY_FAMILY, Seq: 1, Diag: sampleTCP4})
	withLen := func(b []byte, l uint32) []byte {
		b = append([]byte(nil), b...)
		binary.NativeEndian.PutUint32(b, l)
		return b
	}
	for _, tc := range []struct {
		name   string
		b      []byte
		before int // messages passed to fn before the error
	}{
		{"short header", good[:15], 0},
		{"length below the header", withLen(good, 15), 0},
		{"length zero", withLen(good, 0), 0},
		{"length past the end", withLen(good, uint32(len(good)+1)), 0},
		{"length huge", withLen(good, 1<<32-1), 0},
		{"truncated datagram", good[:len(good)-1], 0},
		{"short inet_diag_msg", appendNlmsg(nil, unix.SOCK_DIAG_BY_FAMILY, 0, 1, make([]byte, sizeofMsg-1)), 0},
		{"short nlmsgerr", appendNlmsg(nil, unix.NLMSG_ERROR, 0, 1, []byte{1, 2}), 0},
		{"trailing bytes", append(append([]byte(nil), good...), 1, 2, 3, 4), 1},
		{"second message cut", append(append([]byte(nil), good...), good[:40]...), 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseAll(tc.b)
			if !errors.Is(err, ErrMalformed) {
				t.Errorf("Parse = %v, want ErrMalformed", err)
			}
			if len(got) != tc.before {
				t.Errorf("passed %d messages before the error, want %d", len(got), tc.before)
			}
		})
	}
}

func TestParseStopsAtCallbackError(t *testing.T) {
	var b []byte
	for i := range 3 {
		b = appendMessage(b, &Message{Type: unix.SOCK_DIAG_BY_FAMILY, Seq: uint32(i), Diag: sampleTCP4})
	}
	stop := errors.New("stop")
	n := 0
	err := Parse(b, func(*Message) error {
		n++
		if n == 2 {
			return stop
		}
		return nil
	})
	if err != stop || n != 2 {
		t.Errorf("Parse = %v after %d calls, want the callback's error after 2", err, n)
	}
}

// The kernel may leave the last message of a datagram unpadded.
func TestParseUnpaddedLast(t *testing.T) {
	b := appendMessage(nil, &Message{Type: unix.SOCK_DIAG_BY_FAMILY, Seq: 1, Diag: sampleTCP4})
	b = appendNlmsg(b, unix.NLMSG_NOOP, 0, 1, []byte{7})
	b = b[:len(b)-3] // drop the padding of the one-byte payload
	got, err := parseAll(b)
	if err != nil || len(got) != 2 || got[1].Type != unix.NLMSG_NOOP {
		t.Errorf("Parse = %+v, %v", got, err)
	}
}

func TestParseEmpty(t *testing.T) {
	if got, err := parseAll(nil); err != nil || len(got) != 0 {
		t.Errorf("Parse(nil) = %+v, %v", got, err)
	}
}
