package session

import (
	"errors"
	"os/exec"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
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

// waitFor reports whether cond came to hold within a generous bound.
func waitFor(cond func() bool) bool {
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			return false
		}
	}
	return true
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	if !waitFor(cond) {
		t.Fatalf("%s never happened", what)
	}
}

// stuckEmit returns an Emit whose first call blocks until release is
// closed, as a full audit queue would; entered is closed when it does.
func stuckEmit(e *env) (emit func(audit.Record), entered, release chan struct{}) {
	entered, release = make(chan struct{}), make(chan struct{})
	var once sync.Once
	emit = func(rec audit.Record) {
		stuck := false
		once.Do(func() { stuck = true })
		if stuck {
			close(entered)
			<-release
		}
		e.recs.emit(rec)
	}
	return emit, entered, release
}

// An audit queue that is full blocks Emit. Records are delivered outside
// the registry's locks: readers go on and other changes are applied
// meanwhile. Each caller returns only once its records are out, so the
// records arrive in the order the changes made them and nothing the
// caller does next can overtake them.
func TestEmitBlockedHoldsOnlyItsCallers(t *testing.T) {
	e := newEnv(t, nil)
	emit, entered, release := stuckEmit(e)
	r := NewRegistry(e.cfg, Deps{Kernel: e.k, Cgroups: e.cg, Sockets: e.sk, Clock: e.clock, Emit: emit})

	returned := make(chan v1.Session, 2)
	open := func(intent string) {
		s, err := r.Open(req(intent, "tcp://127.0.0.1:443"), admin)
		if err != nil {
			t.Error(err)
		}
		returned <- s
	}
	go open("first")
	<-entered // its "opened" record is stuck in Emit
	go open("second")

	// The second Open is applied (readers see it) but has not returned.
	var b v1.Session
	eventually(t, "the second Open applied", func() bool {
		for _, s := range r.List(Filter{}) {
			if s.Intent == "second" {
				b = s
				return true
			}
		}
		return false
	})
	revoked := make(chan error, 1)
	go func() { _, err := r.Revoke(b.ID, admin); revoked <- err }()
	eventually(t, "the Revoke applied", func() bool {
		s, err := r.Get(b.ID, admin)
		return err == nil && s.State == v1.StateRevoked
	})
	select {
	case s := <-returned:
		t.Fatalf("Open %q returned before its record was delivered", s.Intent)
	case err := <-revoked:
		t.Fatalf("Revoke returned (%v) before its record was delivered", err)
	default:
	}

	close(release)
	a := <-returned
	if a.Intent != "first" {
		a = <-returned
	} else {
		<-returned
	}
	if err := <-revoked; err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, rec := range e.recs.all() {
		got = append(got, rec.Session.ID+" "+rec.Event)
	}
	want := []string{a.ID + " opened", b.ID + " opened", b.ID + " revoked"}
	if !slices.Equal(got, want) {
		t.Errorf("records %v, want %v", got, want)
	}
}

// The event reader emits the joiner's records itself and calls Quarantined
// between a denial and the next: the "quarantined" record must be in the
// trail before Quarantined returns, even while another change's records
// are stuck in Emit, or the next denial overtakes it.
func TestQuarantinedReturnsAfterItsRecord(t *testing.T) {
	e := newEnv(t, nil)
	emit, entered, release := stuckEmit(e)
	r := NewRegistry(e.cfg, Deps{Kernel: e.k, Cgroups: e.cg, Sockets: e.sk, Clock: e.clock, Emit: e.recs.emit})
	b, err := r.Open(req("b", "tcp://127.0.0.1:443"), admin)
	if err != nil {
		t.Fatal(err)
	}
	r.out.emit = emit // from here on, the first record sticks
	eb := r.byID[b.ID]

	go func() { // an API Open whose "opened" record is stuck in a full audit queue
		if _, err := r.Open(req("a", "tcp://127.0.0.1:443"), admin); err != nil {
			t.Error(err)
		}
	}()
	<-entered
	e.recs.emit(audit.Record{Kind: "denial#1", Session: &audit.Session{ID: b.ID}})
	go func() {
		if !waitFor(func() bool {
			r.out.mu.Lock()
			defer r.out.mu.Unlock()
			return len(r.out.queue) > 0
		}) {
			t.Error("Quarantined queued no record")
		}
		close(release)
	}()
	r.Quarantined(eb.slot, eb.gen)
	e.recs.emit(audit.Record{Kind: "denial#2", Session: &audit.Session{ID: b.ID}})

	var got []string
	for _, rec := range e.recs.all() {
		if rec.Session.ID == b.ID {
			got = append(got, rec.Kind+"/"+rec.Event)
		}
	}
	want := []string{"session/opened", "denial#1/", "session/quarantined", "denial#2/"}
	if !slices.Equal(got, want) {
		t.Errorf("trail for b = %v, want %v", got, want)
	}
}

