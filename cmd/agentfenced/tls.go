package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/agentfence/agentfence/attribution"
	"github.com/agentfence/agentfence/audit"
	"github.com/agentfence/agentfence/config"
	"github.com/agentfence/agentfence/credential"
	"github.com/agentfence/agentfence/httpwire"
	"github.com/agentfence/agentfence/internal/boottime"
	"github.com/agentfence/agentfence/sensor"
	"github.com/agentfence/agentfence/sensor/proccache"
	"github.com/agentfence/agentfence/sensor/tlsprobe"
)

// tlsCalls reads members' HTTPS calls at their TLS library: the probes
// (loaded and attached while sessions exist, so that a host without
// agents pays nothing, not even their 8 MiB ring, which the reader maps
// twice: 16 MiB of resident memory), and the connections they follow,
// which become http records. The zero value (probes off or unavailable)
// does nothing.
type tlsCalls struct {
	opts tlsprobe.Options
	log  *slog.Logger
	// handle takes each event the probes read.
	handle func(tlsprobe.Event)

	calls *attribution.Calls

	// mu guards the loaded probes, their reader's stop and the ring losses
	// of the probes loaded before them. Nothing is loaded, closed or read
	// under it.
	mu         sync.Mutex
	probes     *tlsprobe.Probes
	stopReader func()
	lostBefore uint64

	// checked are the executable images looked at for a TLS stack, by
	// sensor.ExeID: a new file at a known path is looked at again.
	checked sync.Map
	// bundled are the paths of the executables that carry their own
	// OpenSSL, for the records' tls.library (Go's calls say so
	// themselves).
	bundled sync.Map
	// roots are the mount namespaces whose libraries were looked for (by
	// /proc/PID/ns/mnt), the daemon's own among them.
	roots sync.Map

	// watch are tls.processes; watching what the probes loaded now were
	// told of each (the file's identity as last looked at: a file
	// replaced since is another). watching is housekeep's and attach's,
	// under watchMu.
	watch    []string
	watchMu  sync.Mutex
	watching map[string]sensor.ExeID
}

// tlsIdleUnload is how long the probes stay loaded after the last session
// ended: a host that runs agents one after the other keeps them, one that
// stopped running agents sheds them.
const tlsIdleUnload = time.Minute

// startTLS checks that the kernel takes the TLS probes, which are loaded
// and attached at the first session. A kernel that refuses them costs the
// records of HTTP calls only. It runs before the readers start, whose
// records (an expiry, an exec) it watches.
func (d *daemon) startTLS(context.Context) error {
	if d.cfg.TLS.Probes == config.TLSProbesOff {
		d.log.Info("tls probes off (tls.probes): no http records")
		return nil
	}
	g := d.gate
	opts := tlsprobe.Options{Sessions: g.Sessions(), CgroupSessions: g.CgroupSessions(),
		PidSessions: g.PidSessions(), GateEvents: g.Events(), GateStats: g.StatsMap(), ProcExe: g.ProcExe()}
	// Loaded once here, so that a refusal is said at start, not at the
	// first session.
	probes, err := tlsprobe.Load(opts)
	if err != nil {
		d.log.Warn("tls probes unavailable: no http records", "err", err)
		return nil
	}
	probes.Close()
	key := d.key
	wire := &httpwire.Options{Fingerprint: key.Fingerprint, CredentialHeaders: d.cfg.TLS.CredentialHeaders}
	if d.cfg.TLS.Query == config.TLSQueryHash {
		wire.HashQuery = key.Fingerprint
	}
	t := &tlsCalls{opts: opts, log: d.log, watch: d.cfg.TLS.Processes}
	var holders []credential.Holder
	for _, h := range d.cfg.Credentials.Holders {
		r := credential.Holder{Name: h.Name, Fingerprint: h.Fingerprint}
		for _, e := range h.Executables {
			r.Executables = append(r.Executables, credential.Executable{Path: e.Path, SHA256: e.SHA256})
		}
		holders = append(holders, r)
	}
	t.calls = &attribution.Calls{Joiner: d.joiner, Wire: wire, Bundled: t.isBundled, Holders: credential.NewHolders(holders)}
	t.handle = func(ev tlsprobe.Event) {
		for _, rec := range t.calls.Handle(ev) {
			d.emitCounted(rec)
		}
	}
	d.tls = t

	// Its own stop: the readers started after it stop before this does.
	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	d.onStop(func() {
		stop()
		wg.Wait()
		t.unload()
	})
	// Executables named in tls.processes keep the probes as a session
	// does.
	wanted := func() int { return d.sessions.Len() + len(t.watch) }
	wg.Go(func() { t.housekeep(ctx, wanted, d.emitCounted) })
	if wanted() > 0 {
		t.attach()
	}
	return nil
}

