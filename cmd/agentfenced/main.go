// Command agentfenced is the agentfence node daemon: it loads the egress
// gate and the process sensor, keeps the intent sessions, serves the local
// API and streams the kernel-attributed audit trail to its sinks.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/agentfence/agentfence/internal/boottime"
	"github.com/agentfence/agentfence/session"

	"github.com/cilium/ebpf"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/agentfence/agentfence/api"
	"github.com/agentfence/agentfence/attribution"
	"github.com/agentfence/agentfence/audit"
	"github.com/agentfence/agentfence/audit/sink"
	"github.com/agentfence/agentfence/config"
	"github.com/agentfence/agentfence/enforcer"
	"github.com/agentfence/agentfence/enforcer/sockdestroy"
	"github.com/agentfence/agentfence/internal/bpffs"
	"github.com/agentfence/agentfence/internal/cgroupv2"
	"github.com/agentfence/agentfence/internal/pinlock"
	"github.com/agentfence/agentfence/internal/ringreader"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "agentfenced:", err)
		os.Exit(1)
	}
}

type options struct {
	cfg       config.Config
	logLevel  slog.Level
	uninstall bool
	// waitForPins is how long to wait for another holder of the pin set
	// to exit; 0 refuses at once.
	waitForPins time.Duration
}

func parseFlags(args []string, stderr io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("agentfenced", flag.ContinueOnError)
	fs.SetOutput(stderr)
	flags := config.BindFlags(fs)
	level := fs.String("log-level", "info", "debug, info, warn or error")
	fs.BoolVar(&o.uninstall, "uninstall", false, "detach the gate, remove every pin and the session state, and exit")
	fs.DurationVar(&o.waitForPins, "wait-for-pins", 0, "one daemon per pin set: if another process (an older agentfenced) holds the pin set at\n"+
		"--bpffs-path, wait up to this long (e.g. 2m) for it to exit, then take over its pins, or with --uninstall\n"+
		"remove them; 0 refuses at once, naming the holder's pid")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if err := o.logLevel.UnmarshalText([]byte(*level)); err != nil {
		return o, fmt.Errorf("--log-level: %w", err)
	}
	if o.waitForPins < 0 {
		return o, fmt.Errorf("--wait-for-pins %v: must not be negative (0 refuses at once)", o.waitForPins)
	}
	var err error
	if o.cfg, err = flags.Load(); err != nil {
		return o, err
	}
	if o.waitForPins > 0 && o.cfg.BPFFSPath == "" {
		return o, errors.New("--wait-for-pins: pinning is off (bpffs_path is empty), so there is no pin set to wait for")
	}
	return o, nil
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "doctor" {
		return doctor(ctx, args[1:], stdout, stderr)
	}
	o, err := parseFlags(args, stderr)
	if err != nil {
		return err
	}
	cfg := o.cfg
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: o.logLevel}))
	if os.Geteuid() != 0 {
		return errors.New("must run as root (it loads BPF programs and manages cgroups)")
	}
	// One daemon per pin set: the lock comes before anything is opened,
	// loaded, attached or adopted, and is held until run returns.
	lock, stopped, err := lockPins(ctx, cfg.BPFFSPath, o.waitForPins, o.uninstall, log)
	if err != nil || stopped {
		return err
	}
	defer lock.Release()
	if cfg.CgroupRoot == "" {
		if cfg.CgroupRoot, err = cgroupv2.Root(); err != nil {
			return err
		}
	}
	stateFile := filepath.Join(cfg.StateDir, "sessions.json")
	if o.uninstall {
		return uninstall(cfg, stateFile, log)
	}

	// Audit first: everything after this point is recorded.
	reg := prometheus.NewRegistry()
	host, _ := os.Hostname()
	sinks := append([]audit.SinkConfig{primarySink(cfg.Audit)}, cfg.Audit.Sinks...)
	// 16,384 records of hand-off between the event readers and the spools
	// absorb bursts at 20,000 decisions/s; beyond that the readers wait and
	// the kernel ring buffers take the burst. The queue costs memory only
	// while records wait in it (0.5–1 KiB each with the encoded line).
	pipe, err := sink.New(sink.Options{StateDir: filepath.Join(cfg.StateDir, "audit"), Host: host, ProductVersion: version,
		Registerer: reg, Logger: log, Stdout: stdout, QueueSize: 16384}, sinks)
	if err != nil {
		return fmt.Errorf("audit: %w", err)
	}
	defer pipe.Close()

	gate, err := enforcer.Load(enforcer.Options{CgroupRoot: cfg.CgroupRoot, PinPath: cfg.BPFFSPath,
		Hostnames: enforcer.HostnameOptions{TTLMin: cfg.DNS.MinTTL.Std(), TTLMax: cfg.DNS.MaxTTL.Std()}})
	if err != nil {
		if errors.Is(err, ebpf.ErrNotSupported) {
			return fmt.Errorf("%w\nthe kernel lacks a BPF feature the gate needs; run `agentfence doctor` to see which", err)
		}
		return err
	}
	pinned := cfg.BPFFSPath != ""
	defer func() {
		gate.Close()
		if pinned {
			log.Info("exiting; the pinned gate keeps enforcing the sessions", "pins", cfg.BPFFSPath)
		} else {
			log.Info("programs detached")
		}
	}()
	log.Info("egress gate attached", "cgroup_root", cfg.CgroupRoot, "pinned", pinned, "adopted", gate.Adopted(),
		"pid_bound_members_by", gate.PidListing())
	if err := gate.Hostnames(); err != nil {
		log.Warn("hostname rules unavailable: sessions with hostname rules will be refused; address rules are enforced", "err", err)
	}
	if layer, err := gate.SocketFamilies(); layer != enforcer.FamiliesLSM {
		log.Warn("sockets of families no cgroup hook sees are not refused in the kernel for bound members", "layer", layer, "why", err)
	} else {
		log.Info("sockets of families no cgroup hook sees are refused by the BPF LSM")
	}

	clock := boottime.NewClock()
	procs, err := startProcesses(ctx, gate, cfg, log)
	if err != nil {
		log.Warn("process identity unavailable: records carry only pid, uid and comm", "err", err)
	}
	defer procs.Close()

	destroyer := sockdestroy.New()
	defer destroyer.Close()
	log.Info("connection teardown ready", "sockets_named_by", destroyer.Naming())
	exportKernelPaths(reg, gate, destroyer, procs.progs != nil)

	rc := session.DefaultConfig()
	rc.DefaultTTL, rc.MaxTTL = cfg.Sessions.DefaultTTL.Std(), cfg.Sessions.MaxTTL.Std()
	rc.ViolationBudget, rc.DriftAction = uint32(cfg.Sessions.ViolationBudget), cfg.Sessions.DriftAction
	rc.MaxSessions, rc.StateFile, rc.CgroupRoot = cfg.Sessions.MaxSessions, stateFile, cfg.CgroupRoot
	sessions := session.NewRegistry(rc, session.Deps{Kernel: gate,
		Cgroups: cgroupv2.Manager{Root: cfg.CgroupRoot, Base: filepath.Join(cfg.CgroupRoot, "agentfence")},
		Sockets: sockets{destroyer}, Clock: clock, Emit: pipe.Emit, Log: log})
	adopted, rewritten, err := sessions.Restore()
	if err != nil {
		return fmt.Errorf("restore sessions: %w", err)
	}
	log.Info("sessions restored", "adopted", adopted, "rewritten", rewritten)
	if !pinned {
		self := session.Caller{ID: "agentfenced shutdown", UID: 0}
		defer func() {
			if err := sessions.CloseAll(self); err != nil {
				log.Error("close sessions", "err", err)
			}
		}()
	}

	var wg sync.WaitGroup
	errc := make(chan error, 8)
	srv := api.NewServer(sessions, api.Policy{UIDs: cfg.Authz.UIDs, GIDs: cfg.Authz.GIDs, Exes: cfg.Authz.Exes,
		MemberOf: sessions.MemberOf}, log)
	l, err := api.Listen(cfg.APISocket)
	if err != nil {
		return fmt.Errorf("api socket: %w", err)
	}
	defer os.Remove(cfg.APISocket)
	wg.Go(func() { errc <- srv.Serve(l) })
	if sp := cfg.Authz.SPIFFE; sp.ListenAddr != "" {
		sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		tl, closer, err := api.ListenMTLS(sctx, sp)
		cancel()
		if err != nil {
			return fmt.Errorf("mTLS API: %w", err)
		}
		defer closer.Close()
		wg.Go(func() { errc <- srv.Serve(tl) })
		log.Info("mTLS api listening", "addr", tl.Addr().String(), "trust_domain", sp.TrustDomain)
	}
	log.Info("api listening", "socket", cfg.APISocket)

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
	})
	// A miss waits only until the process stream passes the event's time,
	// which the process's own exit soon does; the whole Wait is spent only
	// while the process reader lags the gate's. 100 ms left 1 of 1,000
	// short-lived processes unattributed on 5.10 under emulation.
	joiner := &attribution.Joiner{Sessions: sessions, Clock: clock, Wait: time.Second, Names: gate}
	if procs.cache != nil {
		joiner.Processes = procs.cache
	}
	evCtx, stopEvents := context.WithCancel(context.Background())
	defer stopEvents()
	wg.Go(func() {
		errc <- rd.Run(evCtx, func(raw []byte) {
			ev, err := enforcer.DecodeEvent(raw)
			if err != nil {
				log.Error("bad gate event", "err", err)
				return
			}
			pipe.Emit(joiner.Record(ev))
			if ev.QuarantinedNow {
				sessions.Quarantined(ev.Slot, ev.Gen)
			}
		})
	})
	if hostRd != nil {
		wg.Go(func() {
			errc <- hostRd.Run(evCtx, func(raw []byte) {
				ev, err := enforcer.DecodeHostEvent(raw)
				if err != nil {
					log.Error("bad hostname event", "err", err)
					return
				}
				gate.NoteHostEvent(ev)
				pipe.Emit(joiner.HostRecord(ev))
			})
		})
	}
	wg.Go(func() { procs.emitExecs(evCtx, joiner, pipe.Emit) })
	wg.Go(func() { watchLoss(evCtx, gate, procs, clock, pipe.Emit, log) })
	wg.Go(func() {
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-evCtx.Done():
				return
			case now := <-t.C:
				sessions.Reap(now)
			}
		}
	})

	var ready atomic.Bool
	var ms *http.Server
	if cfg.MetricsAddr != "" {
		ml, err := net.Listen("tcp", cfg.MetricsAddr)
		if err != nil {
			return fmt.Errorf("metrics: %w", err)
		}
		ms = metricsServer(reg, gate, sessions, procs, &ready)
		wg.Go(func() { errc <- serveHTTP(ms, ml) })
		log.Info("metrics listening", "addr", ml.Addr().String())
	}
	ready.Store(true)

	select {
	case <-ctx.Done():
		log.Info("shutting down")
	case err = <-errc:
		log.Error("component failed", "err", err)
	}
	ready.Store(false)
	shutCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	srv.Shutdown(shutCtx)
	if ms != nil {
		ms.Shutdown(shutCtx)
	}
	stopEvents()
	wg.Wait()
	return err
}

