package session

import (
	"fmt"
	"testing"
	"time"

	v1 "github.com/agentfence/agentfence/api/v1"
	"github.com/agentfence/agentfence/audit"
)

func uncoveredRecord(s v1.Session, exe string) audit.Record {
	return audit.Record{Kind: audit.KindTLSUncovered, Time: time.Unix(1700000000, 0).UTC(),
		Session: &audit.Session{ID: s.ID}, Process: &audit.Process{PID: 7, Exe: exe},
		TLS: &audit.TLS{Library: "go", Uncovered: "Go 1.26 crypto/tls is not probed"}}
}

// A session lists each executable of its tls_uncovered records once, up to
// MaxTLSUncovered, and keeps the list across a restart; other records and
// other sessions' change nothing.
func TestNoteUncovered(t *testing.T) {
	e := stateEnv(t)
	a, b := twoSessions(t, e)
	e.r.NoteUncovered(uncoveredRecord(a, "/usr/local/bin/goclient"))
	e.r.NoteUncovered(uncoveredRecord(a, "/usr/local/bin/goclient"))
	other := uncoveredRecord(a, "/usr/bin/curl")
	other.Kind = audit.KindHTTP
	e.r.NoteUncovered(other)
	got, err := e.r.Get(a.ID, admin)
	if err != nil {
		t.Fatal(err)
	}
	want := v1.TLSUncovered{Exe: "/usr/local/bin/goclient", Library: "go", Reason: "Go 1.26 crypto/tls is not probed", Time: time.Unix(1700000000, 0).UTC()}
	if len(got.TLSUncovered) != 1 || got.TLSUncovered[0] != want {
		t.Fatalf("tls_uncovered %+v, want [%+v]", got.TLSUncovered, want)
	}
	if got, _ := e.r.Get(b.ID, admin); len(got.TLSUncovered) != 0 {
		t.Errorf("another session lists %+v", got.TLSUncovered)
	}
	for i := range v1.MaxTLSUncovered + 5 {
		e.r.NoteUncovered(uncoveredRecord(a, fmt.Sprintf("/tmp/go-%d", i)))
	}
	if got, _ := e.r.Get(a.ID, admin); len(got.TLSUncovered) != v1.MaxTLSUncovered {
		t.Errorf("%d executables listed, want the bound %d", len(got.TLSUncovered), v1.MaxTLSUncovered)
	}
	for _, p := range readState(t, e.cfg.StateFile).Sessions {
		if p.ID == a.ID && (len(p.TLSUncovered) != v1.MaxTLSUncovered || p.TLSUncovered[0] != want) {
			t.Errorf("persisted %d executables, first %+v", len(p.TLSUncovered), p.TLSUncovered)
		}
	}
}
