package node

import (
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"

	v1 "github.com/agentfence/agentfence/api/v1"
	"github.com/agentfence/agentfence/credential"
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
// after its sessions were admitted narrows or ends them here; and what
// admission cannot check, a session's parent (params are Agents only).
func plan(agents []*v1alpha1.Agent, sessions []*v1alpha1.AgentSession, pods []*corev1.Pod, now time.Time) outcome {
	p := planner{agents: map[string]*v1alpha1.Agent{}, all: sessions, now: now, done: map[string]request{}, visiting: map[string]bool{}}
	for _, a := range agents {
		p.agents[a.Namespace+"/"+a.Name] = a
	}
	o := outcome{want: map[binding]v1.OpenRequest{}, since: map[binding]time.Time{}, pods: map[string][]string{},
		problems: map[string]problem{}, sessions: map[string]*v1alpha1.AgentSession{}}
	live := indexPods(pods)
	podName := map[string]string{}
	for _, s := range sessions {
		// Most sessions of a cluster have no pod here: they cost a lookup,
		// not a resolution.
		named := live.named(s)
		if len(named) == 0 {
			continue
		}
		name := s.Namespace + "/" + s.Name
		o.sessions[name] = s
		r := p.request(s)
		here := named // when s has a problem, the pods it names, to report on
		if r.prob == nil {
			here = selectedBy(p.agents[s.Namespace+"/"+s.Spec.Agent], named)
		}
		for _, pod := range here {
			o.pods[name] = append(o.pods[name], string(pod.UID))
			podName[string(pod.UID)] = pod.Namespace + "/" + pod.Name
			if r.prob == nil {
				b := binding{name, string(pod.UID)}
				o.want[b] = withPod(r.req, name, s.Spec.Parent, pod)
				o.since[b] = s.CreationTimestamp.Time
				if pod.CreationTimestamp.After(o.since[b]) {
					o.since[b] = pod.CreationTimestamp.Time
				}
			}
		}
		if r.prob != nil {
			o.problems[name] = *r.prob
		}
	}
	o.oneSessionPerPod(podName)
	return o
}

// oneSessionPerPod leaves each pod to one AgentSession: the oldest that
// wants it (then the first by name), so a newer session never takes a
// pod from an older one, nor from its parent. The others report the
// conflict. Without this the second bind of a pod failed on every pass,
// each time opening and revoking a local session.
func (o *outcome) oneSessionPerPod(podName map[string]string) {
	owner := map[string]binding{}
	for b := range o.want {
		if w, ok := owner[b.pod]; !ok || older(o.sessions[b.session], o.sessions[w.session]) {
			owner[b.pod] = b
		}
	}
	for b := range o.want {
		w := owner[b.pod]
		if w == b {
			continue
		}
		delete(o.want, b)
		delete(o.since, b)
		msg := fmt.Sprintf("spec.pods: pod %s is bound by AgentSession %s", podName[b.pod], w.session)
		// The least message, so that the report does not flap between
		// conflicts from one pass to the next.
		if prev, ok := o.problems[b.session]; !ok || msg < prev.message {
			o.problems[b.session] = problem{"PodConflict", msg}
		}
	}
}

// older orders AgentSessions by creation, then namespace/name.
func older(a, b *v1alpha1.AgentSession) bool {
	if !a.CreationTimestamp.Equal(&b.CreationTimestamp) {
		return a.CreationTimestamp.Before(&b.CreationTimestamp)
	}
	return a.Namespace+"/"+a.Name < b.Namespace+"/"+b.Name
}

// request is the local API's request for an AgentSession, or why there is
// none.
type request struct {
	req   v1.OpenRequest
	rules []scope.Rule
	left  time.Duration // TTL left
	prob  *problem
}

// planner resolves AgentSessions, each after its ancestors, once per pass.
type planner struct {
	agents   map[string]*v1alpha1.Agent
	all      []*v1alpha1.AgentSession
	byName   map[string]*v1alpha1.AgentSession // of all, made at the first parent
	now      time.Time
	done     map[string]request
	visiting map[string]bool // the chain being resolved, to find cycles
}

// session is the AgentSession namespace/name, or nil.
func (p *planner) session(name string) *v1alpha1.AgentSession {
	if p.byName == nil {
		p.byName = make(map[string]*v1alpha1.AgentSession, len(p.all))
		for _, s := range p.all {
			p.byName[s.Namespace+"/"+s.Name] = s
		}
	}
	return p.byName[name]
}

// request resolves s: its agent, then its parent's request, which its own
// must lie within as a local child's lies within its parent's
// (session.Registry.Open).
func (p *planner) request(s *v1alpha1.AgentSession) request {
	name := s.Namespace + "/" + s.Name
	if r, ok := p.done[name]; ok {
		return r
	}
	if p.visiting[name] {
		return parentCycle(s)
	}
	r := openRequest(s, p.agents[s.Namespace+"/"+s.Spec.Agent], p.now)
	if r.prob == nil && s.Spec.Parent != "" {
		p.visiting[name] = true
		r = p.underParent(s, r)
		delete(p.visiting, name)
	}
	p.done[name] = r
	return r
}

// parentCycle is why s, whose ancestry loops, has no request.
func parentCycle(s *v1alpha1.AgentSession) request {
	return request{prob: &problem{"ParentCycle", fmt.Sprintf("spec.parent: the parents of AgentSession %s form a cycle", s.Name)}}
}

// underParent is r, the request of s, within its parent's, or why not.
func (p *planner) underParent(s *v1alpha1.AgentSession, r request) request {
	parent := p.session(s.Namespace + "/" + s.Spec.Parent)
	if parent == nil {
		return request{prob: &problem{"ParentNotFound", fmt.Sprintf("spec.parent: no AgentSession %s in namespace %s", s.Spec.Parent, s.Namespace)}}
	}
	pr := p.request(parent)
	switch {
	case pr.prob != nil && pr.prob.reason == "ParentCycle":
		return parentCycle(s)
	case pr.prob != nil:
		return request{prob: &problem{"ParentNotEnforced", fmt.Sprintf("spec.parent: AgentSession %s is not enforced (%s)", s.Spec.Parent, pr.prob.reason)}}
	}
	if i := scope.Within(r.rules, pr.rules); i >= 0 {
		return request{prob: &problem{"OutsideParent", fmt.Sprintf("spec.scope[%d]: outside the scope of parent %s", i, s.Spec.Parent)}}
	}
	if pr.req.Mode != v1.ModeAudit && r.req.Mode == v1.ModeAudit {
		return request{prob: &problem{"ParentEnforces", fmt.Sprintf("spec.mode: audit would widen parent %s, which enforces", s.Spec.Parent)}}
	}
	if pr.left < r.left {
		r.left, r.req.TTL = pr.left, pr.left.String()
	}
	// DNS and credentials take the stricter of the two: the CRD's defaults
	// make every value explicit, so a child that left them out would
	// otherwise be refused under a strict parent.
	if d, pd := scope.DNSMode(r.req.DNS), scope.DNSMode(pr.req.DNS); !d.Within(pd) {
		r.req.DNS = pr.req.DNS
	}
	if c, pc := credential.Mode(r.req.Credentials), credential.Mode(pr.req.Credentials); !c.Within(pc) {
		r.req.Credentials = pr.req.Credentials
	}
	return r
}

// openRequest is the local API's request for s alone, or why there is none.
func openRequest(s *v1alpha1.AgentSession, a *v1alpha1.Agent, now time.Time) request {
	fail := func(reason, format string, args ...any) request {
		return request{prob: &problem{reason, fmt.Sprintf(format, args...)}}
	}
	switch {
	case a == nil:
		return fail("AgentNotFound", "spec.agent: no Agent %s in namespace %s", s.Spec.Agent, s.Namespace)
	case a.Spec.Lifecycle.State == v1alpha1.Retired:
		return fail("AgentRetired", "spec.agent: agent %s is retired", a.Name)
	}
	rules, err := kube.ScopeRules("spec.scope", s.Spec.Scope)
	if err != nil {
		return fail("InvalidScope", "%v", err)
	}
	ceiling, err := kube.ScopeRules("spec.ceiling", a.Spec.Ceiling)
	if err != nil {
		return fail("InvalidCeiling", "agent %s: %v", a.Name, err)
	}
	if i := scope.Within(rules, ceiling); i >= 0 {
		return fail("OutsideCeiling", "spec.scope[%d]: outside the ceiling of agent %s", i, a.Name)
	}
	ttl, err := time.ParseDuration(s.Spec.TTL)
	if err != nil || ttl <= 0 {
		return fail("InvalidTTL", "spec.ttl: %q is not a positive duration", s.Spec.TTL)
	}
	left := s.CreationTimestamp.Add(ttl).Sub(now).Truncate(time.Second)
	if left <= 0 {
		return fail("Expired", "spec.ttl: expired at %s", s.CreationTimestamp.Add(ttl).UTC().Format(time.RFC3339))
	}
	text := make([]string, len(rules))
	for i, r := range rules {
		text[i] = r.String()
	}
	return request{rules: rules, left: left, req: v1.OpenRequest{
		Intent: s.Spec.Intent,
		Origin: &v1.Origin{Kind: v1.OriginKind(s.Spec.Origin.Kind), Principal: s.Spec.Origin.Principal},
		Agent:  &v1.Agent{ID: a.Spec.SPIFFEID, Name: a.Name, Version: a.Spec.Version, Owner: a.Spec.Owner},
		Scope:  text, Mode: v1.Mode(s.Spec.Mode), TTL: left.String(),
		DNS: s.Spec.DNS, Credentials: s.Spec.Credentials,
	}}
}

// livePods are the node's pods that have not ended, by namespace and by
// namespace/name: each session's pods are looked up, not matched against
// every pod (10,000 sessions and 1,000 pods made 10 million matches a
// pass).
type livePods struct {
	byNS   map[string][]*corev1.Pod
	byName map[string]*corev1.Pod
}

func indexPods(pods []*corev1.Pod) livePods {
	lp := livePods{byNS: map[string][]*corev1.Pod{}, byName: map[string]*corev1.Pod{}}
	for _, p := range pods {
		if p.DeletionTimestamp != nil || p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
			continue
		}
		lp.byNS[p.Namespace] = append(lp.byNS[p.Namespace], p)
		lp.byName[p.Namespace+"/"+p.Name] = p
	}
	return lp
}

