package attribution

import (
	"testing"
	"time"

	"github.com/agentfence/agentfence/audit"
	"github.com/agentfence/agentfence/scope"
	"github.com/agentfence/agentfence/session"
)

// fakeSessions stands in for the session registry: the sessions it knows
// by slot and generation, and by pid binding.
type fakeSessions struct {
	bySlot  map[[2]uint64]*session.Attribution
	byPid   map[uint32]session.Attribution
	escaped [][2]uint64
}

func newSessions() *fakeSessions {
	return &fakeSessions{bySlot: map[[2]uint64]*session.Attribution{}, byPid: map[uint32]session.Attribution{}}
}

// add makes a session known in slot/gen with the rules texts.
func (f *fakeSessions) add(t testing.TB, slot uint32, gen uint64, a session.Attribution, rules ...string) session.Attribution {
	t.Helper()
	for _, text := range rules {
		r, err := scope.Parse(text)
		if err != nil {
			t.Fatal(err)
		}
		a.Rules = append(a.Rules, r)
	}
	f.bySlot[[2]uint64{uint64(slot), gen}] = session.Shared(a) // as the registry resolves it
	return a
}

func (f *fakeSessions) Resolve(slot uint32, gen uint64) (*session.Attribution, bool) {
	a, ok := f.bySlot[[2]uint64{uint64(slot), gen}]
	return a, ok
}

func (f *fakeSessions) SessionOf(tgid uint32, _ string, _, _ uint64) (session.Attribution, bool) {
	a, ok := f.byPid[tgid]
	return a, ok
}

func (f *fakeSessions) Escaped(slot uint32, gen uint64) {
	f.escaped = append(f.escaped, [2]uint64{uint64(slot), gen})
}

func attribution(id, intent string) session.Attribution {
	return session.Attribution{Session: audit.Session{ID: id, Intent: intent, Mode: "enforce"},
		Origin: &audit.Origin{Kind: "human", Principal: "admin@example.com"}}
}

func near(a, b time.Time, d time.Duration) bool { return a.Sub(b).Abs() <= d }
