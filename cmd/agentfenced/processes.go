package main

import (
	"context"
	"fmt"
	"log/slog"
	"sync/atomic"

	"github.com/agentfence/agentfence/attribution"
	"github.com/agentfence/agentfence/audit"
	"github.com/agentfence/agentfence/config"
	"github.com/agentfence/agentfence/enforcer"
	"github.com/agentfence/agentfence/sensor"
	"github.com/agentfence/agentfence/sensor/cgroupmeta"
	"github.com/agentfence/agentfence/sensor/proccache"
	"github.com/agentfence/agentfence/session"
)

// processes is the process sensor: its programs, the cache they feed and
// the exec events of session members on their way to the audit trail. The
// zero value (sensor unavailable) is usable and does nothing.
type processes struct {
	progs    *sensor.ProcessPrograms
	cache    *proccache.Cache
	resolver *cgroupmeta.Resolver
	execs    chan execItem
	dropped  atomic.Uint64 // exec records the exec path had no room for
}

// execItem is an exec event on its way to the trail, or a Sync marker
// (synced set): the exec path closes it once every earlier exec is emitted.
type execItem struct {
	ev     *sensor.ExecEvent
	synced chan struct{}
}

// procRingBytes sizes the process events ring buffer. The kernel maps a
// ring buffer's data twice into the reader, all of it at once, so the 4 MiB
// the program declares cost 8 MiB of the daemon's RSS from the start. 1 MiB
// holds ~615 processes' fork, exec and exit (1.7 KiB, nearly all of it the
// exec record's argv and paths). The reader is woken once 64 KiB are
// pending and polls every 10 ms besides, so the ring overflows only if the
// reader is kept from running while the host starts ~615 processes: about
// 170 ms of both CPUs of a 2-CPU host doing nothing but fork+exec+exit of
// /bin/true (~0.55 ms each). 10,000 of those from 8 threads lost nothing.
// Events lost anyway are counted (agentfence_kernel_events_lost_total, gap
// records) and the process cache then reconciles with /proc.
const procRingBytes = 1 << 20

// startProcesses loads the process programs sharing the gate's pid-binding
// and executable maps, so bindings are inherited on fork and exe-bound
// rules see the identity captured at exec.
func startProcesses(ctx context.Context, gate *enforcer.Gate, cfg config.Config, redact func([]string) []string,
	log *slog.Logger) (*processes, error) {
	p := &processes{}
	progs, err := sensor.LoadProcessPrograms(sensor.ProcessOptions{PidSessions: gate.PidSessions(), ProcExe: gate.ProcExe(),
		Sessions: gate.Sessions(), CgroupSessions: gate.CgroupSessions(), GateEvents: gate.Events(), GateStats: gate.StatsMap(),
		RingBufferSize: procRingBytes})
	if err != nil {
		return p, fmt.Errorf("load process programs: %w", err)
	}
	resolver, err := cgroupmeta.NewResolver(cfg.CgroupRoot, 4096)
	if err != nil {
		progs.Close()
		return p, err
	}
	p.progs, p.resolver = progs, resolver
	p.cache = proccache.New(proccache.Config{MaxEntries: cfg.Process.CacheSize, ExitGrace: cfg.Process.ExitGrace.Std(),
		AncestryDepth: cfg.Process.AncestryDepth, CgroupPath: resolver.Path, Redact: redact})
	n := p.cache.Seed()
	p.execs = make(chan execItem, 4096)
	go func() {
		if err := p.cache.Run(ctx, tee{progs, p.execs, &p.dropped}); err != nil && ctx.Err() == nil {
			log.Error("process sensor stopped", "err", err)
		}
	}()
	log.Info("process sensor running", "seeded", n)
	return p, nil
}

// tee hands exec events to the exec-record path as the cache reads them.
type tee struct {
	sensor.EventSource
	execs   chan<- execItem
	dropped *atomic.Uint64
}

func (t tee) ReadEvent() (sensor.Event, error) {
	ev, err := t.EventSource.ReadEvent()
	if e, ok := ev.(*sensor.ExecEvent); ok && err == nil {
		select {
		case t.execs <- execItem{ev: e}:
		default: // counted and reported as a gap; connect records still carry identity
			t.dropped.Add(1)
		}
	}
	return ev, err
}

// emitExecs writes an exec record for every exec of a session member and
// has launched judge whether it is a declared MCP server. The exec records
// of the host's other processes go no further than the session lookup.
// member then sees each exec record with the image the kernel reported,
// on a goroutine of its own: it may take long (the TLS probes decode a Go
// executable), and a launch waits for the judgement of every exec before
// it. The agent's exec held up the MCP server's it started, whose first
// calls were then refused as the agent's.
func (p *processes) emitExecs(ctx context.Context, j *attribution.Joiner, launched func(tgid uint32) (session.Launch, bool),
	emit func(audit.Record), member func(audit.Record, sensor.ExeID)) {
	if p.execs == nil {
		return
	}
	members := make(chan memberItem, cap(p.execs))
	done := make(chan struct{})
	go func() {
		defer close(done)
		for it := range members {
			if it.synced != nil {
				close(it.synced) // every earlier exec has been emitted and seen by member
				continue
			}
			member(it.rec, it.exe)
		}
	}()
	defer func() { close(members); <-done }()
	for {
		select {
		case <-ctx.Done():
			return
		case it := <-p.execs:
			if it.synced != nil {
				members <- memberItem{synced: it.synced}
				continue
			}
			ev := it.ev
			rec, ok := j.ExecRecord(ev)
			if !ok {
				continue
			}
			if l, judged := launched(ev.TGID); judged {
				emit(attribution.LaunchRecord(rec, l))
				if l.MCP.Session != "" { // bound: from its exec on it runs as the server
					if again, ok := j.ExecRecord(ev); ok {
						rec = again
					}
				}
			}
			emit(rec)
			members <- memberItem{rec: rec, exe: ev.Exe}
		}
	}
}

// memberItem is an emitted exec record on its way to member, or a Sync
// marker passed on by the exec path.
type memberItem struct {
	rec    audit.Record
	exe    sensor.ExeID
	synced chan struct{}
}

// Sync returns once every exec the kernel reported before the call has
// been emitted (or dropped and counted) and seen by member, or ctx is done. A session's closed
// record waits for it, so that the session's last exec comes before it.
func (p *processes) Sync(ctx context.Context) {
	if p.execs == nil {
		return
	}
	if p.progs != nil {
		p.progs.Sync(ctx)
	}
	synced := make(chan struct{})
	select {
	case p.execs <- execItem{synced: synced}:
	case <-ctx.Done():
		return
	}
	select {
	case <-synced:
	case <-ctx.Done():
	}
}

func (p *processes) lost() (uint64, bool) {
	if p.progs == nil {
		return 0, false
	}
	n, err := p.progs.Lost()
	return n, err == nil
}

func (p *processes) Close() {
	if p.cache != nil {
		p.cache.Close()
	}
	if p.progs != nil {
		p.progs.Close()
	}
	if p.resolver != nil {
		p.resolver.Close()
	}
}
