//go:build linux

package tlsprobe

import (
	"bytes"
	"context"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/agentfence/agentfence/config"
	"github.com/agentfence/agentfence/enforcer"
	"github.com/agentfence/agentfence/internal/cgroupv2"
	"github.com/agentfence/agentfence/internal/privtest"
	"github.com/agentfence/agentfence/internal/procfs"
	"github.com/agentfence/agentfence/sensor"
	"github.com/agentfence/agentfence/sensor/cgroupmeta"
)

func TestEventLayout(t *testing.T) {
	var ev tlsTlsEvent
	if off := unsafe.Offsetof(ev.Data); off != headerSize {
		t.Fatalf("tls_event data at %d, decode reads it at %d", off, headerSize)
	}
}

// The config's bound on tls.processes is the probes' map size.
func TestWatchBoundIsTheConfigs(t *testing.T) {
	if MaxWatched != config.MaxTLSProcesses {
		t.Errorf("bpf/tls.c takes %d executables, config.MaxTLSProcesses is %d", MaxWatched, config.MaxTLSProcesses)
	}
}

func TestDecodeRefusesBadLengths(t *testing.T) {
	b := make([]byte, headerSize+4)
	b[56] = byte(OpWrite)
	b[44] = 4 // size
	b[48] = 8 // captured: more than the record carries
	if _, err := decode(b); err == nil {
		t.Error("a record claiming more bytes than it carries was decoded")
	}
	if _, err := decode(b[:headerSize-1]); err == nil {
		t.Error("a short record was decoded")
	}
	b[48] = 4
	ev, err := decode(b)
	if err != nil || len(ev.Data) != 4 || ev.Size != 4 {
		t.Errorf("decode = %+v, %v", ev, err)
	}
}

// fixture is the real gate attached to a cgroup of the test's own, with a
// session bound to a cgroup below it, and the TLS probes sharing the
// gate's maps.
type fixture struct {
	probes  *Probes
	session string // the member cgroup
	mu      sync.Mutex
	events  []Event
	seen    int  // events handled
	count   bool // count them only (benchmarks)
}

func newFixture(t testing.TB) *fixture {
	t.Helper()
	privtest.RequireRoot(t)
	mnt, err := procfs.Cgroup2Mount()
	if err != nil {
		t.Fatal(err)
	}
	self, err := procfs.ProcCgroupPath(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	base := filepath.Join(mnt, self, fmt.Sprintf("af-tls-%d-%s", os.Getpid(), strings.ReplaceAll(t.Name(), "/", "-")))
	member := filepath.Join(base, "member")
	for _, dir := range []string{base, member} {
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := cgroupv2.RemoveWhenEmpty(dir, 10*time.Second); err != nil {
				t.Error(err)
			}
		})
	}
	g, err := enforcer.Load(enforcer.Options{CgroupRoot: base, NoHostnames: true, Boundary: enforcer.FamiliesNone})
	if err != nil {
		t.Fatalf("load gate: %+v", err)
	}
	t.Cleanup(func() { g.Close() })
	// Audit mode: the gate lets the member's connects through.
	if err := g.PutSession(1, enforcer.SessionState{Gen: 1, State: enforcer.StateActive, Mode: enforcer.ModeAudit}); err != nil {
		t.Fatal(err)
	}
	id, err := cgroupmeta.ID(member)
	if err != nil {
		t.Fatal(err)
	}
	if err := g.BindCgroup(id, 1, 1); err != nil {
		t.Fatal(err)
	}
	p, err := Load(Options{Sessions: g.Sessions(), CgroupSessions: g.CgroupSessions(), PidSessions: g.PidSessions(),
		GateEvents: g.Events(), GateStats: g.StatsMap(), ProcExe: g.ProcExe()})
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{probes: p, session: member}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		p.Run(ctx, func(ev Event) {
			f.mu.Lock()
			f.seen++
			if !f.count {
				f.events = append(f.events, ev)
			}
			f.mu.Unlock()
		}, func(err error) { t.Error(err) })
	}()
	t.Cleanup(func() { cancel(); <-done; p.Close() })
	return f
}

