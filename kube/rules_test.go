package kube

import (
	"strings"
	"testing"

	"github.com/agentfence/agentfence/kube/v1alpha1"
	"github.com/agentfence/agentfence/scope"
)

func TestRuleText(t *testing.T) {
	for _, tc := range []struct {
		r    v1alpha1.Rule
		want string
	}{
		{v1alpha1.Rule{CIDR: "10.0.0.0/8"}, "10.0.0.0/8"},
		{v1alpha1.Rule{Protocol: v1alpha1.TCP, CIDR: "192.0.2.7/32", Port: 443}, "tcp://192.0.2.7:443"},
		{v1alpha1.Rule{Protocol: v1alpha1.UDP, CIDR: "2001:db8::/32", Port: 53, EndPort: 54}, "udp://[2001:db8::]/32:53-54"},
		{v1alpha1.Rule{Direction: v1alpha1.Ingress, Protocol: v1alpha1.TCP, CIDR: "192.168.0.0/16", Port: 8080}, "in:tcp://192.168.0.0/16:8080"},
		{v1alpha1.Rule{Protocol: v1alpha1.AnyProtocol, Host: "*.example.com", Essential: true, Exe: "/usr/bin/python3"},
			"essential,exe=/usr/bin/python3,*.example.com"},
	} {
		rules, err := ScopeRules("spec.scope", []v1alpha1.Rule{tc.r})
		if err != nil {
			t.Errorf("%+v: %v", tc.r, err)
			continue
		}
		if got := rules[0].String(); got != tc.want {
			t.Errorf("%+v: %s, want %s", tc.r, got, tc.want)
		}
	}
}

// TestScopeRulesErrors: what the CRD schema should have refused never
// reaches the kernel, and the error names the field.
func TestScopeRulesErrors(t *testing.T) {
	for _, tc := range []struct {
		r    v1alpha1.Rule
		want string
	}{
		{v1alpha1.Rule{}, "spec.scope[1]: exactly one of cidr and host"},
		{v1alpha1.Rule{CIDR: "10.0.0.0/8", Host: "a.example.com"}, "exactly one"},
		{v1alpha1.Rule{CIDR: "10.0.0.1/8"}, "host bits"},
		{v1alpha1.Rule{CIDR: "10.0.0.0"}, "cidr"},
		{v1alpha1.Rule{Host: "a.example.com:80"}, "not a hostname"},
		{v1alpha1.Rule{Host: "Bad_Host!"}, "spec.scope[1]"},
		{v1alpha1.Rule{CIDR: "10.0.0.0/8", EndPort: 5}, "endPort"},
		{v1alpha1.Rule{CIDR: "10.0.0.0/8", Port: 9, EndPort: 5}, "endPort"},
		{v1alpha1.Rule{CIDR: "10.0.0.0/8", Port: 70000}, "port"},
		{v1alpha1.Rule{CIDR: "10.0.0.0/8", Protocol: "sctp"}, "protocol"},
		{v1alpha1.Rule{CIDR: "10.0.0.0/8", Direction: "sideways"}, "direction"},
		{v1alpha1.Rule{Direction: v1alpha1.Ingress, Host: "a.example.com"}, "hostname"},
		{v1alpha1.Rule{CIDR: "10.0.0.0/8", Exe: "python3"}, "absolute"},
		{v1alpha1.Rule{CIDR: "10.0.0.0/8", Exe: "/bin/a,tcp://0.0.0.0/0"}, "comma"},
	} {
		_, err := ScopeRules("spec.scope", []v1alpha1.Rule{{CIDR: "10.0.0.0/8"}, tc.r})
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), "spec.scope[1]: ") {
			t.Errorf("%+v: want an error with %q, got %v", tc.r, tc.want, err)
		}
	}
}

// FuzzRuleText: whatever a rule holds, its text parses to a rule that
// prints back to text that parses the same, or the error names the field.
func FuzzRuleText(f *testing.F) {
	f.Add("egress", "tcp", "10.0.0.0/8", "", int32(443), int32(0), "", false)
	f.Add("ingress", "any", "fd00::/8", "", int32(1), int32(65535), "", true)
	f.Add("egress", "udp", "", "*.example.com", int32(53), int32(0), "/usr/bin/dig", false)
	f.Fuzz(func(t *testing.T, dir, proto, cidr, host string, port, endPort int32, exe string, essential bool) {
		r := v1alpha1.Rule{Direction: v1alpha1.Direction(dir), Protocol: v1alpha1.Protocol(proto), CIDR: cidr, Host: host,
			Port: port, EndPort: endPort, Exe: exe, Essential: essential}
		rules, err := ScopeRules("spec.ceiling", []v1alpha1.Rule{r})
		if err != nil {
			if !strings.HasPrefix(err.Error(), "spec.ceiling[0]: ") {
				t.Fatalf("error without the field: %v", err)
			}
			return
		}
		again, err := scope.Parse(rules[0].String())
		if err != nil || again != rules[0] {
			t.Fatalf("%+v -> %q -> %+v, %v", r, rules[0].String(), again, err)
		}
		if r.Port == 0 && (rules[0].PortLo != 1 || rules[0].PortHi != 65535) || r.Port != 0 && int32(rules[0].PortLo) != r.Port {
			t.Fatalf("%+v: ports %d-%d", r, rules[0].PortLo, rules[0].PortHi)
		}
	})
}
