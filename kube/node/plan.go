package node

import (
	"fmt"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"

	v1 "github.com/agentfence/agentfence/api/v1"
	"github.com/agentfence/agentfence/kube"
	"github.com/agentfence/agentfence/kube/v1alpha1"
	"github.com/agentfence/agentfence/scope"
)

// binding is one AgentSession's pod on this node.
type binding struct {
	session string // namespace/name
	pod     string // UID
}

// problem is why an AgentSession is not enforced on this node, naming the
// field at fault.
type problem struct {
	reason, message string
}

// outcome is what a node should do about the cluster's sessions.
type outcome struct {
	want map[binding]v1.OpenRequest // the local session each binding should have
	// since is when each binding could first be enforced: the later of
	// its AgentSession's and its pod's creation (second resolution).
	since map[binding]time.Time
	// pods are, for each AgentSession with pods on this node, their UIDs;
	// only these get a NodeEnforcement from this node.
	pods map[string][]string
	// problems say why an AgentSession with pods here is not enforced.
	problems map[string]problem
	sessions map[string]*v1alpha1.AgentSession
}

// plan decides, from what the informers hold, which local sessions this
// node should have, and which AgentSessions it cannot enforce and why.
// It checks again what admission checked: an Agent narrowed or retired
// after its sessions were admitted narrows or ends them here.
func plan(agents []v1alpha1.Agent, sessions []v1alpha1.AgentSession, pods []corev1.Pod, now time.Time) outcome {
	agentOf := map[string]*v1alpha1.Agent{}
	for i := range agents {
		agentOf[agents[i].Namespace+"/"+agents[i].Name] = &agents[i]
	}
	o := outcome{want: map[binding]v1.OpenRequest{}, since: map[binding]time.Time{}, pods: map[string][]string{},
		problems: map[string]problem{}, sessions: map[string]*v1alpha1.AgentSession{}}
	for i := range sessions {
		s := &sessions[i]
		name := s.Namespace + "/" + s.Name
		o.sessions[name] = s
		a := agentOf[s.Namespace+"/"+s.Spec.Agent]
		req, prob := openRequest(s, a, now)
		var here []corev1.Pod
		if prob == nil {
			here = selected(s, a, pods)
		} else {
			here = selected(s, nil, pods) // the pods it names, to report on
		}
		for _, p := range here {
			o.pods[name] = append(o.pods[name], string(p.UID))
			if prob == nil {
				b := binding{name, string(p.UID)}
				o.want[b] = withPod(req, name, p)
				o.since[b] = s.CreationTimestamp.Time
				if p.CreationTimestamp.After(o.since[b]) {
					o.since[b] = p.CreationTimestamp.Time
				}
			}
		}
		if prob != nil && len(here) > 0 {
			o.problems[name] = *prob
		}
	}
	return o
}

// openRequest is the local API's request for s, or why there is none.
func openRequest(s *v1alpha1.AgentSession, a *v1alpha1.Agent, now time.Time) (v1.OpenRequest, *problem) {
	switch {
	case a == nil:
		return v1.OpenRequest{}, &problem{"AgentNotFound", fmt.Sprintf("spec.agent: no Agent %s in namespace %s", s.Spec.Agent, s.Namespace)}
	case a.Spec.Lifecycle.State == v1alpha1.Retired:
		return v1.OpenRequest{}, &problem{"AgentRetired", fmt.Sprintf("spec.agent: agent %s is retired", a.Name)}
	}
	rules, err := kube.ScopeRules("spec.scope", s.Spec.Scope)
	if err != nil {
		return v1.OpenRequest{}, &problem{"InvalidScope", err.Error()}
	}
	ceiling, err := kube.ScopeRules("spec.ceiling", a.Spec.Ceiling)
	if err != nil {
		return v1.OpenRequest{}, &problem{"InvalidCeiling", fmt.Sprintf("agent %s: %v", a.Name, err)}
	}
	if i := scope.Within(rules, ceiling); i >= 0 {
		return v1.OpenRequest{}, &problem{"OutsideCeiling", fmt.Sprintf("spec.scope[%d]: outside the ceiling of agent %s", i, a.Name)}
	}
	ttl, err := time.ParseDuration(s.Spec.TTL)
	if err != nil || ttl <= 0 {
		return v1.OpenRequest{}, &problem{"InvalidTTL", fmt.Sprintf("spec.ttl: %q is not a positive duration", s.Spec.TTL)}
	}
	left := s.CreationTimestamp.Add(ttl).Sub(now).Truncate(time.Second)
	if left <= 0 {
		return v1.OpenRequest{}, &problem{"Expired", fmt.Sprintf("spec.ttl: expired at %s", s.CreationTimestamp.Add(ttl).UTC().Format(time.RFC3339))}
	}
	text := make([]string, len(rules))
	for i, r := range rules {
		text[i] = r.String()
	}
	return v1.OpenRequest{
		Intent: s.Spec.Intent,
		Origin: &v1.Origin{Kind: v1.OriginKind(s.Spec.Origin.Kind), Principal: s.Spec.Origin.Principal},
		Agent:  &v1.Agent{ID: a.Spec.SPIFFEID, Name: a.Name, Version: a.Spec.Version, Owner: a.Spec.Owner},
		Scope:  text, Mode: v1.Mode(s.Spec.Mode), TTL: left.String(),
		DNS: s.Spec.DNS, Credentials: s.Spec.Credentials,
	}, nil
}

// selected are the pods of the node that s names and its agent (if any)
// selects, and that have not ended.
func selected(s *v1alpha1.AgentSession, a *v1alpha1.Agent, pods []corev1.Pod) []corev1.Pod {
	agentSel := labels.Everything()
	var err error
	if a != nil {
		if agentSel, err = metav1.LabelSelectorAsSelector(&a.Spec.PodSelector); err != nil {
			return nil
		}
	}
	sessionSel := labels.Nothing()
	if s.Spec.Pods.Selector != nil {
		if sessionSel, err = metav1.LabelSelectorAsSelector(s.Spec.Pods.Selector); err != nil {
			return nil
		}
	}
	var out []corev1.Pod
	for _, p := range pods {
		if p.Namespace != s.Namespace || p.DeletionTimestamp != nil ||
			p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
			continue
		}
		set := labels.Set(p.Labels)
		if agentSel.Matches(set) && (sessionSel.Matches(set) || slices.Contains(s.Spec.Pods.Names, p.Name)) {
			out = append(out, p)
		}
	}
	return out
}

// withPod labels a request with its AgentSession and pod.
func withPod(req v1.OpenRequest, session string, p corev1.Pod) v1.OpenRequest {
	req.Labels = map[string]string{labelSource: sourceKube, labelSession: session, labelPod: string(p.UID),
		"agentfence.io/pod-name": p.Namespace + "/" + p.Name}
	return req
}
