package scope

import (
	"strings"
	"testing"
)

func TestParseDNSMode(t *testing.T) {
	for in, want := range map[string]DNSMode{"": DNSScoped, "any": DNSAny, "scoped": DNSScoped, "none": DNSNone} {
		got, err := ParseDNSMode(in)
		if err != nil || got != want {
			t.Errorf("ParseDNSMode(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"ANY", "all", "scope", " none", "off"} {
		if _, err := ParseDNSMode(bad); err == nil || !strings.Contains(err.Error(), `"`+bad+`"`) {
			t.Errorf("ParseDNSMode(%q): error %v does not name the value", bad, err)
		}
	}
}

func TestDNSModeWithin(t *testing.T) {
	order := []DNSMode{DNSNone, DNSScoped, DNSAny}
	for i, child := range order {
		for j, parent := range order {
			if got, want := child.Within(parent), i <= j; got != want {
				t.Errorf("%s.Within(%s) = %v, want %v", child, parent, got, want)
			}
		}
	}
	if DNSMode("bogus").Within(DNSAny) || DNSAny.Within("bogus") {
		t.Error("an unknown mode is within something")
	}
}