// attachLibraries probes the host's libssl, or skips the test on a host
// without one.
func (f *fixture) attachLibraries(t testing.TB) {
	t.Helper()
	libs := Libraries()
	if len(libs) == 0 {
		t.Skip("no libssl on this host")
	}
	for _, lib := range libs {
		if err := f.probes.Attach(lib); err != nil {
			t.Fatalf("attach %s: %v", lib, err)
		}
	}
}

// take returns the events handled so far (after a Sync) and forgets them.
func (f *fixture) take(t testing.TB) []Event {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	f.probes.Sync(ctx)
	f.mu.Lock()
	defer f.mu.Unlock()
	evs := f.events
	f.events = nil
	return evs
}

// run runs a client command to completion, in the session or not, and
// returns its output.
func (f *fixture) run(t testing.TB, member bool, name string, args ...string) []byte {
	t.Helper()
	cmd := exec.Command(name, args...)
	if member {
		dir, err := os.Open(f.session)
		if err != nil {
			t.Fatal(err)
		}
		defer dir.Close()
		cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(dir.Fd())}
	}
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s: %v\n%s", name, err, out)
	}
	return out
}

// tlsServer serves HTTPS on loopback with a test CA, written to a file for
// the clients.
func tlsServer(t testing.TB) (netip.AddrPort, string) {
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		fmt.Fprintf(w, "%s %s\n", r.Method, r.URL.Path)
	}))
	srv.StartTLS()
	t.Cleanup(srv.Close)
	ca := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o644); err != nil {
		t.Fatal(err)
	}
	return netip.MustParseAddrPort(srv.Listener.Addr().String()), ca
}

func needClient(t testing.TB, name string) string {
	p, err := exec.LookPath(name)
	if err != nil {
		t.Skipf("%s is not installed: %v", name, err)
	}
	return p
}

// TestOpenSSLClients: curl and Python's urllib, both through libssl,
// inside the session: their plaintext arrives call by call, tied to the
// socket the client connected; the same clients outside any session
// produce nothing.
func TestOpenSSLClients(t *testing.T) {
	f := newFixture(t)
	f.attachLibraries(t)
	addr, ca := tlsServer(t)
	url := fmt.Sprintf("https://%s/v1/tickets?page=2", addr)

	clients := map[string][]string{
		"curl":    {needClient(t, "curl"), "-sS", "--http1.1", "--cacert", ca, "-d", "x=1", url},
		"python3": {needClient(t, "python3"), "-c", fmt.Sprintf(`import ssl, urllib.request as u; u.urlopen(u.Request(%q, data=b"x=1"), context=ssl.create_default_context(cafile=%q)).read()`, url, ca)},
	}
	for name, argv := range clients {
		t.Run(name, func(t *testing.T) {
			f.take(t)
			f.run(t, false, argv[0], argv[1:]...)
			if evs := f.take(t); len(evs) != 0 {
				t.Fatalf("a client outside every session produced %d events, first %+v", len(evs), evs[0])
			}
			f.run(t, true, argv[0], argv[1:]...)
			evs := f.take(t)
			var wrote, read, freed bool
			for _, ev := range evs {
				if ev.Slot != 1 || ev.Gen != 1 {
					t.Errorf("event of session %d/%d, want 1/1", ev.Slot, ev.Gen)
				}
				switch ev.Op {
				case OpWrite:
					if bytes.HasPrefix(ev.Data, []byte("POST /v1/tickets?page=2 HTTP/1.1\r\n")) {
						wrote = true
						if ev.Peer != addr || ev.FD < 0 {
							t.Errorf("request on fd %d to %v, want a socket to %v", ev.FD, ev.Peer, addr)
						}
					}
				case OpRead:
					if bytes.HasPrefix(ev.Data, []byte("HTTP/1.1 200 OK\r\n")) {
						read = true
					}
				case OpFree:
					freed = true
				}
				if len(ev.Data) > int(ev.Size) {
					t.Errorf("event carries %d bytes of a %d-byte call", len(ev.Data), ev.Size)
				}
			}
			if !wrote || !read || !freed {
				t.Errorf("request seen %v, response %v, end %v; events:", wrote, read, freed)
				for _, ev := range evs {
					t.Logf("  op %d size %d fd %d peer %v: %q", ev.Op, ev.Size, ev.FD, ev.Peer, ev.Data[:min(len(ev.Data), 40)])
				}
			}
		})
	}
}

