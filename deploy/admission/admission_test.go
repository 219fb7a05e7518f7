// Package admission holds the ValidatingAdmissionPolicies of the
// agentfence.io objects. These tests install them, with the CRDs, in a
// real kube-apiserver (kube/kubetest) and try what they must refuse.
package admission

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	admissionv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	"github.com/agentfence/agentfence/config"
	"github.com/agentfence/agentfence/kube"
	"github.com/agentfence/agentfence/kube/kubetest"
	"github.com/agentfence/agentfence/kube/v1alpha1"
	"github.com/agentfence/agentfence/scope"
)

const ns = "default"

func agent(name, actor string, state v1alpha1.LifecycleState, ceiling ...v1alpha1.Rule) *v1alpha1.Agent {
	return &v1alpha1.Agent{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: v1alpha1.AgentSpec{
			SPIFFEID: "spiffe://example.org/agent/" + name, Owner: "team-a", Version: "1.0.0",
			Ceiling:     ceiling,
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"agent": name}},
			Lifecycle: v1alpha1.Lifecycle{State: state, Transitions: []v1alpha1.Transition{
				{State: state, Actor: actor, Time: metav1.NewTime(time.Unix(1_800_000_000, 0))}}},
		},
	}
}

var sessionSeq int

func session(agentName string, rules ...v1alpha1.Rule) *v1alpha1.AgentSession {
	sessionSeq++
	return &v1alpha1.AgentSession{
		ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("s%d", sessionSeq), Namespace: ns},
		Spec: v1alpha1.AgentSessionSpec{
			Agent: agentName, Intent: "triage tickets",
			Origin: v1alpha1.Origin{Kind: v1alpha1.Human, Principal: "alice@example.com"},
			Scope:  rules,
			Pods:   v1alpha1.Pods{Names: []string{"agent-0"}},
		},
	}
}

// egress and ingress build rules; ports are port, endPort.
func egress(proto v1alpha1.Protocol, dest string, ports ...int32) v1alpha1.Rule {
	r := v1alpha1.Rule{Direction: v1alpha1.Egress, Protocol: proto}
	if strings.ContainsAny(dest, "/:") {
		r.CIDR = dest
	} else {
		r.Host = dest
	}
	if len(ports) > 0 {
		r.Port = ports[0]
	}
	if len(ports) > 1 {
		r.EndPort = ports[1]
	}
	return r
}

func ingress(proto v1alpha1.Protocol, cidr string, ports ...int32) v1alpha1.Rule {
	r := egress(proto, cidr, ports...)
	r.Direction = v1alpha1.Ingress
	return r
}

func withExe(r v1alpha1.Rule, exe string) v1alpha1.Rule { r.Exe = exe; return r }

var ceiling = []v1alpha1.Rule{
	egress(v1alpha1.TCP, "10.0.0.0/8", 443, 8443),
	egress(v1alpha1.AnyProtocol, "*.example.com"),
	egress(v1alpha1.TCP, "api.stripe.com", 443),
	ingress(v1alpha1.TCP, "192.168.0.0/16", 8080),
	withExe(egress(v1alpha1.TCP, "172.16.0.0/12"), "/usr/bin/python3"),
	egress(v1alpha1.UDP, "fd00::/8", 53),
}

func TestAdmission(t *testing.T) {
	e := kubetest.Start(t)
	ctx := context.Background()
	c := e.User(t, "alice", "system:masters")
	if err := c.Create(ctx, agent("triage", "alice", v1alpha1.Operating, ceiling...)); err != nil {
		t.Fatal(err)
	}
	if err := c.Create(ctx, agent("old", "alice", v1alpha1.Retired, ceiling...)); err != nil {
		t.Fatal(err)
	}
	// The policies are enforced a moment after they exist.
	kubetest.Eventually(t, "the session policy to refuse a retired agent's session", func() error {
		err := c.Create(ctx, session("old", ceiling[0]))
		if err == nil || !strings.Contains(err.Error(), "spec.agent: agent old is retired") {
			return fmt.Errorf("created or other error: %v", err)
		}
		return nil
	})
	t.Run("ceiling", func(t *testing.T) { testCeiling(t, c) })
	t.Run("schema", func(t *testing.T) { testSchema(t, c) })
	t.Run("update", func(t *testing.T) { testUpdate(t, c) })
	t.Run("no agent", func(t *testing.T) { testNoAgent(t, c) })
	t.Run("lifecycle", func(t *testing.T) { testLifecycle(t, e) })
	t.Run("node enforcement", func(t *testing.T) { testNodeEnforcement(t, e) })
	t.Run("namespaces", func(t *testing.T) { testNamespaces(t, c) })
}

