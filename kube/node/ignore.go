package node

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/agentfence/agentfence/kube/v1alpha1"
)

// Why an ignored object gets a warning event.
const (
	eventReason     = "IgnoredNamespace"
	eventController = "agentfence.io/node"
)

// ignored splits off the Agents and AgentSessions of the namespaces the
// node does not follow (Config.IgnoreNamespaces): an Agent there could
// otherwise hold or confine the cluster's own pods, the daemon's among
// them. They are warned about (warnIgnored) and otherwise not seen.
func (c *Controller) ignored(agents []*v1alpha1.Agent, sessions []*v1alpha1.AgentSession) ([]*v1alpha1.Agent, []*v1alpha1.AgentSession, []client.Object) {
	var out []client.Object
	keep := func(o client.Object) bool {
		if slices.Contains(c.cfg.IgnoreNamespaces, o.GetNamespace()) {
			out = append(out, o)
			return false
		}
		return true
	}
	agents = slices.DeleteFunc(agents, func(a *v1alpha1.Agent) bool { return !keep(a) })
	sessions = slices.DeleteFunc(sessions, func(s *v1alpha1.AgentSession) bool { return !keep(s) })
	return agents, sessions, out
}

// warnIgnored posts a Warning event on each ignored object that selects a
// pod of this node, once per generation while the daemon runs: only nodes
// it concerns write, so an object no pod matches costs no writes, and one
// matching pods on every node costs one event per such node.
func (c *Controller) warnIgnored(ctx context.Context, objs []client.Object, pods []*corev1.Pod) error {
	var errs []error
	live := indexPods(pods)
	seen := map[string]bool{}
	for _, obj := range objs {
		key := string(obj.GetUID())
		seen[key] = true
		if c.warned[key] == obj.GetGeneration() || !selectsHere(obj, live) {
			continue
		}
		kind := "Agent"
		if _, ok := obj.(*v1alpha1.AgentSession); ok {
			kind = "AgentSession"
		}
		now := time.Now()
		ev := &eventsv1.Event{
			ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("%s.%x", obj.GetName(), now.UnixNano()), Namespace: obj.GetNamespace()},
			EventTime:  metav1.NewMicroTime(now), Type: corev1.EventTypeWarning, Reason: eventReason, Action: "Ignore",
			ReportingController: eventController, ReportingInstance: eventController + "/" + c.cfg.NodeName,
			Regarding: corev1.ObjectReference{APIVersion: v1alpha1.GroupVersion.String(), Kind: kind,
				Namespace: obj.GetNamespace(), Name: obj.GetName(), UID: obj.GetUID()},
			Note: fmt.Sprintf("metadata.namespace: node %s does not follow %ss in namespace %s (kubernetes.ignore_namespaces); its pods here are neither held nor bound",
				c.cfg.NodeName, kind, obj.GetNamespace()),
		}
		if err := c.client.Create(ctx, ev); err != nil {
			errs = append(errs, fmt.Errorf("event on %s %s/%s: %w", kind, obj.GetNamespace(), obj.GetName(), err))
			continue
		}
		c.warned[key] = obj.GetGeneration()
	}
	for key := range c.warned {
		if !seen[key] {
			delete(c.warned, key) // the object is gone
		}
	}
	return errors.Join(errs...)
}

// selectsHere reports whether an ignored object would select a pod of
// this node, were its namespace followed.
func selectsHere(obj client.Object, live livePods) bool {
	switch o := obj.(type) {
	case *v1alpha1.Agent:
		return len(selectedBy(o, live.byNS[o.Namespace])) > 0
	case *v1alpha1.AgentSession:
		return len(live.named(o)) > 0
	}
	return false
}
