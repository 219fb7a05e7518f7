package node

import (
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	v1 "github.com/agentfence/agentfence/api/v1"
	"github.com/agentfence/agentfence/kube/v1alpha1"
)

// TestPlanParent: a session with spec.parent is enforced only within its
// parent, as a local child is within its parent (session.Registry.Open);
// what admission cannot check (its params are Agents), the node does.
func TestPlanParent(t *testing.T) {
	now := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	created := metav1.NewTime(now.Add(-10 * time.Minute))
	agent := benchAgent("coder", map[string]string{"app": "coder"})
	session := func(name, parent string, rule v1alpha1.Rule, mutate ...func(*v1alpha1.AgentSessionSpec)) *v1alpha1.AgentSession {
		s := benchSession(name, "coder", name+"-pod")
		s.CreationTimestamp, s.Spec.TTL, s.Spec.Parent = created, "1h", parent
		s.Spec.Mode, s.Spec.DNS, s.Spec.Credentials = v1alpha1.Enforce, "scoped", "any"
		s.Spec.Scope = []v1alpha1.Rule{rule}
		for _, m := range mutate {
			m(&s.Spec)
		}
		return s
	}
	wide := v1alpha1.Rule{Protocol: v1alpha1.TCP, CIDR: "10.1.0.0/16"}
	narrow := v1alpha1.Rule{Protocol: v1alpha1.TCP, CIDR: "10.1.2.0/24", Port: 443}
	other := v1alpha1.Rule{Protocol: v1alpha1.TCP, CIDR: "10.2.0.0/16"}
	podOf := func(name string) *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name + "-pod", Namespace: "default", UID: types.UID("uid-" + name),
			Labels: map[string]string{"app": "coder"}, CreationTimestamp: created}}
	}

	for _, tc := range []struct {
		name     string
		sessions []*v1alpha1.AgentSession
		reason   string // of the session "child"; "" = enforced
		check    func(t *testing.T, req v1.OpenRequest)
	}{
		{name: "within", sessions: []*v1alpha1.AgentSession{session("parent", "", wide), session("child", "parent", narrow)},
			check: func(t *testing.T, req v1.OpenRequest) {
				if req.Labels["agentfence.io/parent"] != "default/parent" {
					t.Errorf("labels %v: want agentfence.io/parent=default/parent", req.Labels)
				}
			}},
		{name: "no parent", sessions: []*v1alpha1.AgentSession{session("child", "parent", narrow)}, reason: "ParentNotFound"},
		{name: "outside the parent", sessions: []*v1alpha1.AgentSession{session("parent", "", wide), session("child", "parent", other)}, reason: "OutsideParent"},
		{name: "parent not enforced", sessions: []*v1alpha1.AgentSession{
			session("parent", "", v1alpha1.Rule{Protocol: v1alpha1.TCP, CIDR: "192.168.0.0/16"}), // outside the agent's ceiling
			session("child", "parent", narrow)}, reason:                                          "ParentNotEnforced"},
		{name: "grandparent gone", sessions: []*v1alpha1.AgentSession{session("parent", "gone", wide), session("child", "parent", narrow)}, reason: "ParentNotEnforced"},
		{name: "cycle", sessions: []*v1alpha1.AgentSession{session("parent", "child", wide), session("child", "parent", narrow)}, reason: "ParentCycle"},
		{name: "own parent", sessions: []*v1alpha1.AgentSession{session("child", "child", narrow)}, reason: "ParentCycle"},
		{name: "audit under enforce", sessions: []*v1alpha1.AgentSession{session("parent", "", wide),
			session("child", "parent", narrow, func(s *v1alpha1.AgentSessionSpec) { s.Mode = v1alpha1.Audit })}, reason: "ParentEnforces"},
		{name: "ttl, dns and credentials narrowed to the parent's", sessions: []*v1alpha1.AgentSession{
			session("parent", "", wide, func(s *v1alpha1.AgentSessionSpec) { s.TTL, s.DNS, s.Credentials = "20m", "none", "registered-only" }),
			session("child", "parent", narrow, func(s *v1alpha1.AgentSessionSpec) { s.DNS = "any" })},
			check: func(t *testing.T, req v1.OpenRequest) {
				if req.TTL != "10m0s" || req.DNS != "none" || req.Credentials != "registered-only" {
					t.Errorf("ttl %s, dns %s, credentials %s: want the parent's 10m0s, none, registered-only", req.TTL, req.DNS, req.Credentials)
				}
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var pods []*corev1.Pod
			for _, s := range tc.sessions {
				pods = append(pods, podOf(s.Name))
			}
			o := plan([]*v1alpha1.Agent{agent}, tc.sessions, pods, now)
			b := binding{"default/child", "uid-child"}
			req, enforced := o.want[b]
			p := o.problems["default/child"]
			switch {
			case tc.reason == "" && !enforced:
				t.Fatalf("child not enforced: %+v", p)
			case tc.reason != "" && (enforced || p.reason != tc.reason):
				t.Fatalf("child: enforced %v, problem %+v; want %s", enforced, p, tc.reason)
			case tc.reason != "" && !strings.HasPrefix(p.message, "spec."):
				t.Errorf("message %q names no field", p.message)
			}
			if tc.check != nil {
				tc.check(t, req)
			}
		})
	}
}

// TestPlanOnePodOneSession: two AgentSessions that select one pod; the
// older binds it, the newer reports the conflict, and the plan does not
// change with the order the informer lists them in.
func TestPlanOnePodOneSession(t *testing.T) {
	now := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	agent := benchAgent("coder", map[string]string{"app": "coder"})
	mk := func(name string, age time.Duration) *v1alpha1.AgentSession {
		s := benchSession(name, "coder", "shared")
		s.CreationTimestamp, s.Spec.TTL = metav1.NewTime(now.Add(-age)), "1h"
		return s
	}
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "shared", Namespace: "default", UID: "uid-shared",
		Labels: map[string]string{"app": "coder"}}}
	old, young := mk("old", 2*time.Minute), mk("young", time.Minute)
	for _, order := range [][]*v1alpha1.AgentSession{{old, young}, {young, old}} {
		o := plan([]*v1alpha1.Agent{agent}, order, []*corev1.Pod{pod}, now)
		if _, ok := o.want[binding{"default/old", "uid-shared"}]; !ok || len(o.want) != 1 {
			t.Fatalf("want %v: only default/old should bind the pod", o.want)
		}
		p := o.problems["default/young"]
		if p.reason != "PodConflict" || p.message != "spec.pods: pod default/shared is bound by AgentSession default/old" {
			t.Errorf("young's problem %+v", p)
		}
		if _, ok := o.problems["default/old"]; ok || len(o.pods["default/young"]) != 1 {
			t.Errorf("problems %v, pods %v: old is fine and young still reports on the pod", o.problems, o.pods)
		}
	}
}