// testNamespaces: no Agent or AgentSession in the cluster's own
// namespaces.
func testNamespaces(t *testing.T, c client.Client) {
	ctx := context.Background()
	a := agent("sys", "alice", v1alpha1.Operating, ceiling...)
	s := session("sys", ceiling[0])
	a.Namespace, s.Namespace = "kube-system", "kube-system"
	for kind, obj := range map[string]client.Object{"Agent": a, "AgentSession": s} {
		kubetest.Eventually(t, "the namespaces policy to refuse a "+kind, func() error {
			err := c.Create(ctx, obj)
			if err == nil {
				c.Delete(ctx, obj)
				return fmt.Errorf("admitted")
			}
			want := "metadata.namespace: agentfence follows no " + kind + " in namespace kube-system"
			if kind == "AgentSession" {
				// Two policies refuse it, the sessions policy too (no
				// Agent there); the API server names one of them.
				want = "denied request"
			}
			if !kubetest.Denied(err) || !strings.Contains(err.Error(), want) {
				return fmt.Errorf("%v; want a refusal saying %q", err, want)
			}
			return nil
		})
	}
}

// TestNamespaceLists: the policy refuses objects in the namespaces the
// nodes ignore by default, and in agentfence's own.
func TestNamespaceLists(t *testing.T) {
	var p admissionv1.ValidatingAdmissionPolicy
	data, err := os.ReadFile("namespace-policy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.UnmarshalStrict(data, &p); err != nil {
		t.Fatal(err)
	}
	var nsObj corev1.Namespace
	if data, err = os.ReadFile("../daemonset/namespace.yaml"); err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(data, &nsObj); err != nil {
		t.Fatal(err)
	}
	want := append(slices.Clone(config.DefaultIgnoreNamespaces), nsObj.Name)
	got := p.Spec.MatchConstraints.NamespaceSelector.MatchExpressions[0].Values
	if !slices.Equal(got, want) {
		t.Errorf("the policy refuses objects in %v; the nodes ignore %v", got, want)
	}
}

// testCeiling: the policy admits a session rule exactly when the scope
// algebra says a ceiling rule covers it.
func testCeiling(t *testing.T, c client.Client) {
	ctx := context.Background()
	parent, err := kube.ScopeRules("spec.ceiling", ceiling)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range []v1alpha1.Rule{
		egress(v1alpha1.TCP, "10.1.0.0/16", 443),
		egress(v1alpha1.TCP, "10.1.0.0/16"),
		egress(v1alpha1.AnyProtocol, "10.1.0.0/16", 443),
		egress(v1alpha1.UDP, "10.0.0.0/8", 443),
		egress(v1alpha1.TCP, "11.0.0.0/8", 443),
		egress(v1alpha1.TCP, "10.0.0.0/8", 8000, 8443),
		egress(v1alpha1.TCP, "10.0.0.0/8", 8000, 9000),
		egress(v1alpha1.TCP, "0.0.0.0/0", 443),
		egress(v1alpha1.AnyProtocol, "a.example.com"),
		egress(v1alpha1.TCP, "a.example.com", 25),
		egress(v1alpha1.AnyProtocol, "a.b.example.com"),
		egress(v1alpha1.AnyProtocol, "*.example.com"),
		egress(v1alpha1.AnyProtocol, "example.com"),
		egress(v1alpha1.AnyProtocol, "*.b.example.com"),
		egress(v1alpha1.TCP, "api.stripe.com", 443),
		egress(v1alpha1.TCP, "api.stripe.com", 444),
		egress(v1alpha1.TCP, "api.stripe.com"),
		ingress(v1alpha1.TCP, "192.168.1.0/24", 8080),
		egress(v1alpha1.TCP, "192.168.1.0/24", 8080),
		ingress(v1alpha1.TCP, "192.168.1.0/24", 8081),
		withExe(egress(v1alpha1.TCP, "172.16.1.0/24", 5432), "/usr/bin/python3"),
		egress(v1alpha1.TCP, "172.16.1.0/24", 5432),
		withExe(egress(v1alpha1.TCP, "172.16.1.0/24"), "/usr/bin/curl"),
		egress(v1alpha1.UDP, "fd00:1::/32", 53),
		egress(v1alpha1.UDP, "2001:db8::/32", 53),
		egress(v1alpha1.UDP, "10.0.0.0/8", 53),
	} {
		child, err := kube.ScopeRules("spec.scope", []v1alpha1.Rule{r})
		if err != nil {
			t.Fatal(err)
		}
		want := scope.Within(child, parent) < 0
		err = c.Create(ctx, session("triage", r))
		switch {
		case want && err != nil:
			t.Errorf("%s: refused, but the ceiling covers it: %v", child[0], err)
		case !want && err == nil:
			t.Errorf("%s: admitted, but no ceiling rule covers it", child[0])
		case !want && !strings.Contains(err.Error(), "spec.scope[0]: outside the ceiling of agent triage"):
			t.Errorf("%s: refused without naming the field: %v", child[0], err)
		}
	}
	// The one known difference (docs/kubernetes.md): the scope parser reads
	// an IPv4-mapped prefix as IPv4, CEL does not, so admission refuses
	// what the algebra would admit; never the reverse.
	mapped := egress(v1alpha1.TCP, "::ffff:10.1.0.0/112", 443)
	if child, err := kube.ScopeRules("spec.scope", []v1alpha1.Rule{mapped}); err != nil || scope.Within(child, parent) >= 0 {
		t.Errorf("the algebra: %v %v", child, err)
	}
	if err := c.Create(ctx, session("triage", mapped)); err == nil {
		t.Errorf("an IPv4-mapped prefix was admitted: the documented difference is gone")
	}
	// The first rule outside is the one named.
	err = c.Create(ctx, session("triage", egress(v1alpha1.TCP, "10.0.0.0/8", 443), egress(v1alpha1.TCP, "api.stripe.com", 80)))
	if err == nil || !strings.Contains(err.Error(), "spec.scope[1]: outside") {
		t.Errorf("second rule outside: %v", err)
	}
}

