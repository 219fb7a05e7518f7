package node

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/agentfence/agentfence/api/v1"
	"github.com/agentfence/agentfence/audit"
	"github.com/agentfence/agentfence/kube/kubetest"
	"github.com/agentfence/agentfence/kube/v1alpha1"
	"github.com/agentfence/agentfence/session"
)

// fakeSessions is the session registry's API, in memory.
type fakeSessions struct {
	mu   sync.Mutex
	n    int
	byID map[string]*v1.Session
	log  []string
}

func (f *fakeSessions) Open(req v1.OpenRequest, _ session.Caller) (v1.Session, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.n++
	s := &v1.Session{ID: fmt.Sprintf("s%d", f.n), Intent: req.Intent, Agent: req.Agent, Scope: req.Scope, Labels: req.Labels,
		TTL: req.TTL, State: v1.StateActive}
	f.byID[s.ID] = s
	f.log = append(f.log, "open "+s.ID+" "+req.Labels[labelSession])
	return *s, nil
}

func (f *fakeSessions) Bind(id string, req v1.BindRequest, _ session.Caller) (v1.Session, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := f.byID[id]
	s.Binding.PodUID = req.PodUID
	f.log = append(f.log, "bind "+id+" "+req.PodUID)
	return *s, nil
}

func (f *fakeSessions) Narrow(id string, req v1.NarrowRequest, _ session.Caller) (v1.Session, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := f.byID[id]
	s.Scope = req.Scope
	f.log = append(f.log, "narrow "+id+" "+strings.Join(req.Scope, " "))
	return *s, nil
}

func (f *fakeSessions) Revoke(id string, _ session.Caller) (v1.Session, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := f.byID[id]
	s.State = v1.StateRevoked
	f.log = append(f.log, "revoke "+id)
	return *s, nil
}

func (f *fakeSessions) RetireAgent(a audit.Agent, actor, _ string) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, s := range f.byID {
		if s.Agent != nil && s.Agent.ID == a.ID && s.State == v1.StateActive {
			s.State = v1.StateRevoked
			n++
		}
	}
	f.log = append(f.log, "retire "+a.ID+" by "+actor)
	return n, nil
}

func (f *fakeSessions) HoldPod(uid string) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.log = append(f.log, "hold "+uid)
	return true, nil
}

func (f *fakeSessions) ReleasePod(uid string) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.log = append(f.log, "release "+uid)
	return true, nil
}

func (f *fakeSessions) List(flt session.Filter) []v1.Session {
	f.mu.Lock()
	defer f.mu.Unlock()
	k, v, _ := strings.Cut(flt.Label, "=")
	var out []v1.Session
	for _, s := range f.byID {
		if s.Labels[k] == v {
			out = append(out, *s)
		}
	}
	return out
}

func (f *fakeSessions) active() map[string]v1.Session {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[string]v1.Session{}
	for _, s := range f.byID {
		if s.State == v1.StateActive {
			out[s.Labels[labelSession]+" "+s.Binding.PodUID] = *s
		}
	}
	return out
}

// The triage Agent's pod selector and ceiling.
var (
	triageSelector = map[string]string{"agent": "triage"}
	triageCeiling  = []v1alpha1.Rule{{Protocol: v1alpha1.TCP, CIDR: "10.0.0.0/8", Port: 443}, {Host: "*.example.com"}}
)

// triage is the operating Agent "triage" of namespace ns, as alice made it.
func triage(ns string, ceiling []v1alpha1.Rule, sel map[string]string) *v1alpha1.Agent {
	return &v1alpha1.Agent{ObjectMeta: metav1.ObjectMeta{Name: "triage", Namespace: ns}, Spec: v1alpha1.AgentSpec{
		SPIFFEID: "spiffe://example.org/agent/triage", Owner: "team-a", Version: "1.2.0", Ceiling: ceiling,
		PodSelector: metav1.LabelSelector{MatchLabels: sel},
		Lifecycle: v1alpha1.Lifecycle{State: v1alpha1.Operating, Transitions: []v1alpha1.Transition{
			{State: v1alpha1.Operating, Actor: "alice", Time: metav1.Now()}}}}}
}

func pod(name, node string, labels map[string]string) *corev1.Pod {
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default", Labels: labels},
		Spec: corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "agent", Image: "agent:1"}}}}
}

