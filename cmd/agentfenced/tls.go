package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
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
// (attached while sessions exist, so that a host without agents pays
// nothing), and the connections they follow, which become http records.
// The zero value (probes off or unavailable) does nothing.
type tlsCalls struct {
	probes *tlsprobe.Probes
	log    *slog.Logger

	calls *attribution.Calls

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
}

// tlsIdleDetach is how long the probes stay attached after the last
// session ended: a host that runs agents one after the other keeps them,
// one that stopped running agents sheds them.
const tlsIdleDetach = time.Minute

// startTLS loads the TLS probes; they are attached at the first session.
// A kernel that refuses them costs the records of HTTP calls only. It runs
// before the readers start, whose records (an expiry, an exec) it
// watches.
func (d *daemon) startTLS(context.Context) error {
	if d.cfg.TLS.Probes == config.TLSProbesOff {
		d.log.Info("tls probes off (tls.probes): no http records")
		return nil
	}
	g := d.gate
	probes, err := tlsprobe.Load(tlsprobe.Options{Sessions: g.Sessions(), CgroupSessions: g.CgroupSessions(),
		PidSessions: g.PidSessions(), GateEvents: g.Events(), GateStats: g.StatsMap()})
	if err != nil {
		d.log.Warn("tls probes unavailable: no http records", "err", err)
		return nil
	}
	key := d.key
	wire := &httpwire.Options{Fingerprint: key.Fingerprint, CredentialHeaders: d.cfg.TLS.CredentialHeaders}
	if d.cfg.TLS.Query == config.TLSQueryHash {
		wire.HashQuery = key.Fingerprint
	}
	t := &tlsCalls{probes: probes, log: d.log}
	var holders []credential.Holder
	for _, h := range d.cfg.Credentials.Holders {
		r := credential.Holder{Name: h.Name, Fingerprint: h.Fingerprint}
		for _, e := range h.Executables {
			r.Executables = append(r.Executables, credential.Executable{Path: e.Path, SHA256: e.SHA256})
		}
		holders = append(holders, r)
	}
	t.calls = &attribution.Calls{Joiner: d.joiner, Wire: wire, Bundled: t.isBundled, Holders: credential.NewHolders(holders)}
	d.tls = t
	d.onStop(func() { probes.Close() })

	// Its own wait group: the readers started after it wait for theirs
	// before this stops.
	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	d.onStop(func() {
		stop()
		wg.Wait()
	})
	wg.Go(func() {
		err := probes.Run(ctx, func(ev tlsprobe.Event) {
			for _, rec := range t.calls.Handle(ev) {
				d.emitCounted(rec)
			}
		}, func(err error) { d.log.Error("bad tls event", "err", err) })
		if err != nil && ctx.Err() == nil {
			d.log.Error("tls probe reader stopped", "err", err)
		}
	})
	wg.Go(func() { t.housekeep(ctx, d.sessions.Len, d.emitCounted) })
	if d.sessions.Len() > 0 {
		t.attach()
	}
	return nil
}

// attach probes the host's OpenSSL libraries and the executables that
// carry their own (node), those not probed yet. Those a member runs from
// elsewhere (a container's node) are probed at its exec (execRecord).
func (t *tlsCalls) attach() {
	if t == nil {
		return
	}
	before := len(t.probes.Attached())
	libs, exes := tlsprobe.Libraries(), tlsprobe.Executables()
	for _, file := range append(libs, exes...) {
		if err := t.probes.Attach(file); err != nil {
			t.log.Warn("tls probe not attached", "file", file, "err", err)
		}
	}
	for _, exe := range exes {
		t.bundled.Store(exe, true)
	}
	if files := t.probes.Attached(); len(files) > before {
		t.log.Info("tls probes attached", "files", files)
	}
}

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
	t.containerLibraries(rec.Process.PID)
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
	before := t.probes.Probed(f)
	stack, err := t.probes.AttachExecutable(f, name)
	switch {
	case err == nil:
		if stack == tlsprobe.StackOpenSSL {
			t.bundled.Store(name, true)
		}
		t.log.Info("tls probes attached", "file", name, "stack", stack, "pid", rec.Process.PID)
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
func (t *tlsCalls) containerLibraries(pid uint32) {
	ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", pid))
	if err != nil {
		return // gone already
	}
	if _, seen := t.roots.LoadOrStore(ns, true); seen {
		return
	}
	for _, file := range tlsprobe.LibrariesIn(fmt.Sprintf("/proc/%d/root", pid)) {
		if err := t.probes.Attach(file); err != nil {
			if !errors.Is(err, tlsprobe.ErrNoTLS) {
				t.log.Warn("tls probe not attached", "file", file, "mnt_ns", ns, "err", err)
			}
			continue
		}
		t.log.Info("tls probes attached", "file", file, "mnt_ns", ns)
	}
}

func (t *tlsCalls) isBundled(exe string) bool {
	yes, _ := t.bundled.Load(exe)
	return yes == true
}

// housekeep closes connections gone quiet (a process killed before
// SSL_free) and detaches the probes once no session has been open for
// tlsIdleDetach.
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
			detach := false
			if open() > 0 {
				idle = time.Time{}
			} else if idle.IsZero() {
				idle = now
			} else if now.Sub(idle) >= tlsIdleDetach && len(t.probes.Attached()) > 0 {
				detach = true
			}
			for _, rec := range recs {
				emit(rec)
			}
			if detach {
				t.probes.Detach()
				t.checked.Clear() // looked at again once probes are wanted
				t.bundled.Clear()
				t.roots.Clear()
				t.log.Info("tls probes detached: no session open")
				// A session opened since open() was asked attached before
				// the Detach or attaches after it; this covers the first.
				if open() > 0 {
					t.attach()
				}
			}
		}
	}
}

// usage is the number of files probed and of connections followed.
func (t *tlsCalls) usage() (files, conns int) {
	return len(t.probes.Attached()), t.calls.Open()
}

// sync returns once the calls read before it are handled.
func (t *tlsCalls) sync(ctx context.Context) {
	if t != nil {
		t.probes.Sync(ctx)
	}
}

func (t *tlsCalls) lost() (uint64, bool) {
	if t == nil {
		return 0, false
	}
	n, err := t.probes.Lost()
	return n, err == nil
}
