package config

import (
	"bytes"
	"testing"
)

// FuzzParse checks that Parse never panics, and that whatever it accepts
// survives Marshal → Parse unchanged and still validates. The seed corpus is
// in testdata/fuzz/FuzzParse; run longer with
//
//	go test -run '^$' -fuzz FuzzParse -fuzztime 60s ./config
func FuzzParse(f *testing.F) {
	f.Add([]byte(fullConfig))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse(data)
		if err != nil {
			if err.Error() == "" {
				t.Fatal("empty error message")
			}
			return
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("Parse accepted a config that does not validate: %v", err)
		}
		out, err := c.Marshal()
		if err != nil {
			t.Fatalf("Marshal: %v", err)
		}
		back, err := Parse(out)
		if err != nil {
			t.Fatalf("Parse(Marshal(c)) = %v\ninput:\n%q\nmarshaled:\n%s", err, data, out)
		}
		out2, err := back.Marshal()
		if err != nil {
			t.Fatalf("Marshal(back): %v", err)
		}
		if !bytes.Equal(out, out2) {
			t.Fatalf("round trip is not stable:\nfirst:\n%s\nsecond:\n%s", out, out2)
		}
	})
}
