package scope

import (
	"net/netip"
	"slices"
	"testing"
)

func texts(rules []Rule) []string {
	out := []string{}
	for _, r := range rules {
		out = append(out, r.String())
	}
	return out
}

func TestIntersect(t *testing.T) {
	cases := []struct {
		rules, parent, want []string
	}{
		{[]string{"10.0.0.0/8:400-500"}, []string{"10.1.0.0/16:443"}, []string{"10.1.0.0/16:443"}},
		{[]string{"10.0.0.0/8:600-700"}, []string{"10.1.0.0/16:443"}, []string{}},
		{[]string{"10.1.2.0/24:80"}, []string{"10.1.0.0/16:443"}, []string{}},
		{[]string{"10.1.2.0/24:400-500"}, []string{"10.1.0.0/16:443-8443"}, []string{"10.1.2.0/24:443-500"}},
		{[]string{"10.1.2.0/24"}, []string{"10.0.0.0/8"}, []string{"10.1.2.0/24"}},
		{[]string{"tcp://10.0.0.0/8"}, []string{"udp://10.0.0.0/8"}, []string{}},
		{[]string{"10.0.0.0/8"}, []string{"tcp://10.1.0.0/16:443", "udp://10.2.0.0/16:53"}, []string{"tcp://10.1.0.0/16:443", "udp://10.2.0.0/16:53"}},
		{[]string{"10.0.0.0/8"}, []string{"[fd00::]/8"}, []string{}},
		{[]string{"10.0.0.0/8"}, []string{"exe=/usr/bin/curl,10.0.0.0/8:443"}, []string{"exe=/usr/bin/curl,10.0.0.0/8:443"}},
		{[]string{"exe=/usr/bin/wget,10.0.0.0/8"}, []string{"exe=/usr/bin/curl,10.0.0.0/8:443"}, []string{}},
		{[]string{"essential,10.0.0.0/8:53"}, []string{"10.0.0.0/16"}, []string{"essential,10.0.0.0/16:53"}},
		{[]string{"api.example.com:443"}, []string{"api.example.com"}, []string{"api.example.com:443"}},
		{[]string{"api.example.com:443"}, []string{"0.0.0.0/0"}, []string{}},
		{[]string{"10.0.0.0/8"}, []string{"api.example.com"}, []string{}},
		// A hostname rule the parent covers only in part is clipped, not
		// dropped.
		{[]string{"api.example.com:443-8443"}, []string{"api.example.com:443"}, []string{"api.example.com:443"}},
		{[]string{"*.slack.com"}, []string{"tcp://*.slack.com:443"}, []string{"tcp://*.slack.com:443"}},
		{[]string{"*.slack.com"}, []string{"team.slack.com:443"}, []string{"team.slack.com:443"}},
		{[]string{"*.slack.com"}, []string{"a.team.slack.com:443"}, []string{}},
		// Directions never mix: an in: rule is no outbound permission, nor
		// the reverse.
		{[]string{"in:10.0.0.0/8:443"}, []string{"10.0.0.0/8"}, []string{}},
		{[]string{"10.0.0.0/8:443"}, []string{"in:10.0.0.0/8"}, []string{}},
		{[]string{"in:10.0.0.0/8"}, []string{"in:tcp://10.1.0.0/16:8080", "10.0.0.0/8"}, []string{"in:tcp://10.1.0.0/16:8080"}},
		{[]string{"in:essential,10.1.2.0/24:80-90"}, []string{"in:10.0.0.0/8:85-100"}, []string{"in:essential,10.1.2.0/24:85-90"}},
	}
	for _, tc := range cases {
		parent := mustParse(t, tc.parent...)
		got := Intersect(mustParse(t, tc.rules...), parent)
		if !slices.Equal(texts(got), tc.want) {
			t.Errorf("Intersect(%q, %q) = %q, want %q", tc.rules, tc.parent, texts(got), tc.want)
		}
		if i := Within(got, parent); i >= 0 {
			t.Errorf("Intersect(%q, %q)[%d] is not within the parent", tc.rules, tc.parent, i)
		}
	}
}

func TestWithin(t *testing.T) {
	parent := mustParse(t, "10.0.0.0/8:443", "*.example.com", "in:tcp://10.0.0.0/8:8080")
	for _, tc := range []struct {
		child []string
		want  int
	}{
		{nil, -1},
		{[]string{"10.1.0.0/16:443", "api.example.com:443", "in:tcp://10.1.2.3:8080"}, -1},
		{[]string{"10.1.0.0/16:443", "10.1.0.0/16:80"}, 1},
		{[]string{"a.b.example.com"}, 0},
		{[]string{"10.1.2.3:443", "in:10.1.2.3:8080"}, 1}, // udp is not in the parent's in: rule
		{[]string{"in:tcp://10.1.2.3:443"}, 0},
	} {
		if got := Within(mustParse(t, tc.child...), parent); got != tc.want {
			t.Errorf("Within(%q) = %d, want %d", tc.child, got, tc.want)
		}
	}
}

func TestAdmits(t *testing.T) {
	rules := mustParse(t, "tcp://10.0.0.0/8:443", "udp://[fd00::]/8:53", "*.example.com:443",
		"exe=/usr/bin/curl,192.0.2.1:80", "in:tcp://198.51.100.0/24")
	exe := func(path string) func() string { return func() string { return path } }
	for _, tc := range []struct {
		name string
		f    Flow
		want bool
	}{
		{"address", Flow{Proto: ProtoTCP, Remote: netip.MustParseAddrPort("10.2.3.4:443")}, true},
		{"other port", Flow{Proto: ProtoTCP, Remote: netip.MustParseAddrPort("10.2.3.4:80")}, false},
		{"other protocol", Flow{Proto: ProtoUDP, Remote: netip.MustParseAddrPort("10.2.3.4:443")}, false},
		{"v6", Flow{Proto: ProtoUDP, Remote: netip.MustParseAddrPort("[fd00::1]:53")}, true},
		{"learned name", Flow{Proto: ProtoTCP, Remote: netip.MustParseAddrPort("203.0.113.7:443"), Names: []string{"other.test", "api.example.com"}}, true},
		{"name two labels down", Flow{Proto: ProtoTCP, Remote: netip.MustParseAddrPort("203.0.113.7:443"), Names: []string{"a.b.example.com"}}, false},
		{"no name learned", Flow{Proto: ProtoTCP, Remote: netip.MustParseAddrPort("203.0.113.7:443")}, false},
		{"exe matches", Flow{Proto: ProtoTCP, Remote: netip.MustParseAddrPort("192.0.2.1:80"), Exe: exe("/usr/bin/curl")}, true},
		{"other exe", Flow{Proto: ProtoTCP, Remote: netip.MustParseAddrPort("192.0.2.1:80"), Exe: exe("/usr/bin/wget")}, false},
		{"exe unknown", Flow{Proto: ProtoTCP, Remote: netip.MustParseAddrPort("192.0.2.1:80")}, false},
		{"in: rules admit nothing outbound", Flow{Proto: ProtoTCP, Remote: netip.MustParseAddrPort("198.51.100.9:22")}, false},
	} {
		if got := Admits(rules, tc.f); got != tc.want {
			t.Errorf("%s: Admits(%+v) = %v, want %v", tc.name, tc.f, got, tc.want)
		}
	}
}
