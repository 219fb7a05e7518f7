package enforcer

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/agentfence/agentfence/internal/cgroupv2"
	"github.com/agentfence/agentfence/internal/kerneltest"
	"github.com/agentfence/agentfence/internal/ringreader"
	"github.com/agentfence/agentfence/scope"
)

// BenchmarkConnect measures connect()+close() of a TCP socket to a loopback
// listener, timed in a process of its own (an "agent"; the event reader and
// the listener run in the benchmark process, as the daemon and a server
// would), in four configurations: (a) no programs attached, (b) the gate
// attached and the caller in no session, (d) the same in a cgroup below the
// root that no session is bound to, (c) the caller in a session with 1,000
// rules while 10,000 sessions are loaded and a reader drains the events.
// This machine is noisy, so each iteration runs a short batch of every
// configuration in turn, rotating the order, and the medians are compared:
// the ratios come from the same minutes.
func BenchmarkConnect(b *testing.B) {
	g, root := rootGate(b, Options{})
	dst := kerneltest.Serve(b, "127.0.0.1:0")
	rd, err := ringreader.New(g.Events(), 50*time.Millisecond)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go rd.Run(ctx, func(raw []byte) { DecodeEvent(raw) })

	// 10,000 sessions with one rule each, then the caller's with 1,000.
	for slot := uint32(1); slot <= 10000; slot++ {
		r, _ := scope.Parse(fmt.Sprintf("10.%d.%d.0/24:443", slot>>8, slot&0xff))
		entries, _ := scope.Compile([]scope.Rule{r})
		if err := g.WriteScope(slot, 1, entries); err != nil {
			b.Fatal(err)
		}
		if err := g.PutSession(slot, SessionState{Gen: 1, State: StateActive}); err != nil {
			b.Fatal(err)
		}
	}
	var rules []scope.Rule
	for i := range 999 {
		r, _ := scope.Parse(fmt.Sprintf("tcp://192.168.%d.%d:443", i/250, i%250+1))
		rules = append(rules, r)
	}
	own, _ := scope.Parse("tcp://" + dst.String())
	entries, err := scope.Compile(append(rules, own))
	if err != nil {
		b.Fatal(err)
	}
	const slot = 10001
	if err := g.WriteScope(slot, 1, entries); err != nil {
		b.Fatal(err)
	}
	if err := g.PutSession(slot, SessionState{Gen: 1, State: StateActive}); err != nil {
		b.Fatal(err)
	}
	base := filepath.Join(root, "agentfence-bench")
	cg, plain := filepath.Join(base, "caller"), filepath.Join(base, "plain")
	for _, d := range []string{cg, plain} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			b.Fatal(err)
		}
	}
	defer os.Remove(base)
	defer os.Remove(cg)
	defer os.Remove(plain)
	id, _ := cgroupv2.ID(cg)
	if err := g.BindCgroup(id, slot, 1); err != nil {
		b.Fatal(err)
	}

	const batch = 2000
	agent := kerneltest.Start(b, root, kerneltest.Options{}, false, kerneltest.ConnectBench{Addr: dst, N: batch})
	connects := func(cgroup string) [2]time.Duration {
		if err := cgroupv2.Move(cgroup, agent.PID); err != nil {
			b.Fatal(err)
		}
		agent.Go()
		res := agent.Next()
		if res.Err != kerneltest.OK {
			b.Fatalf("agent: %s", res)
		}
		return [2]time.Duration{res.Wall, res.CPU}
	}
	configs := []struct {
		name string
		run  func() [2]time.Duration
	}{
		{"a", func() [2]time.Duration {
			g.detach()
			defer func() {
				if err := g.attach(root); err != nil {
					b.Fatal(err)
				}
			}()
			return connects(root)
		}},
		{"b", func() [2]time.Duration { return connects(root) }},
		{"d", func() [2]time.Duration { return connects(plain) }},
		{"c", func() [2]time.Duration { return connects(cg) }},
	}
	samples := make([][][2]time.Duration, len(configs))
	before, _ := g.Stats()
	round := 0
	for b.Loop() {
		for k := range configs {
			i := (k + round) % len(configs)
			samples[i] = append(samples[i], configs[i].run())
		}
		round++
	}
	after, _ := g.Stats()
	if after.Allowed-before.Allowed < uint64(round*batch) || after.Denied != before.Denied {
		b.Fatalf("the session's connects were not all judged by the gate: %+v → %+v", before, after)
	}
	// Wall-clock per connect, and CPU time of the agent's thread ("cpu_").
	for k, prefix := range []string{"", "cpu_"} {
		m := make([]time.Duration, len(configs))
		for i := range configs {
			var d []time.Duration
			for _, s := range samples[i] {
				d = append(d, s[k])
			}
			m[i] = median(d)
			b.ReportMetric(float64(m[i].Nanoseconds()), prefix+configs[i].name+"_ns/connect")
			if i > 0 {
				b.ReportMetric(float64(m[i])/float64(m[0]), prefix+configs[i].name+"/a")
			}
		}
	}
	b.ReportMetric(float64(after.Lost-before.Lost), "lost_events")
}

func median(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}