// testSchema: what the CRD's schema refuses, with the field named.
func testSchema(t *testing.T, c client.Client) {
	ctx := context.Background()
	ok := egress(v1alpha1.TCP, "10.0.0.0/8", 443)
	for _, tc := range []struct {
		name, field string
		edit        func(*v1alpha1.AgentSession)
	}{
		{"host bits", "spec.scope[0].cidr", func(s *v1alpha1.AgentSession) { s.Spec.Scope[0].CIDR = "10.0.0.1/8" }},
		{"not a cidr", "spec.scope[0].cidr", func(s *v1alpha1.AgentSession) { s.Spec.Scope[0].CIDR = "10.0.0.0" }},
		{"cidr and host", "spec.scope[0]", func(s *v1alpha1.AgentSession) { s.Spec.Scope[0].Host = "a.example.com" }},
		{"upper case host", "spec.scope[0].host", func(s *v1alpha1.AgentSession) {
			s.Spec.Scope[0] = egress(v1alpha1.TCP, "API.example.com", 443)
		}},
		{"endPort alone", "spec.scope[0]", func(s *v1alpha1.AgentSession) { s.Spec.Scope[0].Port, s.Spec.Scope[0].EndPort = 0, 500 }},
		{"endPort below", "spec.scope[0]", func(s *v1alpha1.AgentSession) { s.Spec.Scope[0].EndPort = 80 }},
		{"port 0 range", "spec.scope[0].port", func(s *v1alpha1.AgentSession) { s.Spec.Scope[0].Port = 70000 }},
		{"ingress host", "spec.scope[0]", func(s *v1alpha1.AgentSession) {
			s.Spec.Scope[0] = ingress(v1alpha1.TCP, "a.example.com", 8080)
		}},
		{"protocol", "spec.scope[0].protocol", func(s *v1alpha1.AgentSession) { s.Spec.Scope[0].Protocol = "sctp" }},
		{"relative exe", "spec.scope[0].exe", func(s *v1alpha1.AgentSession) { s.Spec.Scope[0].Exe = "python3" }},
		{"ttl above the maximum", "spec.ttl", func(s *v1alpha1.AgentSession) { s.Spec.TTL = "25h" }},
		{"ttl zero", "spec.ttl", func(s *v1alpha1.AgentSession) { s.Spec.TTL = "0s" }},
		{"ttl not a duration", "spec.ttl", func(s *v1alpha1.AgentSession) { s.Spec.TTL = "a day" }},
		{"mode", "spec.mode", func(s *v1alpha1.AgentSession) { s.Spec.Mode = "yolo" }},
		{"dns", "spec.dns", func(s *v1alpha1.AgentSession) { s.Spec.DNS = "open" }},
		{"origin", "spec.origin.kind", func(s *v1alpha1.AgentSession) { s.Spec.Origin.Kind = "cron" }},
		{"no intent", "spec.intent", func(s *v1alpha1.AgentSession) { s.Spec.Intent = "" }},
		{"no pods", "spec.pods", func(s *v1alpha1.AgentSession) { s.Spec.Pods = v1alpha1.Pods{} }},
		{"selector and names", "spec.pods", func(s *v1alpha1.AgentSession) {
			s.Spec.Pods.Selector = &metav1.LabelSelector{MatchLabels: map[string]string{"a": "b"}}
		}},
	} {
		s := session("triage", ok)
		tc.edit(s)
		err := c.Create(ctx, s)
		if err == nil || !kubetest.Denied(err) || !strings.Contains(err.Error(), tc.field) {
			t.Errorf("%s: want a refusal naming %s, got %v", tc.name, tc.field, err)
		}
	}
	// The defaults fill what was left out.
	s := session("triage", v1alpha1.Rule{CIDR: "10.0.0.0/8", Port: 443, Protocol: v1alpha1.TCP})
	if err := c.Create(ctx, s); err != nil {
		t.Fatal(err)
	}
	if sp := s.Spec; sp.Mode != v1alpha1.Enforce || sp.TTL != "1h" || sp.DNS != "scoped" || sp.Credentials != "any" ||
		sp.Scope[0].Direction != v1alpha1.Egress {
		t.Errorf("defaults: %+v", sp)
	}
}

