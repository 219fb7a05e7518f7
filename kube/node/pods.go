package node

import (
	"sync/atomic"

	corev1 "k8s.io/api/core/v1"

	"github.com/agentfence/agentfence/audit"
)

// Pods names the pods of the node for audit records
// (attribution.Joiner.Pods): the controller refreshes it from its
// informers at every reconcile, and a record reads it without a lock.
type Pods struct {
	// Labels are the label keys records carry (kubernetes.record_labels):
	// labels can hold what a SIEM should not.
	Labels []string
	byUID  atomic.Pointer[map[string]*audit.Pod]
	// versions are the resource versions update last indexed, by UID.
	versions map[string]string
}

// Lookup returns the pod with UID uid, nil when the node does not have it.
func (p *Pods) Lookup(uid string) *audit.Pod {
	m := p.byUID.Load()
	if m == nil {
		return nil
	}
	return (*m)[uid]
}

// update replaces the pods with those the informers hold now.
func (p *Pods) update(pods []*corev1.Pod) {
	if p.unchanged(pods) {
		return // every pass would otherwise make 1,000 records' worth anew
	}
	p.versions = make(map[string]string, len(pods))
	for _, k := range pods {
		p.versions[string(k.UID)] = k.ResourceVersion
	}
	m := make(map[string]*audit.Pod, len(pods))
	for _, k := range pods {
		ap := &audit.Pod{UID: string(k.UID), Namespace: k.Namespace, Name: k.Name,
			ServiceAccount: k.Spec.ServiceAccountName, Node: k.Spec.NodeName}
		for _, l := range p.Labels {
			if v, ok := k.Labels[l]; ok {
				if ap.Labels == nil {
					ap.Labels = map[string]string{}
				}
				ap.Labels[l] = v
			}
		}
		m[ap.UID] = ap
	}
	p.byUID.Store(&m)
}

// unchanged reports whether pods are those update indexed last, at the
// same versions.
func (p *Pods) unchanged(pods []*corev1.Pod) bool {
	if p.versions == nil || len(pods) != len(p.versions) {
		return false
	}
	for _, k := range pods {
		if v, ok := p.versions[string(k.UID)]; !ok || v != k.ResourceVersion {
			return false
		}
	}
	return true
}
