package node

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"

	v1 "github.com/agentfence/agentfence/api/v1"
	"github.com/agentfence/agentfence/audit"
	"github.com/agentfence/agentfence/kube/kubetest"
	"github.com/agentfence/agentfence/kube/v1alpha1"
)

// TestHold: an Agent's pods are held (a retired Agent's too), every other
// pod is released, each once while nothing changes, and again when its
// Agent's selector changes; a pod whose cgroup is not made yet waits.
func TestHold(t *testing.T) {
	fs := &fakeSessions{byID: map[string]*v1.Session{}}
	made := map[string]bool{"a1": true, "a2": true, "o1": true, "x1": true}
	c := &Controller{cfg: Config{PodCgroup: func(uid string) bool { return made[uid] }, Log: slog.New(slog.DiscardHandler)},
		sessions: fs, classified: map[string]bool{}}
	agent := func(name, ns string, sel map[string]string, state v1alpha1.LifecycleState) *v1alpha1.Agent {
		return &v1alpha1.Agent{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
			Spec: v1alpha1.AgentSpec{PodSelector: metav1.LabelSelector{MatchLabels: sel}, Lifecycle: v1alpha1.Lifecycle{State: state}}}
	}
	withUID := func(p *corev1.Pod, uid string) *corev1.Pod {
		p.UID = types.UID(uid)
		return p
	}
	agents := []*v1alpha1.Agent{
		agent("triage", "default", map[string]string{"agent": "triage"}, v1alpha1.Operating),
		agent("old", "default", map[string]string{"agent": "old"}, v1alpha1.Retired),
		agent("elsewhere", "other", map[string]string{"agent": "x"}, v1alpha1.Operating),
	}
	pods := []*corev1.Pod{
		withUID(pod("a1", "n", map[string]string{"agent": "triage"}), "a1"),
		withUID(pod("a2", "n", map[string]string{"agent": "old"}), "a2"),
		withUID(pod("o1", "n", nil), "o1"),
		withUID(pod("x1", "n", map[string]string{"agent": "x"}), "x1"), // in default, not in other
		withUID(pod("late", "n", nil), "late"),
	}
	step := func(want ...string) {
		t.Helper()
		fs.log = nil
		if err := c.hold(agents, pods); err != nil {
			t.Fatal(err)
		}
		slices.Sort(fs.log)
		slices.Sort(want)
		if !slices.Equal(fs.log, want) {
			t.Errorf("calls %q, want %q", fs.log, want)
		}
	}
	step("hold a1", "hold a2", "release o1", "release x1")
	step()
	made["late"] = true
	step("release late")
	agents[0].Spec.PodSelector.MatchLabels = map[string]string{"agent": "none"}
	step("release a1")
	pods = pods[1:]
	step()
	if _, ok := c.classified["a1"]; ok {
		t.Error("a gone pod is still classified")
	}
}

// TestWatchDirs: a directory made in a watched one pokes; stop ends the
// watch.
func TestWatchDirs(t *testing.T) {
	dir := t.TempDir()
	pokes := make(chan struct{}, 8)
	stop, err := watchDirs([]string{dir}, func() { pokes <- struct{}{} })
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, "pod1"), 0o755); err != nil {
		t.Fatal(err)
	}
	select {
	case <-pokes:
	case <-time.After(10 * time.Second):
		t.Fatal("no poke for a new directory")
	}
	stop()
	if _, err := watchDirs([]string{filepath.Join(dir, "missing")}, func() {}); err == nil {
		t.Error("watching a missing directory succeeded")
	}
}

// TestStartHold: a node holds new pods unless it is a control-plane node
// (and hold_control_plane is off); a node without a Node object holds. Each
// reads its Node with its own token, through the shipped ClusterRole.
func TestStartHold(t *testing.T) {
	e := kubetest.Start(t)
	ctx := context.Background()
	admin := e.User(t, "alice", "system:masters")
	cp := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "cp", Labels: map[string]string{"node-role.kubernetes.io/control-plane": ""}}}
	if err := admin.Create(ctx, cp); err != nil {
		t.Fatal(err)
	}
	configs := map[string]*rest.Config{}
	for _, n := range []string{"worker", "cp", "gone"} {
		configs[n] = e.NodeConfig(t, n)
	}
	if err := admin.Delete(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "gone"}}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		node         string
		controlPlane bool
		want         bool
	}{{"worker", false, true}, {"cp", false, false}, {"cp", true, true}, {"gone", false, true}} {
		var got []bool
		c, err := New(Config{Rest: configs[tc.node], NodeName: tc.node, PodCgroup: func(string) bool { return true },
			HoldControlPlane: tc.controlPlane, Log: slog.New(slog.DiscardHandler),
			Hold: func(on bool) ([]string, error) { got = append(got, on); return nil, nil }}, &fakeSessions{byID: map[string]*v1.Session{}})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.startHold(ctx); err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(got, []bool{tc.want}) {
			t.Errorf("node %s, hold_control_plane %v: hold %v, want [%v]", tc.node, tc.controlPlane, got, tc.want)
		}
	}
}

// TestPods: the node's pods by UID, with only the labels records may carry;
// a pod gone from the informers is gone from the index.
func TestPods(t *testing.T) {
	p := &Pods{Labels: []string{"app", "team"}}
	if p.Lookup("a") != nil {
		t.Error("an empty index found a pod")
	}
	mk := func(uid, name string, labels map[string]string) *corev1.Pod {
		k := pod(name, "node-a", labels)
		k.UID, k.Spec.ServiceAccountName = types.UID(uid), "agent-sa"
		return k
	}
	p.update([]*corev1.Pod{mk("a", "agent-0", map[string]string{"app": "triage", "secret-ish": "x"}), mk("b", "plain", nil)})
	got := p.Lookup("a")
	want := &audit.Pod{UID: "a", Namespace: "default", Name: "agent-0", ServiceAccount: "agent-sa", Node: "node-a",
		Labels: map[string]string{"app": "triage"}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("pod a: %+v, want %+v", got, want)
	}
	if b := p.Lookup("b"); b == nil || b.Labels != nil {
		t.Errorf("pod b: %+v", b)
	}
	p.update([]*corev1.Pod{mk("b", "plain", nil)})
	if p.Lookup("a") != nil {
		t.Error("a gone pod is still found")
	}
	// A pass over the same pods at the same versions keeps the index; a
	// new version of a pod replaces it.
	before := p.Lookup("b")
	p.update([]*corev1.Pod{mk("b", "plain", nil)})
	if p.Lookup("b") != before {
		t.Error("an unchanged pass made the index anew")
	}
	relabelled := mk("b", "plain", map[string]string{"team": "red"})
	relabelled.ResourceVersion = "2"
	p.update([]*corev1.Pod{relabelled})
	if b := p.Lookup("b"); b == nil || b.Labels["team"] != "red" {
		t.Errorf("relabelled pod b: %+v", b)
	}
}
