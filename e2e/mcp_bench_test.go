package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/agentfence/agentfence/api/client"
	v1 "github.com/agentfence/agentfence/api/v1"
	"github.com/agentfence/agentfence/audit"
	"github.com/agentfence/agentfence/internal/kerneltest"
	"github.com/agentfence/agentfence/session"
)

// BenchmarkMCPExec: what a member's exec costs when its session declares
// an MCP server (A, a node server) against one that declares none (B),
// for fork+exec+wait of /bin/true and of `node -e 0`. The daemon judges
// A's execs after the fact, so the member's wall-clock time should not
// move; the cost is the daemon's CPU, read from its process CPU clock
// around each batch once the batch's exec records are in the trail (the
// judgement and its kind mcp record come before a process's exec record),
// so its asynchronous work is counted in the batch that caused it, less
// its idle rate (daemonCPU). The configurations alternate batch by batch,
// rotating the order.
func BenchmarkMCPExec(b *testing.B) {
	node := nodeExe(b)
	script, err := filepath.Abs("testdata/mcp/node/server.mjs")
	if err != nil {
		b.Fatal(err)
	}
	d := startDaemon(b)
	c := client.New(d.socket)
	agentScope := []string{"tcp://127.0.0.1:8080"}
	declares, err := c.Open(context.Background(), v1.OpenRequest{Intent: "bench exec, mcp", Scope: agentScope,
		MCP: []v1.MCPServer{{Name: "tickets", Command: []string{"node", script}, Scope: []string{"tcp://127.0.0.2:18443"}}}})
	if err != nil {
		b.Fatal(err)
	}
	plain, err := c.Open(context.Background(), v1.OpenRequest{Intent: "bench exec, none", Scope: agentScope})
	if err != nil {
		b.Fatal(err)
	}
	trail := followTrail(b, d.audit)

	var configs []*benchProbe
	for _, prog := range []struct {
		name string
		argv []string
		n    int
	}{{"true", nil, 100}, {"node", []string{node, "-e", "0"}, 5}} {
		for _, sess := range []struct {
			name string
			s    v1.Session
		}{{"mcp", declares}, {"none", plain}} {
			p := kerneltest.Start(b, sess.s.Binding.Cgroup, kerneltest.Options{}, false, kerneltest.ExecBench{Argv: prog.argv, N: prog.n})
			configs = append(configs, &benchProbe{name: prog.name + "_" + sess.name, session: sess.s.ID, p: p, n: prog.n})
		}
	}
	// The probes' own execs are not the batches' work.
	for _, cf := range configs {
		trail.await(b, false, audit.KindExec, uint32(cf.p.PID), 1)
	}
	daemon := &daemonCPU{pid: d.cmd.Process.Pid}
	runRounds(b, configs, daemon, func(cf *benchProbe) {
		trail.await(b, true, audit.KindExec, uint32(cf.p.PID), cf.done)
	})
	for i := 0; i < len(configs); i += 2 {
		a, none := configs[i], configs[i+1]
		wa, _ := percentiles(a.wall)
		wn, _ := percentiles(none.wall)
		b.ReportMetric(float64(wa.Nanoseconds()), a.name+"_ns/exec")
		b.ReportMetric(float64(wn.Nanoseconds()), none.name+"_ns/exec")
		b.ReportMetric(float64(wa)/float64(wn), a.name+"/"+none.name)
		b.ReportMetric(float64(daemon.perOp(a.daemon, a.n).Nanoseconds()), a.name+"_daemon_cpu_ns/exec")
		b.ReportMetric(float64(daemon.perOp(none.daemon, none.n).Nanoseconds()), none.name+"_daemon_cpu_ns/exec")
	}
	b.ReportMetric(100*daemon.idleRate(), "daemon_idle_cpu_%")
	// What the daemon made of the execs: only node in A is a candidate
	// (it runs the declared server's executable), refused for its -e, if
	// the daemon saw it before it exited.
	for _, cf := range configs {
		pid := uint32(cf.p.PID)
		judged := trail.count(true, audit.KindMCP, pid)
		refused := trail.count(true, fmt.Sprintf("%s %s %s %s", audit.KindMCP, cf.session, audit.VerdictFlagged, session.LaunchInjection), pid)
		switch {
		case cf.name != "node_mcp" && judged != 0:
			b.Errorf("%s: %d launches judged, want none", cf.name, judged)
		case cf.name == "node_mcp" && (judged == 0 || refused != judged):
			b.Errorf("%s: %d launches judged, %d refused for injection: want every one judged refused", cf.name, judged, refused)
		case cf.name == "node_mcp":
			b.ReportMetric(float64(judged)/float64(cf.done), "node_mcp_judged/exec")
		}
	}
}

