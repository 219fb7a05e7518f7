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
		"api.example.com:443":    "hostname rules are not supported yet",
		"*.example.com:443":      "hostname rules are not supported yet",
		"999.1.1.1":              "bad address",
		"bogus,127.0.0.1":        "unknown option",
		"exe=relative,127.0.0.1": "absolute path",
		"[fe80::1%eth0]:80":      "zones",
		"[::ffff:10.0.0.0]/64":   "shorter than /96",
	}
	for in, want := range cases {
		_, err := Parse(in)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Parse(%q) error %v, want it to mention %q", in, err, want)
		}
	}
	if _, err := Parse("api.example.com"); !errors.Is(err, ErrHostname) {
		t.Errorf("hostname error should wrap ErrHostname: %v", err)
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
		"essential,exe=/bin/x,tcp://1.2.3.4:1-2", "[::ffff:1.2.3.4]/120", "a.b:1", "[::1", "::", "1.2.3.4:99999"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := Parse(s)
		if err != nil {
			return
		}
		if r.PortLo == 0 || r.PortLo > r.PortHi || r.Protos == 0 || r.Protos&^ProtoAny != 0 || !r.Prefix.IsValid() || r.Prefix.Masked() != r.Prefix {
			t.Fatalf("Parse(%q) gave an invalid rule %+v", s, r)
		}
		back, err := Parse(r.String())
		if err != nil || back != r {
			t.Fatalf("round trip of %q via %q: %+v, %v", s, r.String(), back, err)
		}
	})
}
