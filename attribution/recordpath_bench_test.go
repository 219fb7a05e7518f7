package attribution

import (
	"bufio"
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/agentfence/agentfence/audit"
	"github.com/agentfence/agentfence/audit/sink"
	"github.com/agentfence/agentfence/enforcer"
	"github.com/agentfence/agentfence/internal/boottime"
	"github.com/agentfence/agentfence/sensor/cgroupmeta"
	"github.com/agentfence/agentfence/sensor/proccache"
	"github.com/agentfence/agentfence/session"
)

// member is a session member as the process cache has it after its exec:
// the shape of the agent in the system benchmark (e2e), with an ancestry
// and command line of a launcher's typical length.
type member struct{ p proccache.Process }

func (m member) LookupWait(context.Context, uint32, uint64) (proccache.Process, bool) {
	return m.p, true
}
func (m member) Lookup(uint32, uint64) (proccache.Process, bool) { return m.p, true }
func (member) WaitFor(context.Context, uint64) bool              { return true }

// BenchmarkRecordPath is the daemon's user-space work for one gate
// decision, everything after the ring buffer hands it over: decoding is
// measured apart (enforcer's BenchmarkDecodeEvent); here the join with its
// process and session, the hash chain's stamp, the hand-off to the
// pipeline's writer, the spool, and the file sink's delivery, on every
// goroutine. cpu-ns/record is the process's CPU time (user and system,
// all threads) over the records, the figure issue 17 holds to 3 µs;
// bytes/record is the trail's size over the records.
func BenchmarkRecordPath(b *testing.B) {
	ss := newSessions()
	ss.add(b, 3, 7, session.Attribution{Session: audit.Session{ID: "s-0123456789abcdef0123456789abcdef", Intent: "triage open tickets", Mode: "enforce"},
		Origin: &audit.Origin{Kind: "human", Principal: "alice@example.com"},
		Agent:  &audit.Agent{ID: "spiffe://example.org/agent/triage", Name: "triage-bot", Version: "1.4.2", Owner: "support"}},
		"tcp://127.0.0.1:18080", "udp://127.0.0.1:18053")
	procs := member{proccache.Process{Key: proccache.Key{TGID: 4242}, PPID: 4200, UID: 1000, GID: 1000,
		ExePath: "/usr/local/bin/agent-loop", HashState: proccache.HashOK,
		ExeSHA256: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
		Args:      []string{"/usr/local/bin/agent-loop", "-mode", "tcp", "-n", "1000", "-addr", "127.0.0.1:18080"},
		CgroupID:  4711, CgroupPath: "/agentfence.slice/s-0123456789abcdef0123456789abcdef",
		Container: cgroupmeta.Meta{},
		Ancestry:  []string{"/usr/local/bin/agentfence", "/usr/bin/bash", "/usr/sbin/sshd", "/usr/lib/systemd/systemd"},
		Execs:     1, Source: proccache.SourceExec}}
	j := &Joiner{Sessions: ss, Clock: boottime.NewClock(), Processes: procs, Wait: time.Second}

	dir := b.TempDir()
	trail := filepath.Join(dir, "audit.jsonl")
	p, err := sink.New(sink.Options{StateDir: dir, Host: "node-1"}, []audit.SinkConfig{
		{Name: "file", Type: audit.SinkFile, File: &audit.FileConfig{Path: trail},
			// Room for every record of a long run: a spool that overflows
			// drops records, which the check below would count as lost.
			Spool: &audit.SpoolConfig{MaxBytes: 1 << 30}}})
	if err != nil {
		b.Fatal(err)
	}
	ev := enforcer.Event{BootNS: boottime.Now(), CgroupID: 4711, Slot: 3, Gen: 7, PID: 4242, TID: 4242, UID: 1000, GID: 1000,
		Comm: "agent-loop", Hook: enforcer.HookConnect4, Protocol: 6, Dest: netip.MustParseAddrPort("127.0.0.1:18080"),
		Verdict: enforcer.VerdictAllowed, Reason: enforcer.ReasonRule, Rule: 0}

	b.ReportAllocs()
	before := cpuTime(b)
	b.ResetTimer()
	for i := range b.N {
		p.EmitBatched(j.Record(ev))
		if i%256 == 255 {
			p.Flush() // as the ring reader's OnCaughtUp ends a burst
		}
	}
	if err := p.Close(); err != nil { // drains into the file
		b.Fatal(err)
	}
	b.StopTimer()
	used := cpuTime(b) - before
	var lines int
	var size int64
	files, _ := filepath.Glob(trail + "*") // with its rotations
	for _, f := range files {
		l, n := linesOf(b, f)
		lines, size = lines+l, size+n
	}
	if lines != b.N {
		b.Fatalf("%d records in the trail, want %d", lines, b.N)
	}
	b.ReportMetric(float64(used.Nanoseconds())/float64(b.N), "cpu-ns/record")
	b.ReportMetric(float64(size)/float64(lines), "bytes/record")
}

func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func linesOf(b *testing.B, path string) (lines int, size int64) {
	f, err := os.Open(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		lines++
		size += int64(len(sc.Bytes()) + 1)
	}
	if err := sc.Err(); err != nil {
		b.Fatal(err)
	}
	return lines, size
}
