package v1alpha1

import metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

// NodeEnforcement is one node's report on one AgentSession: which of the
// session's pods run there and whether the kernel enforces it for them.
// Each node writes only its own (an admission policy holds a node's
// service-account token to its node name), so no object is written by
// every node at once. Its name is <session>.<node>, and it carries the
// label agentfence.io/node=<node>, by which a node finds its own.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:scope=Namespaced,categories=agentfence,shortName=afne
// +kubebuilder:printcolumn:name="Session",type=string,JSONPath=`.spec.session`
// +kubebuilder:printcolumn:name="Node",type=string,JSONPath=`.spec.nodeName`
// +kubebuilder:printcolumn:name="Enforced",type=string,JSONPath=`.status.conditions[?(@.type=="Enforced")].status`
// +kubebuilder:printcolumn:name="Pods",type=integer,JSONPath=`.status.boundPods`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
// +kubebuilder:validation:XValidation:rule="self.metadata.name == self.spec.session + '.' + self.spec.nodeName",message="metadata.name must be <spec.session>.<spec.nodeName>"
type NodeEnforcement struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   NodeEnforcementSpec   `json:"spec"`
	Status NodeEnforcementStatus `json:"status,omitempty"`
}

// NodeEnforcementSpec names the session and the node.
//
// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="spec is immutable"
type NodeEnforcementSpec struct {
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Session string `json:"session"`
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	NodeName string `json:"nodeName"`
}

// Condition types of a NodeEnforcement.
const (
	// NodeLabel names the node on its NodeEnforcements.
	NodeLabel = "agentfence.io/node"
	// Enforced is true while the kernel holds the session for every pod
	// of it on the node; its reason says why not otherwise.
	Enforced = "Enforced"
)

// NodeEnforcementStatus is what the node did.
type NodeEnforcementStatus struct {
	// LocalSessions are the node daemon's session ids, one per pod, which
	// its audit records carry.
	// +kubebuilder:validation:MaxItems=256
	// +listType=set
	// +optional
	LocalSessions []string `json:"localSessions,omitempty"`
	// BoundPods is how many of the session's pods the node bound.
	// +optional
	BoundPods int32 `json:"boundPods,omitempty"`
	// ObservedGeneration is the AgentSession generation the report is
	// about.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
	// +listType=map
	// +listMapKey=type
	// +optional
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// NodeEnforcementList is a list of NodeEnforcements.
//
// +kubebuilder:object:root=true
type NodeEnforcementList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []NodeEnforcement `json:"items"`
}
