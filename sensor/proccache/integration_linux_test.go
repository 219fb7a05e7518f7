//go:build linux

package proccache

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/cilium/ebpf/rlimit"

	"github.com/agentfence/agentfence/internal/privtest"
	"github.com/agentfence/agentfence/internal/procfs"
	"github.com/agentfence/agentfence/sensor"
	"github.com/agentfence/agentfence/sensor/cgroupmeta"
)

// TestWithKernel runs the cache on the real programs: seed, then events.
func TestWithKernel(t *testing.T) {
	privtest.RequireRoot(t)
	if err := rlimit.RemoveMemlock(); err != nil {
		t.Fatal(err)
	}
	progs, err := sensor.LoadProcessPrograms(sensor.ProcessOptions{})
	if err != nil {
		t.Fatalf("%+v", err)
	}
	defer progs.Close()
	mnt, err := procfs.Cgroup2Mount()
	if err != nil {
		t.Fatal(err)
	}
	res, err := cgroupmeta.NewResolver(mnt, 64)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Close()

	c := New(Config{CgroupPath: res.Path})
	defer c.Close()
	if n := c.Seed(); n == 0 {
		t.Fatal("seeded nothing")
	}
	self, ok := c.Lookup(uint32(os.Getpid()), 0)
	if !ok || self.Source != SourceProc {
		t.Fatalf("self not seeded: %+v", self)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go c.Run(ctx, progs)

	cmd := exec.Command("/bin/sh", "-c", "exit 3", "af-cache-marker")
	cmd.Run()
	pid := uint32(cmd.Process.Pid)
	wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
	defer wcancel()
	for {
		// Take the change channel before looking, so an exit applied in
		// between still wakes the wait below.
		c.mu.RLock()
		ch := c.changed
		c.mu.RUnlock()
		p, ok := c.LookupWait(wctx, pid, 0)
		if !ok {
			t.Fatalf("child %d never resolved", pid)
		}
		if p.Exited {
			// The hash worker may already have resolved the symlink.
			real, _ := filepath.EvalSymlinks("/bin/sh")
			if (p.ExePath != "/bin/sh" && p.ExePath != real) || !slices.Equal(p.Args, []string{"/bin/sh", "-c", "exit 3", "af-cache-marker"}) ||
				p.PPID != uint32(os.Getpid()) || p.ExitStatus != 3<<8 || p.CgroupPath == "" {
				t.Fatalf("child %+v", p)
			}
			exe, _ := os.Executable()
			if len(p.Ancestry) == 0 || p.Ancestry[0] != self.ExePath || self.ExePath != exe {
				t.Fatalf("ancestry %q, self %q (%q)", p.Ancestry, self.ExePath, exe)
			}
			return
		}
		// Resolved before its exit event was applied: wait for more events.
		select {
		case <-ch:
		case <-wctx.Done():
			t.Fatal("exit never applied")
		}
	}
}