// testUpdate: a session narrows, never widens, and keeps what it declared.
func testUpdate(t *testing.T, c client.Client) {
	ctx := context.Background()
	s := session("triage", egress(v1alpha1.TCP, "10.1.0.0/16", 443), egress(v1alpha1.AnyProtocol, "*.example.com"))
	if err := c.Create(ctx, s); err != nil {
		t.Fatal(err)
	}
	try := func(name, field string, edit func(*v1alpha1.AgentSession)) {
		t.Helper()
		u := s.DeepCopy()
		edit(u)
		err := c.Update(ctx, u)
		if field == "" {
			if err != nil {
				t.Errorf("%s: %v", name, err)
			}
			s = u
			return
		}
		if err == nil || !strings.Contains(err.Error(), field) {
			t.Errorf("%s: want a refusal naming %s, got %v", name, field, err)
		}
	}
	// Both within the ceiling, so only the narrowing check stands in the way.
	try("widen a rule", "spec.scope[0]: an update may only narrow", func(u *v1alpha1.AgentSession) {
		u.Spec.Scope[0].CIDR = "10.0.0.0/8"
	})
	try("add a rule", "spec.scope[2]: an update may only narrow", func(u *v1alpha1.AgentSession) {
		u.Spec.Scope = append(u.Spec.Scope, egress(v1alpha1.TCP, "api.stripe.com", 443))
	})
	try("change the intent", "only scope and ttl may change", func(u *v1alpha1.AgentSession) { u.Spec.Intent = "something else" })
	try("lengthen the ttl", "ttl may only shrink", func(u *v1alpha1.AgentSession) { u.Spec.TTL = "2h" })
	try("narrow", "", func(u *v1alpha1.AgentSession) {
		u.Spec.Scope = []v1alpha1.Rule{egress(v1alpha1.TCP, "10.1.2.0/24", 443), egress(v1alpha1.TCP, "a.example.com", 443)}
		u.Spec.TTL = "30m"
	})
}

// testNoAgent: a namespace without Agents admits no session.
func testNoAgent(t *testing.T, c client.Client) {
	ctx := context.Background()
	if err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "empty"}}); err != nil {
		t.Fatal(err)
	}
	s := session("triage", egress(v1alpha1.TCP, "10.0.0.0/8", 443))
	s.Namespace = "empty"
	if err := c.Create(ctx, s); err == nil || !kubetest.Denied(err) {
		t.Errorf("session in a namespace without agents: %v", err)
	}
}

