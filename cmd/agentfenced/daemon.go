package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cilium/ebpf"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/agentfence/agentfence/api"
	"github.com/agentfence/agentfence/attribution"
	"github.com/agentfence/agentfence/audit"
	"github.com/agentfence/agentfence/audit/sink"
	"github.com/agentfence/agentfence/config"
	"github.com/agentfence/agentfence/credential"
	"github.com/agentfence/agentfence/enforcer"
	"github.com/agentfence/agentfence/enforcer/sockdestroy"
	"github.com/agentfence/agentfence/internal/boottime"
	"github.com/agentfence/agentfence/internal/cgroupv2"
	"github.com/agentfence/agentfence/internal/ringreader"
	"github.com/agentfence/agentfence/kube/node"
	"github.com/agentfence/agentfence/sensor"
	"github.com/agentfence/agentfence/session"
)

// daemon is agentfenced's running parts. run starts them in order, each
// start* adding what it opened to the undo list, which stop unwinds in
// reverse: a part is closed before the parts it was built on.
type daemon struct {
	cfg config.Config
	log *slog.Logger

	reg       *prometheus.Registry
	pipe      *sink.Pipeline
	gate      *enforcer.Gate
	pods      *node.Pods // the node's pods for records; nil without kubernetes.enabled
	clock     *boottime.Clock
	key       *credential.Key
	redactor  *credential.Redactor
	procs     *processes
	joiner    *attribution.Joiner
	tls       *tlsCalls
	destroyer *sockdestroy.Destroyer
	sessions  *session.Registry
	srv       *api.Server
	metrics   *http.Server

	wg    sync.WaitGroup // the goroutines below, which report to errc
	errc  chan error
	ready atomic.Bool // for /readyz
	undo  []func()
}

func (d *daemon) onStop(f func()) { d.undo = append(d.undo, f) }

// stop shuts the servers down, stops the event readers and closes what the
// start functions opened.
func (d *daemon) stop() {
	d.ready.Store(false)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if d.srv != nil {
		d.srv.Shutdown(ctx)
	}
	if d.metrics != nil {
		d.metrics.Shutdown(ctx)
	}
	for i := len(d.undo) - 1; i >= 0; i-- {
		d.undo[i]()
	}
	d.wg.Wait()
}

func stateFile(cfg config.Config) string { return filepath.Join(cfg.StateDir, "sessions.json") }

// startAudit starts the audit pipeline and its sinks.
func (d *daemon) startAudit(stdout io.Writer) func(context.Context) error {
	return func(context.Context) error {
		d.reg = prometheus.NewRegistry()
		host, _ := os.Hostname()
		sinks := append([]audit.SinkConfig{primarySink(d.cfg.Audit)}, d.cfg.Audit.Sinks...)
		// 16,384 records of hand-off between the event readers and the
		// spools absorb bursts at 20,000 decisions/s; beyond that the
		// readers wait and the kernel ring buffers take the burst. The
		// queue costs memory only while records wait in it (0.5–1 KiB each
		// with the encoded line).
		pipe, err := sink.New(sink.Options{StateDir: filepath.Join(d.cfg.StateDir, "audit"), Host: host, ProductVersion: version,
			Registerer: d.reg, Logger: d.log, Stdout: stdout, QueueSize: 16384}, sinks)
		if err != nil {
			return fmt.Errorf("audit: %w", err)
		}
		d.pipe = pipe
		d.onStop(func() { pipe.Close() })
		return nil
	}
}

// primarySink is the sink the --audit-file and --audit-format flags describe.
func primarySink(a config.Audit) audit.SinkConfig {
	s := audit.SinkConfig{Name: "primary", Type: "stdout", Format: a.Format}
	if a.File != "-" {
		s.Type, s.File = "file", &audit.FileConfig{Path: a.File}
	}
	return s
}

// startRedactor loads the node's fingerprint key (state_dir, created on
// first start) and the credential names and patterns argv is redacted by.
func (d *daemon) startRedactor(context.Context) error {
	key, err := credential.LoadOrCreateKey(d.cfg.StateDir)
	if err != nil {
		return err
	}
	d.key = key
	d.redactor, err = credential.NewRedactor(key, d.cfg.Credentials.RedactNames, d.cfg.Credentials.RedactPatterns)
	return err
}

