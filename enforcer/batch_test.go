package enforcer

import (
	"os"
	"os/exec"
	"slices"
	"strconv"
	"testing"

	"github.com/agentfence/agentfence/internal/privtest"
)

// bindMany binds n made-up tgids (from 10,000,000 up, above any pid_max)
// round robin to slots 1..slots with generation 1.
func bindMany(tb testing.TB, g *Gate, n, slots int) {
	tb.Helper()
	for i := range n {
		if err := g.BindPid(uint32(10_000_000+i), uint32(1+i%slots), 1); err != nil {
			tb.Fatal(err)
		}
	}
	tb.Cleanup(func() {
		for i := range n {
			g.UnbindPid(uint32(10_000_000 + i))
		}
	})
}

// Without the task iterator, PidsOf reads the pid table in batches; the
// table here spans several.
func TestPidsOfTableReadsEveryBatch(t *testing.T) {
	f := setup(t)
	const n, slots = 5*batchSize + 7, 3
	bindMany(t, f.g, n, slots)
	got, err := f.g.pidsOfTable(2, 1)
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(got)
	var want []uint32
	for i := 1; i < n; i += slots {
		want = append(want, uint32(10_000_000+i))
	}
	if !slices.Equal(got, want) {
		t.Fatalf("PidsOf(2, 1): %d pids, want %d (first %v, want first %v)", len(got), len(want), got[:min(3, len(got))], want[:3])
	}
	if got, err := f.g.pidsOfTable(2, 2); err != nil || len(got) != 0 {
		t.Errorf("PidsOf of another generation = %v, %v; want none", got, err)
	}
}

// BenchmarkPidsOf10k lists the three processes of one session while the
// pid table holds 10,000 other bindings: with the task iterator (PidsOf),
// reading the table in batches (its fallback), and, as the baseline, entry
// by entry with the map iterator the batches replaced.
func BenchmarkPidsOf10k(b *testing.B) {
	g, _ := rootGate(b, Options{})
	if g.tasks == nil {
		privtest.Unavailable(b, g.PidListing())
	}
	bindMany(b, g, 10_000, 100)
	const slot, gen = 7, 9
	for _, pid := range startSleepers(b, 3) {
		if err := g.BindPid(uint32(pid), slot, gen); err != nil {
			b.Fatal(err)
		}
	}
	for _, m := range []struct {
		name   string
		pidsOf func(uint32, uint64) ([]uint32, error)
	}{
		{"tasks", g.PidsOf},
		{"batch", g.pidsOfTable},
		{"iterate", func(slot uint32, gen uint64) ([]uint32, error) {
			var pids []uint32
			var tgid uint32
			var v gateBinding
			it := g.objs.PidSessions.Iterate()
			for it.Next(&tgid, &v) {
				if v.Slot == slot && v.Gen == gen {
					pids = append(pids, tgid)
				}
			}
			return pids, it.Err()
		}},
	} {
		b.Run(m.name, func(b *testing.B) {
			for b.Loop() {
				if pids, err := m.pidsOf(slot, gen); err != nil || len(pids) != 3 {
					b.Fatalf("%d pids, %v; want 3", len(pids), err)
				}
			}
		})
	}
}

// startSleepers starts n processes that live until the test ends.
func startSleepers(tb testing.TB, n int) []int {
	tb.Helper()
	var pids []int
	for range n {
		cmd := exec.Command("sleep", "3600")
		if err := cmd.Start(); err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		pids = append(pids, cmd.Process.Pid)
	}
	return pids
}

// PidsOf lists exactly the live processes bound to a session and
// generation: not the other generation's, not a thread, not bindings of
// processes that are gone.
func TestPidsOfListsTheBoundProcesses(t *testing.T) {
	f := setup(t)
	if f.g.tasks == nil {
		privtest.Unavailable(t, f.g.PidListing())
	}
	pids := startSleepers(t, 3)
	binds := []struct {
		pid       int
		slot      uint32
		gen       uint64
		wantFound bool
	}{{pids[0], 11, 1, true}, {pids[1], 11, 1, true}, {pids[2], 11, 2, false}, {10_000_000, 11, 1, false}}
	var want []uint32
	for _, b := range binds {
		if err := f.g.BindPid(uint32(b.pid), b.slot, b.gen); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.g.UnbindPid(uint32(b.pid)) })
		if b.wantFound {
			want = append(want, uint32(b.pid))
		}
	}
	// A thread of this process bound under its tid is not a process.
	tid := otherThread(t)
	if err := f.g.BindPid(uint32(tid), 11, 1); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.g.UnbindPid(uint32(tid)) })
	got, err := f.g.PidsOf(11, 1)
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("PidsOf(11, 1) = %v, want %v", got, want)
	}
}

// otherThread returns the id of a thread of this process other than its
// main one (the Go runtime always runs several).
func otherThread(t *testing.T) int {
	t.Helper()
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range tasks {
		if tid, err := strconv.Atoi(e.Name()); err == nil && tid != os.Getpid() {
			return tid
		}
	}
	t.Fatal("no thread besides the main one")
	return 0
}
