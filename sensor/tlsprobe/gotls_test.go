//go:build linux

package tlsprobe

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// selfClient, set in the environment, makes the test binary itself the
// Go client (goClientSrc's main): a Go program with crypto/tls that needs
// no build, so the probes are tried under emulation too, where building
// one takes minutes.
const selfClient = "AF_TLSPROBE_GO_CLIENT"

func init() {
	if os.Getenv(selfClient) == "" {
		return
	}
	pem, _ := os.ReadFile(os.Args[2])
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	resp, err := c.Post(os.Args[1], "text/plain", strings.NewReader("x=1"))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	io.Copy(os.Stdout, resp.Body)
	resp.Body.Close()
	os.Exit(0)
}

// TestGoClients: a Go HTTPS client (crypto/tls), built normally and
// stripped, and the test binary as one, inside the session: its request and the response arrive,
// flagged Go, tied to the socket it connected; the same client outside
// any session produces nothing. No return probe is placed, so the client
// runs to its end unharmed.
func TestGoClients(t *testing.T) {
	f := newFixture(t)
	addr, ca := tlsServer(t)
	url := fmt.Sprintf("https://%s/v1/tickets?page=2", addr)
	attached := 0
	for _, name := range []string{"self", "client", "stripped", "pie", "external"} {
		t.Run(name, func(t *testing.T) {
			var bin string
			if name == "self" {
				bin = os.Args[0]
				t.Setenv(selfClient, "1")
			} else {
				bin = goClient(t, name)
			}
			exe, err := os.Open(bin)
			if err != nil {
				t.Fatal(err)
			}
			defer exe.Close()
			start := time.Now()
			stack, err := f.probes.AttachExecutable(exe, bin)
			if err != nil || stack != StackGo {
				t.Fatalf("attach %s: %q, %v", name, stack, err)
			}
			t.Logf("inspected and attached in %v", time.Since(start))
			attached++
			f.take(t)
			if out := f.run(t, false, bin, url, ca); string(out) != "POST /v1/tickets\n" {
				t.Fatalf("client outside the session said %q", out)
			}
			if evs := f.take(t); len(evs) != 0 {
				t.Fatalf("a client outside every session produced %d events, first %+v", len(evs), evs[0])
			}
			if out := f.run(t, true, bin, url, ca); string(out) != "POST /v1/tickets\n" {
				t.Fatalf("client in the session said %q", out)
			}
			var wrote, read bool
			evs := f.take(t)
			for _, ev := range evs {
				if !ev.Go || ev.Slot != 1 || ev.Gen != 1 {
					t.Errorf("event go=%v of session %d/%d, want a Go event of 1/1", ev.Go, ev.Slot, ev.Gen)
				}
				if len(ev.Data) > int(ev.Size) {
					t.Errorf("event carries %d bytes of a %d-byte call", len(ev.Data), ev.Size)
				}
				switch {
				case ev.Op == OpWrite && bytes.HasPrefix(ev.Data, []byte("POST /v1/tickets?page=2 HTTP/1.1\r\n")):
					wrote = true
					if !bytes.HasSuffix(ev.Data, []byte("\r\n\r\nx=1")) || ev.Size != uint32(len(ev.Data)) {
						t.Errorf("request of %d bytes: %q", ev.Size, ev.Data)
					}
				case ev.Op == OpRead && bytes.HasPrefix(ev.Data, []byte("HTTP/1.1 200 OK\r\n")):
					read = true
					if !bytes.HasSuffix(ev.Data, []byte("\r\n\r\nPOST /v1/tickets\n")) {
						t.Errorf("response: %q", ev.Data)
					}
				default:
					continue
				}
				if ev.Peer != addr || ev.FD < 0 {
					t.Errorf("op %d on fd %d to %v, want a socket to %v", ev.Op, ev.FD, ev.Peer, addr)
				}
			}
			if !wrote || !read {
				t.Errorf("request seen %v, response %v; events:", wrote, read)
				for _, ev := range evs {
					t.Logf("  op %d size %d fd %d peer %v: %q", ev.Op, ev.Size, ev.FD, ev.Peer, ev.Data[:min(len(ev.Data), 40)])
				}
			}
		})
	}
	if got := len(f.probes.Attached()); got != attached {
		t.Errorf("%d files attached, want the %d clients", got, attached)
	}
	f.probes.Detach()
	if n := mapLen(t, f.probes); n != 0 {
		t.Errorf("%d executables' offsets left in the kernel after Detach", n)
	}
}

// TestAttachGoRefusesUnknownVersion: a stripped client of a Go version
// past the offsets table is refused as ErrNoTLS, with the reason, and
// leaves nothing behind.
func TestAttachGoRefusesUnknownVersion(t *testing.T) {
	f := newFixture(t)
	stripped := goClient(t, "stripped")
	future := withGoVersion(t, stripped, "go1.99"+goVersionTail(t, stripped))
	err := f.probes.Attach(future)
	var gerr *GoError
	if !errors.Is(err, ErrNoTLS) || !errors.As(err, &gerr) {
		t.Fatalf("attach: %v, want a GoError", err)
	}
	if got := f.probes.Attached(); len(got) != 0 {
		t.Errorf("attached %v", got)
	}
	if n := mapLen(t, f.probes); n != 0 {
		t.Errorf("%d executables' offsets in the kernel", n)
	}
}