// loaded is the probes loaded now, or nil.
func (t *tlsCalls) loaded() *tlsprobe.Probes {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.probes
}

// load loads the probes, unless they are, and starts their reader. Two
// sessions opening at once may both load; the second copy is closed.
func (t *tlsCalls) load() (*tlsprobe.Probes, error) {
	if p := t.loaded(); p != nil {
		return p, nil
	}
	p, err := tlsprobe.Load(t.opts)
	if err != nil {
		return nil, err
	}
	t.mu.Lock()
	if cur := t.probes; cur != nil {
		t.mu.Unlock()
		p.Close()
		return cur, nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	t.probes, t.stopReader = p, func() {
		cancel()
		<-done
	}
	t.mu.Unlock()
	go func() {
		defer close(done)
		err := p.Run(ctx, t.handle, func(err error) { t.log.Error("bad tls event", "err", err) })
		if err != nil && ctx.Err() == nil {
			t.log.Error("tls probe reader stopped", "err", err)
		}
	}()
	return p, nil
}

// unload detaches and closes the probes, after their reader has handled
// what they read. Detached, they lose no more events, so the count they
// end with is final.
func (t *tlsCalls) unload() {
	t.mu.Lock()
	p, stop := t.probes, t.stopReader
	t.mu.Unlock()
	if p == nil {
		return
	}
	p.Detach()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	p.Sync(ctx)
	cancel()
	stop()
	lost, _ := p.Lost()
	t.mu.Lock()
	t.probes, t.stopReader = nil, nil
	t.lostBefore += lost
	t.mu.Unlock()
	p.Close()
	t.checked.Clear() // looked at again once probes are wanted
	t.bundled.Clear()
	t.roots.Clear()
	t.watchMu.Lock()
	t.watching = nil
	t.watchMu.Unlock()
}

// attach probes the host's OpenSSL libraries and the executables that
// carry their own (node), those not probed yet. Those a member runs from
// elsewhere (a container's node) are probed at its exec (execRecord).
func (t *tlsCalls) attach() {
	if t == nil {
		return
	}
	p, err := t.load()
	if err != nil {
		t.log.Error("tls probes not loaded: no http records", "err", err)
		return
	}
	before := len(p.Attached())
	libs, exes := tlsprobe.Libraries(), tlsprobe.Executables()
	for _, file := range append(libs, exes...) {
		if err := p.Attach(file); err != nil {
			t.log.Warn("tls probe not attached", "file", file, "err", err)
		}
	}
	for _, exe := range exes {
		t.bundled.Store(exe, true)
	}
	t.watchFiles(p)
	if files := p.Attached(); len(files) > before {
		t.log.Info("tls probes attached", "files", files)
		shed()
	}
}

// watchFiles tells the probes of the files tls.processes names, those
// new or replaced since they were last looked at: their identity (the
// probes find the processes by it), their own TLS stack (a Go program, or
// one that carries OpenSSL; one that uses libssl is probed there), and the
// processes that already run them.
func (t *tlsCalls) watchFiles(p *tlsprobe.Probes) {
	t.watchMu.Lock()
	defer t.watchMu.Unlock()
	for _, path := range t.watch {
		f, err := os.Open(path)
		if err != nil {
			// Said once, not every housekeeping round; what runs the file
			// it named is still read.
			if _, known := t.watching[path]; !known {
				t.log.Warn("tls.processes: executable not found", "file", path, "err", err)
				t.remember(path, sensor.ExeID{})
			}
			continue
		}
		t.watchFile(p, f, path)
		f.Close()
	}
}

// watchFile is watchFiles for one file, open as f.
func (t *tlsCalls) watchFile(p *tlsprobe.Probes, f *os.File, path string) {
	var st syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &st); err != nil {
		t.log.Warn("tls.processes: executable not found", "file", path, "err", err)
		return
	}
	id := sensor.ExeIDOf(&st)
	old, known := t.watching[path]
	if known && old == id {
		return
	}
	if known && old != (sensor.ExeID{}) {
		if err := p.Unwatch(old); err != nil {
			t.log.Warn("tls.processes: replaced executable still watched", "file", path, "err", err)
		}
	}
	if err := p.Watch(id); err != nil {
		t.log.Error("tls.processes: executable not watched", "file", path, "err", err)
		return
	}
	t.remember(path, id)
	stack, err := p.AttachExecutable(f, path)
	switch {
	case err == nil:
		if stack == tlsprobe.StackOpenSSL {
			t.bundled.Store(path, true)
		}
	case !errors.Is(err, tlsprobe.ErrNoTLS):
		t.log.Warn("tls probe not attached", "file", path, "err", err)
	}
	adopted := 0
	for _, pid := range running(id) {
		if err := p.Adopt(pid, id); err == nil {
			adopted++
		}
	}
	t.log.Info("tls.processes: executable watched", "file", path, "stack", stack, "running", adopted)
}

