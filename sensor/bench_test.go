//go:build linux

package sensor

import (
	"os/exec"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/agentfence/agentfence/internal/privtest"
)

// BenchmarkForkExecExit measures what the programs add to a process's life:
// fork+exec+exit of /bin/true with and without them, in one run so the
// machine state is the same. Events are drained and decoded as the daemon
// would, on the same CPUs.
func BenchmarkForkExecExit(b *testing.B) {
	privtest.RequireRoot(b)
	run := func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			if err := exec.Command("/bin/true").Run(); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.Run("unloaded", run)
	b.Run("loaded", func(b *testing.B) {
		l := load(b, ProcessOptions{})
		go func() {
			for range l.events {
			}
		}()
		// Program run time from the kernel's own accounting: unlike the
		// wall-clock ratio it is immune to other load on the machine.
		if st, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME)); err == nil {
			defer st.Close()
		}
		before := progStats(b, l.ProcessPrograms)
		b.ResetTimer()
		run(b)
		b.StopTimer()
		// Per invocation, because other processes on the host run the
		// programs too; one fork+exec+exit costs about the sum.
		after := progStats(b, l.ProcessPrograms)
		for name, a := range after {
			d, n := a.Runtime-before[name].Runtime, a.RunCount-before[name].RunCount
			if n > 0 {
				b.ReportMetric(float64(d.Nanoseconds())/float64(n), name+"-ns/run")
			}
		}
		if lost, err := l.Lost(); err != nil || lost != 0 {
			b.Errorf("lost %d %v", lost, err)
		}
	})
	b.Run("unloaded-again", run)
}

func progStats(b *testing.B, p *ProcessPrograms) map[string]ebpf.ProgramStats {
	out := map[string]ebpf.ProgramStats{}
	for name, prog := range map[string]*ebpf.Program{"exec": p.objs.AfSchedExec, "fork": p.objs.AfSchedFork, "exit": p.objs.AfSchedExit} {
		st, err := prog.Stats()
		if err != nil {
			b.Fatal(err)
		}
		out[name] = *st
	}
	return out
}
