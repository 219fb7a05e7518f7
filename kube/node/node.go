// Package node makes one node's agentfenced follow the cluster: it watches
// the Agents and AgentSessions of every namespace and the pods of its own
// node (kube/v1alpha1), and keeps a local session (session.Registry) for
// each session's pod on the node, bound to the pod's cgroup, as the local
// API would: opened, narrowed, revoked. It reports what it did in a
// NodeEnforcement per session (docs/kubernetes.md).
package node

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/rest"
	toolscache "k8s.io/client-go/tools/cache"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/agentfence/agentfence/api/v1"
	"github.com/agentfence/agentfence/audit"
	"github.com/agentfence/agentfence/kube/v1alpha1"
	"github.com/agentfence/agentfence/session"
)

// Sessions is what the controller needs of the session registry.
type Sessions interface {
	Open(v1.OpenRequest, session.Caller) (v1.Session, error)
	Bind(id string, req v1.BindRequest, caller session.Caller) (v1.Session, error)
	Narrow(id string, req v1.NarrowRequest, caller session.Caller) (v1.Session, error)
	Revoke(id string, caller session.Caller) (v1.Session, error)
	RetireAgent(a audit.Agent, actor, reason string) (int, error)
	HoldPod(uid string) (bool, error)
	ReleasePod(uid string) (bool, error)
	List(session.Filter) []v1.Session
}

// Config says which node this is and where the API server is.
type Config struct {
	Rest     *rest.Config
	NodeName string
	// Resync is how often the node reconciles without a change: it picks
	// up pod cgroups that appeared after their pod was seen.
	Resync time.Duration
	// PodCgroup says whether the pod's cgroup exists yet: the kubelet
	// makes it when it starts the pod's sandbox, after the pod is seen.
	PodCgroup func(uid string) bool
	// Hold starts (true) or stops (false) the kernel's hold on new pods
	// (enforcer.Gate.HoldPods) and returns the cgroups it holds pods made
	// in. Run calls it once it knows the node's role; while it holds any,
	// the node classifies every pod of the node as it appears (hold.go).
	// nil holds nothing.
	Hold func(on bool) (parents []string, err error)
	// HoldControlPlane holds pods on a control-plane node too.
	HoldControlPlane bool
	// IgnoreNamespaces are namespaces whose Agents and AgentSessions the
	// node does not follow (ignore.go).
	IgnoreNamespaces []string
	// Pods, when set, is kept up to date with the node's pods, for
	// audit records.
	Pods *Pods
	// Metrics, when set, are the node's sync metrics.
	Metrics *Metrics
	Log     *slog.Logger
}

// caller is who the local sessions are opened by.
var caller = session.Caller{ID: "kubernetes", UID: -1}

// Labels the controller puts on its local sessions, to find them again.
const (
	labelSource  = "agentfence.io/source"
	labelSession = "agentfence.io/agentsession" // namespace/name
	labelPod     = "agentfence.io/pod"          // the pod's UID
	sourceKube   = "kubernetes"
)

// Controller follows the cluster for one node.
type Controller struct {
	cfg      Config
	sessions Sessions
	cache    cache.Cache
	client   client.Client
	kick     chan struct{}
	// holding says the kernel holds new pods; classified is, for each pod
	// whose hold is settled, whether an Agent selected it then. Only Run
	// and Reconcile use them.
	holding    bool
	classified map[string]bool
	// retired are the Agents (by UID) this node has retired.
	retired map[string]bool
	// warned are the ignored objects (by UID) this node has posted a
	// warning event on, and the generation it was about.
	warned  map[string]int64
	metrics *Metrics
	started time.Time
}

// New sets up the informers; Run starts them.
func New(cfg Config, sessions Sessions) (*Controller, error) {
	if cfg.NodeName == "" {
		return nil, fmt.Errorf("kubernetes: the node name is required (the downward API's spec.nodeName)")
	}
	if cfg.Resync <= 0 {
		cfg.Resync = 10 * time.Second
	}
	scheme := runtime.NewScheme()
	if err := corev1.AddToScheme(scheme); err != nil {
		return nil, err
	}
	if err := v1alpha1.AddToScheme(scheme); err != nil {
		return nil, err
	}
	if err := eventsv1.AddToScheme(scheme); err != nil {
		return nil, err
	}
	if cfg.Metrics == nil {
		cfg.Metrics = NewMetrics(nil)
	}
	c := &Controller{cfg: cfg, sessions: sessions, kick: make(chan struct{}, 1), classified: map[string]bool{},
		retired: map[string]bool{}, warned: map[string]int64{}, metrics: cfg.Metrics, started: time.Now()}
	// Every request, the informers' included, through observed.
	rc := rest.CopyConfig(cfg.Rest)
	rc.Wrap(func(rt http.RoundTripper) http.RoundTripper { return observed{rt, c.metrics} })
	var err error
	c.cache, err = cache.New(rc, cache.Options{Scheme: scheme, DefaultWatchErrorHandler: c.watchError,
		DefaultTransform: cache.TransformStripManagedFields(), ByObject: map[client.Object]cache.ByObject{
			// Only this node's pods (a node of a large cluster would otherwise
			// hold every pod), and of each only what the node reads.
			&corev1.Pod{}: {Field: fields.OneTermEqualSelector("spec.nodeName", cfg.NodeName), Transform: slimPod},
			// Only this node's reports.
			&v1alpha1.NodeEnforcement{}: {Label: labels.SelectorFromSet(labels.Set{v1alpha1.NodeLabel: cfg.NodeName})},
			// Every session of the cluster is cached: of each, its spec
			// and the metadata the node reads.
			&v1alpha1.Agent{}:        {Transform: slimMeta},
			&v1alpha1.AgentSession{}: {Transform: slimMeta},
		}})
	if err != nil {
		return nil, err
	}
	if c.client, err = client.New(rc, client.Options{Scheme: scheme}); err != nil {
		return nil, err
	}
	return c, nil
}

