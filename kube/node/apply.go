package node

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"

	v1 "github.com/agentfence/agentfence/api/v1"
	"github.com/agentfence/agentfence/audit"
	"github.com/agentfence/agentfence/kube/v1alpha1"
	"github.com/agentfence/agentfence/session"
)

// Reconcile brings the local sessions in line with the cluster once.
func (c *Controller) Reconcile(ctx context.Context) error {
	agents, err1 := cached[v1alpha1.Agent](ctx, c.cache)
	sessions, err2 := cached[v1alpha1.AgentSession](ctx, c.cache)
	pods, err3 := cached[corev1.Pod](ctx, c.cache)
	if err := errors.Join(err1, err2, err3); err != nil {
		return err
	}
	if c.cfg.Pods != nil {
		c.cfg.Pods.update(pods)
	}
	followed, sessionsFollowed, ignored := c.ignored(agents, sessions)
	// Before apply, which would revoke the retired agents' sessions in
	// its own name: the retirement's actor is who ended them.
	err := errors.Join(c.warnIgnored(ctx, ignored, pods), c.retire(followed))
	o := plan(followed, sessionsFollowed, pods, time.Now())
	err = errors.Join(err, c.apply(o))
	if c.holding {
		// After apply: a pod it bound is bound over its hold.
		err = errors.Join(err, c.hold(followed, pods))
	}
	return errors.Join(err, c.report(ctx, o))
}

// apply opens, narrows and revokes local sessions until they are o.want.
func (c *Controller) apply(o outcome) error {
	want := o.want
	have := map[binding]v1.Session{}
	// held are pods still bound to a revoked or expired session: denied
	// everything until it ends with the pod. Binding them elsewhere would
	// mean unbinding them first, an unconfined moment; they wait.
	held := map[string]bool{}
	for _, s := range c.sessions.List(session.Filter{Label: labelSource + "=" + sourceKube}) {
		if s.State == v1.StateRevoked || s.State == v1.StateExpired {
			if s.Binding.PodUID != "" {
				held[s.Binding.PodUID] = true
			}
			continue
		}
		have[binding{s.Labels[labelSession], s.Labels[labelPod]}] = s
	}
	var errs []error
	for b, s := range have {
		w, ok := want[b]
		switch {
		case !ok:
			// The AgentSession is gone, no longer names this pod, or its
			// agent retired: its pod is denied everything from now on
			// (revoked, not closed: closing would unbind the pod, which
			// would then reach what any process of the node reaches).
			if _, err := c.sessions.Revoke(s.ID, caller); err != nil {
				errs = append(errs, err)
			}
		case !slices.Equal(w.Scope, s.Scope):
			if _, err := c.sessions.Narrow(s.ID, v1.NarrowRequest{Scope: w.Scope}, caller); err != nil {
				errs = append(errs, err)
			}
		}
	}
	for b, w := range want {
		if _, ok := have[b]; ok || held[b.pod] || !c.cfg.PodCgroup(b.pod) {
			continue
		}
		errs = append(errs, c.open(b, w, o.since[b]))
	}
	return errors.Join(errs...)
}

// open opens the local session of a binding and binds its pod; since is
// when the binding could first be enforced.
func (c *Controller) open(b binding, req v1.OpenRequest, since time.Time) error {
	s, err := c.sessions.Open(req, caller)
	if err != nil {
		return err
	}
	if _, err := c.sessions.Bind(s.ID, v1.BindRequest{PodUID: b.pod}, caller); err != nil {
		// The pod's cgroup may not exist yet: revoke this one, and a later
		// pass opens another.
		c.sessions.Revoke(s.ID, caller)
		return err
	}
	c.cfg.Log.Info("agentsession bound", "agentsession", b.session, "pod", b.pod, "session", s.ID)
	if !since.Before(c.started.Truncate(time.Second)) {
		// Only what arrived while the node ran: a restarted node would
		// count the age of every session it adopts.
		c.metrics.enforce.Observe(time.Since(since).Seconds())
	}
	return nil
}

// retire ends each retired Agent on this node, local sessions included
// (session.Registry.RetireAgent), in the name of who retired it.
func (c *Controller) retire(agents []*v1alpha1.Agent) error {
	var errs []error
	for _, a := range agents {
		if a.Spec.Lifecycle.State != v1alpha1.Retired || c.retired[string(a.UID)] {
			continue
		}
		var actor, reason string
		for _, t := range a.Spec.Lifecycle.Transitions {
			if t.State == v1alpha1.Retired {
				actor, reason = t.Actor, t.Reason
			}
		}
		n, err := c.sessions.RetireAgent(audit.Agent{ID: a.Spec.SPIFFEID, Name: a.Name, Version: a.Spec.Version, Owner: a.Spec.Owner}, actor, reason)
		if err != nil {
			errs = append(errs, fmt.Errorf("agent %s/%s: %w", a.Namespace, a.Name, err))
			continue
		}
		c.retired[string(a.UID)] = true
		c.cfg.Log.Info("agent retired", "agent", a.Namespace+"/"+a.Name, "actor", actor, "sessions_revoked", n)
	}
	return errors.Join(errs...)
}