func TestAttachRefusesFilesWithoutOpenSSL(t *testing.T) {
	f := newFixture(t)
	if err := f.probes.Attach("/bin/true"); err == nil {
		t.Error("attached to /bin/true")
	}
	if err := f.probes.Attach("/nonexistent/libssl.so.3"); err == nil {
		t.Error("attached to a missing file")
	}
	if got := f.probes.Attached(); len(got) != 0 {
		t.Errorf("attached after refusals: %v", got)
	}
}

// TestPythonLoadedBeforeAttach: a member that loaded libssl (Python's ssl
// module) before the probes were attached is seen from its next call on:
// a uprobe is placed in every mapping of the file, existing ones too.
func TestPythonLoadedBeforeAttach(t *testing.T) {
	f := newFixture(t)
	python := needClient(t, "python3")
	libs := Libraries()
	if len(libs) == 0 {
		t.Skip("no libssl on this host")
	}
	addr, ca := tlsServer(t)
	script := fmt.Sprintf(`import ssl, sys, urllib.request as u
ctx = ssl.create_default_context(cafile=%q)
print("loaded", flush=True)
sys.stdin.readline()
u.urlopen(u.Request("https://%s/v1/late", data=b"x=1"), context=ctx).read()`, ca, addr)
	dir, err := os.Open(f.session)
	if err != nil {
		t.Fatal(err)
	}
	defer dir.Close()
	cmd := exec.Command(python, "-c", script)
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(dir.Fd())}
	in, _ := cmd.StdinPipe()
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	line := make([]byte, 7)
	if _, err := io.ReadFull(out, line); err != nil || string(line) != "loaded\n" {
		t.Fatalf("python said %q, %v", line, err)
	}
	maps, _ := os.ReadFile(fmt.Sprintf("/proc/%d/maps", cmd.Process.Pid))
	if !bytes.Contains(maps, []byte("libssl")) {
		t.Fatalf("python has not mapped libssl yet:\n%s", maps)
	}
	for _, lib := range libs {
		if err := f.probes.Attach(lib); err != nil {
			t.Fatal(err)
		}
	}
	in.Write([]byte("go\n"))
	if err := cmd.Wait(); err != nil {
		t.Fatalf("python: %v", err)
	}
	var wrote bool
	for _, ev := range f.take(t) {
		if ev.Op == OpWrite && ev.PID == uint32(cmd.Process.Pid) && bytes.HasPrefix(ev.Data, []byte("POST /v1/late HTTP/1.1\r\n")) {
			wrote = true
		}
	}
	if !wrote {
		t.Error("the request of a process that loaded libssl before the probes was not seen")
	}
}

// TestAttachExecutableWithoutPath: a file reached only through an open
// descriptor (an exited member's executable, since deleted) is probed and
// reported by the name it was given.
func TestAttachExecutableWithoutPath(t *testing.T) {
	f := newFixture(t)
	libs := Libraries()
	if len(libs) == 0 {
		t.Skip("no libssl on this host")
	}
	b, err := os.ReadFile(libs[0])
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "libssl-copy.so")
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	lib, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer lib.Close()
	os.Remove(path)
	if _, err := f.probes.AttachExecutable(lib, "/opt/agent/libssl.so"); err != nil {
		t.Fatalf("attach by descriptor: %v", err)
	}
	if got := f.probes.Attached(); len(got) != 1 || got[0] != "/opt/agent/libssl.so" {
		t.Errorf("attached %v, want the given name", got)
	}
	none, err := os.Open("/bin/true")
	if err != nil {
		t.Fatal(err)
	}
	defer none.Close()
	if _, err := f.probes.AttachExecutable(none, "/bin/true"); !errors.Is(err, ErrNoTLS) || !strings.HasPrefix(err.Error(), "/bin/true: ") {
		t.Errorf("attach /bin/true by descriptor: %v, want ErrNoTLS under its name", err)
	}
}

