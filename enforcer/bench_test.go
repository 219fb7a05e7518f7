package enforcer

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/agentfence/agentfence/internal/cgroupv2"
	"github.com/agentfence/agentfence/internal/privtest"
	"github.com/agentfence/agentfence/internal/ringreader"
	"github.com/agentfence/agentfence/scope"
)

// BenchmarkConnect measures connect()+close() of a TCP socket to a loopback
// listener in three configurations: (a) no programs attached, (b) the gate
// attached and the caller in no session, (c) the caller in a session with
// 1,000 rules while 10,000 sessions are loaded and a reader drains the
// events. This machine is noisy, so each iteration runs a short batch of
// every configuration in turn, rotating the order, and the medians are
// compared: ratios b/a and c/a come from the same minutes.
func BenchmarkConnect(b *testing.B) {
	privtest.RequireRoot(b)
	root, err := cgroupv2.Root()
	if err != nil {
		b.Fatal(err)
	}
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	dst := l.Addr().(*net.TCPAddr).AddrPort()
	sa := &unix.SockaddrInet4{Port: int(dst.Port()), Addr: dst.Addr().As4()}
	const batch = 2000
	connects := func() time.Duration {
		start := time.Now()
		for range batch {
			fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				b.Fatal(err)
			}
			if err := unix.Connect(fd, sa); err != nil {
				b.Fatal(err)
			}
			// Reset instead of FIN: no TIME_WAIT pile-up to skew later batches.
			unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
			unix.Close(fd)
		}
		return time.Since(start) / batch
	}

	g, err := Load(Options{CgroupRoot: root})
	if err != nil {
		b.Fatal(err)
	}
	defer g.Close()
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
	cg := filepath.Join(base, "caller")
	if err := os.MkdirAll(cg, 0o755); err != nil {
		b.Fatal(err)
	}
	defer os.Remove(base)
	defer os.Remove(cg)
	id, _ := cgroupv2.ID(cg)
	if err := g.BindCgroup(id, slot, 1); err != nil {
		b.Fatal(err)
	}
	home, err := cgroupv2.Of(os.Getpid())
	if err != nil {
		b.Fatal(err)
	}
	homePath := filepath.Join(root, home)
	defer cgroupv2.Move(homePath, os.Getpid())

	configs := []struct {
		name string
		run  func() time.Duration
	}{
		{"a", func() time.Duration {
			g.detach()
			defer func() {
				if err := g.attach(root); err != nil {
					b.Fatal(err)
				}
			}()
			return connects()
		}},
		{"b", connects},
		{"c", func() time.Duration {
			if err := cgroupv2.Move(cg, os.Getpid()); err != nil {
				b.Fatal(err)
			}
			defer cgroupv2.Move(homePath, os.Getpid())
			return connects()
		}},
	}
	samples := make([][]time.Duration, len(configs))
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
	a, bb, c := median(samples[0]), median(samples[1]), median(samples[2])
	b.ReportMetric(float64(a.Nanoseconds()), "a_ns/connect")
	b.ReportMetric(float64(bb.Nanoseconds()), "b_ns/connect")
	b.ReportMetric(float64(c.Nanoseconds()), "c_ns/connect")
	b.ReportMetric(float64(bb)/float64(a), "b/a")
	b.ReportMetric(float64(c)/float64(a), "c/a")
	b.ReportMetric(float64(after.Lost-before.Lost), "lost_events")
}

func median(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}