// lockPins takes the lock on the pin set at pins (see internal/pinlock), so
// that two daemons never share one: they would split the ring buffers
// between their trails. If another process holds it, lockPins fails naming
// its pid, or with wait > 0 waits that long for it to exit. The lock is nil
// when pinning is off, and when there is nothing to uninstall. stopped says
// that ctx ended while it waited: the daemon was told to stop before it
// started.
func lockPins(ctx context.Context, pins string, wait time.Duration, uninstalling bool, log *slog.Logger) (_ *pinlock.Lock, stopped bool, _ error) {
	if pins == "" {
		return nil, false, nil
	}
	if uninstalling && !bpffs.Mounted(filepath.Dir(pins)) {
		// No bpffs, so nothing is pinned and no daemon runs on these pins
		// (a daemon mounts bpffs before it locks); uninstall has no pins to
		// remove, only the session state.
		return nil, false, nil
	}
	if err := bpffs.Ensure(filepath.Dir(pins)); err != nil {
		return nil, false, err
	}
	then := "stop it first, or pass --wait-for-pins DURATION to take over its pins when it exits"
	if uninstalling {
		then = "refusing to uninstall under it: stop it first, or pass --wait-for-pins DURATION to uninstall when it exits"
	}
	if wait == 0 {
		l, err := pinlock.TryAcquire(pins)
		if errors.Is(err, pinlock.ErrHeld) {
			return nil, false, fmt.Errorf("%w; one agentfenced per pin set: %s", err, then)
		}
		return l, false, err
	}
	start := time.Now()
	wctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	l, err := pinlock.Acquire(wctx, pins, 50*time.Millisecond, func(h *pinlock.HeldError) {
		log.Warn("pin set in use: waiting for its holder to exit", "pins", pins, "holder_pid", h.PID, "holder", h.Comm, "wait_for_pins", wait)
	})
	switch {
	case err == nil:
		if time.Since(start) > 50*time.Millisecond {
			log.Info("pin set free: taking over", "pins", pins, "waited", time.Since(start).Round(time.Millisecond))
		}
		return l, false, nil
	case ctx.Err() != nil:
		log.Info("stopped while waiting for the pin set", "pins", pins)
		return nil, true, nil
	case errors.Is(err, pinlock.ErrHeld):
		var h *pinlock.HeldError
		errors.As(err, &h)
		return nil, false, fmt.Errorf("--wait-for-pins %v ran out: %w", wait, h)
	}
	return nil, false, err
}