// startGate loads and attaches the gate, the process programs and the
// connection destroyer.
func (d *daemon) startGate(ctx context.Context) error {
	cfg, log := d.cfg, d.log
	gate, err := enforcer.Load(enforcer.Options{CgroupRoot: cfg.CgroupRoot, PinPath: cfg.BPFFSPath,
		Hostnames: enforcer.HostnameOptions{TTLMin: cfg.DNS.MinTTL.Std(), TTLMax: cfg.DNS.MaxTTL.Std()},
		Aggregate: cfg.Audit.AggregateWindow > 0})
	if err != nil {
		if errors.Is(err, ebpf.ErrNotSupported) {
			return fmt.Errorf("%w\nthe kernel lacks a BPF feature the gate needs; run `agentfence doctor` to see which", err)
		}
		return err
	}
	d.gate = gate
	pinned := cfg.BPFFSPath != ""
	d.onStop(func() {
		gate.Close()
		if pinned {
			log.Info("exiting; the pinned gate keeps enforcing the sessions", "pins", cfg.BPFFSPath)
		} else {
			log.Info("programs detached")
		}
	})
	log.Info("egress gate attached", "cgroup_root", cfg.CgroupRoot, "pinned", pinned, "adopted", gate.Adopted(),
		"pid_bound_members_by", gate.PidListing())
	if err := gate.Hostnames(); err != nil {
		log.Warn("hostname rules unavailable: sessions with hostname rules will be refused; address rules are enforced", "err", err)
	}
	if layer, err := gate.SocketFamilies(); !layer.Refuses() {
		log.Warn("sockets of families no cgroup hook sees, ptrace and received sockets are not refused in the kernel for bound members", "layer", layer, "why", err)
	} else {
		log.Info("sockets of families no cgroup hook sees, ptrace and received sockets are refused at the LSM hooks", "layer", layer, "why_not_stronger", err)
	}

	d.clock = boottime.NewClock()
	d.procs, err = startProcesses(ctx, gate, cfg, d.redactor.Argv, log)
	if err != nil {
		log.Warn("process identity unavailable: records carry only pid, uid and comm", "err", err)
	}
	d.onStop(d.procs.Close)
	d.destroyer = sockdestroy.New()
	d.onStop(func() { d.destroyer.Close() })
	log.Info("connection teardown ready", "sockets_named_by", d.destroyer.Naming())
	exportKernelPaths(d.reg, gate, d.destroyer, d.procs.progs != nil)
	return nil
}

// startSessions makes the session registry and adopts the sessions an
// earlier daemon left. Without pins the gate goes with the daemon, so its
// sessions are closed on the way out.
func (d *daemon) startSessions(context.Context) error {
	cfg := d.cfg
	rc := session.DefaultConfig()
	rc.DefaultTTL, rc.MaxTTL = cfg.Sessions.DefaultTTL.Std(), cfg.Sessions.MaxTTL.Std()
	rc.ViolationBudget, rc.DriftAction = uint32(cfg.Sessions.ViolationBudget), cfg.Sessions.DriftAction
	rc.MaxSessions, rc.StateFile, rc.CgroupRoot = cfg.Sessions.MaxSessions, stateFile(cfg), cfg.CgroupRoot
	d.sessions = session.NewRegistry(rc, session.Deps{Kernel: d.gate,
		Cgroups: cgroupv2.Manager{Root: cfg.CgroupRoot, Base: filepath.Join(cfg.CgroupRoot, "agentfence")},
		Sockets: sockets{d.destroyer}, Clock: d.clock, Emit: d.emitLifecycle, Log: d.log})
	adopted, rewritten, err := d.sessions.Restore()
	if err != nil {
		return fmt.Errorf("restore sessions: %w", err)
	}
	d.log.Info("sessions restored", "adopted", adopted, "rewritten", rewritten)
	// A miss waits only until the process stream passes the event's time,
	// which the process's own exit soon does; the whole Wait is spent only
	// while the process reader lags the gate's. 100 ms left 1 of 1,000
	// short-lived processes unattributed on 5.10 under emulation.
	d.joiner = &attribution.Joiner{Sessions: d.sessions, Clock: d.clock, Wait: time.Second, Names: d.gate, Redact: d.redactor.Argv}
	if cfg.Kubernetes.Enabled {
		// Filled once the node follows the cluster (startKubernetes).
		d.pods = &node.Pods{Labels: cfg.Kubernetes.RecordLabels}
		d.joiner.Pods = d.pods.Lookup
	}
	if d.procs.cache != nil {
		d.joiner.Processes = d.procs.cache
	}
	if cfg.BPFFSPath == "" {
		self := session.Caller{ID: "agentfenced shutdown", UID: 0}
		d.onStop(func() {
			if err := d.sessions.CloseAll(self); err != nil {
				d.log.Error("close sessions", "err", err)
			}
			// The repeats counted until the sessions closed, which go
			// with the gate.
			d.flushAllRepeats()
		})
	}
	return nil
}

