package session

import (
	"slices"
	"testing"

	v1 "github.com/agentfence/agentfence/api/v1"
)

// TestEscapedMember: once the joiner reports that a member left the
// session's cgroup, the session's hostname programs move to the root,
// where the member's packets pass now, and closing the session kills the
// member outside its cgroup.
func TestEscapedMember(t *testing.T) {
	e := newEnv(t, nil)
	s := e.open(t, v1.OpenRequest{Intent: "sync", Scope: []string{"tcp://127.0.0.1:8080", "api.example.com:443"}}, admin)
	en := e.entry(t, s.ID)
	// What the process programs do in the kernel: the member is bound by
	// pid, so it is still found after it left the cgroup.
	const member = 4242
	if err := e.k.BindPid(member, en.slot, en.gen); err != nil {
		t.Fatal(err)
	}
	if e.k.hooks[e.cfg.CgroupRoot] != 0 {
		t.Fatalf("hostname hooks %v before any escape", e.k.hooks)
	}
	e.r.Escaped(en.slot, en.gen)
	e.r.Escaped(en.slot, en.gen)   // reported twice, hooked once
	e.r.Escaped(en.slot, en.gen+1) // another generation: not this session
	if e.k.hooks[e.cfg.CgroupRoot] != 1 || e.k.hooks[s.Binding.Cgroup] != 0 {
		t.Errorf("hostname hooks %v: want only the root hooked once a member left the session cgroup", e.k.hooks)
	}

	if err := e.r.Close(s.ID, admin); err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(e.cg.killedPIDs, member) {
		t.Errorf("killed %v at close, want the escaped member %d", e.cg.killedPIDs, member)
	}
	if _, _, ok := e.k.PidBinding(member); ok {
		t.Error("the escaped member's binding outlived the session")
	}
	if len(e.k.hooks) != 0 {
		t.Errorf("hooks left after close: %v", e.k.hooks)
	}
}
