package node

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1 "github.com/agentfence/agentfence/api/v1"
	"github.com/agentfence/agentfence/audit"
	"github.com/agentfence/agentfence/kube/kubetest"
	"github.com/agentfence/agentfence/kube/v1alpha1"
	"github.com/agentfence/agentfence/session"
)

// watched is fakeSessions that says when it binds a pod and revokes a
// session.
type watched struct {
	*fakeSessions
	bound   chan string // pod UID
	revoked chan string // session id
}

func (w *watched) Bind(id string, req v1.BindRequest, c session.Caller) (v1.Session, error) {
	s, err := w.fakeSessions.Bind(id, req, c)
	w.bound <- req.PodUID
	return s, err
}

func (w *watched) Revoke(id string, c session.Caller) (v1.Session, error) {
	s, err := w.fakeSessions.Revoke(id, c)
	w.revoked <- id
	return s, err
}

// RetireAgent revokes as the registry does, each session said.
func (w *watched) RetireAgent(a audit.Agent, actor, reason string) (int, error) {
	w.mu.Lock()
	var ids []string
	for id, s := range w.byID {
		if s.Agent != nil && s.Agent.ID == a.ID && s.State == v1.StateActive {
			ids = append(ids, id)
		}
	}
	w.mu.Unlock()
	for _, id := range ids {
		w.Revoke(id, session.Caller{ID: actor})
	}
	return len(ids), nil
}

func newWatched(n int) *watched {
	return &watched{fakeSessions: &fakeSessions{byID: map[string]*v1.Session{}}, bound: make(chan string, n), revoked: make(chan string, n)}
}

// startNode runs a controller for node with its own identity.
func startNode(b *testing.B, ctx context.Context, e *kubetest.Env, node string, s Sessions) {
	b.Helper()
	c, err := New(Config{Rest: e.NodeConfig(b, node), NodeName: node, Resync: time.Hour, PodCgroup: func(string) bool { return true },
		Log: slog.New(slog.DiscardHandler)}, s)
	if err != nil {
		b.Fatal(err)
	}
	go c.Run(ctx)
}

func benchAgent(name string, sel map[string]string) *v1alpha1.Agent {
	return &v1alpha1.Agent{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"}, Spec: v1alpha1.AgentSpec{
		SPIFFEID: "spiffe://example.org/agent/" + name, Owner: "team-a", Version: "1",
		Ceiling:     []v1alpha1.Rule{{Protocol: v1alpha1.TCP, CIDR: "10.0.0.0/8"}},
		PodSelector: metav1.LabelSelector{MatchLabels: sel},
		Lifecycle: v1alpha1.Lifecycle{State: v1alpha1.Operating, Transitions: []v1alpha1.Transition{
			{State: v1alpha1.Operating, Actor: "alice", Time: metav1.Now()}}}}}
}

func benchSession(name, agent string, pods ...string) *v1alpha1.AgentSession {
	return &v1alpha1.AgentSession{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"}, Spec: v1alpha1.AgentSessionSpec{
		Agent: agent, Intent: "bench", Origin: v1alpha1.Origin{Kind: v1alpha1.Human, Principal: "alice"},
		Scope: []v1alpha1.Rule{{Protocol: v1alpha1.TCP, CIDR: "10.1.0.0/16", Port: 443}},
		Pods:  v1alpha1.Pods{Names: pods}}}
}

// quantiles reports the p50 and p99 of ds, in milliseconds.
func quantiles(b *testing.B, ds []time.Duration) {
	slices.Sort(ds)
	at := func(q float64) float64 { return float64(ds[int(q*float64(len(ds)-1))]) / 1e6 }
	b.ReportMetric(at(0.5), "p50-ms")
	b.ReportMetric(at(0.99), "p99-ms")
	b.ReportMetric(0, "ns/op")
}

// BenchmarkKubernetesSessionToEnforced: from the API server's answer to an
// AgentSession's create to the node binding its pod, for b.N sessions in
// turn, each naming a pod of its own, the earlier ones still there (the
// node reconciles all of them each time). Target p99 ≤ 1 s. Run with
// -benchtime 1000x (make bench-kube).
func BenchmarkKubernetesSessionToEnforced(b *testing.B) {
	e := kubetest.Start(b)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	admin := e.User(b, "alice", "system:masters")
	sel := map[string]string{"agent": "bench"}
	if err := admin.Create(ctx, benchAgent("bench", sel)); err != nil {
		b.Fatal(err)
	}
	pods := make([]*corev1.Pod, b.N)
	for i := range pods {
		pods[i] = pod(fmt.Sprintf("agent-%d", i), "node-a", sel)
		if err := admin.Create(ctx, pods[i]); err != nil {
			b.Fatal(err)
		}
	}
	w := newWatched(b.N)
	startNode(b, ctx, e, "node-a", w)
	var took []time.Duration
	b.ResetTimer()
	for i := range b.N {
		s := benchSession(fmt.Sprintf("s-%d", i), "bench", pods[i].Name)
		kubetest.Eventually(b, "the session policy to admit", func() error { return admin.Create(ctx, s) })
		created := time.Now()
		for uid := range w.bound {
			if uid == string(pods[i].UID) {
				break
			}
		}
		took = append(took, time.Since(created))
	}
	b.StopTimer()
	quantiles(b, took)
}

// BenchmarkKubernetesRetirement: from the API server's answer to an
// Agent's retirement to every one of its sessions revoked on both nodes,
// for b.N agents with 10 sessions a node each.
func BenchmarkKubernetesRetirement(b *testing.B) {
	const perNode = 10
	e := kubetest.Start(b)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	admin := e.User(b, "alice", "system:masters")
	nodes := map[string]*watched{"node-a": newWatched(b.N * perNode), "node-b": newWatched(b.N * perNode)}
	agents := make([]*v1alpha1.Agent, b.N)
	for i := range agents {
		name := fmt.Sprintf("agent-%d", i)
		sel := map[string]string{"agent": name}
		agents[i] = benchAgent(name, sel)
		if err := admin.Create(ctx, agents[i]); err != nil {
			b.Fatal(err)
		}
		for n := range nodes {
			for j := range perNode {
				p := pod(fmt.Sprintf("%s-%s-%d", name, n, j), n, sel)
				if err := admin.Create(ctx, p); err != nil {
					b.Fatal(err)
				}
				s := benchSession(p.Name, name, p.Name)
				kubetest.Eventually(b, "the session policy to admit", func() error { return admin.Create(ctx, s) })
			}
		}
	}
	for n, w := range nodes {
		startNode(b, ctx, e, n, w)
	}
	for _, w := range nodes {
		for range b.N * perNode {
			<-w.bound
		}
	}
	var took []time.Duration
	b.ResetTimer()
	for _, a := range agents {
		a.Spec.Lifecycle.State = v1alpha1.Retired
		a.Spec.Lifecycle.Transitions = append(a.Spec.Lifecycle.Transitions, v1alpha1.Transition{State: v1alpha1.Retired, Actor: "alice", Time: metav1.Now()})
		if err := admin.Update(ctx, a); err != nil {
			b.Fatal(err)
		}
		retired := time.Now()
		for _, w := range nodes {
			for range perNode {
				<-w.revoked
			}
		}
		took = append(took, time.Since(retired))
	}
	b.StopTimer()
	quantiles(b, took)
}