// emitCounted emits a record that may count against its session's
// violation budget in user space (session.Registry.Drift).
func (d *daemon) emitCounted(rec audit.Record) {
	d.pipe.Emit(rec)
	d.sessions.Drift(rec)
}

// emitRead is emitCounted for the gate's and hostname ring readers, which
// end each batch with the pipeline's Flush (OnCaughtUp).
func (d *daemon) emitRead(rec audit.Record) {
	d.pipe.EmitBatched(rec)
	d.sessions.Drift(rec)
}

// emitLifecycle is the registry's way to the audit trail.
func (d *daemon) emitLifecycle(rec audit.Record) {
	d.tls.sessionRecord(rec)
	d.pipe.Emit(rec)
}

// startAPI serves the local API on its unix socket and, if configured,
// over mTLS.
func (d *daemon) startAPI(ctx context.Context) error {
	cfg := d.cfg
	srv := api.NewServer(d.sessions, api.Policy{UIDs: cfg.Authz.UIDs, GIDs: cfg.Authz.GIDs, Exes: cfg.Authz.Exes,
		MemberOf: d.sessions.MemberOf}, d.log)
	l, err := api.Listen(cfg.APISocket)
	if err != nil {
		return fmt.Errorf("api socket: %w", err)
	}
	d.srv = srv
	d.onStop(func() { os.Remove(cfg.APISocket) })
	d.wg.Go(func() { d.errc <- srv.Serve(l) })
	if sp := cfg.Authz.SPIFFE; sp.ListenAddr != "" {
		sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		tl, closer, err := api.ListenMTLS(sctx, sp)
		cancel()
		if err != nil {
			return fmt.Errorf("mTLS API: %w", err)
		}
		d.onStop(func() { closer.Close() })
		d.wg.Go(func() { d.errc <- srv.Serve(tl) })
		d.log.Info("mTLS api listening", "addr", tl.Addr().String(), "trust_domain", sp.TrustDomain)
	}
	d.log.Info("api listening", "socket", cfg.APISocket)
	return nil
}

