package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/agentfence/agentfence/config"
	"github.com/agentfence/agentfence/enforcer"
	"github.com/agentfence/agentfence/internal/bpffs"
	"github.com/agentfence/agentfence/internal/cgroupv2"
	"github.com/agentfence/agentfence/internal/pinlock"
)

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

// uninstall ends enforcement: detaches and unpins everything, removes the
// session state and the empty session cgroups.
func uninstall(cfg config.Config, log *slog.Logger) error {
	var errs []error
	if cfg.BPFFSPath != "" {
		errs = append(errs, enforcer.Uninstall(cfg.BPFFSPath))
	}
	if err := os.Remove(stateFile(cfg)); err != nil && !os.IsNotExist(err) {
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
