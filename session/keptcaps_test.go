package session

import (
	"slices"
	"strings"
	"testing"

	v1 "github.com/agentfence/agentfence/api/v1"
)

// The capabilities a launcher kept are checked, written canonically once
// each in the gate set's order, shown by Get, carried by the session's
// lifecycle records and kept across a restart.
func TestOpenKeptCaps(t *testing.T) {
	e := stateEnv(t)
	s := e.open(t, v1.OpenRequest{Intent: "capture", Scope: []string{"10.0.0.0/8:443"},
		KeptCaps: []string{"net_raw", "CAP_SYS_PTRACE", "Net_Raw"}}, admin)
	want := []string{"CAP_NET_RAW", "CAP_SYS_PTRACE"}
	if !slices.Equal(s.KeptCaps, want) {
		t.Errorf("kept caps = %q, want %q", s.KeptCaps, want)
	}
	s.KeptCaps[0] = "changed"
	if g := e.get(t, s.ID); !slices.Equal(g.KeptCaps, want) {
		t.Errorf("Get = %q, want %q (Open returned the registry's own slice?)", g.KeptCaps, want)
	}
	if rec := e.recs.find(t, s.ID, "opened"); !slices.Equal(rec.Session.KeptCaps, want) {
		t.Errorf("opened record kept caps = %q, want %q", rec.Session.KeptCaps, want)
	}

	r2 := e.registry(e.k)
	if _, _, err := r2.Restore(); err != nil {
		t.Fatal(err)
	}
	e.r = r2
	if g := e.get(t, s.ID); !slices.Equal(g.KeptCaps, want) {
		t.Errorf("after a restart: %q, want %q", g.KeptCaps, want)
	}
	if err := e.r.Close(s.ID, admin); err != nil {
		t.Fatal(err)
	}
	if rec := e.recs.find(t, s.ID, "closed"); !slices.Equal(rec.Session.KeptCaps, want) {
		t.Errorf("closed record kept caps = %q, want %q", rec.Session.KeptCaps, want)
	}

	// Nothing kept: nothing said.
	n := e.open(t, req("plain", "10.0.0.0/8:443"), admin)
	if n.KeptCaps != nil || e.recs.find(t, n.ID, "opened").Session.KeptCaps != nil {
		t.Errorf("a session without kept caps has %q", n.KeptCaps)
	}
}

func TestOpenRejectsBadKeptCaps(t *testing.T) {
	for _, c := range []struct {
		caps  []string
		field string
		msg   string
	}{
		{[]string{"bogus"}, "kept_caps[0]", `"bogus"`},
		{[]string{"net_raw", ""}, "kept_caps[1]", `""`},
		{[]string{"CAP_NET_RAW2"}, "kept_caps[0]", "CAP_NET_RAW2"},
		{[]string{"13"}, "kept_caps[0]", `"13"`},
		// A real capability that agentfence run does not drop.
		{[]string{"chown"}, "kept_caps[0]", "CAP_CHOWN is not one"},
	} {
		e := newEnv(t, nil)
		_, err := e.r.Open(v1.OpenRequest{Intent: "x", Scope: []string{"10.0.0.0/8:443"}, KeptCaps: c.caps}, admin)
		if got := wantErr(t, err, v1.CodeInvalid, c.field); !strings.Contains(got.Message, c.msg) {
			t.Errorf("%q: message %q does not name %s", c.caps, got.Message, c.msg)
		}
		if w := writes(e.j.since(0)); len(w) != 0 {
			t.Errorf("%q: rejected Open wrote %v", c.caps, opNames(w))
		}
		if live := e.cg.live(t); len(live) != 0 {
			t.Errorf("%q: rejected Open created cgroups %v", c.caps, live)
		}
		if n := len(e.recs.all()); n != 0 {
			t.Errorf("%q: rejected Open emitted %d records", c.caps, n)
		}
	}
}
