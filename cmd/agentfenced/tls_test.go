package main

import (
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/agentfence/agentfence/attribution"
	"github.com/agentfence/agentfence/enforcer"
	"github.com/agentfence/agentfence/internal/boottime"
	"github.com/agentfence/agentfence/internal/cgroupv2"
	"github.com/agentfence/agentfence/internal/privtest"
	"github.com/agentfence/agentfence/internal/procfs"
	"github.com/agentfence/agentfence/sensor"
	"github.com/agentfence/agentfence/sensor/tlsprobe"
)

// tlsRings counts the TLS probes' rings this process holds.
func tlsRings(t *testing.T) int {
	t.Helper()
	n, err := tlsprobe.RingsHeld(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// newTLSCalls is the daemon's TLS side over a gate of its own, nothing
// loaded yet.
func newTLSCalls(t *testing.T) (*tlsCalls, *enforcer.Gate) {
	privtest.RequireRoot(t)
	mnt, err := procfs.Cgroup2Mount()
	if err != nil {
		t.Fatal(err)
	}
	self, err := procfs.ProcCgroupPath(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	base := filepath.Join(mnt, self, fmt.Sprintf("af-tlsd-%d-%s", os.Getpid(), t.Name()))
	if err := os.Mkdir(base, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := cgroupv2.RemoveWhenEmpty(base, 10*time.Second); err != nil {
			t.Error(err)
		}
	})
	g, err := enforcer.Load(enforcer.Options{CgroupRoot: base, NoHostnames: true, Boundary: enforcer.FamiliesNone})
	if err != nil {
		t.Fatalf("load gate: %+v", err)
	}
	t.Cleanup(func() { g.Close() })
	tc := &tlsCalls{
		opts: tlsprobe.Options{Sessions: g.Sessions(), CgroupSessions: g.CgroupSessions(), PidSessions: g.PidSessions(),
			GateEvents: g.Events(), GateStats: g.StatsMap(), ProcExe: g.ProcExe()},
		log:    slog.New(slog.DiscardHandler),
		handle: func(tlsprobe.Event) {},
		calls:  &attribution.Calls{Joiner: &attribution.Joiner{Clock: boottime.NewClock()}},
	}
	t.Cleanup(tc.unload)
	return tc, g
}

// TestTLSProbesLoadedOnDemand: the probes, their ring included, exist
// only between a session's attach and the unload, and the losses of
// probes unloaded still count.
func TestTLSProbesLoadedOnDemand(t *testing.T) {
	tc, _ := newTLSCalls(t)
	if tc.loaded() != nil || tlsRings(t) != 0 {
		t.Fatal("probes loaded before any session")
	}
	if n, ok := tc.lost(); !ok || n != 0 {
		t.Errorf("lost() = %d, %v before any load, want 0, true", n, ok)
	}
	for round := range 2 {
		tc.attach()
		if tc.loaded() == nil || tlsRings(t) != 1 {
			t.Fatalf("round %d: attach left %d TLS rings, want 1", round, tlsRings(t))
		}
		if libs := tlsprobe.Libraries(); len(libs) > 0 {
			if files, _ := tc.usage(); files == 0 {
				t.Errorf("round %d: nothing probed with %v on the host", round, libs)
			}
		}
		tc.attach() // a second session loads nothing more
		if n := tlsRings(t); n != 1 {
			t.Fatalf("round %d: a second attach left %d TLS rings", round, n)
		}
		tc.unload()
		if tc.loaded() != nil || tlsRings(t) != 0 {
			t.Fatalf("round %d: unload left %d TLS rings", round, tlsRings(t))
		}
		if files, _ := tc.usage(); files != 0 {
			t.Errorf("round %d: %d files probed after the unload", round, files)
		}
		if _, ok := tc.lost(); !ok {
			t.Errorf("round %d: lost() not ok after the unload", round)
		}
	}
}

// TestTLSProcessesFollowTheFile: a file tls.processes names is watched by
// its identity from the attach on, with the processes already running it
// entered for the probes; a file replaced at the path (an upgrade) is
// watched instead of the old one at the next look, and a path gone changes
// nothing.
func TestTLSProcessesFollowTheFile(t *testing.T) {
	tc, g := newTLSCalls(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "mcp-server")
	install := func() sensor.ExeID {
		t.Helper()
		b, err := os.ReadFile("/bin/sleep")
		if err != nil {
			t.Fatal(err)
		}
		tmp := path + ".new"
		if err := os.WriteFile(tmp, b, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, path); err != nil {
			t.Fatal(err)
		}
		var st syscall.Stat_t
		if err := syscall.Stat(path, &st); err != nil {
			t.Fatal(err)
		}
		return sensor.ExeIDOf(&st)
	}
	watching := func(want ...sensor.ExeID) {
		t.Helper()
		got, err := tc.loaded().Watching()
		if err != nil || !slices.Equal(got, want) {
			t.Fatalf("watching %v (%v), want %v", got, err, want)
		}
	}
	first := install()
	running := exec.Command(path, "30")
	if err := running.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { running.Process.Kill(); running.Wait() }()
	tc.watch = []string{path}
	tc.attach()
	watching(first)
	var exe struct {
		Ino      uint64
		Dev, Pad uint32
	} // bpf/common.h struct exe_id
	if err := g.ProcExe().Lookup(uint32(running.Process.Pid), &exe); err != nil || exe.Ino != first.Ino {
		t.Errorf("the process running it before the attach: proc_exe %+v (%v), want inode %d", exe, err, first.Ino)
	}
	second := install()
	tc.watchFiles(tc.loaded())
	watching(second)
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	tc.watchFiles(tc.loaded())
	watching(second)
}
