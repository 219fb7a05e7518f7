package enforcer

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/agentfence/agentfence/internal/cgroupv2"
	"github.com/agentfence/agentfence/internal/kerneltest"
)

// TestPodHold: a cgroup made in a pod parent is denied everything from its
// first moment, with its records on the hold's slot, until it is released
// or bound; cgroups made elsewhere, and below the pod, are not held on
// their own; a removed cgroup takes its hold with it.
func TestPodHold(t *testing.T) {
	f := setup(t)
	target := kerneltest.Listen(t, "tcp4", "127.0.0.1:0")
	connect := kerneltest.Connect{Addr: target}
	mkdir := func(path string) uint64 {
		t.Helper()
		if err := os.MkdirAll(path, 0o755); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.Remove(path) })
		id, err := cgroupv2.ID(path)
		if err != nil {
			t.Fatal(err)
		}
		return id
	}
	qos := filepath.Join(f.base, "kubepods", "burstable")
	mkdir(filepath.Dir(qos))
	qosID := mkdir(qos)
	before, err := f.g.HoldStats()
	if err != nil {
		t.Fatal(err)
	}
	if err := f.g.HoldPods([]uint64{qosID}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.g.Unhold() })

	podID := mkdir(filepath.Join(qos, "pod1"))
	ctr := filepath.Join(qos, "pod1", "ctr")
	mkdir(ctr)
	res := kerneltest.Run(t, ctr, kerneltest.Options{}, connect)
	expect(t, res, "EPERM")
	ev := f.waitEvent(t, res[0].PID, func(e Event) bool { return e.Dest == target })
	if ev.Slot != HoldSlot || ev.Gen != HoldGen || ev.Verdict != VerdictDenied || ev.Reason != ReasonNoRule {
		t.Errorf("held pod's event: %+v", ev)
	}
	after, err := f.g.HoldStats()
	if err != nil || after.Held-before.Held != 1 || after.Failed != before.Failed {
		t.Errorf("hold stats %+v then %+v (%v): want one pod held, the container below it not on its own", before, after, err)
	}

	otherID := mkdir(filepath.Join(f.base, "other"))
	expect(t, kerneltest.Run(t, filepath.Join(f.base, "other"), kerneltest.Options{}, connect), "ok")

	if ok, err := f.g.ReleaseCgroup(podID); !ok || err != nil {
		t.Fatalf("release held pod: %v, %v", ok, err)
	}
	expect(t, kerneltest.Run(t, ctr, kerneltest.Options{}, connect), "ok")
	if ok, err := f.g.ReleaseCgroup(podID); ok || err != nil {
		t.Errorf("release a released pod: %v, %v", ok, err)
	}

	// A pod bound to its session is the session's: neither released nor
	// held again.
	bound := f.session(t, sessionSpec{slot: 5, gen: 2, rules: []string{"tcp://" + target.String()}, parent: qos, name: "pod2"})
	boundID, err := cgroupv2.ID(bound)
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := f.g.ReleaseCgroup(boundID); ok || err != nil {
		t.Errorf("release a bound pod: %v, %v", ok, err)
	}
	if ok, err := f.g.HoldCgroup(boundID); ok || err != nil {
		t.Errorf("hold a bound pod: %v, %v", ok, err)
	}
	expect(t, kerneltest.Run(t, bound, kerneltest.Options{}, connect), "ok")

	// A pod made before the hold began is held on request.
	if ok, err := f.g.HoldCgroup(otherID); !ok || err != nil {
		t.Fatalf("hold a running pod: %v, %v", ok, err)
	}
	expect(t, kerneltest.Run(t, filepath.Join(f.base, "other"), kerneltest.Options{}, connect), "EPERM")
	if ok, err := f.g.ReleaseCgroup(otherID); !ok || err != nil {
		t.Fatalf("release: %v, %v", ok, err)
	}

	// Removing a held cgroup drops its hold.
	gone := filepath.Join(qos, "pod3")
	goneID := mkdir(gone)
	if err := os.Remove(gone); err != nil {
		t.Fatal(err)
	}
	if ok, err := f.g.ReleaseCgroup(goneID); ok || err != nil {
		t.Errorf("a removed pod's hold is still there: %v, %v", ok, err)
	}
	if st, err := f.g.HoldStats(); err != nil || st.Gone-before.Gone != 1 {
		t.Errorf("hold stats %+v (%v): want one hold gone", st, err)
	}

	// Unhold lets every held pod go and holds no new one.
	pod4 := filepath.Join(qos, "pod4")
	mkdir(pod4)
	expect(t, kerneltest.Run(t, pod4, kerneltest.Options{}, connect), "EPERM")
	if err := f.g.Unhold(); err != nil {
		t.Fatal(err)
	}
	pod5 := filepath.Join(qos, "pod5")
	mkdir(pod5)
	expect(t, kerneltest.Run(t, pod4, kerneltest.Options{}, connect, connect), "ok")
	expect(t, kerneltest.Run(t, pod5, kerneltest.Options{}, connect), "ok")
	expect(t, kerneltest.Run(t, bound, kerneltest.Options{}, connect), "ok")
}
