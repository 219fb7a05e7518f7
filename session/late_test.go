package session

import (
	"testing"

	"github.com/agentfence/agentfence/internal/boottime"
)

// A member's event from before its session closed, read after (its pid
// binding gone), is still the session's by its cgroup, or by the cgroup's
// id when the path is gone too; an event from after the close, or from
// another cgroup, is nobody's.
func TestSessionOfLateEvent(t *testing.T) {
	e := newEnv(t, nil)
	s := e.open(t, req("short", "10.0.0.0/8:443"), admin)
	other := e.open(t, req("other", "10.0.0.0/8:443"), admin)
	sid, oid := e.entry(t, s.ID).cgroupID, e.entry(t, other.ID).cgroupID
	if sid == 0 || oid == 0 || sid == oid {
		t.Fatalf("cgroup ids %d and %d", sid, oid)
	}
	before := boottime.Now()
	if err := e.r.Close(s.ID, admin); err != nil {
		t.Fatal(err)
	}
	after := boottime.Now()
	for _, tc := range []struct {
		name, cgroup string
		id, at       uint64
		want         string
	}{
		{"its cgroup, before the close", s.Binding.Cgroup, 0, before, s.ID},
		{"below its cgroup, before the close", s.Binding.Cgroup + "/worker", 0, before, s.ID},
		{"its cgroup's id, before the close", "", sid, before, s.ID},
		{"its cgroup, after the close", s.Binding.Cgroup, sid, after, ""},
		{"a sibling named like it", s.Binding.Cgroup + "x", 0, before, ""},
		{"an open session's cgroup", other.Binding.Cgroup, 0, before, other.ID},
		{"an open session's cgroup id", "", oid, after, other.ID},
		{"neither", "", 0, before, ""},
	} {
		a, ok := e.r.SessionOf(99999, tc.cgroup, tc.id, tc.at)
		if got := a.Session.ID; ok != (tc.want != "") || got != tc.want {
			t.Errorf("%s: %q (%v), want %q", tc.name, got, ok, tc.want)
		}
	}
}