// testLifecycle: forward only, append only, each transition in its
// writer's name.
func testLifecycle(t *testing.T, e *kubetest.Env) {
	ctx := context.Background()
	alice := e.User(t, "alice", "system:masters")
	if err := alice.Create(ctx, agent("spoofed", "bob", v1alpha1.Built)); err == nil ||
		!strings.Contains(err.Error(), "actor must be alice") {
		t.Errorf("created in bob's name: %v", err)
	}
	a := agent("lc", "alice", v1alpha1.Built)
	if err := alice.Create(ctx, a); err != nil {
		t.Fatal(err)
	}
	move := func(to v1alpha1.LifecycleState, actor string) *v1alpha1.Agent {
		u := a.DeepCopy()
		u.Spec.Lifecycle.State = to
		u.Spec.Lifecycle.Transitions = append(u.Spec.Lifecycle.Transitions,
			v1alpha1.Transition{State: to, Actor: actor, Time: metav1.NewTime(time.Unix(1_800_000_100, 0))})
		return u
	}
	for _, tc := range []struct {
		name, want string
		u          *v1alpha1.Agent
	}{
		{"in bob's name", "actor must be alice", move(v1alpha1.Tested, "bob")},
		{"state without a transition", "the last transition is to the current state", func() *v1alpha1.Agent {
			u := a.DeepCopy()
			u.Spec.Lifecycle.State = v1alpha1.Tested
			return u
		}()},
	} {
		if err := alice.Update(ctx, tc.u); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: want %q, got %v", tc.name, tc.want, err)
		}
	}
	for _, to := range []v1alpha1.LifecycleState{v1alpha1.Tested, v1alpha1.Operating, v1alpha1.Retired} {
		u := move(to, "alice")
		if err := alice.Update(ctx, u); err != nil {
			t.Fatalf("to %s: %v", to, err)
		}
		a = u
	}
	if err := alice.Update(ctx, move(v1alpha1.Operating, "alice")); err == nil || !strings.Contains(err.Error(), "only moves forward") {
		t.Errorf("back from retired: %v", err)
	}
	u := a.DeepCopy()
	u.Spec.Lifecycle.Transitions = slices.Delete(u.Spec.Lifecycle.Transitions, 0, 1)
	if err := alice.Update(ctx, u); err == nil || !strings.Contains(err.Error(), "only ever appended") {
		t.Errorf("history rewritten: %v", err)
	}
}

// testNodeEnforcement: a node's token writes its own node's reports only.
func testNodeEnforcement(t *testing.T, e *kubetest.Env) {
	ctx := context.Background()
	c := e.Client
	// agentfenced on node-a as the DaemonSet runs it: the shipped
	// ClusterRole, a token bound to its pod.
	node, err := client.New(e.NodeConfig(t, "node-a"), client.Options{Scheme: e.Scheme})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-b"}}); err != nil {
		t.Fatal(err)
	}
	report := func(nodeName string) *v1alpha1.NodeEnforcement {
		return &v1alpha1.NodeEnforcement{ObjectMeta: metav1.ObjectMeta{Name: "s1." + nodeName, Namespace: ns},
			Spec: v1alpha1.NodeEnforcementSpec{Session: "s1", NodeName: nodeName}}
	}
	kubetest.Eventually(t, "node-a to write its own report", func() error { return node.Create(ctx, report("node-a")) })
	if err := node.Create(ctx, report("node-b")); err == nil || !strings.Contains(err.Error(), "node node-a may write only its own") {
		t.Errorf("node-a wrote node-b's report: %v", err)
	}
	// node-b's report, written by someone else, node-a may not delete.
	if err := c.Create(ctx, report("node-b")); err != nil {
		t.Fatal(err)
	}
	if err := node.Delete(ctx, report("node-b")); err == nil || !strings.Contains(err.Error(), "may write only its own") {
		t.Errorf("node-a deleted node-b's report: %v", err)
	}
	mine := report("node-a")
	if err := node.Get(ctx, client.ObjectKeyFromObject(mine), mine); err != nil {
		t.Fatal(err)
	}
	mine.Status.BoundPods = 1
	if err := node.Status().Update(ctx, mine); err != nil {
		t.Errorf("node-a's status update: %v", err)
	}
	bad := report("node-a")
	bad.Name = "other.node-a"
	if err := c.Create(ctx, bad); err == nil || !strings.Contains(err.Error(), "metadata.name must be") {
		t.Errorf("report named apart from its session and node: %v", err)
	}
}

// TestKustomizations: `kubectl apply -k` installs every manifest of
// deploy/crds and deploy/admission, which the tests above install by file.
func TestKustomizations(t *testing.T) {
	for _, dir := range []string{"../crds", "."} {
		data, err := os.ReadFile(filepath.Join(dir, "kustomization.yaml"))
		if err != nil {
			t.Fatal(err)
		}
		var k struct {
			APIVersion string   `json:"apiVersion"`
			Kind       string   `json:"kind"`
			Resources  []string `json:"resources"`
		}
		if err := yaml.UnmarshalStrict(data, &k); err != nil {
			t.Fatalf("%s: %v", dir, err)
		}
		files, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
		if err != nil {
			t.Fatal(err)
		}
		var want []string
		for _, f := range files {
			if f = filepath.Base(f); f != "kustomization.yaml" {
				want = append(want, f)
			}
		}
		got := slices.Sorted(slices.Values(k.Resources))
		if !slices.Equal(got, want) {
			t.Errorf("%s/kustomization.yaml resources = %v, want every manifest %v", dir, got, want)
		}
	}
}