// slimPod keeps of a pod what the node reads (plan, hold, Pods): 1,000
// pods with their full specs and statuses would cost the daemon tens of
// megabytes.
func slimPod(in any) (any, error) {
	p, ok := in.(*corev1.Pod)
	if !ok {
		return in, nil // a tombstone
	}
	return &corev1.Pod{TypeMeta: p.TypeMeta,
		ObjectMeta: metav1.ObjectMeta{Name: p.Name, Namespace: p.Namespace, UID: p.UID, ResourceVersion: p.ResourceVersion,
			Labels: p.Labels, CreationTimestamp: p.CreationTimestamp, DeletionTimestamp: p.DeletionTimestamp},
		Spec:   corev1.PodSpec{NodeName: p.Spec.NodeName, ServiceAccountName: p.Spec.ServiceAccountName},
		Status: corev1.PodStatus{Phase: p.Status.Phase}}, nil
}

// cached are the informer's own objects of T's kind, not copies: a typed
// List copies every object, 7 MiB a pass over 10,000 AgentSessions
// (docs/benchmarks.md). Nothing may write to them.
func cached[T any, PT interface {
	*T
	client.Object
}](ctx context.Context, c cache.Cache) ([]PT, error) {
	inf, err := c.GetInformer(ctx, PT(new(T)))
	if err != nil {
		return nil, err
	}
	sii, ok := inf.(toolscache.SharedIndexInformer)
	if !ok {
		return nil, fmt.Errorf("kubernetes: the informer of %T keeps no store the node can read", new(T))
	}
	items := sii.GetStore().List()
	out := make([]PT, 0, len(items))
	for _, it := range items {
		if o, ok := it.(PT); ok {
			out = append(out, o)
		}
	}
	return out, nil
}

// slimMeta drops the metadata the node never reads from an Agent or
// AgentSession: annotations above all, where `kubectl apply` keeps a
// second copy of the whole object (last-applied-configuration), and
// labels, owners and finalizers. Managed fields go in every informer.
func slimMeta(in any) (any, error) {
	if o, ok := in.(metav1.Object); ok {
		o.SetAnnotations(nil)
		o.SetLabels(nil)
		o.SetOwnerReferences(nil)
		o.SetFinalizers(nil)
		o.SetManagedFields(nil)
	}
	return in, nil
}

// Run watches and reconciles until ctx is done.
func (c *Controller) Run(ctx context.Context) error {
	handler := toolscache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { c.metrics.event(); c.poke() },
		UpdateFunc: func(any, any) { c.metrics.event(); c.poke() },
		DeleteFunc: func(any) { c.metrics.event(); c.poke() },
	}
	for _, obj := range []client.Object{&corev1.Pod{}, &v1alpha1.Agent{}, &v1alpha1.AgentSession{}, &v1alpha1.NodeEnforcement{}} {
		inf, err := c.cache.GetInformer(ctx, obj)
		if err != nil {
			return err
		}
		if _, err := inf.AddEventHandler(handler); err != nil {
			return err
		}
	}
	if c.cfg.Hold != nil {
		// Before the caches sync: a pod made meanwhile is held by the
		// kernel, and classified once they have.
		parents, err := c.startHold(ctx)
		if err != nil {
			return err
		}
		if c.holding = len(parents) > 0; c.holding {
			stop, err := watchDirs(parents, c.poke)
			if err != nil {
				return err
			}
			defer stop()
		}
	}
	errc := make(chan error, 1)
	go func() { errc <- c.cache.Start(ctx) }()
	if !c.cache.WaitForCacheSync(ctx) {
		return fmt.Errorf("kubernetes: caches did not sync: %w", ctx.Err())
	}
	c.metrics.event()
	c.cfg.Log.Info("following the cluster", "node", c.cfg.NodeName)
	t := time.NewTicker(c.cfg.Resync)
	defer t.Stop()
	for {
		if err := c.Reconcile(ctx); err != nil {
			c.metrics.reconcileErrors.Inc()
			c.cfg.Log.Warn("kubernetes reconcile", "err", err)
		}
		select {
		case <-ctx.Done():
			return <-errc
		case <-c.kick:
		case <-t.C:
		}
	}
}

// poke asks for a reconcile; many pokes before it runs make one.
func (c *Controller) poke() {
	select {
	case c.kick <- struct{}{}:
	default:
	}
}
