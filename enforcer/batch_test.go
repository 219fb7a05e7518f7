package enforcer

import (
	"slices"
	"testing"

	"github.com/agentfence/agentfence/internal/cgroupv2"
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

// PidsOf reads the pid table in batches; the table here spans several.
func TestPidsOfReadsEveryBatch(t *testing.T) {
	f := setup(t)
	const n, slots = 5*batchSize + 7, 3
	bindMany(t, f.g, n, slots)
	got, err := f.g.PidsOf(2, 1)
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
	if got, err := f.g.PidsOf(2, 2); err != nil || len(got) != 0 {
		t.Errorf("PidsOf of another generation = %v, %v; want none", got, err)
	}
}

// BenchmarkPidsOf10k lists one session's processes from a pid table of
// 10,000 bindings: in batches (PidsOf) and, as the baseline, entry by entry
// with the map iterator it replaced.
func BenchmarkPidsOf10k(b *testing.B) {
	privtest.RequireRoot(b)
	root, err := cgroupv2.Root()
	if err != nil {
		privtest.Unavailable(b, err.Error())
	}
	g, err := Load(Options{CgroupRoot: root})
	if err != nil {
		b.Fatal(err)
	}
	defer g.Close()
	bindMany(b, g, 10_000, 100)
	b.Run("batch", func(b *testing.B) {
		for b.Loop() {
			if pids, err := g.PidsOf(7, 1); err != nil || len(pids) != 100 {
				b.Fatalf("PidsOf = %d pids, %v", len(pids), err)
			}
		}
	})
	b.Run("iterate", func(b *testing.B) {
		for b.Loop() {
			var pids []uint32
			var tgid uint32
			var v gateBinding
			it := g.objs.PidSessions.Iterate()
			for it.Next(&tgid, &v) {
				if v.Slot == 7 && v.Gen == 1 {
					pids = append(pids, tgid)
				}
			}
			if it.Err() != nil || len(pids) != 100 {
				b.Fatalf("iterate = %d pids, %v", len(pids), it.Err())
			}
		}
	})
}
