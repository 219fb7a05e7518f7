package v1alpha1

// Direction says which way a rule admits traffic.
type Direction string

// Directions.
const (
	Egress  Direction = "egress"  // connects and datagrams from members
	Ingress Direction = "ingress" // peers that may reach a member's local port
)

// Protocol is a rule's transport.
type Protocol string

// Protocols.
const (
	TCP         Protocol = "tcp"
	UDP         Protocol = "udp"
	AnyProtocol Protocol = "any"
)

// Rule is one scope rule: the structured form of the local API's text
// rules (docs/sessions.md), so that admission can compare rules with CEL.
// Egress to a cidr or a host, ingress from a cidr; no port means every
// port, port alone one port, port and endPort a range.
//
// +kubebuilder:validation:XValidation:rule="has(self.cidr) != has(self.host)",message="exactly one of cidr and host"
// +kubebuilder:validation:XValidation:rule="!has(self.endPort) || (has(self.port) && self.endPort >= self.port)",message="endPort needs a port no greater than it"
// +kubebuilder:validation:XValidation:rule="self.direction == 'egress' || (!has(self.host) && !has(self.exe))",message="an ingress rule names its peers by cidr and takes no exe: a received packet has neither a name nor a process"
type Rule struct {
	// +kubebuilder:validation:Enum=egress;ingress
	// +kubebuilder:default=egress
	// +optional
	Direction Direction `json:"direction,omitempty"`
	// +kubebuilder:validation:Enum=tcp;udp;any
	// +kubebuilder:default=any
	// +optional
	Protocol Protocol `json:"protocol,omitempty"`
	// CIDR is an address prefix: 10.0.0.0/8, 192.0.2.7/32, 2001:db8::/32.
	// +kubebuilder:validation:MaxLength=49
	// +kubebuilder:validation:XValidation:rule="isCIDR(self) && cidr(self) == cidr(self).masked()",message="a prefix without host bits: 10.0.0.0/8, 192.0.2.7/32, 2001:db8::/32"
	// +optional
	CIDR string `json:"cidr,omitempty"`
	// Host is a hostname, lowercase, punycode for IDNA; *.example.com
	// matches exactly one more label (docs/hostnames.md).
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^(\*\.)?([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\.)*[a-z]([-a-z0-9]{0,61}[a-z0-9])?$`
	// +optional
	Host string `json:"host,omitempty"`
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=65535
	// +optional
	Port int32 `json:"port,omitempty"`
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=65535
	// +optional
	EndPort int32 `json:"endPort,omitempty"`
	// Exe limits the rule to processes running this executable (a clean
	// absolute path inside the pod's containers).
	// +kubebuilder:validation:MaxLength=4096
	// +kubebuilder:validation:Pattern=`^/`
	// +optional
	Exe string `json:"exe,omitempty"`
	// Essential rules still admit while the session is quarantined.
	// +optional
	Essential bool `json:"essential,omitempty"`
}
