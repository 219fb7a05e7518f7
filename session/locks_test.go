package session

import (
	"slices"
	"testing"
	"time"

	v1 "github.com/agentfence/agentfence/api/v1"
	"github.com/agentfence/agentfence/audit"
)

// stuckKernel holds every HookHostnames call until released, as a slow
// BPF link attach would.
type stuckKernel struct {
	*fakeKernel
	entered, release chan struct{}
}

func (k stuckKernel) HookHostnames(path string) error {
	k.entered <- struct{}{}
	<-k.release
	return k.fakeKernel.HookHostnames(path)
}

// returns fails the test unless f returns within a generous bound: a
// reader that waits for the stuck change never would.
func returns(t *testing.T, what string, f func()) {
	t.Helper()
	done := make(chan struct{})
	go func() { defer close(done); f() }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatalf("%s waited for a change stuck in the kernel", what)
	}
}

// The joiner, the API's readers and the metrics scrape never wait for a
// change's system calls.
func TestReadersDoNotWaitForKernelCalls(t *testing.T) {
	e := newEnv(t, nil)
	k := stuckKernel{fakeKernel: e.k, entered: make(chan struct{}), release: make(chan struct{})}
	r := NewRegistry(e.cfg, Deps{Kernel: k, Cgroups: e.cg, Sockets: e.sk, Clock: e.clock, Emit: e.recs.emit})
	a, err := r.Open(req("addresses only", "tcp://127.0.0.1:443"), admin)
	if err != nil {
		t.Fatal(err)
	}
	ea := r.byID[a.ID]

	opened := make(chan error, 1)
	go func() {
		_, err := r.Open(req("needs the hostname programs", "api.example.com:443"), admin)
		opened <- err
	}()
	<-k.entered // the second Open is in the kernel, holding its turn

	returns(t, "List", func() {
		if got := ids(r.List(Filter{})); len(got) != 1 || got[0] != a.ID {
			t.Errorf("List = %v, want only %s (the other is not open yet)", got, a.ID)
		}
	})
	returns(t, "Get", func() {
		if _, err := r.Get(a.ID, admin); err != nil {
			t.Error(err)
		}
	})
	returns(t, "Resolve", func() {
		if at, ok := r.Resolve(ea.slot, ea.gen); !ok || at.Session.ID != a.ID {
			t.Errorf("Resolve = %+v %v", at, ok)
		}
	})
	returns(t, "MemberOf", func() { r.MemberOf(1) })
	returns(t, "StateCounts", func() {
		if n := r.StateCounts()[v1.StateActive]; n != 1 {
			t.Errorf("%d active, want 1", n)
		}
	})

	close(k.release)
	if err := <-opened; err != nil {
		t.Fatal(err)
	}
	if n := len(r.List(Filter{})); n != 2 {
		t.Errorf("%d sessions after the stuck Open finished, want 2", n)
	}
}

// An audit queue that is full blocks Emit. Records are delivered outside
// the registry's locks: readers and other changes go on meanwhile, and the
// records still arrive in the order the changes made them.
func TestEmitBlockedBlocksNoOne(t *testing.T) {
	e := newEnv(t, nil)
	entered, release := make(chan struct{}), make(chan struct{})
	first := true
	emit := func(rec audit.Record) {
		if first {
			first = false
			entered <- struct{}{}
			<-release
		}
		e.recs.emit(rec)
	}
	r := NewRegistry(e.cfg, Deps{Kernel: e.k, Cgroups: e.cg, Sockets: e.sk, Clock: e.clock, Emit: emit})

	opened := make(chan v1.Session, 1)
	go func() {
		s, err := r.Open(req("first", "tcp://127.0.0.1:443"), admin)
		if err != nil {
			t.Error(err)
		}
		opened <- s
	}()
	<-entered // its "opened" record is stuck in Emit

	var b v1.Session
	returns(t, "another Open", func() {
		var err error
		if b, err = r.Open(req("second", "tcp://127.0.0.1:443"), admin); err != nil {
			t.Error(err)
		}
	})
	returns(t, "Revoke", func() {
		if _, err := r.Revoke(b.ID, admin); err != nil {
			t.Error(err)
		}
	})
	returns(t, "List", func() {
		if n := len(r.List(Filter{})); n != 2 {
			t.Errorf("List has %d sessions, want 2", n)
		}
	})
	close(release)
	a := <-opened

	var got []string
	for _, rec := range e.recs.all() {
		got = append(got, rec.Session.ID+" "+rec.Event)
	}
	want := []string{a.ID + " opened", b.ID + " opened", b.ID + " revoked"}
	if !slices.Equal(got, want) {
		t.Errorf("records %v, want %v", got, want)
	}
}
