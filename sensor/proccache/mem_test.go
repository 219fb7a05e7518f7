package proccache

import (
	"fmt"
	"runtime"
	"testing"

	"github.com/agentfence/agentfence/sensor"
)

// BenchmarkMemoryPer10kProcesses reports the heap held by 10,000 live
// processes with realistic argv (~200 bytes) and exe paths.
func BenchmarkMemoryPer10kProcesses(b *testing.B) {
	const n = 10000
	args := []string{"/usr/bin/python3", "-m", "agent.worker", "--session", "0123456789abcdef0123456789abcdef",
		"--endpoint", "https://api.example.com/v1/messages", "--max-tokens", "4096", "--verbose", "--log-dir", "/var/log/agent"}
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		b.StartTimer()
		c := New(Config{MaxEntries: 2 * n, ProcRoot: b.TempDir(), HashQueue: 1})
		c.hasher.stop() // measure the cache, not a queue of jobs
		for p := uint32(1); p <= n; p++ {
			a := append([]string(nil), args...)
			a[4] = fmt.Sprintf("%032x", p) // distinct strings, as in life
			c.Apply(&sensor.ForkEvent{TGID: p, ParentTGID: 1, StartTime: uint64(p), Ktime: uint64(p)})
			c.Apply(&sensor.ExecEvent{TGID: p, PPID: 1, StartTime: uint64(p), Ktime: uint64(p),
				Filename: "/usr/bin/python3", Args: a, CgroupID: 1, Exe: sensor.ExeID{Ino: 1, Dev: 1}})
		}
		b.StopTimer()
		runtime.GC()
		runtime.ReadMemStats(&after)
		if c.Len() != n {
			b.Fatalf("len %d", c.Len())
		}
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/n, "heapB/process")
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/(1<<20), "heapMiB/10k")
		runtime.KeepAlive(c)
		b.StartTimer()
	}
}

func BenchmarkLookup(b *testing.B) {
	c := New(Config{ProcRoot: b.TempDir()})
	defer c.Close()
	for p := uint32(1); p <= 10000; p++ {
		c.Apply(&sensor.ExecEvent{TGID: p, PPID: p / 2, StartTime: uint64(p), Ktime: uint64(p), Filename: "/bin/x"})
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, ok := c.Lookup(uint32(i%10000)+1, 20000); !ok {
			b.Fatal("miss")
		}
	}
}