// named are the live pods that s names, by its selector or its names,
// whatever its agent selects.
func (lp livePods) named(s *v1alpha1.AgentSession) []*corev1.Pod {
	var out []*corev1.Pod
	if s.Spec.Pods.Selector == nil {
		for _, n := range s.Spec.Pods.Names {
			if p := lp.byName[s.Namespace+"/"+n]; p != nil {
				out = append(out, p)
			}
		}
		return out
	}
	sel, err := metav1.LabelSelectorAsSelector(s.Spec.Pods.Selector)
	if err != nil {
		return nil
	}
	for _, p := range lp.byNS[s.Namespace] {
		if sel.Matches(labels.Set(p.Labels)) {
			out = append(out, p)
		}
	}
	return out
}

// selectedBy are the pods that a's podSelector matches.
func selectedBy(a *v1alpha1.Agent, pods []*corev1.Pod) []*corev1.Pod {
	sel, err := metav1.LabelSelectorAsSelector(&a.Spec.PodSelector)
	if err != nil {
		return nil
	}
	var out []*corev1.Pod
	for _, p := range pods {
		if sel.Matches(labels.Set(p.Labels)) {
			out = append(out, p)
		}
	}
	return out
}

// withPod labels a request with its AgentSession, its parent's name and
// the pod.
func withPod(req v1.OpenRequest, session, parent string, p *corev1.Pod) v1.OpenRequest {
	req.Labels = map[string]string{labelSource: sourceKube, labelSession: session, labelPod: string(p.UID),
		"agentfence.io/pod-name": p.Namespace + "/" + p.Name}
	if parent != "" {
		req.Labels["agentfence.io/parent"] = p.Namespace + "/" + parent
	}
	return req
}