// BenchmarkMCPConnect: connect+close to a loopback listener from a
// declared (native) MCP server's process, bound by pid to the server's
// session at its exec, against an agent's process, a member of a session
// by its cgroup. Both sessions admit the listener. Besides the wall-clock
// time it reports the probes' own thread CPU time, which leaves out
// preemption, and the daemon's CPU per connect record.
func BenchmarkMCPConnect(b *testing.B) {
	self, err := os.Executable()
	if err == nil {
		self, err = filepath.EvalSymlinks(self)
	}
	if err != nil {
		b.Fatal(err)
	}
	d := startDaemon(b)
	c := client.New(d.socket)
	ln := kerneltest.Serve(b, "127.0.0.1:0")
	rule := []string{"tcp://" + ln.String()}
	// The probe is this test binary: a member's exec of it is the server.
	withServer, err := c.Open(context.Background(), v1.OpenRequest{Intent: "bench connect, mcp", Scope: rule,
		MCP: []v1.MCPServer{{Name: "native", Command: []string{self}, Scope: rule}}})
	if err != nil {
		b.Fatal(err)
	}
	agentOnly, err := c.Open(context.Background(), v1.OpenRequest{Intent: "bench connect, agent", Scope: rule})
	if err != nil {
		b.Fatal(err)
	}
	children, err := c.List(context.Background(), map[string][]string{"parent": {withServer.ID}})
	if err != nil {
		b.Fatal(err)
	}
	i := slices.IndexFunc(children, func(s v1.Session) bool { return s.MCPServer == "native" })
	if i < 0 {
		b.Fatalf("no server session among %s's children: %+v", withServer.ID, children)
	}
	serverSession := children[i]
	trail := followTrail(b, d.audit)

	const n = 500
	op := kerneltest.ConnectBench{Addr: ln, N: n}
	server := &benchProbe{name: "server", session: serverSession.ID, n: n, p: kerneltest.Start(b, withServer.Binding.Cgroup, kerneltest.Options{}, false, op)}
	agent := &benchProbe{name: "agent", session: agentOnly.ID, n: n, p: kerneltest.Start(b, agentOnly.Binding.Cgroup, kerneltest.Options{}, false, op)}
	configs := []*benchProbe{server, agent}

	// The launch record comes once the server's probe is bound.
	spid := uint32(server.p.PID)
	trail.await(b, false, audit.KindMCP, spid, 1)
	if trail.count(false, fmt.Sprintf("%s %s %s ", audit.KindMCP, withServer.ID, audit.VerdictAllowed), spid) != 1 {
		b.Fatalf("the server probe's launch was not judged the server: %s", d.log())
	}
	for deadline := time.Now().Add(10 * time.Second); ; {
		s, err := c.Get(context.Background(), serverSession.ID)
		if err != nil {
			b.Fatal(err)
		}
		if slices.Contains(s.Binding.PIDs, spid) {
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("probe %d not bound to server session %s: %+v", spid, s.ID, s.Binding)
		}
		time.Sleep(10 * time.Millisecond)
	}
	for _, cf := range configs {
		trail.await(b, false, audit.KindExec, uint32(cf.p.PID), 1)
	}

	daemon := &daemonCPU{pid: d.cmd.Process.Pid}
	runRounds(b, configs, daemon, func(cf *benchProbe) {
		trail.await(b, false, audit.KindConnect, uint32(cf.p.PID), cf.done)
	})
	var wall, cpu [2]time.Duration
	for i, cf := range configs {
		allowed := trail.count(false, fmt.Sprintf("%s %s %s ", audit.KindConnect, cf.session, audit.VerdictAllowed), uint32(cf.p.PID))
		if allowed != cf.done {
			b.Errorf("%s: %d of %d connects recorded as allowed in session %s", cf.name, allowed, cf.done, cf.session)
		}
		wall[i], _ = percentiles(cf.wall)
		cpu[i], _ = percentiles(cf.cpu)
		b.ReportMetric(float64(wall[i].Nanoseconds()), cf.name+"_ns/connect")
		b.ReportMetric(float64(cpu[i].Nanoseconds()), cf.name+"_cpu_ns/connect")
		b.ReportMetric(float64(daemon.perOp(cf.daemon, n).Nanoseconds()), cf.name+"_daemon_cpu_ns/connect")
	}
	b.ReportMetric(float64(wall[0])/float64(wall[1]), "server/agent")
	b.ReportMetric(float64(cpu[0])/float64(cpu[1]), "server/agent_cpu")
	b.ReportMetric(100*daemon.idleRate(), "daemon_idle_cpu_%")
}