func mapLen(t *testing.T, p *Probes) int {
	var k tlsGoExe
	var v tlsGoOffsets
	n := 0
	it := p.objs.GoConnOffsets.Iterate()
	for it.Next(&k, &v) {
		n++
	}
	if err := it.Err(); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestGoClientOnOverlay: a Go client run from an overlay mount (a
// container's image) is read: the kernel's view of its executable (the
// inode of exe_file and its superblock's device) is the one stat gives
// user space, which keys its offsets.
func TestGoClientOnOverlay(t *testing.T) {
	f := newFixture(t)
	addr, ca := tlsServer(t)
	b, err := os.ReadFile(goClient(t, "stripped"))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for _, d := range []string{"lower", "upper", "work", "merged"} {
		if err := os.Mkdir(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "lower", "client"), b, 0o755); err != nil {
		t.Fatal(err)
	}
	merged := filepath.Join(dir, "merged")
	opts := fmt.Sprintf("lowerdir=%s/lower,upperdir=%s/upper,workdir=%s/work", dir, dir, dir)
	if err := unix.Mount("overlay", merged, "overlay", 0, opts); err != nil {
		t.Skipf("no overlay mount here: %v", err)
	}
	t.Cleanup(func() {
		f.probes.Detach() // a uprobe holds the file: the mount would be busy
		if err := unix.Unmount(merged, 0); err != nil {
			t.Error(err)
		}
	})
	bin := filepath.Join(merged, "client")
	if err := f.probes.Attach(bin); err != nil {
		t.Fatal(err)
	}
	f.take(t)
	f.run(t, true, bin, fmt.Sprintf("https://%s/v1/overlay", addr), ca)
	var wrote bool
	for _, ev := range f.take(t) {
		if ev.Op == OpWrite && ev.Go && bytes.HasPrefix(ev.Data, []byte("POST /v1/overlay HTTP/1.1\r\n")) {
			wrote = true
			if ev.Peer != addr || ev.FD < 0 {
				t.Errorf("request on fd %d to %v, want a socket to %v: the offsets were not found by the executable's inode", ev.FD, ev.Peer, addr)
			}
		}
	}
	if !wrote {
		t.Error("the request of a client on an overlay mount was not seen")
	}
}

// TestGoClientOverWrapper: a Go client whose TLS runs over a wrapper
// net.Conn (not a *net.TCPConn) is still read, but the probes do not
// find its socket: following the interface as a *net.TCPConn lands on
// the wrapper's own fields, which name no socket of the process.
func TestGoClientOverWrapper(t *testing.T) {
	f := newFixture(t)
	addr, ca := tlsServer(t)
	bin := goClient(t, "stripped")
	if err := f.probes.Attach(bin); err != nil {
		t.Fatal(err)
	}
	t.Setenv("WRAP", "1")
	f.take(t)
	f.run(t, true, bin, fmt.Sprintf("https://%s/v1/wrapped", addr), ca)
	var wrote, read bool
	for _, ev := range f.take(t) {
		switch {
		case ev.Op == OpWrite && bytes.HasPrefix(ev.Data, []byte("POST /v1/wrapped HTTP/1.1\r\n")):
			wrote = true
		case ev.Op == OpRead && bytes.HasPrefix(ev.Data, []byte("HTTP/1.1 200 OK\r\n")):
			read = true
		default:
			continue
		}
		if ev.FD != -1 || ev.Peer.IsValid() {
			t.Errorf("op %d over a wrapper: fd %d, peer %v; want no socket", ev.Op, ev.FD, ev.Peer)
		}
	}
	if !wrote || !read {
		t.Errorf("request seen %v, response %v", wrote, read)
	}
}

// TestGoClientConcurrent: 20 goroutines of one client, each on its own
// connection, 5 requests each at once. Every request and response is
// seen once, each connection's events carry one socket, and the client
// is unharmed: Read calls are told apart by goroutine, not by thread.
func TestGoClientConcurrent(t *testing.T) {
	f := newFixture(t)
	addr, ca := tlsServer(t)
	bin := goClient(t, "stripped")
	if err := f.probes.Attach(bin); err != nil {
		t.Fatal(err)
	}
	const par = 20
	t.Setenv("PAR", fmt.Sprint(par))
	f.take(t)
	f.run(t, true, bin, fmt.Sprintf("https://%s/v1", addr), ca)
	writes, reads := 0, 0
	socks := map[uint64]int32{} // connection: fd
	for _, ev := range f.take(t) {
		switch {
		case ev.Op == OpWrite && bytes.HasPrefix(ev.Data, []byte("POST /v1/par/")):
			writes++
		case ev.Op == OpRead && bytes.HasPrefix(ev.Data, []byte("HTTP/1.1 200 OK\r\n")):
			reads++
		default:
			continue
		}
		if ev.Peer != addr || ev.FD < 0 {
			t.Errorf("op %d on fd %d to %v, want a socket to %v", ev.Op, ev.FD, ev.Peer, addr)
		}
		if fd, seen := socks[ev.Conn]; seen && fd != ev.FD {
			t.Errorf("connection %#x on fd %d and %d", ev.Conn, fd, ev.FD)
		}
		socks[ev.Conn] = ev.FD
	}
	if writes != par*5 || reads != par*5 || len(socks) != par {
		t.Errorf("%d requests, %d responses on %d connections; want %d, %d on %d", writes, reads, len(socks), par*5, par*5, par)
	}
}
