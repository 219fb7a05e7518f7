package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/agentfence/agentfence/internal/pinlock"
	"github.com/agentfence/agentfence/internal/privtest"
)

func TestWaitForPinsFlagLockInput(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--wait-for-pins", "-5s"}, "--wait-for-pins -5s: must not be negative"},
		{[]string{"--wait-for-pins", "soon"}, `invalid value "soon" for flag -wait-for-pins`},
		{[]string{"--wait-for-pins", "1m", "--bpffs-path", ""}, "--wait-for-pins: pinning is off"},
	} {
		_, err := parseFlags(c.args, io.Discard)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: %v, want an error with %q", c.args, err, c.want)
		}
	}
	o, err := parseFlags([]string{"--wait-for-pins", "90s"}, io.Discard)
	if err != nil || o.waitForPins != 90*time.Second || o.cfg.BPFFSPath == "" {
		t.Errorf("--wait-for-pins 90s: %+v, %v", o.waitForPins, err)
	}
	if o, err := parseFlags(nil, io.Discard); err != nil || o.waitForPins != 0 {
		t.Errorf("default: %v, %v; want 0 (refuse at once)", o.waitForPins, err)
	}
}

func TestLockPinsRefusesWaitsAndStops(t *testing.T) {
	privtest.RequireRoot(t)
	mnt := privtest.BPFFS(t)
	pins := filepath.Join(mnt, "agentfence")
	log := slog.New(slog.DiscardHandler)
	ctx := context.Background()

	held, err := pinlock.TryAcquire(pins)
	if err != nil {
		t.Fatal(err)
	}
	by := fmt.Sprintf("pin set %s is in use by pid %d", pins, os.Getpid())
	for _, c := range []struct {
		uninstall bool
		want      string
	}{
		{false, "one agentfenced per pin set: stop it first, or pass --wait-for-pins DURATION to take over its pins when it exits"},
		{true, "refusing to uninstall under it: stop it first, or pass --wait-for-pins DURATION to uninstall when it exits"},
	} {
		l, stopped, err := lockPins(ctx, pins, 0, c.uninstall, log)
		if l != nil || stopped || err == nil || !strings.Contains(err.Error(), by) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("uninstall=%v: %v %v %v; want %q and %q", c.uninstall, l, stopped, err, by, c.want)
		}
	}
	l, stopped, err := lockPins(ctx, pins, 100*time.Millisecond, false, log)
	if l != nil || stopped || err == nil || !strings.Contains(err.Error(), "--wait-for-pins 100ms ran out: "+by) {
		t.Errorf("wait ran out: %v %v %v", l, stopped, err)
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if l, stopped, err := lockPins(cancelled, pins, time.Hour, false, log); l != nil || !stopped || err != nil {
		t.Errorf("stopped while waiting: %v %v %v; want stopped and no error", l, stopped, err)
	}

	// Once the holder lets go, a waiter takes the pins.
	got := make(chan error, 1)
	waiting := make(chan struct{})
	var handler slog.Handler = slog.NewTextHandler(signalWriter{waiting}, nil)
	go func() {
		l, _, err := lockPins(ctx, pins, time.Minute, false, slog.New(handler))
		defer l.Release()
		got <- err
	}()
	select {
	case <-waiting:
	case <-time.After(10 * time.Second):
		t.Fatal("the waiter never said it waits")
	}
	held.Release()
	select {
	case err := <-got:
		if err != nil {
			t.Fatalf("waiter: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the waiter did not take the released pins")
	}

	// Nothing to uninstall where no bpffs is mounted, and nothing created.
	plain := filepath.Join(t.TempDir(), "agentfence")
	if l, stopped, err := lockPins(ctx, plain, 0, true, log); l != nil || stopped || err != nil {
		t.Errorf("uninstall without bpffs: %v %v %v", l, stopped, err)
	}
	if _, err := os.Stat(plain); !os.IsNotExist(err) {
		t.Errorf("uninstall without bpffs created %s (%v)", plain, err)
	}
	// Pinning off: no lock, no error.
	if l, stopped, err := lockPins(ctx, "", 0, false, log); l != nil || stopped || err != nil {
		t.Errorf("pinning off: %v %v %v", l, stopped, err)
	}
}

// signalWriter closes its channel at the first log line that says it waits.
type signalWriter struct{ c chan struct{} }

func (w signalWriter) Write(p []byte) (int, error) {
	if strings.Contains(string(p), "waiting for its holder") {
		select {
		case <-w.c:
		default:
			close(w.c)
		}
	}
	return len(p), nil
}
