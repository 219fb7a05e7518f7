package scope

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	cases := []struct {
		in   string
		want Rule
		str  string
	}{
		{"127.0.0.1:8080", Rule{Prefix: netip.MustParsePrefix("127.0.0.1/32"), Protos: ProtoAny, PortLo: 8080, PortHi: 8080}, "127.0.0.1:8080"},
		{"udp://127.0.0.53:53", Rule{Prefix: netip.MustParsePrefix("127.0.0.53/32"), Protos: ProtoUDP, PortLo: 53, PortHi: 53}, "udp://127.0.0.53:53"},
		{"[::1]:9000", Rule{Prefix: netip.MustParsePrefix("::1/128"), Protos: ProtoAny, PortLo: 9000, PortHi: 9000}, "[::1]:9000"},
		{"10.0.0.0/8", Rule{Prefix: netip.MustParsePrefix("10.0.0.0/8"), Protos: ProtoAny, PortLo: 1, PortHi: 65535}, "10.0.0.0/8"},
		{"[fd00::]/8:443", Rule{Prefix: netip.MustParsePrefix("fd00::/8"), Protos: ProtoAny, PortLo: 443, PortHi: 443}, "[fd00::]/8:443"},
		{"tcp://10.1.2.3:1000-2000", Rule{Prefix: netip.MustParsePrefix("10.1.2.3/32"), Protos: ProtoTCP, PortLo: 1000, PortHi: 2000}, "tcp://10.1.2.3:1000-2000"},
		{"[::ffff:10.0.0.1]:80", Rule{Prefix: netip.MustParsePrefix("10.0.0.1/32"), Protos: ProtoAny, PortLo: 80, PortHi: 80}, "10.0.0.1:80"},
		{"[::ffff:10.0.0.0]/104", Rule{Prefix: netip.MustParsePrefix("10.0.0.0/8"), Protos: ProtoAny, PortLo: 1, PortHi: 65535}, "10.0.0.0/8"},
		{"[::]/0", Rule{Prefix: netip.MustParsePrefix("::/0"), Protos: ProtoAny, PortLo: 1, PortHi: 65535}, "[::]/0"},
		{"essential,exe=/usr/bin/node,tcp://127.0.0.1:3000", Rule{Prefix: netip.MustParsePrefix("127.0.0.1/32"), Protos: ProtoTCP, PortLo: 3000, PortHi: 3000, Essential: true, Exe: "/usr/bin/node"}, "essential,exe=/usr/bin/node,tcp://127.0.0.1:3000"},
		{"in:tcp://10.0.0.0/8:8080", Rule{In: true, Prefix: netip.MustParsePrefix("10.0.0.0/8"), Protos: ProtoTCP, PortLo: 8080, PortHi: 8080}, "in:tcp://10.0.0.0/8:8080"},
		{"in:essential,[::1]:9000-9001", Rule{In: true, Prefix: netip.MustParsePrefix("::1/128"), Protos: ProtoAny, PortLo: 9000, PortHi: 9001, Essential: true}, "in:essential,[::1]:9000-9001"},
		{"in:[::ffff:10.0.0.1]", Rule{In: true, Prefix: netip.MustParsePrefix("10.0.0.1/32"), Protos: ProtoAny, PortLo: 1, PortHi: 65535}, "in:10.0.0.1"},
	}
	for _, c := range cases {
		got, err := Parse(c.in)
		if err != nil {
			t.Errorf("Parse(%q): %v", c.in, err)
			continue
		}
		if got != c.want {
			t.Errorf("Parse(%q) = %+v, want %+v", c.in, got, c.want)
		}
		if got.String() != c.str {
			t.Errorf("Parse(%q).String() = %q, want %q", c.in, got.String(), c.str)
		}
	}
}

func TestParseErrors(t *testing.T) {
	cases := map[string]string{
		"":                       "empty rule",
		"127.0.0.1:0":            "out of range",
		"127.0.0.1:65536":        "out of range",
		"127.0.0.1:-1":           "bad port",
		"127.0.0.1:80-70":        "backwards",
		"127.0.0.1:":             "empty port",
		"127.0.0.1:08":           "bad port",
		"10.0.0.0/33":            "bad prefix length",
		"10.0.0.1/8":             "host bits",
		"::1":                    "brackets",
		"[::1":                   "missing ]",
		"[::1]x":                 "unexpected",
		"http://127.0.0.1":       "unknown scheme",
		"localhost:443":          "at least two labels",
		"*.com:443":              "at least two labels",
		"a.*.example.com":        "whole first label",
		"*a.example.com":         "whole first label",
		"-a.example.com":         "starts or ends with '-'",
		"a..example.com":         "1-63 characters",
		"a_b.example.123":        "invalid hostname",
		"example.com/24":         "invalid hostname",
		"[api.example.com]:443":  "invalid hostname",
		"999.1.1.1":              "bad address",
		"bogus,127.0.0.1":        "unknown option",
		"exe=relative,127.0.0.1": "absolute path",
		"sha256=ab12,127.0.0.1":  "exe=PATH",
		"[fe80::1%eth0]:80":      "zones",
		"[::ffff:10.0.0.0]/64":   "shorter than /96",
		// in: names peers by address, takes no exe= and comes first.
		"in:api.example.com:443":          `"api.example.com" is a hostname`,
		"in:*.example.com":                "is a hostname",
		"in:exe=/usr/bin/x,10.0.0.0/8:80": "exe= is not supported on in: rules",
		"essential,in:10.0.0.0/8:80":      "in: must come before the options",
		"in:in:10.0.0.0/8":                "in: must come before",
		"in:tcp://10.0.0.1/8:80":          "host bits",
	}
	for in, want := range cases {
		_, err := Parse(in)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Parse(%q) error %v, want it to mention %q", in, err, want)
		}
	}
	if _, err := Parse("a.b-.example.com"); !errors.Is(err, ErrHostname) {
		t.Errorf("hostname error should wrap ErrHostname: %v", err)
	}
}

