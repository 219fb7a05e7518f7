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
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/agentfence/agentfence/config"
	"github.com/agentfence/agentfence/internal/cgroupv2"
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
	if o.uninstall {
		return uninstall(cfg, log)
	}

	d := &daemon{cfg: cfg, log: log, errc: make(chan error, 8)}
	defer d.stop()
	// Audit first: everything after it is recorded. The readers before
	// the API: a Close waits for them (Registry.SetEventSync).
	for _, start := range []func(context.Context) error{d.startAudit(stdout), d.startRedactor, d.startGate, d.startSessions, d.startTLS, d.startReaders, d.startAPI, d.startKubernetes, d.startMetrics} {
		if err := start(ctx); err != nil {
			return err
		}
	}
	d.ready.Store(true)
	select {
	case <-ctx.Done():
		log.Info("shutting down")
	case err = <-d.errc:
		log.Error("component failed", "err", err)
	}
	return err
}
