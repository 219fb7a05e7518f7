package session

import (
	"strings"
	"testing"

	v1 "github.com/agentfence/agentfence/api/v1"
	"github.com/agentfence/agentfence/credential"
)

// A session's credentials mode is kept, carried to the joiner and the
// opened record; an unknown one is refused, naming it, writing nothing.
func TestOpenCredentialsMode(t *testing.T) {
	e := newEnv(t, nil)
	for _, tc := range []struct {
		mode string
		want credential.Mode
	}{{"", credential.ModeAny}, {"any", credential.ModeAny}, {"registered-only", credential.ModeRegisteredOnly}} {
		r := req("credentials "+tc.mode, "api.example.com:443")
		r.Credentials = tc.mode
		s := e.open(t, r, admin)
		if credential.Mode(s.Credentials) != tc.want {
			t.Errorf("credentials %q: session %q, want %q", tc.mode, s.Credentials, tc.want)
		}
		en := e.entry(t, s.ID)
		if a, ok := e.r.Resolve(en.slot, en.gen); !ok || a.Credentials != tc.want {
			t.Errorf("credentials %q: attribution %q (%v)", tc.mode, a.Credentials, ok)
		}
		if rec := e.recs.find(t, s.ID, "opened"); rec.Session.Credentials != string(tc.want) {
			t.Errorf("credentials %q: opened record %q", tc.mode, rec.Session.Credentials)
		}
	}
	mark := e.j.len()
	r := req("bad credentials", "api.example.com:443")
	r.Credentials = "some"
	_, err := e.r.Open(r, admin)
	if ae := wantErr(t, err, v1.CodeInvalid, "credentials"); !strings.Contains(ae.Message, `"some"`) {
		t.Errorf("error %q does not name the mode", ae.Message)
	}
	if w := writes(e.j.since(mark)); len(w) != 0 {
		t.Errorf("refused open wrote %v", opNames(w))
	}
}

// A child of a registered-only session is registered-only: asking for
// any is refused, saying nothing inherits it.
func TestDelegatedCredentialsMode(t *testing.T) {
	d := newDelegation(t)
	p := req("registered only", "10.0.0.0/8:443")
	p.Credentials = "registered-only"
	ps := d.open(t, p, admin)
	d.cg.setOf(6000, ps.Binding.Cgroup)
	member := Caller{ID: "uid:1001", PID: 6000, UID: 1001}
	c, err := d.r.Open(v1.OpenRequest{Intent: "child", Scope: []string{"10.1.0.0/16:443"}}, member)
	if err != nil || c.Credentials != string(credential.ModeRegisteredOnly) {
		t.Fatalf("child: %+v, %v; want registered-only inherited", c.Credentials, err)
	}
	_, err = d.r.Open(v1.OpenRequest{Intent: "wider child", Scope: []string{"10.1.0.0/16:443"}, Credentials: "any"}, member)
	if ae := wantErr(t, err, v1.CodeInvalid, "credentials"); !strings.Contains(ae.Message, "widen") {
		t.Errorf("wider child: %q", ae.Message)
	}
}

// The attribution the joiner gets is built once and shared by the records
// of a session until the registry changes: a narrow is seen at once.
func TestResolveSharedUntilChange(t *testing.T) {
	e := newEnv(t, nil)
	s := e.open(t, req("shared", "10.0.0.0/8", "api.example.com:443"), admin)
	en := e.entry(t, s.ID)
	a1, ok := e.r.Resolve(en.slot, en.gen)
	if a2, _ := e.r.Resolve(en.slot, en.gen); !ok || a1 != a2 {
		t.Fatalf("attribution rebuilt with nothing changed (%v)", ok)
	}
	if len(a1.Rules) != 2 {
		t.Fatalf("rules %v", a1.Rules)
	}
	if _, err := e.r.Narrow(s.ID, v1.NarrowRequest{Scope: []string{"api.example.com:443"}}, admin); err != nil {
		t.Fatal(err)
	}
	a3, _ := e.r.Resolve(en.slot, en.gen)
	if len(a3.Rules) != 1 || a3.RuleName(0) != "api.example.com:443" || a3.RuleName(0) != a3.Rules[0].String() {
		t.Errorf("after the narrow: rules %v", a3.Rules)
	}
	if a1.RuleName(0) != a1.Rules[0].String() || a1.RuleName(1) != "api.example.com:443" {
		t.Errorf("rule names %q %q of %v", a1.RuleName(0), a1.RuleName(1), a1.Rules)
	}
	if len(a1.Rules) != 2 {
		t.Errorf("an attribution handed out changed: %v", a1.Rules)
	}
}
