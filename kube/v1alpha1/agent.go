package v1alpha1

import metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

// LifecycleState is where an agent is in its life. States only move
// forward; retired is the last.
type LifecycleState string

// Lifecycle states, in order.
const (
	Built     LifecycleState = "built"
	Tested    LifecycleState = "tested"
	Promoted  LifecycleState = "promoted"
	Operating LifecycleState = "operating"
	Retired   LifecycleState = "retired"
)

// Agent is the identity record of one agent: who owns it, which version
// runs, the most any of its sessions may reach, the pods it runs in and
// where it is in its life. Retiring it ends its sessions on every node and
// refuses new ones; its audit history stays.
//
// +kubebuilder:object:root=true
// +kubebuilder:resource:scope=Namespaced,categories=agentfence
// +kubebuilder:printcolumn:name="State",type=string,JSONPath=`.spec.lifecycle.state`
// +kubebuilder:printcolumn:name="Owner",type=string,JSONPath=`.spec.owner`
// +kubebuilder:printcolumn:name="Version",type=string,JSONPath=`.spec.version`
// +kubebuilder:printcolumn:name="SPIFFE ID",type=string,JSONPath=`.spec.spiffeID`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type Agent struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec AgentSpec `json:"spec"`
}

// AgentSpec is an agent's identity, ceiling and lifecycle.
type AgentSpec struct {
	// SPIFFEID is the agent's workload identity.
	// +kubebuilder:validation:MaxLength=2048
	// +kubebuilder:validation:Pattern=`^spiffe://[a-z0-9._-]+(/[A-Za-z0-9._~!$&'()*+,;=:@%-]+)+$`
	SPIFFEID string `json:"spiffeID"`
	// Owner is who answers for the agent: a person or a team.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=256
	Owner string `json:"owner"`
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=128
	Version string `json:"version"`
	// Ceiling is the most any session of this agent may allow: every rule
	// of a session must lie within one of these.
	// +kubebuilder:validation:MaxItems=256
	// +listType=atomic
	// +optional
	Ceiling []Rule `json:"ceiling,omitempty"`
	// PodSelector selects the pods the agent runs in, in the agent's
	// namespace. Until a session binds them, they may reach nothing
	// (docs/kubernetes.md).
	PodSelector metav1.LabelSelector `json:"podSelector"`
	Lifecycle   Lifecycle            `json:"lifecycle"`
}

// Lifecycle is an agent's state and how it got there.
//
// +kubebuilder:validation:XValidation:rule="self.transitions[size(self.transitions) - 1].state == self.state",message="the last transition is to the current state"
// +kubebuilder:validation:XValidation:rule="{'built': 0, 'tested': 1, 'promoted': 2, 'operating': 3, 'retired': 4}[self.state] >= {'built': 0, 'tested': 1, 'promoted': 2, 'operating': 3, 'retired': 4}[oldSelf.state]",message="the lifecycle only moves forward: built, tested, promoted, operating, retired"
// +kubebuilder:validation:XValidation:rule="size(self.transitions) >= size(oldSelf.transitions) && oldSelf.transitions.all(t, t in self.transitions)",message="transitions are only ever appended"
type Lifecycle struct {
	// +kubebuilder:validation:Enum=built;tested;promoted;operating;retired
	State LifecycleState `json:"state"`
	// Transitions are the states the agent entered, oldest first. The
	// admission policy holds each new one's actor to the user who made
	// the change.
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=64
	// +listType=atomic
	Transitions []Transition `json:"transitions"`
}

// Transition is one change of lifecycle state.
type Transition struct {
	// +kubebuilder:validation:Enum=built;tested;promoted;operating;retired
	State LifecycleState `json:"state"`
	// Actor is the Kubernetes user who made the change.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=512
	Actor string      `json:"actor"`
	Time  metav1.Time `json:"time"`
	// +kubebuilder:validation:MaxLength=1024
	// +optional
	Reason string `json:"reason,omitempty"`
}

// AgentList is a list of Agents.
//
// +kubebuilder:object:root=true
type AgentList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []Agent `json:"items"`
}
