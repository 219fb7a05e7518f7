package session

import (
	"bytes"
	"encoding/json"
	"errors"
	"testing"

	v1 "github.com/agentfence/agentfence/api/v1"
	"github.com/agentfence/agentfence/scope"
)

// FuzzOpenRequest decodes arbitrary bytes as the API does (strictly) and
// opens the session: Open must never panic, a rejected request must leave
// the kernel and the cgroups untouched, and an accepted one must be fully
// written and fully removed again by Close.
func FuzzOpenRequest(f *testing.F) {
	for _, s := range []string{
		`{"intent":"summarise tickets","scope":["10.0.0.0/8:443","api.example.com:443"]}`,
		`{"intent":"x","mode":"audit","ttl":"90s","scope":["udp://[fd00::]/8:53","essential,exe=/usr/bin/curl,1.1.1.1"]}`,
		`{"intent":"x","origin":{"kind":"agent","principal":"s-1"},"agent":{"id":"spiffe://example.org/a","name":"bot"},"labels":{"team":"red"}}`,
		`{"intent":" ","scope":[]}`,
		`{"intent":"x","ttl":"-1h"}`,
		`{"intent":"x","parent":"s-nope"}`,
		`{"intent":"x","scope":["*.slack.com:443-8443","tcp://0.0.0.0/0:1-65535"]}`,
		`{"intent":"x","labels":{"a\u0001":"b"}}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		dec := json.NewDecoder(bytes.NewReader(data))
		dec.DisallowUnknownFields()
		var req v1.OpenRequest
		if err := dec.Decode(&req); err != nil {
			return
		}
		e := newEnv(t, func(c *Config) { c.MaxRules = 64 })
		s, err := e.r.Open(req, admin)
		if err != nil {
			var ae *v1.Error
			if !errors.As(err, &ae) || ae.Code != v1.CodeInvalid || ae.Message == "" {
				t.Fatalf("Open error = %#v, want an invalid_request *Error", err)
			}
			if w := writes(e.j.since(0)); len(w) != 0 {
				t.Fatalf("rejected Open (%v) wrote %v", err, opNames(w))
			}
			if live := e.cg.live(t); len(live) != 0 {
				t.Fatalf("rejected Open (%v) created cgroups %v", err, live)
			}
			if n := len(e.r.List(Filter{})); n != 0 {
				t.Fatalf("rejected Open (%v) listed %d sessions", err, n)
			}
			return
		}
		if s.Intent == "" || s.State != v1.StateActive || !s.ExpiresAt.After(s.CreatedAt) {
			t.Fatalf("accepted session = %+v", s)
		}
		if len(s.Scope) != len(req.Scope) {
			t.Fatalf("scope %q from %q", s.Scope, req.Scope)
		}
		for _, text := range s.Scope {
			r, err := scope.Parse(text)
			if err != nil || r.String() != text {
				t.Fatalf("scope text %q is not canonical: %v %q", text, err, r.String())
			}
		}
		en := e.entry(t, s.ID)
		if ks := e.k.session(en.slot); ks.Gen != en.gen || ks.State == 0 {
			t.Fatalf("kernel slot = %+v", ks)
		}
		if err := e.r.Close(s.ID, admin); err != nil {
			t.Fatal(err)
		}
		e.k.assertClean(t)
		if live := e.cg.live(t); len(live) != 0 {
			t.Fatalf("cgroups left after close: %v", live)
		}
	})
}