// remember notes what path was last found to be (the zero ExeID: not
// found). Call it with watchMu held.
func (t *tlsCalls) remember(path string, id sensor.ExeID) {
	if t.watching == nil {
		t.watching = map[string]sensor.ExeID{}
	}
	t.watching[path] = id
}

// running lists the processes whose executable is id.
func running(id sensor.ExeID) []uint32 {
	dirs, _ := os.ReadDir("/proc")
	var pids []uint32
	for _, d := range dirs {
		pid, err := strconv.ParseUint(d.Name(), 10, 32)
		if err != nil {
			continue
		}
		var st syscall.Stat_t
		if syscall.Stat(fmt.Sprintf("/proc/%d/exe", pid), &st) == nil && sensor.ExeIDOf(&st) == id {
			pids = append(pids, uint32(pid))
		}
	}
	return pids
}

// shed hands the memory that placing probes took back to the system. Its
// symbol tables are garbage once the probes are placed, but no collection
// follows at rest: node's alone left the heap 65 MiB larger (90 MiB in use
// after a session's first attach on a daemon at 26 MiB before), and the
// resident memory with it, until the runtime's next forced collection
// minutes later. A collection of its own, off the caller's path, after a
// rare event.
func shed() { go debug.FreeOSMemory() }

// sessionRecord attaches the probes when a session opens, before the
// opener hears back (the registry emits a change's records before it
// returns), so its agent's first call is seen.
func (t *tlsCalls) sessionRecord(rec audit.Record) {
	if t != nil && rec.Kind == audit.KindSession && rec.Event == "opened" {
		t.attach()
	}
}

// execRecord probes a member's executable when it carries its own
// OpenSSL (node) or is a Go program with crypto/tls, and emits a
// tls_uncovered record when it speaks TLS through a stack the probes do
// not read (another library, a Go version they cannot take). The exec is
// seen after it happened: calls the process makes before the probe is
// placed, within milliseconds of its start, are not seen. A process may
// even have exited by then (a Go client's one request took 10 ms): its
// file is then found by the exec path, provided it is still the image exe
// names. A Go program's next run is read from its start: the probes stay
// on the file.
func (t *tlsCalls) execRecord(rec audit.Record, exe sensor.ExeID, emit func(audit.Record)) {
	if t == nil || rec.Kind != audit.KindExec || rec.Process == nil || rec.Process.Exe == "" {
		return
	}
	p := t.loaded()
	if p == nil {
		return // no session open: no member
	}
	t.containerLibraries(p, rec.Process.PID)
	name := rec.Process.Exe
	if _, checked := t.checked.LoadOrStore(exe, true); checked {
		return
	}
	// Through /proc while the process lives, the file it runs is found in
	// its own mount namespace (a container's).
	f, _, _ := proccache.OpenExe("/proc", rec.Process.PID, name, exe)
	if f == nil {
		t.checked.Delete(exe)
		t.log.Debug("tls: executable gone before it was looked at", "file", name, "pid", rec.Process.PID)
		return
	}
	defer f.Close()
	before := p.Probed(f)
	stack, err := p.AttachExecutable(f, name)
	switch {
	case err == nil:
		if stack == tlsprobe.StackOpenSSL {
			t.bundled.Store(name, true)
		}
		t.log.Info("tls probes attached", "file", name, "stack", stack, "pid", rec.Process.PID)
		shed()
		if why := ""; !before {
			if why = late(rec.Process.PID, exe); why != "" {
				emit(audit.Record{Schema: audit.SchemaVersion, Time: rec.Time, Kind: audit.KindTLSUncovered, Session: rec.Session,
					Agent: rec.Agent, Origin: rec.Origin, MCP: rec.MCP, Process: rec.Process, TLS: &audit.TLS{Library: stack, Uncovered: why}})
			}
		}
	case errors.Is(err, tlsprobe.ErrNoTLS):
		if stack, why := tlsprobe.Uncovered(fmt.Sprintf("/proc/self/fd/%d", f.Fd())); stack != "" {
			emit(audit.Record{Schema: audit.SchemaVersion, Time: rec.Time, Kind: audit.KindTLSUncovered, Session: rec.Session,
				Agent: rec.Agent, Origin: rec.Origin, MCP: rec.MCP, Process: rec.Process, TLS: &audit.TLS{Library: stack, Uncovered: why}})
		}
	default:
		t.log.Warn("tls probe not attached", "file", name, "err", err)
	}
}