func TestParseHostnames(t *testing.T) {
	cases := []struct {
		in, host, str string
		wild          bool
		lo, hi        uint16
		protos        uint8
	}{
		{"api.example.com:443", "api.example.com", "api.example.com:443", false, 443, 443, ProtoAny},
		{"API.Example.COM.:443", "api.example.com", "api.example.com:443", false, 443, 443, ProtoAny},
		{"*.slack.com:443", "slack.com", "*.slack.com:443", true, 443, 443, ProtoAny},
		{"tcp://xn--bcher-kva.example:1-2", "xn--bcher-kva.example", "tcp://xn--bcher-kva.example:1-2", false, 1, 2, ProtoTCP},
		{"udp://_dns.resolver.arpa", "_dns.resolver.arpa", "udp://_dns.resolver.arpa", false, 1, 65535, ProtoUDP},
		{"essential,exe=/bin/x,*.A.b.C", "a.b.c", "essential,exe=/bin/x,*.a.b.c", true, 1, 65535, ProtoAny},
	}
	for _, c := range cases {
		r, err := Parse(c.in)
		if err != nil {
			t.Errorf("Parse(%q): %v", c.in, err)
			continue
		}
		if r.Host != c.host || r.Wildcard != c.wild || r.PortLo != c.lo || r.PortHi != c.hi || r.Protos != c.protos || r.Prefix.IsValid() {
			t.Errorf("Parse(%q) = %+v", c.in, r)
		}
		if r.String() != c.str {
			t.Errorf("Parse(%q).String() = %q, want %q", c.in, r.String(), c.str)
		}
	}
	long := strings.Repeat("a.", 126) + "bc" // 254 characters
	if _, err := Parse(long); err == nil {
		t.Errorf("a %d-character name parsed", len(long))
	}
	if _, err := Parse(long[2:]); err != nil {
		t.Errorf("a %d-character name: %v", len(long)-2, err)
	}
}

func TestMatchesName(t *testing.T) {
	rules := mustParse(t, "api.example.com", "*.slack.com")
	cases := []struct {
		rule int
		name string
		want bool
	}{
		{0, "api.example.com", true}, {0, "API.EXAMPLE.COM.", true}, {0, "x.api.example.com", false}, {0, "example.com", false},
		{1, "files.slack.com", true}, {1, "Files.Slack.Com.", true}, {1, "slack.com", false}, {1, "a.b.slack.com", false}, {1, ".slack.com", false},
	}
	for _, c := range cases {
		if got := rules[c.rule].MatchesName(c.name); got != c.want {
			t.Errorf("%s matches %q: %v", rules[c.rule], c.name, got)
		}
	}
}

func TestCompileSkipsHostnames(t *testing.T) {
	entries, err := Compile(mustParse(t, "api.example.com:443", "10.0.0.0/8", "*.slack.com", "10.1.2.3:22"))
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 2 {
		t.Fatalf("entries %+v", entries)
	}
	for _, e := range entries {
		for _, r := range e.Rules {
			if r.Index != 1 && r.Index != 3 {
				t.Errorf("%s carries rule %d", e.Prefix, r.Index)
			}
		}
	}
}

func TestCoversHostnames(t *testing.T) {
	p := mustParse(t, "*.slack.com:400-500", "tcp://api.example.com")
	yes := [][2]int{{0, 0}, {0, 1}, {1, 2}}
	c := mustParse(t, "*.slack.com:443", "tcp://files.slack.com:443", "tcp://api.example.com:443")
	for _, y := range yes {
		if !p[y[0]].Covers(c[y[1]]) {
			t.Errorf("%s should cover %s", p[y[0]], c[y[1]])
		}
	}
	no := mustParse(t, "slack.com:443", "a.b.slack.com:443", "files.slack.com:80", "api.example.com:443", "x.api.example.com", "*.api.example.com", "10.0.0.1:443")
	for _, r := range no {
		if p[0].Covers(r) || p[1].Covers(r) {
			t.Errorf("%s is not covered", r)
		}
	}
	if mustParse(t, "0.0.0.0/0")[0].Covers(c[0]) || p[0].Covers(mustParse(t, "10.0.0.1")[0]) {
		t.Error("address and hostname rules never cover each other")
	}
}

