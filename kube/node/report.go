package node

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/agentfence/agentfence/api/v1"
	"github.com/agentfence/agentfence/kube/v1alpha1"
	"github.com/agentfence/agentfence/session"
)

// report writes this node's NodeEnforcement for every AgentSession with
// pods here, and deletes those of sessions that have none any more. It
// writes only what changed: a resync of an unchanged node writes nothing.
func (c *Controller) report(ctx context.Context, o outcome) error {
	var have v1alpha1.NodeEnforcementList
	if err := c.cache.List(ctx, &have, client.MatchingLabels{v1alpha1.NodeLabel: c.cfg.NodeName}); err != nil {
		return err
	}
	local := map[string][]v1.Session{}
	for _, s := range c.sessions.List(session.Filter{Label: labelSource + "=" + sourceKube}) {
		if s.State == v1.StateActive || s.State == v1.StateQuarantined {
			local[s.Labels[labelSession]] = append(local[s.Labels[labelSession]], s)
		}
	}
	var errs []error
	seen := map[string]bool{}
	for i := range have.Items {
		ne := &have.Items[i]
		name := ne.Namespace + "/" + ne.Spec.Session
		seen[name] = true
		if len(o.pods[name]) == 0 {
			errs = append(errs, client.IgnoreNotFound(c.client.Delete(ctx, ne)))
			continue
		}
		st := c.status(name, o, local[name], ne.Status.Conditions)
		if !equality.Semantic.DeepEqual(st, ne.Status) {
			ne = ne.DeepCopy()
			ne.Status = st
			errs = append(errs, c.client.Status().Update(ctx, ne))
		}
	}
	for name := range o.pods {
		if seen[name] {
			continue
		}
		s := o.sessions[name]
		ne := &v1alpha1.NodeEnforcement{
			ObjectMeta: metav1.ObjectMeta{Name: s.Name + "." + c.cfg.NodeName, Namespace: s.Namespace,
				Labels: map[string]string{v1alpha1.NodeLabel: c.cfg.NodeName}},
			Spec: v1alpha1.NodeEnforcementSpec{Session: s.Name, NodeName: c.cfg.NodeName},
		}
		err := c.client.Create(ctx, ne)
		if apierrors.IsAlreadyExists(err) {
			continue // the cache has not seen it yet; the next pass updates it
		}
		if err == nil {
			ne.Status = c.status(name, o, local[name], nil)
			err = c.client.Status().Update(ctx, ne)
		}
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// status is the report on one AgentSession. Conditions keep their
// transition time while their status holds.
func (c *Controller) status(name string, o outcome, local []v1.Session, prev []metav1.Condition) v1alpha1.NodeEnforcementStatus {
	st := v1alpha1.NodeEnforcementStatus{ObservedGeneration: o.sessions[name].Generation,
		Conditions: slices.Clone(prev)}
	for _, s := range local {
		st.LocalSessions = append(st.LocalSessions, s.ID)
		if s.Binding.PodUID != "" {
			st.BoundPods++
		}
	}
	slices.Sort(st.LocalSessions)
	cond := metav1.Condition{Type: v1alpha1.Enforced, ObservedGeneration: st.ObservedGeneration}
	n := len(o.pods[name])
	switch p, bad := o.problems[name]; {
	case bad:
		cond.Status, cond.Reason, cond.Message = metav1.ConditionFalse, p.reason, p.message
	case int(st.BoundPods) == n:
		cond.Status, cond.Reason, cond.Message = metav1.ConditionTrue, "Bound", fmt.Sprintf("%d of %d pods bound", n, n)
	default:
		cond.Status, cond.Reason, cond.Message = metav1.ConditionFalse, "Binding", fmt.Sprintf("%d of %d pods bound", st.BoundPods, n)
	}
	meta.SetStatusCondition(&st.Conditions, cond)
	return st
}