// late says why calls of a process whose executable was just probed may
// have gone unread: it exited, or held a socket, before the probes were
// placed (a one-request client outruns the attach on its first run). The
// record it makes keeps the gap from being silent; a process that made its
// calls and closed its sockets before the attach, and is still exiting, is
// not told.
func late(pid uint32, exe sensor.ExeID) string {
	f, _, _ := proccache.OpenExe("/proc", pid, "", exe)
	if f == nil {
		return "exited before the probes were placed at its exec: its calls are not read (later runs are)"
	}
	f.Close()
	fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	for _, fd := range fds {
		if l, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name())); err == nil && strings.HasPrefix(l, "socket:") {
			return "held a socket before the probes were placed at its exec: its calls until then are not read"
		}
	}
	return ""
}

// containerLibraries probes the OpenSSL of a member's mount namespace
// (a container's image has its own libssl, another file than the host's),
// once per namespace.
func (t *tlsCalls) containerLibraries(p *tlsprobe.Probes, pid uint32) {
	ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", pid))
	if err != nil {
		return // gone already
	}
	if _, seen := t.roots.LoadOrStore(ns, true); seen {
		return
	}
	for _, file := range tlsprobe.LibrariesIn(fmt.Sprintf("/proc/%d/root", pid)) {
		if err := p.Attach(file); err != nil {
			if !errors.Is(err, tlsprobe.ErrNoTLS) {
				t.log.Warn("tls probe not attached", "file", file, "mnt_ns", ns, "err", err)
			}
			continue
		}
		t.log.Info("tls probes attached", "file", file, "mnt_ns", ns)
		shed()
	}
}

func (t *tlsCalls) isBundled(exe string) bool {
	yes, _ := t.bundled.Load(exe)
	return yes == true
}

// housekeep closes connections gone quiet (a process killed before
// SSL_free), looks again at the files tls.processes names, and unloads the
// probes once no session has been open (and the config names none) for
// tlsIdleUnload.
func (t *tlsCalls) housekeep(ctx context.Context, open func() int, emit func(audit.Record)) {
	tick := time.NewTicker(10 * time.Second)
	defer tick.Stop()
	var idle time.Time // since when no session was open; zero while one is
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-tick.C:
			recs := t.calls.Idle(boottime.Now(), 5*time.Minute)
			if p := t.loaded(); p != nil && len(t.watch) > 0 {
				t.watchFiles(p) // a file replaced (an upgrade) is another
			}
			unload := false
			if open() > 0 {
				idle = time.Time{}
			} else if idle.IsZero() {
				idle = now
			} else if now.Sub(idle) >= tlsIdleUnload && t.loaded() != nil {
				unload = true
			}
			for _, rec := range recs {
				emit(rec)
			}
			if unload {
				t.unload()
				t.log.Info("tls probes unloaded: no session open")
				// A session opened since open() was asked attached before
				// the unload or attaches after it; this covers the first.
				if open() > 0 {
					t.attach()
				}
			}
		}
	}
}

// usage is the number of files probed and of connections followed.
func (t *tlsCalls) usage() (files, conns int) {
	if p := t.loaded(); p != nil {
		files = len(p.Attached())
	}
	return files, t.calls.Open()
}

// sync returns once the calls read before it are handled.
func (t *tlsCalls) sync(ctx context.Context) {
	if t == nil {
		return
	}
	if p := t.loaded(); p != nil {
		p.Sync(ctx)
	}
}

// lost counts the events the probes' rings had no room for, those of
// probes unloaded since included.
func (t *tlsCalls) lost() (uint64, bool) {
	if t == nil {
		return 0, false
	}
	t.mu.Lock()
	p, before := t.probes, t.lostBefore
	t.mu.Unlock()
	if p == nil {
		return before, true
	}
	n, err := p.Lost()
	return before + n, err == nil
}
