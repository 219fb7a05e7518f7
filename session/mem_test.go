package session

import (
	"fmt"
	"path/filepath"
	"runtime"
	"testing"

	v1 "github.com/agentfence/agentfence/api/v1"
	"github.com/agentfence/agentfence/config"
	"github.com/agentfence/agentfence/enforcer"
	"github.com/agentfence/agentfence/internal/boottime"
	"github.com/agentfence/agentfence/scope"
)

// nopKernel and nopCgroups accept every write and keep nothing, so that
// BenchmarkMemory10kSessions measures the registry, not the fakes' journal.
type nopKernel struct{ Kernel }

func (nopKernel) Slots() int                                     { return config.MaxSessionsLimit + 1 }
func (nopKernel) PutSession(uint32, enforcer.SessionState) error { return nil }
func (nopKernel) WriteScope(uint32, uint64, []scope.Entry) error { return nil }
func (nopKernel) WriteNames(uint32, uint64, []scope.Rule) error  { return nil }
func (nopKernel) BindCgroup(uint64, uint32, uint64) error        { return nil }
func (nopKernel) PidBinding(uint32) (uint32, uint64, bool)       { return 0, 0, false }
func (nopKernel) Session(uint32) (enforcer.SessionState, error)  { return enforcer.SessionState{}, nil }

type nopCgroups struct {
	Cgroups
	base string
	n    uint64
}

func (c *nopCgroups) Create(parent, name string, _ int) (string, uint64, error) {
	c.n++
	return filepath.Join(c.base, name), c.n, nil
}

// BenchmarkMemory10kSessions reports the heap 10,000 open sessions hold
// (as e2e BenchmarkDaemonMemory10kSessions opens them: two rules each, a
// state file, a caller ID as the API makes it) and
// the garbage each open leaves behind.
func BenchmarkMemory10kSessions(b *testing.B) {
	const n = 10000
	for b.Loop() {
		b.StopTimer()
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		cfg := DefaultConfig()
		cfg.StateFile = filepath.Join(b.TempDir(), "sessions.json")
		r := NewRegistry(cfg, Deps{Kernel: nopKernel{}, Cgroups: &nopCgroups{base: "/sys/fs/cgroup/agentfence"}, Clock: boottime.NewClock()})
		b.StartTimer()
		for i := range n {
			c := Caller{ID: fmt.Sprintf("uid=0 gid=0 pid=%d exe=/usr/local/bin/agentfence", 4000+i), PID: 0, UID: 0}
			if _, err := r.Open(v1.OpenRequest{Intent: "bench", Scope: []string{fmt.Sprintf("tcp://10.%d.%d.0/24:443", i>>8, i&0xff), "udp://127.0.0.53:53"}}, c); err != nil {
				b.Fatal(err)
			}
		}
		b.StopTimer()
		runtime.GC()
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/n, "heapB/session")
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/(1<<20), "heapMiB/10k")
		b.ReportMetric(float64(after.TotalAlloc-before.TotalAlloc)/n, "allocB/open")
		runtime.KeepAlive(r)
		b.StartTimer()
	}
}
