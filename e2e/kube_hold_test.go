package e2e

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/agentfence/agentfence/audit"
	"github.com/agentfence/agentfence/internal/kerneltest"
	"github.com/agentfence/agentfence/kube/kubetest"
	"github.com/agentfence/agentfence/kube/v1alpha1"
	"github.com/agentfence/agentfence/session"
)

// TestKubernetesHold: with kubernetes.enabled, a pod cgroup made in the
// kubelet's QoS cgroup is denied everything from its first moment. A pod
// no Agent selects is let go as soon as the node sees it; an Agent's pod
// stays denied, its records naming the hold, until its AgentSession binds
// it; a pod the node has not seen (the informers' lag, or the API server
// away) stays denied.
func TestKubernetesHold(t *testing.T) {
	e := kubetest.Start(t)
	ctx := context.Background()
	admin := e.User(t, "alice", "system:masters")
	target := kerneltest.Listen(t, "tcp4", "127.0.0.1:0")
	other := kerneltest.Listen(t, "tcp4", "127.0.0.1:0")
	connect := kerneltest.Connect{Addr: target}
	qos := kubeQoS(t)

	d := kubeDaemon(t, e, "")
	kubetest.Eventually(t, "the node to follow the cluster", func() error {
		if !strings.Contains(d.log(), "following the cluster") {
			return errors.New("not yet")
		}
		return nil
	})

	sel := map[string]string{"agent": "triage"}
	agent := &v1alpha1.Agent{ObjectMeta: metav1.ObjectMeta{Name: "triage", Namespace: "default"}, Spec: v1alpha1.AgentSpec{
		SPIFFEID: "spiffe://example.org/agent/triage", Owner: "team-a", Version: "1.2.0",
		Ceiling:     []v1alpha1.Rule{{Protocol: v1alpha1.TCP, CIDR: "127.0.0.0/8"}},
		PodSelector: metav1.LabelSelector{MatchLabels: sel},
		Lifecycle: v1alpha1.Lifecycle{State: v1alpha1.Operating, Transitions: []v1alpha1.Transition{
			{State: v1alpha1.Operating, Actor: "alice", Time: metav1.Now()}}}}}
	newPod := func(name string, labels map[string]string) *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default", Labels: labels},
			Spec: corev1.PodSpec{NodeName: "node-a", Containers: []corev1.Container{{Name: "c", Image: "c:1"}}}}
	}
	agentPod, plain, relabelled := newPod("agent", sel), newPod("plain", nil), newPod("relabelled", sel)
	for _, o := range []kubetest.Object{agent, agentPod, plain, relabelled} {
		if err := admin.Create(ctx, o); err != nil {
			t.Fatal(err)
		}
	}

	// A pod the node has not seen: no API server knows this UID.
	unseen := kubePod(t, qos, "0d6c1a4e-2b7f-4c1d-9e3a-5f8b7c6d5e4f")
	expectResults(t, kerneltest.Run(t, unseen, kerneltest.Options{}, connect), "EPERM")

	// The Agent's pod, before any session names it.
	agentCtr := kubePod(t, qos, string(agentPod.UID))
	res := kerneltest.Run(t, agentCtr, kerneltest.Options{}, connect)
	expectResults(t, res, "EPERM")
	kubetest.Eventually(t, "the held pod's denial on record", func() error {
		for _, r := range d.records(t) {
			if r.Kind == audit.KindConnect && r.Process != nil && r.Process.PID == uint32(res[0].PID) {
				if r.Session == nil || r.Session.ID != session.HoldID || r.Outcome == nil || r.Outcome.Verdict != "denied" {
					return fmt.Errorf("record %+v %+v", r.Session, r.Outcome)
				}
				return nil
			}
		}
		return errors.New("no record yet")
	})

	// A pod no Agent selects: let go once the node has classified it. How
	// long that took is the hold a pod pays for the informers' lag.
	made := time.Now()
	plainCtr := kubePod(t, qos, string(plain.UID))
	for i := 0; ; i++ {
		res := kerneltest.Run(t, plainCtr, kerneltest.Options{}, connect)
		if res[0].Outcome() == "ok" {
			t.Logf("a pod no Agent selects was held for %v (at most; %d connects tried)", time.Since(made), i+1)
			break
		}
		if i == 2000 || time.Since(made) > time.Minute {
			t.Fatalf("a pod no Agent selects is still held after %v: %s", time.Since(made), res[0].Outcome())
		}
	}

	// Processes that started while their pod was held (and so went through
	// fork, exec and the move into the pod's cgroup held) go with the pod:
	// into its session when it is bound, out of the hold when it is let go.
	early := kerneltest.Start(t, agentCtr, kerneltest.Options{}, true, connect, kerneltest.Connect{Addr: other})
	relabelledCtr := kubePod(t, qos, string(relabelled.UID))
	late := kerneltest.Start(t, relabelledCtr, kerneltest.Options{}, true, connect)
	for _, p := range []*kerneltest.Proc{early, late} {
		if res := p.Next(); res.Outcome() != kerneltest.Ready {
			t.Fatalf("probe: %s", res)
		}
	}
	relabelled.Labels = nil
	if err := admin.Update(ctx, relabelled); err != nil {
		t.Fatal(err)
	}
	kubetest.Eventually(t, "the node to let a relabelled pod go", func() error {
		if res := kerneltest.Run(t, relabelledCtr, kerneltest.Options{}, connect); res[0].Outcome() != "ok" {
			return fmt.Errorf("connect: %s", res[0].Outcome())
		}
		return nil
	})
	late.Go()
	if res := late.Next(); res.Outcome() != "ok" {
		t.Errorf("a process started while its pod was held, after the pod was let go: %s", res.Outcome())
	}

	s := &v1alpha1.AgentSession{ObjectMeta: metav1.ObjectMeta{Name: "fix-bug", Namespace: "default"}, Spec: v1alpha1.AgentSessionSpec{
		Agent: "triage", Intent: "fix bug 7", Origin: v1alpha1.Origin{Kind: v1alpha1.Human, Principal: "alice@example.com"},
		Scope: []v1alpha1.Rule{{Protocol: v1alpha1.TCP, CIDR: "127.0.0.1/32", Port: int32(target.Port())}},
		Pods:  v1alpha1.Pods{Selector: &metav1.LabelSelector{}}}}
	kubetest.Eventually(t, "the session policy to admit", func() error { return admin.Create(ctx, s) })
	kubetest.Eventually(t, "the AgentSession to bind the held pod", func() error {
		res := kerneltest.Run(t, agentCtr, kerneltest.Options{}, connect, kerneltest.Connect{Addr: other})
		if res[0].Outcome() != "ok" || res[1].Outcome() != "EPERM" {
			return fmt.Errorf("connects: %s, %s", res[0].Outcome(), res[1].Outcome())
		}
		return nil
	})
	early.Go()
	if res := early.Next(); res.Outcome() != "ok" {
		t.Errorf("a process started while its pod was held, after the pod was bound: %s", res.Outcome())
	}
	if res := early.Next(); res.Outcome() != "EPERM" {
		t.Errorf("out of the bound session's scope: %s", res.Outcome())
	}
	expectResults(t, kerneltest.Run(t, unseen, kerneltest.Options{}, connect), "EPERM")
}
