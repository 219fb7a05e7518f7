//go:build linux

package sensor

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"
	"golang.org/x/sys/unix"

	"github.com/agentfence/agentfence/internal/privtest"
	"github.com/agentfence/agentfence/internal/procfs"
	"github.com/agentfence/agentfence/sensor/cgroupmeta"
)

// prevCommit is the last commit whose process programs did not keep
// membership per process (the parent of the commit that made them). The
// benchmark loads that build's object as "before"; AF_BENCH_PREV_OBJECT
// names the file instead where the history is not at hand.
const prevCommit = "b075058444278afed1c7ea75bd80cb3b2f784d74"

// spawnLoop runs /bin/true AF_SPAWN_N times from a process of its own (so
// it is in the cgroup it was started in) and prints the elapsed ns.
func spawnLoop() {
	n, _ := strconv.Atoi(os.Getenv("AF_SPAWN_N"))
	start := time.Now()
	for range n {
		if err := exec.Command("/bin/true").Run(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	}
	fmt.Println(time.Since(start).Nanoseconds())
	os.Exit(0)
}

func init() {
	if os.Getenv(helperEnv) == "spawnloop" {
		spawnLoop()
	}
}

// prevObject is the "before" build's process object.
func prevObject(b *testing.B) []byte {
	if p := os.Getenv("AF_BENCH_PREV_OBJECT"); p != "" {
		obj, err := os.ReadFile(p)
		if err != nil {
			b.Fatal(err)
		}
		return obj
	}
	if runtime.GOARCH != "amd64" {
		b.Skip("the previous object is taken for amd64; set AF_BENCH_PREV_OBJECT")
	}
	obj, err := exec.Command("git", "show", prevCommit+":sensor/process_x86_bpfel.o").Output()
	if err != nil {
		b.Skipf("previous process object (git show %s): %v; set AF_BENCH_PREV_OBJECT", prevCommit, err)
	}
	return obj
}

// prevPrograms is the previous build's process programs, attached, with
// their events drained.
type prevPrograms struct {
	coll  *ebpf.Collection
	links []link.Link
	rd    *ringbuf.Reader
	done  chan struct{}
}

func loadPrev(b *testing.B, obj []byte) *prevPrograms {
	spec, err := ebpf.LoadCollectionSpecFromReader(bytes.NewReader(obj))
	if err != nil {
		b.Fatal(err)
	}
	coll, err := ebpf.NewCollection(spec)
	if err != nil {
		b.Fatalf("%+v", err)
	}
	p := &prevPrograms{coll: coll, done: make(chan struct{})}
	for _, a := range [][2]string{{"sched_process_exit", "af_sched_exit"}, {"sched_process_fork", "af_sched_fork"},
		{"sched_process_exec", "af_sched_exec"}} {
		l, err := link.AttachRawTracepoint(link.RawTracepointOptions{Name: a[0], Program: coll.Programs[a[1]]})
		if err != nil {
			b.Fatal(err)
		}
		p.links = append(p.links, l)
	}
	if p.rd, err = ringbuf.NewReader(coll.Maps["proc_events"]); err != nil {
		b.Fatal(err)
	}
	go func() {
		defer close(p.done)
		var rec ringbuf.Record
		for {
			p.rd.SetDeadline(time.Now().Add(10 * time.Millisecond))
			if err := p.rd.ReadInto(&rec); err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
				return
			}
		}
	}()
	return p
}

func (p *prevPrograms) Close() {
	for _, l := range p.links {
		l.Close()
	}
	p.rd.Close()
	<-p.done
	p.coll.Close()
}

// spawnBatch runs n fork+exec+exit of /bin/true from a process started in
// the cgroup dir and returns ns per process.
func spawnBatch(b *testing.B, dir string, n int) float64 {
	f, err := os.Open(dir)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	cmd := exec.Command("/proc/self/exe")
	cmd.Env = append(os.Environ(), helperEnv+"=spawnloop", "AF_SPAWN_N="+strconv.Itoa(n))
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(f.Fd())}
	out, err := cmd.Output()
	if err != nil {
		b.Fatal(err)
	}
	ns, err := strconv.ParseFloat(strings.TrimSpace(string(out)), 64)
	if err != nil {
		b.Fatal(err)
	}
	return ns / float64(n)
}

