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
func (p *Pods) update(pods []corev1.Pod) {
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