// startReaders reads the kernel's rings into the audit trail: gate
// decisions, hostname events, execs, losses; and reaps ended sessions.
func (d *daemon) startReaders(context.Context) error {
	gate, sessions, pipe, log := d.gate, d.sessions, d.pipe, d.log
	rd, err := ringreader.New(gate.Events(), 50*time.Millisecond)
	if err != nil {
		return fmt.Errorf("ring buffer reader: %w", err)
	}
	// Without the hostname programs (a kernel that refused them) there is
	// no hostname ring to read.
	var hostRd *ringreader.Reader
	if gate.HostEvents() != nil {
		if hostRd, err = ringreader.New(gate.HostEvents(), 50*time.Millisecond); err != nil {
			return fmt.Errorf("ring buffer reader: %w", err)
		}
	}
	sessions.SetEventSync(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		rd.Sync(ctx)
		if hostRd != nil {
			hostRd.Sync(ctx)
		}
		d.procs.Sync(ctx)
		d.tls.sync(ctx)
	})
	// The ring readers batch what they emit; a reader that has caught up
	// with its ring ends the batch.
	rd.OnCaughtUp(pipe.Flush)
	if hostRd != nil {
		hostRd.OnCaughtUp(pipe.Flush)
	}
	joiner := d.joiner
	// The readers stop before what they feed is closed.
	ctx, stopEvents := context.WithCancel(context.Background())
	d.onStop(func() {
		stopEvents()
		d.wg.Wait()
	})
	d.wg.Go(func() {
		d.errc <- rd.Run(ctx, func(raw []byte) {
			ev, err := enforcer.DecodeEvent(raw)
			if err != nil {
				log.Error("bad gate event", "err", err)
				return
			}
			d.emitRead(joiner.Record(ev))
			if ev.QuarantinedNow {
				sessions.Quarantined(ev.Slot, ev.Gen)
			}
		})
	})
	if hostRd != nil {
		d.wg.Go(func() {
			d.errc <- hostRd.Run(ctx, func(raw []byte) {
				ev, err := enforcer.DecodeHostEvent(raw)
				if err != nil {
					log.Error("bad hostname event", "err", err)
					return
				}
				gate.NoteHostEvent(ev)
				d.emitRead(joiner.HostRecord(ev))
			})
		})
	}
	d.wg.Go(func() {
		d.procs.emitExecs(ctx, joiner, sessions.Launched, pipe.Emit, func(rec audit.Record, exe sensor.ExeID) {
			d.tls.execRecord(rec, exe, func(u audit.Record) {
				sessions.NoteUncovered(u) // before the trail: what a record says, show says
				pipe.Emit(u)
			})
		})
	})
	d.wg.Go(func() { watchLoss(ctx, gate, d.procs, d.tls, d.clock, pipe.Emit, log) })
	window := d.cfg.Audit.AggregateWindow.Std()
	if window == 0 && gate.Adopted() {
		// Off now, but the gate adopted may have counted repeats before.
		d.flushAllRepeats()
	}
	if window > 0 {
		d.wg.Go(func() {
			t := time.NewTicker(window)
			defer t.Stop()
			for {
				select {
				case <-ctx.Done():
					d.flushAllRepeats()
					return
				case <-t.C:
				}
				err := gate.FlushRepeats(func() {
					sctx, cancel := context.WithTimeout(context.Background(), time.Second)
					defer cancel()
					rd.Sync(sctx)
				}, func(ev enforcer.Event) { d.emitCounted(joiner.Record(ev)) })
				if err != nil {
					log.Error("repeats not flushed", "err", err)
				}
			}
		})
	}
	d.wg.Go(func() {
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case now := <-t.C:
				sessions.Reap(now)
			}
		}
	})
	return nil
}

// flushAllRepeats records the repeats of both windows, the closed one
// and the current: what is left in the kernel when the daemon stops. A
// pinned gate goes on counting, and the next daemon records that.
func (d *daemon) flushAllRepeats() {
	for range 2 {
		if err := d.gate.FlushRepeats(nil, func(ev enforcer.Event) { d.pipe.Emit(d.joiner.Record(ev)) }); err != nil {
			d.log.Error("repeats not flushed", "err", err)
			return
		}
	}
}

// watchLoss turns increases of the kernel's lost-event counters into log
// lines and gap records, so a reader that fell behind is visible in the
// trail.
func watchLoss(ctx context.Context, gate *enforcer.Gate, procs *processes, tls *tlsCalls, clock *boottime.Clock, emit func(audit.Record), log *slog.Logger) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	seen := map[string]uint64{}
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		counts := map[string]uint64{}
		if st, err := gate.Stats(); err == nil {
			counts["kernel_ringbuf:gate"] = st.Lost
		}
		if n, ok := procs.lost(); ok {
			counts["kernel_ringbuf:process"] = n
		}
		if hs, err := gate.HostStats(); err == nil {
			counts["kernel_ringbuf:hostname"] = hs.Lost
		}
		if n, ok := tls.lost(); ok {
			counts["kernel_ringbuf:tls"] = n
		}
		counts["exec_queue"] = procs.dropped.Load()
		for src, n := range counts {
			if n > seen[src] {
				log.Warn("kernel events lost: ring buffer full", "source", src, "lost", n-seen[src])
				emit(audit.Record{Schema: audit.SchemaVersion, Time: clock.Wall(boottime.Now()), Kind: audit.KindGap,
					Gap: &audit.Gap{Source: src, Count: n - seen[src]}})
				seen[src] = n
			}
		}
	}
}

// startMetrics serves /metrics, /healthz and /readyz.
func (d *daemon) startMetrics(context.Context) error {
	if d.cfg.MetricsAddr == "" {
		return nil
	}
	ml, err := net.Listen("tcp", d.cfg.MetricsAddr)
	if err != nil {
		return fmt.Errorf("metrics: %w", err)
	}
	d.metrics = metricsServer(d.reg, d.gate, d.sessions, d.procs, d.tls, &d.ready)
	d.wg.Go(func() { d.errc <- serveHTTP(d.metrics, ml) })
	d.log.Info("metrics listening", "addr", ml.Addr().String())
	return nil
}
