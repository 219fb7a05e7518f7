package v1alpha1

import metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

// AgentSession is an intent session declared to the cluster: the nodes
// that run its pods bind their containers to it, as `agentfence run` binds
// a command on one host. Each such node reports in a NodeEnforcement.
//
// +kubebuilder:object:root=true
// +kubebuilder:resource:scope=Namespaced,categories=agentfence,shortName=afs
// +kubebuilder:printcolumn:name="Agent",type=string,JSONPath=`.spec.agent`
// +kubebuilder:printcolumn:name="Intent",type=string,JSONPath=`.spec.intent`
// +kubebuilder:printcolumn:name="Origin",type=string,JSONPath=`.spec.origin.kind`
// +kubebuilder:printcolumn:name="Mode",type=string,JSONPath=`.spec.mode`
// +kubebuilder:printcolumn:name="TTL",type=string,JSONPath=`.spec.ttl`
// +kubebuilder:printcolumn:name="Parent",type=string,JSONPath=`.spec.parent`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type AgentSession struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec AgentSessionSpec `json:"spec"`
}

// Mode says whether the kernel refuses what a session's scope does not
// allow (enforce) or only records it (audit).
type Mode string

// Modes.
const (
	Enforce Mode = "enforce"
	Audit   Mode = "audit"
)

// OriginKind says what triggered a session.
type OriginKind string

// Origin kinds.
const (
	Human    OriginKind = "human"
	Schedule OriginKind = "schedule"
	Upstream OriginKind = "agent" // another agent's session
)

// AgentSessionSpec is what the session's opener declares. Only its ttl
// and scope may change after creation, and only to narrow (the nodes
// narrow in place); everything else is fixed.
//
// +kubebuilder:validation:XValidation:rule="self.agent == oldSelf.agent && self.intent == oldSelf.intent && self.origin == oldSelf.origin && self.pods == oldSelf.pods && self.mode == oldSelf.mode && (has(self.parent) == has(oldSelf.parent)) && (!has(self.parent) || self.parent == oldSelf.parent)",message="only scope and ttl may change after creation"
// +kubebuilder:validation:XValidation:rule="duration(self.ttl) <= duration(oldSelf.ttl)",message="ttl may only shrink"
type AgentSessionSpec struct {
	// Agent names the Agent, in this namespace, that runs in the session.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Agent string `json:"agent"`
	// Intent is what the session is for, as its opener declared it.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=1024
	Intent string `json:"intent"`
	Origin Origin `json:"origin"`
	// Scope is what members may reach; within the Agent's ceiling.
	// +kubebuilder:validation:MaxItems=256
	// +listType=atomic
	// +optional
	Scope []Rule `json:"scope,omitempty"`
	// +kubebuilder:validation:Enum=enforce;audit
	// +kubebuilder:default=enforce
	// +optional
	Mode Mode `json:"mode,omitempty"`
	// TTL is how long the session lives from its creation (a Go duration,
	// at most 24h; a node's max_ttl may be lower).
	// +kubebuilder:validation:MaxLength=32
	// +kubebuilder:validation:Pattern=`^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$`
	// +kubebuilder:validation:XValidation:rule="duration(self) > duration('0s') && duration(self) <= duration('24h')",message="a duration above 0s and at most 24h"
	// +kubebuilder:default="1h"
	// +optional
	TTL string `json:"ttl,omitempty"`
	// Parent names the session, in this namespace, that this one narrows.
	// +kubebuilder:validation:MaxLength=253
	// +optional
	Parent string `json:"parent,omitempty"`
	Pods   Pods   `json:"pods"`
	// DNS is what members may ask a resolver (docs/hostnames.md).
	// +kubebuilder:validation:Enum=any;scoped;none
	// +kubebuilder:default=scoped
	// +optional
	DNS string `json:"dns,omitempty"`
	// Credentials is any, or registered-only (docs/audit.md).
	// +kubebuilder:validation:Enum=any;registered-only
	// +kubebuilder:default=any
	// +optional
	Credentials string `json:"credentials,omitempty"`
}

// Origin is what triggered a session.
type Origin struct {
	// +kubebuilder:validation:Enum=human;schedule;agent
	Kind OriginKind `json:"kind"`
	// Principal is alice@example.com, nightly-report, or the upstream
	// session.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=512
	Principal string `json:"principal"`
}

// Pods are the pods a session binds: those its selector matches, or those
// named. Either way only pods the Agent's podSelector matches are bound.
//
// +kubebuilder:validation:XValidation:rule="has(self.selector) != has(self.names)",message="exactly one of selector and names"
type Pods struct {
	// +optional
	Selector *metav1.LabelSelector `json:"selector,omitempty"`
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=256
	// +kubebuilder:validation:items:MaxLength=253
	// +listType=set
	// +optional
	Names []string `json:"names,omitempty"`
}

// AgentSessionList is a list of AgentSessions.
//
// +kubebuilder:object:root=true
type AgentSessionList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []AgentSession `json:"items"`
}
