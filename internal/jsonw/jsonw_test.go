package jsonw

import (
	"bytes"
	"encoding/json"
	"slices"
	"testing"
)

// reference is encoding/json's encoding of v with HTML escaping off and
// without the Encoder's newline.
func reference(t *testing.T, v any) []byte {
	t.Helper()
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		t.Fatal(err)
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n"))
}

// TestString checks the string escaper byte by byte against
// encoding/json for every single byte and for a sweep of runes.
func TestString(t *testing.T) {
	check := func(s string) {
		t.Helper()
		if got, want := String(nil, s), reference(t, s); !bytes.Equal(got, want) {
			t.Fatalf("%q: got %s want %s", s, got, want)
		}
	}
	plain := []byte("0123456789abcdefghijklmnopqrstu") // crosses the 8-byte fast path
	for b := range 256 {
		check(string([]byte{byte(b)}))
		check("a" + string([]byte{byte(b)}) + "z")
		for pos := range plain {
			s := slices.Clone(plain)
			s[pos] = byte(b)
			check(string(s))
		}
	}
	for r := rune(0); r < 0x11000; r += 7 {
		check("x" + string(r))
	}
	for _, s := range []string{"bad\xff\xfe utf8 \xc3 \xe2\x80 \xed\xa0\x80 \xf4\x90\x80\x80", "\xe2\x80\xa8\xe2\x80\xa9", "trailing\xe2"} {
		check(s)
	}
}