// TestWatchedOutsideSessions: a process outside every session whose
// executable Watch names (tls.processes) has its calls read, as a watched
// process without a session; one running another executable, or the same
// one after Unwatch, has none. The process programs are not loaded here,
// so Adopt enters each client as the executable it is about to exec into
// (the daemon's process programs do so at the exec itself).
func TestWatchedOutsideSessions(t *testing.T) {
	f := newFixture(t)
	f.attachLibraries(t)
	addr, ca := tlsServer(t)
	url := fmt.Sprintf("https://%s/v1/watched", addr)
	curl, python := needClient(t, "curl"), needClient(t, "python3")
	idOf := func(path string) sensor.ExeID {
		var st syscall.Stat_t
		if err := syscall.Stat(path, &st); err != nil {
			t.Fatal(err)
		}
		return sensor.ExeIDOf(&st)
	}
	clients := map[string]string{
		curl:   fmt.Sprintf("exec %s -sS --http1.1 --cacert %s -d x=1 %s", curl, ca, url),
		python: fmt.Sprintf(`exec %s -c 'import ssl, urllib.request as u; u.urlopen(u.Request(%q, data=b"x=1"), context=ssl.create_default_context(cafile=%q)).read()'`, python, url, ca),
	}
	// run runs a client outside every session, adopted as its executable
	// before it execs it, and returns its events.
	run := func(exe string) []Event {
		t.Helper()
		f.take(t)
		cmd := exec.Command("/bin/sh", "-c", "read go; "+clients[exe])
		in, _ := cmd.StdinPipe()
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		if err := f.probes.Adopt(uint32(cmd.Process.Pid), idOf(exe)); err != nil {
			t.Fatal(err)
		}
		in.Write([]byte("go\n"))
		if err := cmd.Wait(); err != nil {
			t.Fatalf("%s: %v", exe, err)
		}
		f.probes.procExe.Delete(uint32(cmd.Process.Pid)) // as its exit does
		var evs []Event
		for _, ev := range f.take(t) {
			if ev.PID == uint32(cmd.Process.Pid) {
				evs = append(evs, ev)
			}
		}
		return evs
	}
	if evs := run(curl); len(evs) != 0 {
		t.Fatalf("curl, not watched, outside every session: %d events", len(evs))
	}
	if err := f.probes.Watch(idOf(curl)); err != nil {
		t.Fatal(err)
	}
	evs := run(curl)
	var wrote bool
	for _, ev := range evs {
		if !ev.Watched() {
			t.Errorf("event of session %d/%d, want the watched binding", ev.Slot, ev.Gen)
		}
		if ev.Op == OpWrite && bytes.HasPrefix(ev.Data, []byte("POST /v1/watched HTTP/1.1\r\n")) {
			wrote = true
		}
	}
	if !wrote {
		t.Errorf("the watched curl's request was not seen (%d events)", len(evs))
	}
	if evs := run(python); len(evs) != 0 {
		t.Errorf("python3, not watched: %d events", len(evs))
	}
	if err := f.probes.Unwatch(idOf(curl)); err != nil {
		t.Fatal(err)
	}
	if evs := run(curl); len(evs) != 0 {
		t.Errorf("curl after Unwatch: %d events", len(evs))
	}
	// A member is its session's, whatever it runs.
	f.probes.Watch(idOf(curl))
	for _, ev := range f.runMember(t, curl, clients[curl]) {
		if ev.Slot != 1 || ev.Gen != 1 {
			t.Errorf("a member running a watched executable: event of %d/%d, want its session 1/1", ev.Slot, ev.Gen)
		}
	}
}

// runMember runs script in the session and returns the events of its
// process.
func (f *fixture) runMember(t *testing.T, exe, script string) []Event {
	t.Helper()
	f.take(t)
	dir, err := os.Open(f.session)
	if err != nil {
		t.Fatal(err)
	}
	defer dir.Close()
	cmd := exec.Command("/bin/sh", "-c", script)
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(dir.Fd())}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", exe, err, out)
	}
	var evs []Event
	for _, ev := range f.take(t) {
		if ev.PID == uint32(cmd.Process.Pid) {
			evs = append(evs, ev)
		}
	}
	if len(evs) == 0 {
		t.Fatalf("the member's %s made no events", exe)
	}
	return evs
}