// benchProbe is one configuration of a side-by-side benchmark: an agent
// process and what its batches measured.
type benchProbe struct {
	name    string
	session string // the session its work is decided in
	p       *kerneltest.Proc
	n       int             // operations per batch
	done    int             // operations so far
	wall    []time.Duration // per batch, per operation
	cpu     []time.Duration // the probe thread's, per batch and operation
	daemon  []cpuSample     // the daemon's, per batch
}

// runRounds runs one batch of every probe per iteration, rotating the
// order, each measured with the daemon's CPU until recorded returns: once
// the daemon has written the batch's records, so that its asynchronous
// work is counted in the batch that caused it. A first round is not
// measured: what the daemon does once per probe (looking at its
// executable, learning its process) is no operation's cost.
func runRounds(b *testing.B, probes []*benchProbe, daemon *daemonCPU, recorded func(*benchProbe)) {
	batch := func(pr *benchProbe) kerneltest.Result {
		pr.p.Go()
		res := pr.p.Next()
		if res.Err != kerneltest.OK {
			b.Fatalf("%s: %s", pr.name, res)
		}
		pr.done += pr.n
		recorded(pr)
		return res
	}
	for _, pr := range probes {
		batch(pr)
	}
	round := 0
	for b.Loop() {
		daemon.idleWindow(b)
		for k := range probes {
			pr := probes[(k+round)%len(probes)]
			var res kerneltest.Result
			pr.daemon = append(pr.daemon, daemon.measure(b, func() { res = batch(pr) }))
			pr.wall = append(pr.wall, res.Wall)
			pr.cpu = append(pr.cpu, res.CPU)
		}
		round++
	}
}

// daemonCPU reads the daemon's CPU time around windows of work. Part of
// what it spends in a window it spends whatever the benchmark does: its
// ring buffer polls, the events of the host's other processes. Idle
// windows measure that rate, and perOp takes it off in proportion to each
// window's length, which matters where the work is slow and sparse (a
// node exec takes a quarter of a second or more here).
type daemonCPU struct {
	pid  int
	idle []time.Duration // CPU per second of wall-clock time
}

// cpuSample is the daemon's CPU time over a window of wall-clock time.
type cpuSample struct{ cpu, wall time.Duration }

func (d *daemonCPU) measure(tb testing.TB, work func()) cpuSample {
	tb.Helper()
	cpu0, start := processCPU(tb, d.pid), time.Now()
	work()
	return cpuSample{cpu: processCPU(tb, d.pid) - cpu0, wall: time.Since(start)}
}

// idleWindow measures the daemon over a window in which the benchmark
// does nothing.
func (d *daemonCPU) idleWindow(tb testing.TB) {
	s := d.measure(tb, func() { time.Sleep(300 * time.Millisecond) })
	d.idle = append(d.idle, s.cpu*time.Second/s.wall)
}

// idleRate is the daemon's median CPU use while idle, in CPUs.
func (d *daemonCPU) idleRate() float64 {
	p50, _ := percentiles(d.idle)
	return p50.Seconds()
}

// perOp is the daemon's CPU time above its idle rate per operation, over
// all samples, each a batch of n. The mean, not the median of batches:
// the batches a garbage collection falls in cost up to twice the others,
// and the median left them out (one record per decision, two runs: TCP
// 4.02 / 2.99 µs where the mean is 4.16 / 3.59, UDP 4.74 / 4.03 where it
// is 6.51 / 4.56).
func (d *daemonCPU) perOp(samples []cpuSample, n int) time.Duration {
	if len(samples) == 0 {
		return 0
	}
	rate := d.idleRate()
	var cpu, wall time.Duration
	for _, s := range samples {
		cpu, wall = cpu+s.cpu, wall+s.wall
	}
	return (cpu - time.Duration(rate*float64(wall))) / time.Duration(n*len(samples))
}

