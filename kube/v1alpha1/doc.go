// Package v1alpha1 is the Kubernetes wire format of agentfence (group
// agentfence.io, version v1alpha1, docs/kubernetes.md): Agent, the
// identity record of an agent with its scope ceiling and lifecycle;
// AgentSession, an intent session bound to pods; and NodeEnforcement, one
// node's report on one session. The validation markers become the CRDs'
// OpenAPI schemas and CEL rules (make generate writes deploy/crds); what
// the schemas cannot say across objects, deploy/admission's
// ValidatingAdmissionPolicies say.
//
// +kubebuilder:object:generate=true
// +groupName=agentfence.io
package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// GroupVersion is the API group and version of these types.
var GroupVersion = schema.GroupVersion{Group: "agentfence.io", Version: "v1alpha1"}

// AddToScheme registers the types with a scheme.
func AddToScheme(s *runtime.Scheme) error {
	s.AddKnownTypes(GroupVersion, &Agent{}, &AgentList{}, &AgentSession{}, &AgentSessionList{},
		&NodeEnforcement{}, &NodeEnforcementList{})
	metav1.AddToGroupVersion(s, GroupVersion)
	return nil
}
