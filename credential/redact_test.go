package credential

import (
	"bytes"
	"slices"
	"strings"
	"testing"
)

func testKey(t testing.TB) *Key {
	k, err := NewKey(bytes.Repeat([]byte{7}, keySize))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func testRedactor(t testing.TB) *Redactor {
	r, err := NewRedactor(testKey(t), []string{"X-Tenant-Secret"}, []string{`corp_[0-9a-f]{24}`})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// Each credential shape is replaced by its fingerprint, and only it: the
// rest of the argument, and the arguments around it, stay as they were.
func TestArgvRedactsEachShape(t *testing.T) {
	r := testRedactor(t)
	fp := func(s string) string { return Placeholder(r.key.Fingerprint(s)) }
	const tok = "sk-proj-Abcdefghijklmnopqrstuvwx0123"
	for _, c := range []struct {
		name string
		in   []string
		want []string
	}{
		{"curl bearer", []string{"curl", "-H", "Authorization: Bearer " + tok, "https://api.test/v1"},
			[]string{"curl", "-H", "Authorization: Bearer " + fp(tok), "https://api.test/v1"}},
		{"wget header", []string{"wget", "--header=Proxy-Authorization: Basic dXNlcjpwYXNz"},
			[]string{"wget", "--header=Proxy-Authorization: Basic " + fp("dXNlcjpwYXNz")}},
		{"basic header", []string{"curl", "-H", "proxy-authorization:Basic dXNlcjpwYXNz"},
			[]string{"curl", "-H", "proxy-authorization:Basic " + fp("dXNlcjpwYXNz")}},
		{"x-api-key", []string{"curl", "-H", "x-api-key: abc123secret"}, []string{"curl", "-H", "x-api-key: " + fp("abc123secret")}},
		{"configured header", []string{"curl", "-H", "X-Tenant-Secret: t0p"}, []string{"curl", "-H", "X-Tenant-Secret: " + fp("t0p")}},
		{"flag=value", []string{"tool", "--api-key=k-123", "--region=eu"}, []string{"tool", "--api-key=" + fp("k-123"), "--region=eu"}},
		{"flag value", []string{"mysql", "--password", "hunter2", "db"}, []string{"mysql", "--password", fp("hunter2"), "db"}},
		{"env", []string{"env", "OPENAI_API_KEY=abc", "GITHUB_TOKEN=ghx", "HOME=/root", "node", "a.js"},
			[]string{"env", "OPENAI_API_KEY=" + fp("abc"), "GITHUB_TOKEN=" + fp("ghx"), "HOME=/root", "node", "a.js"}},
		{"curl user", []string{"curl", "-u", "alice:s3cret", "https://h.test"}, []string{"curl", "-u", "alice:" + fp("s3cret"), "https://h.test"}},
		{"url userinfo", []string{"git", "clone", "https://bob:pa55@git.test/r.git"}, []string{"git", "clone", "https://bob:" + fp("pa55") + "@git.test/r.git"}},
		{"query", []string{"curl", "https://h.test/x?a=1&api_key=q9&b=2"}, []string{"curl", "https://h.test/x?a=1&api_key=" + fp("q9") + "&b=2"}},
		{"bare token", []string{"node", "agent.js", tok}, []string{"node", "agent.js", fp(tok)}},
		{"json body", []string{"curl", "-d", `{"api_key": "k-77", "n": "1"}`}, []string{"curl", "-d", `{"api_key": "` + fp("k-77") + `", "n": "1"}`}},
		{"python dict", []string{"python3", "-c", `u.Request(url, headers={'x-api-key': 'k-88'})`},
			[]string{"python3", "-c", `u.Request(url, headers={'x-api-key': '` + fp("k-88") + `'})`}},
		{"script assignment", []string{"sh", "-c", `export API_TOKEN="t-99"; ./agent`}, []string{"sh", "-c", `export API_TOKEN="` + fp("t-99") + `"; ./agent`}},
		{"quoted, not a credential", []string{"sh", "-c", `NAME="x" ./agent`}, []string{"sh", "-c", `NAME="x" ./agent`}},
		{"token inside", []string{"sh", "-c", "echo " + tok + " | x"}, []string{"sh", "-c", "echo " + fp(tok) + " | x"}},
		{"github", []string{"gh", "ghp_" + strings.Repeat("a", 36)}, []string{"gh", fp("ghp_" + strings.Repeat("a", 36))}},
		{"jwt", []string{"x", "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.abcdefghijk"},
			[]string{"x", fp("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.abcdefghijk")}},
		{"configured pattern", []string{"x", "key corp_0123456789abcdef01234567 end"},
			[]string{"x", "key " + fp("corp_0123456789abcdef01234567") + " end"}},
		{"nothing", []string{"node", "/srv/mcp/server.mjs", "--port", "8080", "-v", "a:b", "key=value"},
			[]string{"node", "/srv/mcp/server.mjs", "--port", "8080", "-v", "a:b", "key=value"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			in := slices.Clone(c.in)
			got := r.Argv(in)
			if !slices.Equal(got, c.want) {
				t.Errorf("Argv(%q)\n got %q\nwant %q", c.in, got, c.want)
			}
			if !slices.Equal(in, c.in) {
				t.Errorf("Argv changed its input: %q", in)
			}
			if again := r.Argv(got); !slices.Equal(again, got) {
				t.Errorf("redacting twice changed %q to %q", got, again)
			}
		})
	}
}

// A command line without credentials comes back as the same slice.
func TestArgvCopiesNothingWithoutCredentials(t *testing.T) {
	r := testRedactor(t)
	in := []string{"/usr/bin/node", "/srv/mcp/server.mjs", "--stdio"}
	if got := r.Argv(in); &got[0] != &in[0] {
		t.Errorf("a clean argv was copied")
	}
}

// The same secret has the same fingerprint everywhere on a node, another
// secret another one, and another node's key gives another.
func TestFingerprint(t *testing.T) {
	k := testKey(t)
	other, _ := NewKey(bytes.Repeat([]byte{8}, keySize))
	a, b := k.Fingerprint("sk-one"), k.Fingerprint("sk-two")
	if a != k.Fingerprint("sk-one") || a == b || a == other.Fingerprint("sk-one") || len(a) != 2*fingerprintBytes {
		t.Errorf("fingerprints %s %s, other key %s", a, b, other.Fingerprint("sk-one"))
	}
}

// Bad configuration is refused with the value named.
func TestNewRedactorRefuses(t *testing.T) {
	for _, c := range []struct {
		names, patterns []string
		want            string
	}{
		{[]string{" "}, nil, "empty credential name"},
		{nil, []string{"("}, `pattern "("`},
		{nil, []string{"a*"}, `pattern "a*" matches the empty string`},
	} {
		if _, err := NewRedactor(testKey(t), c.names, c.patterns); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("NewRedactor(%q, %q) = %v, want %q", c.names, c.patterns, err, c.want)
		}
	}
}

// FuzzArgv: any argv keeps its length, redacting twice changes nothing,
// and a planted token of a well-known shape never survives, wherever in
// an argument it is put.
func FuzzArgv(f *testing.F) {
	f.Add("curl", "Authorization: Bearer x", 0)
	f.Add("--token", "v", 3)
	f.Add("https://u:p@h/?token=1", "", 7)
	r := testRedactor(f)
	const canary = "ghp_CANARYcanaryCANARYcanaryCANARYcanary00"
	f.Fuzz(func(t *testing.T, a, b string, at int) {
		args := []string{a, b}
		got := r.Argv(args)
		if len(got) != len(args) {
			t.Fatalf("length %d, want %d", len(got), len(args))
		}
		if again := r.Argv(got); !slices.Equal(again, got) {
			t.Fatalf("not idempotent: %q then %q", got, again)
		}
		if at < 0 {
			at = -at
		}
		at %= len(b) + 1
		planted := b[:at] + " " + canary + " " + b[at:]
		for _, s := range r.Argv([]string{a, planted}) {
			if strings.Contains(s, canary) {
				t.Fatalf("canary survived in %q", s)
			}
		}
	})
}

// BenchmarkArgv is the redactor's cost per exec, on a typical command line
// without credentials (the common case, which copies nothing) and on one
// with a bearer token.
func BenchmarkArgv(b *testing.B) {
	r := testRedactor(b)
	for _, c := range []struct {
		name string
		argv []string
	}{
		{"clean", []string{"/usr/bin/node", "/srv/mcp/tickets/server.mjs", "--stdio", "--log-level", "info"}},
		{"bearer", []string{"curl", "-sS", "-H", "Authorization: Bearer sk-proj-Abcdefghijklmnopqrstuvwx0123", "https://api.test/v1/tickets"}},
	} {
		b.Run(c.name, func(b *testing.B) {
			for b.Loop() {
				r.Argv(c.argv)
			}
		})
	}
}