// BenchmarkMembershipForkExecExit measures fork+exec+exit of /bin/true by
// a session member (a process started in a session's cgroup, as run
// starts one) and by a non-member, with no process programs, with the
// previous build's (which bound nothing by cgroup) and with this one's
// (which binds the member by tgid at fork and keeps it through exec and
// exit), side by side. Each iteration is one round: every configuration
// runs a batch of 200 per kind of process, in a rotating order, and the
// medians over the rounds are reported (run with -benchtime 10x or more).
func BenchmarkMembershipForkExecExit(b *testing.B) {
	privtest.RequireRoot(b)
	const batch = 200
	prev := prevObject(b)
	mnt, err := procfs.Cgroup2Mount()
	if err != nil {
		b.Fatal(err)
	}
	self, err := procfs.ProcCgroupPath(os.Getpid())
	if err != nil {
		b.Fatal(err)
	}
	base := filepath.Join(mnt, self, fmt.Sprintf("af-sensor-bench-%d", os.Getpid()))
	member, other := filepath.Join(base, "member"), filepath.Join(base, "other")
	for _, d := range []string{base, member, other} {
		if err := os.Mkdir(d, 0o755); err != nil {
			b.Fatal(err)
		}
	}
	defer func() { os.Remove(member); os.Remove(other); os.Remove(base) }()
	memberID, err := cgroupmeta.ID(member)
	if err != nil {
		b.Fatal(err)
	}

	// Program run time from the kernel's own accounting, per batch: the
	// programs run for every process on the host, but during a batch
	// nearly all of their runs are the batch's.
	if st, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME)); err == nil {
		defer st.Close()
	}
	var progs map[string]*ebpf.Program
	configs := []string{"none", "before", "after"}
	attach := func(cfg string) func() {
		progs = nil
		switch cfg {
		case "before":
			p := loadPrev(b, prev)
			progs = map[string]*ebpf.Program{"fork": p.coll.Programs["af_sched_fork"], "exec": p.coll.Programs["af_sched_exec"],
				"exit": p.coll.Programs["af_sched_exit"]}
			return p.Close
		case "after":
			// Standalone, with a session bound to the member cgroup in
			// the object's own maps: the same programs and lookups as
			// with the gate's.
			p, err := LoadProcessPrograms(ProcessOptions{})
			if err != nil {
				b.Fatalf("%+v", err)
			}
			if err := p.Sessions().Put(uint32(1), processSession{Gen: 1, State: 1}); err != nil {
				b.Fatal(err)
			}
			if err := p.CgroupSessions().Put(memberID, processBinding{Slot: 1, Gen: 1}); err != nil {
				b.Fatal(err)
			}
			progs = map[string]*ebpf.Program{"fork": p.objs.AfSchedFork, "exec": p.objs.AfSchedExec, "exit": p.objs.AfSchedExit}
			done := make(chan struct{})
			go func() {
				defer close(done)
				for {
					if _, err := p.ReadEvent(); err != nil {
						return
					}
				}
			}()
			return func() {
				if lost, err := p.Lost(); err != nil || lost != 0 {
					b.Errorf("lost %d %v", lost, err)
				}
				p.Close()
				<-done
			}
		}
		return func() {}
	}
	res := map[string][]float64{}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for j := range configs {
			cfg := configs[(i+j)%len(configs)]
			detach := attach(cfg)
			kinds := [][2]string{{"member", member}, {"non-member", other}}
			for k := range kinds {
				who := kinds[(i+k)%2]
				before := runStats(b, progs)
				res[cfg+"/"+who[0]] = append(res[cfg+"/"+who[0]], spawnBatch(b, who[1], batch))
				after := runStats(b, progs)
				var sum float64
				for name, a := range after {
					d, n := a.Runtime-before[name].Runtime, a.RunCount-before[name].RunCount
					if n > 0 {
						sum += float64(d.Nanoseconds()) / float64(n)
					}
				}
				if len(progs) > 0 {
					res[cfg+"/"+who[0]+"-bpf"] = append(res[cfg+"/"+who[0]+"-bpf"], sum)
				}
			}
			detach()
		}
	}
	b.StopTimer()
	med := map[string]float64{}
	for k, v := range res {
		slices.Sort(v)
		med[k] = v[len(v)/2]
		b.ReportMetric(med[k], k+"-ns/proc")
	}
	for _, who := range []string{"member", "non-member"} {
		b.ReportMetric(med["after/"+who]/med["before/"+who], "after/before-"+who)
		b.ReportMetric(med["after/"+who]/med["none/"+who], "after/none-"+who)
		b.ReportMetric(med["before/"+who]/med["none/"+who], "before/none-"+who)
	}
}

// runStats reads the kernel's run-time counters of progs (nil: none).
func runStats(b *testing.B, progs map[string]*ebpf.Program) map[string]ebpf.ProgramStats {
	out := map[string]ebpf.ProgramStats{}
	for name, p := range progs {
		st, err := p.Stats()
		if err != nil {
			b.Fatal(err)
		}
		out[name] = *st
	}
	return out
}
