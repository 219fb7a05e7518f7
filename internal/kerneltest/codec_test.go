package kerneltest

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"reflect"
	"testing"

	"golang.org/x/sys/unix"
)

// Every operation survives the trip to the probe unchanged, and each one
// is known by its name.
func TestRequestRoundTrip(t *testing.T) {
	ap := netip.MustParseAddrPort("127.0.0.1:53")
	ops := []Op{
		Connect{Addr: ap, V6: true}, SendUDP{Addr: ap, Payload: []byte{0, 1}}, ConnectUDP{Addr: ap}, FastOpen{Addr: ap},
		RawICMP, Bind{Addr: ap, UDP: true}, Uring{Addr: ap}, VMRead{PID: 7}, Traceme{}, RecvSocket{Unix: "/u"}, Netns{},
		API{Socket: "/s", Open: true},
		DNSQuery{Net: "tcp", Server: ap, Name: "a.test", Type: 28, Hold: true}, DNSReset{},
		Resolve{Server: ap, Name: "a.test"}, ResolveLoop{Server: ap, Name: "a.test", Port: 443, N: 3},
		DNSReplay{Server: ap, N: 2}, DialName{Resolver: ap, Host: "a.test", Port: 80},
		TLSHello{Addr: ap, SNI: "a.test", Split: 20}, SendTCP{Addr: ap, Data: []byte("x"), File: "/f"},
		Hold{Addr: ap}, HoldMany{Addr: ap, N: 2}, Loop{Allowed: ap, Denied: ap, Stop: "/stop"},
		Flood{Addr: ap, N: 10, Rate: 5}, ListenTCP{}, UDPSocket{Addr: ap}, UDPSend{To: ap}, UDPRecv{Until: "m"},
		ConnectBench{Addr: ap, N: 1}, UDPBench{Addr: ap, N: 1}, SyscallBench{N: 1},
		ExecBench{Argv: []string{"/usr/bin/node", "-e", "0"}, N: 1},
	}
	if len(ops) != len(kinds) {
		t.Errorf("%d operations tried, %d known", len(ops), len(kinds))
	}
	req, err := encodeRequest(ops)
	if err != nil {
		t.Fatal(err)
	}
	got, err := decodeRequest(req)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, ops) {
		t.Errorf("decoded\n%#v\nwant\n%#v", got, ops)
	}
	if _, err := decodeRequest(`[{"kind":"Nothing","op":{}}]`); err == nil {
		t.Error("an unknown operation decoded")
	}
}

// One naming for every outcome, whatever wraps the errno.
func TestErrName(t *testing.T) {
	for _, c := range []struct {
		err  error
		want string
	}{
		{nil, OK},
		{unix.EPERM, "EPERM"},
		{fmt.Errorf("dial: %w", &os.SyscallError{Syscall: "connect", Err: unix.ECONNREFUSED}), "ECONNREFUSED"},
		{fmt.Errorf("read: %w", errors.New("EOF")), "read: EOF"},
		{errors.New("rcode 3, no address"), "rcode 3, no address"},
	} {
		if got := errName(c.err); got != c.want {
			t.Errorf("errName(%v) = %q, want %q", c.err, got, c.want)
		}
	}
	r := failed("connect", unix.EPERM)
	if r.Outcome() != "connect:EPERM" {
		t.Errorf("outcome %q", r.Outcome())
	}
}

func TestParseResults(t *testing.T) {
	c := &child{pid: 42}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	c.out = w
	c.report(Result{Err: OK, Addr: netip.MustParseAddr("127.0.0.1")})
	c.report(failed("read", unix.EAGAIN))
	w.Close()
	buf := make([]byte, 4096)
	n, _ := r.Read(buf)
	res, err := ParseResults(string(buf[:n]))
	if err != nil || len(res) != 2 || res[0].String() != "ok 127.0.0.1" || res[1].String() != "read:EAGAIN" || res[1].PID != 42 {
		t.Errorf("%+v, %v", res, err)
	}
}
