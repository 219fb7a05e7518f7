// Package kube is agentfence's Kubernetes side: what the node daemon does
// with the objects of kube/v1alpha1.
package kube

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/agentfence/agentfence/kube/v1alpha1"
	"github.com/agentfence/agentfence/scope"
)

// ScopeRules turns an object's structured rules into scope rules, through
// the text form the local API takes, so that one parser decides. Errors
// name the field (field is spec.scope or spec.ceiling).
func ScopeRules(field string, rules []v1alpha1.Rule) ([]scope.Rule, error) {
	out := make([]scope.Rule, 0, len(rules))
	for i, r := range rules {
		text, err := RuleText(r)
		if err == nil {
			var sr scope.Rule
			if sr, err = scope.Parse(text); err == nil {
				out = append(out, sr)
				continue
			}
		}
		return nil, fmt.Errorf("%s[%d]: %w", field, i, err)
	}
	return out, nil
}

// RuleText is the local API's text form of a structured rule
// ([in:][essential,][exe=PATH,][tcp://|udp://]DEST[:PORT[-PORT]]).
func RuleText(r v1alpha1.Rule) (string, error) {
	var b strings.Builder
	switch r.Direction {
	case v1alpha1.Ingress:
		b.WriteString("in:")
	case v1alpha1.Egress, "":
	default:
		return "", fmt.Errorf("direction %q: want egress or ingress", r.Direction)
	}
	if r.Essential {
		b.WriteString("essential,")
	}
	if r.Exe != "" {
		if strings.Contains(r.Exe, ",") {
			return "", fmt.Errorf("exe %q: a comma cannot be written in a rule", r.Exe)
		}
		b.WriteString("exe=" + r.Exe + ",")
	}
	switch r.Protocol {
	case v1alpha1.TCP:
		b.WriteString("tcp://")
	case v1alpha1.UDP:
		b.WriteString("udp://")
	case v1alpha1.AnyProtocol, "":
	default:
		return "", fmt.Errorf("protocol %q: want tcp, udp or any", r.Protocol)
	}
	switch {
	case (r.CIDR == "") == (r.Host == ""):
		return "", fmt.Errorf("exactly one of cidr and host")
	case r.Host != "":
		if strings.ContainsAny(r.Host, ":/[],") {
			return "", fmt.Errorf("host %q is not a hostname", r.Host)
		}
		b.WriteString(r.Host)
	default:
		p, err := netip.ParsePrefix(r.CIDR)
		if err != nil {
			return "", fmt.Errorf("cidr %q: %w", r.CIDR, err)
		}
		if p.Addr().Is6() {
			b.WriteString("[" + p.Addr().String() + "]/" + strconv.Itoa(p.Bits()))
		} else {
			b.WriteString(p.String())
		}
	}
	switch {
	case r.EndPort != 0 && (r.Port == 0 || r.EndPort < r.Port):
		return "", fmt.Errorf("endPort %d needs a port no greater than it", r.EndPort)
	case r.Port != 0:
		b.WriteString(":" + strconv.Itoa(int(r.Port)))
		if r.EndPort != 0 {
			b.WriteString("-" + strconv.Itoa(int(r.EndPort)))
		}
	}
	return b.String(), nil
}