// Changes, readers and the reaper all at once (run with -race): every
// session's records run opened … closed, with nothing after closed, and
// every record is delivered.
func TestConcurrentChangesKeepEachSessionsOrder(t *testing.T) {
	const writers, rounds = 8, 8
	e := newEnv(t, nil)
	var pids []uint32
	for range writers {
		c := exec.Command("sleep", "60")
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Process.Kill(); c.Wait() })
		pids = append(pids, uint32(c.Process.Pid))
	}
	var n atomic.Int64
	r := NewRegistry(e.cfg, Deps{Kernel: e.k, Cgroups: e.cg, Sockets: e.sk, Clock: e.clock, Emit: func(rec audit.Record) {
		if n.Add(1)%7 == 0 {
			runtime.Gosched() // let other changes queue behind a slow delivery
		}
		e.recs.emit(rec)
	}})

	stop := make(chan struct{})
	var background sync.WaitGroup
	for range 4 {
		background.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				for _, s := range r.List(Filter{Caller: &admin}) {
					r.Get(s.ID, admin)
				}
				r.MemberOf(int(pids[0]))
				r.SessionOf(pids[1], "", 0, 0)
				for slot := uint32(1); slot < 10; slot++ {
					if a, ok := r.Resolve(slot, 1); ok {
						for _, x := range a.Rules {
							_ = x.String()
						}
					}
				}
				r.StateCounts()
			}
		})
	}
	background.Go(func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(time.Millisecond):
				r.Reap(time.Now().Add(time.Hour))
			}
		}
	})

	var opened sync.Map
	var writing sync.WaitGroup
	for _, pid := range pids {
		writing.Go(func() {
			for i := range rounds {
				s, err := r.Open(v1.OpenRequest{Intent: "w", Scope: []string{"tcp://10.0.0.0/8:443", "api.example.com:443"}, TTL: "1h"}, admin)
				if err != nil {
					t.Error(err)
					return
				}
				opened.Store(s.ID, true)
				if c, err := r.Open(v1.OpenRequest{Intent: "child", Parent: s.ID, Scope: []string{"tcp://10.1.0.0/16:443"}}, admin); err == nil {
					opened.Store(c.ID, true)
				}
				r.Bind(s.ID, v1.BindRequest{PID: pid}, admin)
				r.Narrow(s.ID, v1.NarrowRequest{Scope: []string{"tcp://10.0.0.0/9:443"}}, admin)
				r.mu.RLock()
				en := r.byID[s.ID]
				r.mu.RUnlock()
				if en != nil {
					if i%2 == 0 {
						r.Quarantined(en.slot, en.gen)
					}
					r.Escaped(en.slot, en.gen)
				}
				if i%3 == 0 {
					r.Revoke(s.ID, admin)
				}
				if err := r.Close(s.ID, admin); err != nil && !isCode(err, v1.CodeNotFound) {
					t.Error(err)
				}
				e.k.UnbindPid(pid) // the fake keeps pid bindings Close leaves to the kernel
			}
		})
	}
	writing.Wait()
	close(stop)
	background.Wait()

	count := 0
	opened.Range(func(k, _ any) bool {
		count++
		lc := e.recs.lifecycle(k.(string))
		if len(lc) == 0 || lc[0] != "opened" || slices.Index(lc, "closed") != len(lc)-1 {
			t.Errorf("session %s records %v", k, lc)
		}
		return true
	})
	if count < writers*rounds {
		t.Errorf("%d sessions opened, want at least %d", count, writers*rounds)
	}
	if left := r.List(Filter{}); len(left) != 0 {
		t.Errorf("sessions left: %v", ids(left))
	}
}

func isCode(err error, c v1.Code) bool {
	var e *v1.Error
	return errors.As(err, &e) && e.Code == c
}
