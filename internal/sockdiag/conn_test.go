package sockdiag

import (
	"errors"
	"net"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/agentfence/agentfence/internal/privtest"
)

// loopback returns the client end of a loopback TCP connection and its
// inode.
func loopback(t *testing.T) (*net.TCPConn, uint32) {
	t.Helper()
	ln, err := net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	c, err := net.DialTCP("tcp4", nil, ln.Addr().(*net.TCPAddr))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	raw, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	var serr error
	if err := raw.Control(func(fd uintptr) { serr = unix.Fstat(int(fd), &st) }); err != nil || serr != nil {
		t.Fatal(err, serr)
	}
	return c, uint32(st.Ino)
}

// dumpFind dumps the established IPv4 TCP sockets and returns the one with
// inode ino.
func dumpFind(t *testing.T, c *Conn, ino uint32) Msg {
	t.Helper()
	var found []Msg
	r := Request{Family: unix.AF_INET, Protocol: unix.IPPROTO_TCP, States: TCPEstablished.Mask()}
	if err := c.Dump(&r, func(m *Msg) {
		if m.Inode == ino {
			found = append(found, *m)
		}
	}); err != nil && err != ErrInterrupted {
		t.Fatalf("Dump: %v", err)
	}
	if len(found) != 1 {
		t.Fatalf("dump found %d sockets with inode %d, want 1", len(found), ino)
	}
	return found[0]
}

func TestDumpAndDestroy(t *testing.T) {
	privtest.RequireRoot(t)
	client, ino := loopback(t)
	c, err := Open()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	m := dumpFind(t, c, ino)
	local := client.LocalAddr().(*net.TCPAddr).AddrPort()
	remote := client.RemoteAddr().(*net.TCPAddr).AddrPort()
	if m.Family != unix.AF_INET || m.State != TCPEstablished ||
		m.ID.SrcAddr(m.Family) != local.Addr().Unmap() || m.ID.SrcPort != local.Port() ||
		m.ID.DstAddr(m.Family) != remote.Addr().Unmap() || m.ID.DstPort != remote.Port() ||
		m.ID.Cookie == 0 || m.ID.Cookie == NoCookie || m.UID != uint32(os.Getuid()) {
		t.Fatalf("dumped %+v, want %v -> %v", m, local, remote)
	}

	// A stale cookie is refused, the dumped one destroys the socket, and
	// the socket is gone after.
	stale := Request{Family: m.Family, Protocol: unix.IPPROTO_TCP, ID: m.ID}
	stale.ID.Cookie++
	req := Request{Family: m.Family, Protocol: unix.IPPROTO_TCP, ID: m.ID}
	res, err := c.Destroy([]Request{stale, req})
	if err != nil || len(res) != 2 || res[0] != unix.ENOENT || res[1] != nil {
		t.Fatalf("Destroy = %v, %v; want [ENOENT <nil>]", res, err)
	}
	_ = client.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := client.Read(make([]byte, 1)); !errors.Is(err, unix.ECONNABORTED) {
		t.Errorf("read after destroy = %v, want ECONNABORTED", err)
	}
	if res, err := c.Destroy([]Request{req}); err != nil || res[0] != unix.ENOENT {
		t.Errorf("second Destroy = %v, %v; want [ENOENT]", res, err)
	}
}

// OpenIn enters the namespace through the pid's /proc entry, our own here.
func TestOpenInDumps(t *testing.T) {
	privtest.RequireRoot(t)
	_, ino := loopback(t)
	c, err := OpenIn(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	dumpFind(t, c, ino)
}

func TestDestroyBatchLimit(t *testing.T) {
	privtest.RequireRoot(t)
	c, err := Open()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Destroy(make([]Request, DestroyBatch+1)); err == nil {
		t.Error("Destroy took more than DestroyBatch requests")
	}
	if res, err := c.Destroy(nil); err != nil || len(res) != 0 {
		t.Errorf("Destroy(nil) = %v, %v", res, err)
	}
}