// primarySink is the sink the --audit-file and --audit-format flags describe.
func primarySink(a config.Audit) audit.SinkConfig {
	s := audit.SinkConfig{Name: "primary", Type: "stdout", Format: a.Format}
	if a.File != "-" {
		s.Type, s.File = "file", &audit.FileConfig{Path: a.File}
	}
	return s
}

// watchLoss turns increases of the kernel's lost-event counters into log
// lines and gap records, so a reader that fell behind is visible in the
// trail.
func watchLoss(ctx context.Context, gate *enforcer.Gate, procs *processes, clock *boottime.Clock, emit func(audit.Record), log *slog.Logger) {
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

// uninstall ends enforcement: detaches and unpins everything, removes the
// session state and the empty session cgroups.
func uninstall(cfg config.Config, stateFile string, log *slog.Logger) error {
	var errs []error
	if cfg.BPFFSPath != "" {
		errs = append(errs, enforcer.Uninstall(cfg.BPFFSPath))
	}
	if err := os.Remove(stateFile); err != nil && !os.IsNotExist(err) {
		errs = append(errs, err)
	}
	base := filepath.Join(cfg.CgroupRoot, "agentfence")
	left := 0
	filepath.WalkDir(base, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() && p != base {
			if pop, _ := cgroupv2.Populated(p); pop {
				left++
			}
		}
		return nil
	})
	// Deepest first, so parents are empty when their turn comes.
	var dirs []string
	filepath.WalkDir(base, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs = append(dirs, p)
		}
		return nil
	})
	for i := len(dirs) - 1; i >= 0; i-- {
		cgroupv2.Remove(dirs[i])
	}
	if left > 0 {
		log.Warn("session cgroups with running processes were left in place, now unconfined", "count", left)
	}
	log.Info("agentfence uninstalled", "pins", cfg.BPFFSPath)
	return errors.Join(errs...)
}