func TestCompileCarriesCoveringRules(t *testing.T) {
	rules := mustParse(t, "10.0.0.0/8:443", "10.1.0.0/16:80", "[::1]:1", "10.1.2.3:22")
	entries, err := Compile(rules)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string][]uint16{}
	for _, e := range entries {
		for _, r := range e.Rules {
			got[e.Prefix.String()] = append(got[e.Prefix.String()], r.Index)
		}
	}
	want := map[string][]uint16{"10.0.0.0/8": {0}, "10.1.0.0/16": {0, 1}, "::1/128": {2}, "10.1.2.3/32": {0, 1, 3}}
	if len(got) != len(want) {
		t.Fatalf("entries %v, want %v", got, want)
	}
	for k, v := range want {
		if !equal(got[k], v) {
			t.Errorf("%s: rules %v, want %v", k, got[k], v)
		}
	}
}

func TestCompileRejectsTooManyCoveringRules(t *testing.T) {
	var texts []string
	for i := 0; i <= MaxPortRules; i++ {
		texts = append(texts, "10.0.0.0/8:"+string(rune('1'+i%9))+"0")
	}
	if _, err := Compile(mustParse(t, texts...)); err == nil || !strings.Contains(err.Error(), "cover 10.0.0.0/8") {
		t.Fatalf("want a too-many-rules error, got %v", err)
	}
}

func TestCovers(t *testing.T) {
	p := mustParse(t, "10.0.0.0/8:400-500", "tcp://127.0.0.1")
	yes := mustParse(t, "tcp://10.1.0.0/16:443", "10.0.0.1:400")
	no := mustParse(t, "10.0.0.0/7:443", "10.1.1.1:80", "127.0.0.1:80")
	for _, r := range yes {
		if !p[0].Covers(r) {
			t.Errorf("%s should cover %s", p[0], r)
		}
	}
	for _, r := range no {
		if p[0].Covers(r) || p[1].Covers(r) {
			t.Errorf("%s is not covered", r)
		}
	}
}

func mustParse(t *testing.T, texts ...string) []Rule {
	t.Helper()
	var out []Rule
	for _, s := range texts {
		r, err := Parse(s)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, r)
	}
	return out
}

func equal(a, b []uint16) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// FuzzParse: any input either fails with an error or yields a rule whose
// canonical text parses back to the same rule.
func FuzzParse(f *testing.F) {
	for _, s := range []string{"127.0.0.1:8080", "udp://127.0.0.53:53", "[::1]:9000", "10.0.0.0/8", "[fd00::]/8:443",
		"essential,exe=/bin/x,tcp://1.2.3.4:1-2", "[::ffff:1.2.3.4]/120", "a.b:1", "[::1", "::", "1.2.3.4:99999",
		"*.Slack.com.:443", "udp://xn--n3h.example:53", "exe=/a,*.b.c:1-9", "a.b.c.d.1", "*.*.a.b",
		"in:tcp://10.0.0.0/8:8080", "in:essential,udp://[::1]:53", "in:a.b:1", "in:exe=/a,1.2.3.4", "essential,in:1.2.3.4"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := Parse(s)
		if err != nil {
			return
		}
		if r.PortLo == 0 || r.PortLo > r.PortHi || r.Protos == 0 || r.Protos&^ProtoAny != 0 {
			t.Fatalf("Parse(%q) gave an invalid rule %+v", s, r)
		}
		if r.Host != "" {
			// A hostname rule: canonical, no address, and it matches the
			// names it should.
			if r.Prefix.IsValid() || r.Host != strings.ToLower(r.Host) || len(r.Host) > MaxHostLen || strings.HasSuffix(r.Host, ".") || strings.Contains(r.Host, "*") {
				t.Fatalf("Parse(%q) gave an invalid hostname rule %+v", s, r)
			}
			name := r.Host
			if r.Wildcard {
				name = "x." + name
			}
			if !r.MatchesName(strings.ToUpper(name)+".") || r.MatchesName("x."+name) {
				t.Fatalf("%+v matches the wrong names around %q", r, name)
			}
		} else if !r.Prefix.IsValid() || r.Prefix.Masked() != r.Prefix || r.Wildcard {
			t.Fatalf("Parse(%q) gave an invalid rule %+v", s, r)
		}
		back, err := Parse(r.String())
		if err != nil || back != r {
			t.Fatalf("round trip of %q via %q: %+v, %v", s, r.String(), back, err)
		}
	})
}
