package enforcer

import (
	"strings"
	"testing"
)

// wire encodes a dotted name as DNS labels, root label included.
func wire(name string) []byte {
	var out []byte
	for _, l := range strings.Split(name, ".") {
		out = append(out, byte(len(l)))
		out = append(out, l...)
	}
	return append(out, 0)
}

func TestSanitizeQueryName(t *testing.T) {
	long := strings.Repeat("a", 63) + "." + strings.Repeat("b", 63) + ".example"
	cases := []struct {
		raw       []byte
		want      string
		truncated bool
	}{
		{wire("aGVsbG8.evil.example"), "aGVsbG8.evil.example", false},
		{wire("API.Example.COM"), "API.Example.COM", false},
		{[]byte{0}, ".", false},
		{[]byte{3, 'a', 0, 'b', 2, 'x', 'y', 0}, `a\000b.xy`, false},
		{[]byte{3, 'a', '.', ' ', 1, '\\', 0}, `a\046\032.\092`, false},
		{[]byte{2, 0xff, 0x7f, 0}, `\255\127`, false},
		{[]byte{1, 'a', 0xC0, 12}, `a.\192`, false},
		{[]byte{5, 'a', 'b'}, "ab", true},
		{[]byte{1, 'a'}, "a", true},
		{wire(long)[:64], strings.Repeat("a", 63), true},
		{wire(long), strings.Repeat("a", 63) + ".", true},
		{nil, "", true},
	}
	for _, c := range cases {
		got, tr := SanitizeQueryName(c.raw)
		if got != c.want || tr != c.truncated {
			t.Errorf("SanitizeQueryName(%q) = %q, %v; want %q, %v", c.raw, got, tr, c.want, c.truncated)
		}
	}
	// A cut never splits an escape.
	raw := append([]byte{63, 'x'}, []byte(strings.Repeat("\x01", 62))...)
	got, tr := SanitizeQueryName(append(raw, 0))
	if !tr || got != "x"+strings.Repeat(`\001`, 15) {
		t.Errorf("escapes cut: %q (%d bytes), truncated %v", got, len(got), tr)
	}
}

func FuzzSanitizeQueryName(f *testing.F) {
	f.Add(wire("aGVsbG8.evil.example"))
	f.Add([]byte{0})
	f.Add([]byte{1, 'a', 0xC0, 12})
	f.Add([]byte{3, 'a', '.', ' ', 1, '\\', 0})
	f.Fuzz(func(t *testing.T, raw []byte) {
		got, _ := SanitizeQueryName(raw)
		if len(got) > MaxQueryName {
			t.Fatalf("%d bytes, more than %d", len(got), MaxQueryName)
		}
		for i := 0; i < len(got); i++ {
			if got[i] <= ' ' || got[i] > '~' {
				t.Fatalf("byte %#x at %d of %q is not printable ASCII", got[i], i, got)
			}
		}
		if again, _ := SanitizeQueryName(raw); again != got {
			t.Fatalf("not deterministic: %q then %q", got, again)
		}
	})
}