// processCPU is the CPU time all of pid's threads have used: its process
// CPU-time clock (CPUCLOCK_SCHED, the clock id the kernel derives from a
// pid), which counts to the nanosecond where /proc/PID/stat counts ticks.
func processCPU(tb testing.TB, pid int) time.Duration {
	tb.Helper()
	var ts unix.Timespec
	if err := unix.ClockGettime(int32(^pid<<3|2), &ts); err != nil {
		tb.Fatalf("cpu clock of %d: %v", pid, err)
	}
	return time.Duration(ts.Nano())
}

// trailTally counts what the records the daemon writes stand for (one
// each, or an aggregate's count), as it writes them, by the process they
// are about and by that process's parent, so that a benchmark can wait
// until the daemon is done with a batch; and the records themselves.
type trailTally struct {
	mu      sync.Mutex
	byPID   map[tallyKey]int
	byPPID  map[tallyKey]int
	records map[tallyKey]int // by pid
	changed chan struct{}
}

// tallyKey counts a record twice: under its kind, and under "kind session
// verdict reason".
type tallyKey struct {
	what string
	pid  uint32
}

func followTrail(tb testing.TB, path string) *trailTally {
	tb.Helper()
	if _, err := os.Stat(path); err != nil {
		tb.Fatal(err)
	}
	t := &trailTally{byPID: map[tallyKey]int{}, byPPID: map[tallyKey]int{}, records: map[tallyKey]int{}, changed: make(chan struct{}, 1)}
	ctx, cancel := context.WithCancel(context.Background())
	tb.Cleanup(cancel)
	go audit.Follow(ctx, path, 5*time.Millisecond, func(line []byte) bool {
		var r struct {
			Kind    string `json:"kind"`
			Count   int    `json:"count"`
			Session *struct {
				ID string `json:"id"`
			} `json:"session"`
			Process *struct {
				PID  uint32 `json:"pid"`
				PPID uint32 `json:"ppid"`
			} `json:"process"`
			Outcome *struct {
				Verdict string `json:"verdict"`
				Reason  string `json:"reason"`
			} `json:"outcome"`
		}
		if json.Unmarshal(line, &r) != nil || r.Process == nil || r.Session == nil {
			return true
		}
		detail := r.Kind + " " + r.Session.ID
		if r.Outcome != nil { // an exec record has none
			detail += " " + r.Outcome.Verdict + " " + r.Outcome.Reason
		}
		t.mu.Lock()
		for _, what := range []string{r.Kind, detail} {
			t.byPID[tallyKey{what, r.Process.PID}] += max(r.Count, 1)
			t.byPPID[tallyKey{what, r.Process.PPID}] += max(r.Count, 1)
			t.records[tallyKey{what, r.Process.PID}]++
		}
		t.mu.Unlock()
		select {
		case t.changed <- struct{}{}:
		default:
		}
		return true
	})
	return t
}

// recordsOf is the number of records of what about pid.
func (t *trailTally) recordsOf(what string, pid uint32) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.records[tallyKey{what, pid}]
}

// count is the number of decisions the records of what (a kind, or "kind
// session verdict reason") about pid stand for, or with parent about pid's
// children.
func (t *trailTally) count(parent bool, what string, pid uint32) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	if parent {
		return t.byPPID[tallyKey{what, pid}]
	}
	return t.byPID[tallyKey{what, pid}]
}

// await waits until the records stand for n decisions as count counts them.
func (t *trailTally) await(tb testing.TB, parent bool, what string, pid uint32, n int) {
	tb.Helper()
	deadline := time.NewTimer(time.Minute)
	defer deadline.Stop()
	for t.count(parent, what, pid) < n {
		select {
		case <-t.changed:
		case <-deadline.C:
			tb.Fatalf("%d of %d %s records (pid %d, children: %v) in the audit trail after a minute", t.count(parent, what, pid), n, what, pid, parent)
		}
	}
}