// TestTwoNodes: two controllers, each with its own node name and its own
// identity, against one API server. Each binds only its own node's pods;
// narrowing the session narrows both; retiring the agent revokes on both.
func TestTwoNodes(t *testing.T) {
	e := kubetest.Start(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	admin := e.User(t, "alice", "system:masters")
	// Copies: decoding the API server's answers writes into them.
	sel, ceiling := maps.Clone(triageSelector), slices.Clone(triageCeiling)
	agent := triage("default", ceiling, sel)
	pods := []*corev1.Pod{pod("agent-a", "node-a", sel), pod("agent-b", "node-b", sel), pod("other-a", "node-a", nil)}
	for _, o := range []kubetest.Object{agent, pods[0], pods[1], pods[2]} {
		if err := admin.Create(ctx, o); err != nil {
			t.Fatal(err)
		}
	}
	nodes := map[string]*fakeSessions{}
	for _, n := range []string{"node-a", "node-b"} {
		fs := &fakeSessions{byID: map[string]*v1.Session{}}
		nodes[n] = fs
		c, err := New(Config{Rest: e.NodeConfig(t, n), NodeName: n, Resync: time.Hour, PodCgroup: func(string) bool { return true },
			Log: slog.New(slog.DiscardHandler)}, fs)
		if err != nil {
			t.Fatal(err)
		}
		go c.Run(ctx)
	}
	s := &v1alpha1.AgentSession{ObjectMeta: metav1.ObjectMeta{Name: "fix-bug", Namespace: "default"}, Spec: v1alpha1.AgentSessionSpec{
		Agent: "triage", Intent: "fix bug 7", Origin: v1alpha1.Origin{Kind: v1alpha1.Human, Principal: "alice@example.com"},
		Scope: ceiling, Pods: v1alpha1.Pods{Selector: &metav1.LabelSelector{}}}}
	kubetest.Eventually(t, "the session policy to admit", func() error { return admin.Create(ctx, s) })

	for n, fs := range nodes {
		kubetest.Eventually(t, n+" binds its pod", func() error {
			got := fs.active()
			p := map[string]*corev1.Pod{"node-a": pods[0], "node-b": pods[1]}[n]
			b, ok := got["default/fix-bug "+string(p.UID)]
			if !ok || len(got) != 1 {
				return fmt.Errorf("sessions %v", got)
			}
			if b.Intent != "fix bug 7" || b.Agent.ID != agent.Spec.SPIFFEID || b.Agent.Version != "1.2.0" ||
				!slices.Equal(b.Scope, []string{"tcp://10.0.0.0/8:443", "*.example.com"}) {
				return fmt.Errorf("session %+v", b)
			}
			return nil
		})
	}

	for n := range nodes {
		waitReport(t, e, n, metav1.ConditionTrue, "Bound", 1)
	}

	// Narrow: both nodes narrow in place.
	s.Spec.Scope = ceiling[:1]
	if err := admin.Update(ctx, s); err != nil {
		t.Fatal(err)
	}
	for n, fs := range nodes {
		kubetest.Eventually(t, n+" narrows", func() error {
			for _, b := range fs.active() {
				if !slices.Equal(b.Scope, []string{"tcp://10.0.0.0/8:443"}) {
					return fmt.Errorf("scope %v", b.Scope)
				}
			}
			return nil
		})
	}

	// Retire: both nodes revoke.
	if err := admin.Get(ctx, kubetest.Key(agent), agent); err != nil {
		t.Fatal(err)
	}
	agent.Spec.Lifecycle.State = v1alpha1.Retired
	agent.Spec.Lifecycle.Transitions = append(agent.Spec.Lifecycle.Transitions, v1alpha1.Transition{State: v1alpha1.Retired, Actor: "alice", Time: metav1.Now()})
	if err := admin.Update(ctx, agent); err != nil {
		t.Fatal(err)
	}
	for n, fs := range nodes {
		kubetest.Eventually(t, n+" revokes", func() error {
			if got := fs.active(); len(got) != 0 {
				return fmt.Errorf("still active: %v", got)
			}
			return nil
		})
	}
	for n := range nodes {
		waitReport(t, e, n, metav1.ConditionFalse, "AgentRetired", 0)
	}
	// Each node retired the agent once, in the name of who retired it
	// (its local sessions of the agent end too: session.TestRetireAgent).
	for n, fs := range nodes {
		fs.mu.Lock()
		retired := 0
		for _, l := range fs.log {
			if strings.HasPrefix(l, "retire ") {
				retired++
				if l != "retire spiffe://example.org/agent/triage by alice" {
					t.Errorf("%s: %s", n, l)
				}
			}
		}
		fs.mu.Unlock()
		if retired != 1 {
			t.Errorf("%s retired the agent %d times", n, retired)
		}
	}
	// A new agent and session for the same pods: the pods stay with their
	// revoked sessions (denied everything) rather than pass through an
	// unbound moment, and the nodes say so; nothing is opened again and
	// again.
	agent2 := agent.DeepCopy()
	agent2.ObjectMeta = metav1.ObjectMeta{Name: "triage-2", Namespace: "default"}
	agent2.Spec.Lifecycle = v1alpha1.Lifecycle{State: v1alpha1.Operating, Transitions: []v1alpha1.Transition{
		{State: v1alpha1.Operating, Actor: "alice", Time: metav1.Now()}}}
	if err := admin.Create(ctx, agent2); err != nil {
		t.Fatal(err)
	}
	s2 := &v1alpha1.AgentSession{ObjectMeta: metav1.ObjectMeta{Name: "fix-bug", Namespace: "default"}}
	if err := admin.Get(ctx, kubetest.Key(s2), s2); err != nil {
		t.Fatal(err)
	}
	if err := admin.Delete(ctx, s2); err != nil {
		t.Fatal(err)
	}
	s2 = &v1alpha1.AgentSession{ObjectMeta: metav1.ObjectMeta{Name: "fix-bug", Namespace: "default"}, Spec: s.Spec}
	s2.Spec.Agent = "triage-2"
	kubetest.Eventually(t, "the second session admitted", func() error { return admin.Create(ctx, s2) })
	for n := range nodes {
		waitReport(t, e, n, metav1.ConditionFalse, "Binding", 0)
	}
	for n, fs := range nodes {
		fs.mu.Lock()
		opens := 0
		for _, l := range fs.log {
			if strings.HasPrefix(l, "open ") {
				opens++
			}
		}
		fs.mu.Unlock()
		if opens != 1 {
			t.Errorf("%s opened %d local sessions, want the first only", n, opens)
		}
	}
	for n, fs := range nodes {
		fs.mu.Lock()
		t.Logf("%s: %v", n, fs.log)
		fs.mu.Unlock()
	}
}

// waitReport waits for node's NodeEnforcement of default/fix-bug.
func waitReport(t *testing.T, e *kubetest.Env, node string, status metav1.ConditionStatus, reason string, bound int32) {
	t.Helper()
	waitSessionReport(t, e, "fix-bug", node, status, reason, bound)
}

// waitSessionReport waits for node's NodeEnforcement of default/session
// to say what is expected.
func waitSessionReport(t *testing.T, e *kubetest.Env, session, node string, status metav1.ConditionStatus, reason string, bound int32) {
	t.Helper()
	kubetest.Eventually(t, node+" reports "+reason+" on "+session, func() error {
		var ne v1alpha1.NodeEnforcement
		if err := e.Client.Get(context.Background(), client.ObjectKey{Namespace: "default", Name: session + "." + node}, &ne); err != nil {
			return err
		}
		c := meta.FindStatusCondition(ne.Status.Conditions, v1alpha1.Enforced)
		if c == nil || c.Status != status || c.Reason != reason || ne.Status.BoundPods != bound || ne.Labels[v1alpha1.NodeLabel] != node {
			return fmt.Errorf("report %+v %+v", ne.ObjectMeta.Labels, ne.Status)
		}
		return nil
	})
}

// TestParentAndNamespace: against a real API server, a child session is
// enforced within its parent and revoked when the parent goes; the
// Agents and sessions of a namespace the node ignores bind nothing and
// get one warning event each, from the node whose pod they select.
func TestParentAndNamespace(t *testing.T) {
	e := kubetest.Start(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	admin := e.User(t, "alice", "system:masters")
	// Copies: decoding the API server's answers writes into them.
	sel, ceiling := maps.Clone(triageSelector), slices.Clone(triageCeiling)
	session := func(ns, name, parent, pod string, scope ...v1alpha1.Rule) *v1alpha1.AgentSession {
		return &v1alpha1.AgentSession{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}, Spec: v1alpha1.AgentSessionSpec{
			Agent: "triage", Intent: "fix bug 7", Origin: v1alpha1.Origin{Kind: v1alpha1.Human, Principal: "alice@example.com"},
			Scope: scope, Parent: parent, Pods: v1alpha1.Pods{Names: []string{pod}}}}
	}
	ignoredPod := pod("agent-b", "node-a", sel)
	ignoredPod.Namespace = "team-b"
	objs := []kubetest.Object{&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "team-b"}}, triage("default", ceiling, sel), triage("team-b", ceiling, sel),
		pod("parent", "node-a", sel), pod("child", "node-a", sel), ignoredPod}
	for _, o := range objs {
		if err := admin.Create(ctx, o); err != nil {
			t.Fatal(err)
		}
	}
	fs := &fakeSessions{byID: map[string]*v1.Session{}}
	c, err := New(Config{Rest: e.NodeConfig(t, "node-a"), NodeName: "node-a", Resync: time.Hour, PodCgroup: func(string) bool { return true },
		IgnoreNamespaces: []string{"team-b"}, Log: slog.New(slog.DiscardHandler)}, fs)
	if err != nil {
		t.Fatal(err)
	}
	go c.Run(ctx)
	parent := session("default", "parent", "", "parent", ceiling...)
	ignored := session("team-b", "ignored", "", "agent-b", ceiling...)
	for _, s := range []*v1alpha1.AgentSession{parent, session("default", "child", "parent", "child", ceiling[0]), ignored,
		session("default", "stray", "parent", "child", ceiling[1])} {
		kubetest.Eventually(t, "the session policy to admit", func() error { return admin.Create(ctx, s) })
	}
	kubetest.Eventually(t, "the parent and the child bound", func() error {
		got := fs.active()
		c, ok := got["default/child "+string(objs[4].GetUID())]
		if _, p := got["default/parent "+string(objs[3].GetUID())]; !p || !ok || len(got) != 2 {
			return fmt.Errorf("sessions %v", got)
		}
		if c.Labels["agentfence.io/parent"] != "default/parent" || !slices.Equal(c.Scope, []string{"tcp://10.0.0.0/8:443"}) {
			return fmt.Errorf("child %+v", c)
		}
		return nil
	})
	waitSessionReport(t, e, "child", "node-a", metav1.ConditionTrue, "Bound", 1)
	// The second child selects the first one's pod, which stays with the
	// older session.
	waitSessionReport(t, e, "stray", "node-a", metav1.ConditionFalse, "PodConflict", 0)

	// The node posts one warning on each object of the ignored namespace.
	kubetest.Eventually(t, "a warning on the ignored Agent and AgentSession", func() error {
		var evs eventsv1.EventList
		if err := admin.List(ctx, &evs, client.InNamespace("team-b")); err != nil {
			return err
		}
		var got []string
		for _, ev := range evs.Items {
			if ev.Type != corev1.EventTypeWarning || ev.Reason != "IgnoredNamespace" || ev.ReportingInstance != "agentfence.io/node/node-a" ||
				!strings.HasPrefix(ev.Note, "metadata.namespace: node node-a does not follow") {
				return fmt.Errorf("event %+v", ev)
			}
			got = append(got, ev.Regarding.Kind+" "+ev.Regarding.Name)
		}
		if slices.Sort(got); !slices.Equal(got, []string{"Agent triage", "AgentSession ignored"}) {
			return fmt.Errorf("events about %v", got)
		}
		return nil
	})
	var ne v1alpha1.NodeEnforcementList
	if err := admin.List(ctx, &ne, client.InNamespace("team-b")); err != nil || len(ne.Items) != 0 {
		t.Errorf("reports on the ignored session: %v %v", ne.Items, err)
	}

	// The parent goes: its child is revoked with it, and says why.
	if err := admin.Delete(ctx, parent); err != nil {
		t.Fatal(err)
	}
	kubetest.Eventually(t, "the child revoked with its parent", func() error {
		if got := fs.active(); len(got) != 0 {
			return fmt.Errorf("still active: %v", got)
		}
		return nil
	})
	waitSessionReport(t, e, "child", "node-a", metav1.ConditionFalse, "ParentNotFound", 0)
}
