package session

import (
	"strings"
	"testing"

	v1 "github.com/agentfence/agentfence/api/v1"
	"github.com/agentfence/agentfence/scope"
)

func TestOpenDNSMode(t *testing.T) {
	e := newEnv(t, nil)
	for _, tc := range []struct {
		dns  string
		want scope.DNSMode
	}{{"", scope.DNSScoped}, {"any", scope.DNSAny}, {"scoped", scope.DNSScoped}, {"none", scope.DNSNone}} {
		r := req("dns "+tc.dns, "udp://127.0.0.53:53", "api.example.com:443")
		r.DNS = tc.dns
		s := e.open(t, r, admin)
		if scope.DNSMode(s.DNS) != tc.want {
			t.Errorf("dns %q: session dns %q, want %q", tc.dns, s.DNS, tc.want)
		}
		if ks := e.k.session(e.entry(t, s.ID).slot); ks.DNS != tc.want {
			t.Errorf("dns %q: kernel dns %q, want %q", tc.dns, ks.DNS, tc.want)
		}
		if rec := e.recs.find(t, s.ID, "opened"); rec.Session.DNS != string(tc.want) {
			t.Errorf("dns %q: opened record dns %q", tc.dns, rec.Session.DNS)
		}
	}

	// An unknown mode is refused, naming it, and nothing is written.
	mark := e.j.len()
	r := req("bad dns", "udp://127.0.0.53:53")
	r.DNS = "some"
	_, err := e.r.Open(r, admin)
	if ae := wantErr(t, err, v1.CodeInvalid, "dns"); !strings.Contains(ae.Message, `"some"`) {
		t.Errorf("error %q does not name the mode", ae.Message)
	}
	if w := writes(e.j.since(mark)); len(w) != 0 {
		t.Errorf("refused open wrote %v", opNames(w))
	}
}

// A child's dns mode is never wider than its parent's (none < scoped <
// any); left out, it is the default or the parent's, whichever is
// stricter.
func TestDelegatedDNSMode(t *testing.T) {
	d := newDelegation(t) // the parent's dns is the default, scoped
	for _, tc := range []struct {
		dns  string
		want scope.DNSMode // "" = refused
	}{{"", scope.DNSScoped}, {"none", scope.DNSNone}, {"scoped", scope.DNSScoped}, {"any", ""}} {
		r := v1.OpenRequest{Intent: "child dns " + tc.dns, Scope: []string{"api.example.com:443"}, DNS: tc.dns}
		mark := d.j.len()
		c, err := d.r.Open(r, d.agent)
		if tc.want == "" {
			if ae := wantErr(t, err, v1.CodeInvalid, "dns"); !strings.Contains(ae.Message, "widen") {
				t.Errorf("dns %q: %q", tc.dns, ae.Message)
			}
			if w := writes(d.j.since(mark)); len(w) != 0 {
				t.Errorf("refused child wrote %v", opNames(w))
			}
			continue
		}
		if err != nil {
			t.Fatalf("dns %q: %v", tc.dns, err)
		}
		if scope.DNSMode(c.DNS) != tc.want {
			t.Errorf("child dns %q: got %q, want %q", tc.dns, c.DNS, tc.want)
		}
	}

	// Under a parent with none, a child that says nothing gets none, and
	// one that asks for scoped is refused.
	p := req("no dns", "10.0.0.0/8:443")
	p.DNS = "none"
	ps := d.open(t, p, admin)
	d.cg.setOf(6000, ps.Binding.Cgroup)
	member := Caller{ID: "uid:1001", PID: 6000, UID: 1001}
	c, err := d.r.Open(v1.OpenRequest{Intent: "child", Scope: []string{"10.1.0.0/16:443"}}, member)
	if err != nil || scope.DNSMode(c.DNS) != scope.DNSNone {
		t.Errorf("child of a none parent: %q, %v", c.DNS, err)
	}
	_, err = d.r.Open(v1.OpenRequest{Intent: "child", Scope: []string{"10.1.0.0/16:443"}, DNS: "scoped"}, member)
	wantErr(t, err, v1.CodeInvalid, "dns")
}
