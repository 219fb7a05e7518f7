package session

import (
	"os"
	"testing"

	v1 "github.com/agentfence/agentfence/api/v1"
	"github.com/agentfence/agentfence/enforcer"
)

// TestHoldPod: a running pod is held on request unless a session has it,
// released only from the hold, bound over the hold in one write, and sent
// back to the hold when its session ends while pods are held; records on
// the hold's slot name the hold.
func TestHoldPod(t *testing.T) {
	e := newEnv(t, nil)
	const uid = "6f1c2a3b-4d5e-4f60-8a9b-0c1d2e3f4a5b"
	podPath := e.cg.base + "/kubepods/besteffort/pod" + uid
	if err := os.MkdirAll(podPath, 0o755); err != nil {
		t.Fatal(err)
	}
	e.cg.pods[uid] = container{path: podPath, id: 91}
	hold := binding{enforcer.HoldSlot, enforcer.HoldGen}

	mark := e.j.len()
	for _, bad := range []string{"", "6F1C2A3B-4D5E-4F60-8A9B-0C1D2E3F4A5B", "../x"} {
		_, err := e.r.HoldPod(bad)
		wantErr(t, err, v1.CodeInvalid, "pod_uid")
	}
	_, err := e.r.ReleasePod("00000000-0000-4000-8000-000000000000") // valid, unknown
	wantErr(t, err, v1.CodeInvalid, "pod_uid")
	if w := writes(e.j.since(mark)); len(w) != 0 {
		t.Errorf("rejected holds wrote %v", opNames(w))
	}

	e.r.HoldPods(true)
	if ok, err := e.r.HoldPod(uid); !ok || err != nil || e.k.cgroups[91] != hold {
		t.Fatalf("hold: %v, %v, kernel %+v", ok, err, e.k.cgroups[91])
	}
	a := e.open(t, req("a", "10.0.0.0/8"), admin)
	ea := e.entry(t, a.ID)
	mark = e.j.len()
	if _, err := e.r.Bind(a.ID, v1.BindRequest{PodUID: uid}, admin); err != nil {
		t.Fatal(err)
	}
	for _, o := range writes(e.j.since(mark)) {
		if o.ID == 91 && o.Name != "BindCgroup" {
			t.Errorf("binding a held pod wrote %s: an unbound moment", o.Name)
		}
	}
	if e.k.cgroups[91] != (binding{ea.slot, ea.gen}) {
		t.Errorf("bound pod in the kernel: %+v", e.k.cgroups[91])
	}
	if ok, _ := e.r.ReleasePod(uid); ok {
		t.Error("a bound pod was released")
	}
	if ok, _ := e.r.HoldPod(uid); ok {
		t.Error("a bound pod was held")
	}
	if err := e.r.Close(a.ID, admin); err != nil {
		t.Fatal(err)
	}
	if e.k.cgroups[91] != hold {
		t.Errorf("pod after its session closed: %+v, want the hold", e.k.cgroups[91])
	}
	if ok, err := e.r.ReleasePod(uid); !ok || err != nil {
		t.Errorf("release: %v, %v", ok, err)
	}
	if _, held := e.k.cgroups[91]; held {
		t.Error("released pod still bound")
	}

	// Without the hold, or once the pod's cgroup is gone, closing unbinds.
	e.r.HoldPods(false)
	b := e.open(t, req("b", "10.0.0.0/8"), admin)
	if _, err := e.r.Bind(b.ID, v1.BindRequest{PodUID: uid}, admin); err != nil {
		t.Fatal(err)
	}
	if err := e.r.Close(b.ID, admin); err != nil {
		t.Fatal(err)
	}
	if _, held := e.k.cgroups[91]; held {
		t.Error("pod bound after close without the hold")
	}
	e.r.HoldPods(true)
	c := e.open(t, req("c", "10.0.0.0/8"), admin)
	if _, err := e.r.Bind(c.ID, v1.BindRequest{PodUID: uid}, admin); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(podPath); err != nil {
		t.Fatal(err)
	}
	if err := e.r.Close(c.ID, admin); err != nil {
		t.Fatal(err)
	}
	if _, held := e.k.cgroups[91]; held {
		t.Error("a removed pod's cgroup stays bound after close")
	}

	if at, ok := e.r.Resolve(enforcer.HoldSlot, enforcer.HoldGen); !ok || at.Session.ID != HoldID {
		t.Errorf("the hold's slot resolves to %+v, %v", at, ok)
	}
}
