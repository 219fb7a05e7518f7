// Command agentfenced is the agentfence node daemon: it loads the egress
// gate, keeps the intent sessions, serves the local API and writes the
// kernel-attributed audit trail.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/cilium/ebpf"

	"github.com/agentfence/agentfence/api"
	"github.com/agentfence/agentfence/attribution"
	"github.com/agentfence/agentfence/audit"
	"github.com/agentfence/agentfence/enforcer"
	"github.com/agentfence/agentfence/internal/cgroupv2"
	"github.com/agentfence/agentfence/internal/ringreader"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "agentfenced:", err)
		os.Exit(1)
	}
}

type options struct {
	apiSocket  string
	auditFile  string
	cgroupRoot string
	logLevel   string
	defaultTTL time.Duration
	maxTTL     time.Duration
}

func parseFlags(args []string, stderr io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("agentfenced", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.apiSocket, "api-socket", api.DefaultSocket, "unix socket for the local API (mode 0600)")
	fs.StringVar(&o.auditFile, "audit-file", "-", "where to write JSON audit records, one per line (- is stdout)")
	fs.StringVar(&o.cgroupRoot, "cgroup-root", "", "cgroup v2 mount point (default: found in /proc/self/mountinfo)")
	fs.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.DurationVar(&o.defaultTTL, "default-ttl", time.Hour, "session lifetime when the opener gives none")
	fs.DurationVar(&o.maxTTL, "max-ttl", 24*time.Hour, "longest session lifetime an opener may ask for")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if !filepath.IsAbs(o.apiSocket) {
		return o, fmt.Errorf("--api-socket %q must be an absolute path", o.apiSocket)
	}
	if o.defaultTTL <= 0 || o.maxTTL <= 0 || o.defaultTTL > o.maxTTL {
		return o, fmt.Errorf("--default-ttl %s and --max-ttl %s must be positive with default ≤ max", o.defaultTTL, o.maxTTL)
	}
	return o, nil
}

func run(ctx context.Context, args []string, stderr io.Writer) error {
	o, err := parseFlags(args, stderr)
	if err != nil {
		return err
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(o.logLevel)); err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))

	if os.Geteuid() != 0 {
		return errors.New("must run as root (it loads BPF programs and manages cgroups)")
	}
	if o.cgroupRoot == "" {
		if o.cgroupRoot, err = cgroupv2.Root(); err != nil {
			return err
		}
	}

	out, closeOut, err := openAudit(o.auditFile)
	if err != nil {
		return err
	}
	defer closeOut()
	host, _ := os.Hostname()
	sink := &jsonLines{w: out, host: host}

	gate, err := enforcer.Load(enforcer.Options{CgroupRoot: o.cgroupRoot})
	if err != nil {
		if errors.Is(err, ebpf.ErrNotSupported) {
			return fmt.Errorf("%w\nthe kernel lacks a BPF feature the gate needs; run `agentfence doctor` to see which", err)
		}
		return err
	}
	defer func() {
		if err := gate.Close(); err != nil {
			log.Error("detach", "err", err)
		}
		log.Info("programs detached")
	}()
	log.Info("egress gate attached", "cgroup_root", o.cgroupRoot)

	clock := attribution.NewClock()
	base := filepath.Join(o.cgroupRoot, "agentfence")
	cfg := attribution.DefaultConfig()
	cfg.DefaultTTL, cfg.MaxTTL = o.defaultTTL, o.maxTTL
	reg := attribution.NewRegistry(cfg, gate, cgroupv2.Manager{Base: base}, clock, sink.Emit)
	defer func() {
		if err := reg.CloseAll("agentfenced shutdown"); err != nil {
			log.Error("close sessions", "err", err)
		}
	}()

	l, err := api.Listen(o.apiSocket)
	if err != nil {
		return fmt.Errorf("api socket: %w", err)
	}
	srv := api.NewServer(reg, api.Policy{UIDs: []uint32{0}, SessionCgroupBase: base, CgroupRoot: o.cgroupRoot}, log)
	var wg sync.WaitGroup
	errc := make(chan error, 3)
	wg.Go(func() { errc <- srv.Serve(l) })
	defer os.Remove(o.apiSocket)
	log.Info("api listening", "socket", o.apiSocket)

	rd, err := ringreader.New(gate.Events(), 50*time.Millisecond)
	if err != nil {
		return fmt.Errorf("ring buffer reader: %w", err)
	}
	reg.SetEventSync(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		rd.Sync(ctx)
	})
	joiner := &attribution.Joiner{Registry: reg, Clock: clock}
	evCtx, stopEvents := context.WithCancel(context.Background())
	wg.Go(func() {
		errc <- rd.Run(evCtx, func(raw []byte) {
			ev, err := enforcer.DecodeEvent(raw)
			if err != nil {
				log.Error("bad gate event", "err", err)
				return
			}
			sink.Emit(joiner.Record(ev))
		})
	})
	wg.Go(func() { watchLoss(evCtx, gate, clock, sink, log) })
	wg.Go(func() {
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-evCtx.Done():
				return
			case now := <-t.C:
				reg.Reap(now)
			}
		}
	})

	select {
	case <-ctx.Done():
		log.Info("shutting down")
	case err = <-errc:
		log.Error("component failed", "err", err)
	}
	shutCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	srv.Shutdown(shutCtx)
	stopEvents()
	wg.Wait()
	return err
}

// watchLoss turns increases of the kernel's lost-event counter into log lines
// and gap records, so a reader that fell behind is visible in the trail.
func watchLoss(ctx context.Context, gate *enforcer.Gate, clock *attribution.Clock, sink *jsonLines, log *slog.Logger) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	var seen uint64
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		st, err := gate.Stats()
		if err != nil {
			log.Error("read gate stats", "err", err)
			continue
		}
		if st.Lost > seen {
			n := st.Lost - seen
			log.Warn("kernel events lost: ring buffer full", "lost", n)
			sink.Emit(audit.Record{Schema: audit.SchemaVersion, Time: clock.Wall(attribution.BootNS()), Kind: audit.KindGap,
				Gap: &audit.Gap{Source: "kernel_ringbuf", Count: n}})
			seen = st.Lost
		}
	}
}

func openAudit(path string) (io.Writer, func(), error) {
	if path == "-" {
		return os.Stdout, func() {}, nil
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, nil, fmt.Errorf("--audit-file: %w", err)
	}
	return f, func() { f.Close() }, nil
}

// jsonLines writes one JSON record per line.
type jsonLines struct {
	mu   sync.Mutex
	w    io.Writer
	host string
}

func (j *jsonLines) Emit(r audit.Record) {
	r.Host = j.host
	b, err := json.Marshal(r)
	if err != nil {
		return
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	j.w.Write(append(b, '\n'))
}
