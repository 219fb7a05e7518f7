package node

import (
	"context"
	"fmt"
	"slices"
	"strings"

	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/agentfence/agentfence/doctor"
	"github.com/agentfence/agentfence/kube/v1alpha1"
)

// Doctor check names.
const (
	CheckAPIServer = "kubernetes/api_server"
	CheckCRDs      = "kubernetes/crds"
	CheckRBAC      = "kubernetes/rbac"
	CheckNode      = "kubernetes/node"
)

// Permission is one thing the node asks of the API server.
type Permission struct {
	Group, Resource, Verb string
}

// Permissions are what the node does in the API server; the ClusterRole of
// deploy/daemonset grants exactly these (its test compares them).
var Permissions = []Permission{
	{"", "pods", "get"}, {"", "pods", "list"}, {"", "pods", "watch"},
	{"", "nodes", "get"},
	{v1alpha1.GroupVersion.Group, "agents", "get"}, {v1alpha1.GroupVersion.Group, "agents", "list"}, {v1alpha1.GroupVersion.Group, "agents", "watch"},
	{v1alpha1.GroupVersion.Group, "agentsessions", "get"}, {v1alpha1.GroupVersion.Group, "agentsessions", "list"}, {v1alpha1.GroupVersion.Group, "agentsessions", "watch"},
	{v1alpha1.GroupVersion.Group, "nodeenforcements", "get"}, {v1alpha1.GroupVersion.Group, "nodeenforcements", "list"},
	{v1alpha1.GroupVersion.Group, "nodeenforcements", "watch"}, {v1alpha1.GroupVersion.Group, "nodeenforcements", "create"},
	{v1alpha1.GroupVersion.Group, "nodeenforcements", "update"}, {v1alpha1.GroupVersion.Group, "nodeenforcements", "delete"},
	{v1alpha1.GroupVersion.Group, "nodeenforcements/status", "update"},
	{"events.k8s.io", "events", "create"},
}

const (
	impactAPIServer = "AgentSessions do not reach this node: it keeps enforcing what it last saw, and new pods stay held"
	impactCRDs      = "kubectl apply -k deploy/crds: without them the node follows nothing"
	impactRBAC      = "bind the ClusterRole of deploy/daemonset to the daemon's service account: the node cannot follow or report what it is refused"
	impactNode      = "the node cannot tell whether it is a control-plane node, and holds no new pod"
)

// Doctor checks, as the daemon's identity, what following the cluster
// needs: an API server that answers, the CRDs, the ClusterRole's
// permissions and the node's own Node. None of them is the gate's: the
// local API and the kernel work without a cluster.
func Doctor(ctx context.Context, rc *rest.Config, nodeName string, holdControlPlane bool) []doctor.Check {
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return []doctor.Check{{Name: CheckAPIServer, Status: doctor.StatusMissing, Detail: err.Error(), Impact: impactAPIServer}}
	}
	v, err := cs.Discovery().ServerVersion()
	if err != nil {
		return []doctor.Check{{Name: CheckAPIServer, Status: doctor.StatusMissing, Detail: fmt.Sprintf("%s: %v", rc.Host, err), Impact: impactAPIServer}}
	}
	out := []doctor.Check{{Name: CheckAPIServer, Status: doctor.StatusOK, Detail: fmt.Sprintf("%s at %s", v.GitVersion, rc.Host)}}

	crds := doctor.Check{Name: CheckCRDs, Status: doctor.StatusOK, Detail: v1alpha1.GroupVersion.String() + ": agents, agentsessions, nodeenforcements"}
	if list, err := cs.Discovery().ServerResourcesForGroupVersion(v1alpha1.GroupVersion.String()); err != nil {
		crds.Status, crds.Detail, crds.Impact = doctor.StatusMissing, err.Error(), impactCRDs
	} else {
		var missing []string
		for _, want := range []string{"agents", "agentsessions", "nodeenforcements"} {
			if !slices.ContainsFunc(list.APIResources, func(r metav1.APIResource) bool { return r.Name == want }) {
				missing = append(missing, want)
			}
		}
		if len(missing) > 0 {
			crds.Status, crds.Detail, crds.Impact = doctor.StatusMissing, "not served: "+strings.Join(missing, ", "), impactCRDs
		}
	}
	out = append(out, crds)

	rbac := doctor.Check{Name: CheckRBAC, Status: doctor.StatusOK, Detail: fmt.Sprintf("all %d permissions granted", len(Permissions))}
	var refused []string
	for _, p := range Permissions {
		r, err := cs.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx, &authorizationv1.SelfSubjectAccessReview{
			Spec: authorizationv1.SelfSubjectAccessReviewSpec{ResourceAttributes: p.attributes()}}, metav1.CreateOptions{})
		if err != nil {
			rbac.Status, rbac.Detail, rbac.Impact = doctor.StatusUnknown, "access review: "+err.Error(), impactRBAC
			break
		}
		if !r.Status.Allowed {
			refused = append(refused, p.String())
		}
	}
	if len(refused) > 0 {
		rbac.Status, rbac.Detail, rbac.Impact = doctor.StatusMissing, "refused: "+strings.Join(refused, ", "), impactRBAC
	}
	out = append(out, rbac)

	nc := doctor.Check{Name: CheckNode, Status: doctor.StatusOK}
	n, err := cs.CoreV1().Nodes().Get(ctx, nodeName, metav1.GetOptions{})
	switch {
	case err != nil:
		nc.Status, nc.Detail, nc.Impact = doctor.StatusMissing, err.Error(), impactNode
	case controlPlane(n) != "" && !holdControlPlane:
		nc.Status, nc.Detail = doctor.StatusDegraded, fmt.Sprintf("%s is a control-plane node (%s): new pods are held only with kubernetes.hold_control_plane", n.Name, controlPlane(n))
		nc.Impact = "an Agent's pod on this node runs unconfined until its session is bound"
	default:
		nc.Detail = n.Name + ": new pods are held until classified"
	}
	return append(out, nc)
}

// attributes are p as an access review's question.
func (p Permission) attributes() *authorizationv1.ResourceAttributes {
	res, sub, _ := strings.Cut(p.Resource, "/")
	return &authorizationv1.ResourceAttributes{Group: p.Group, Resource: res, Subresource: sub, Verb: p.Verb}
}

func (p Permission) String() string {
	if p.Group == "" {
		return p.Verb + " " + p.Resource
	}
	return p.Verb + " " + p.Resource + "." + p.Group
}

// controlPlane is the control-plane label n carries, or "".
func controlPlane(n *corev1.Node) string {
	for _, l := range controlPlaneLabels {
		if _, ok := n.Labels[l]; ok {
			return l
		}
	}
	return ""
}
