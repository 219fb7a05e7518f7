package main

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/agentfence/agentfence/attribution"
	"github.com/agentfence/agentfence/audit"
	"github.com/agentfence/agentfence/internal/boottime"
	"github.com/agentfence/agentfence/sensor"
	"github.com/agentfence/agentfence/session"
)

// everyMember puts every process in one session.
type everyMember struct{}

func (everyMember) Resolve(uint32, uint64) (*session.Attribution, bool) {
	return nil, false
}
func (everyMember) SessionOf(uint32, string, uint64, uint64) (session.Attribution, bool) {
	return session.Attribution{Session: audit.Session{ID: "s-1"}}, true
}
func (everyMember) Escaped(uint32, uint64) {}

// TestExecsJudgedWhileMemberWorks: a launch is judged while the work on
// an earlier exec (the TLS probes of the agent that launched it) is still
// going on, and Sync waits for that work too.
func TestExecsJudgedWhileMemberWorks(t *testing.T) {
	p := &processes{execs: make(chan execItem, 8)}
	j := &attribution.Joiner{Sessions: everyMember{}, Clock: boottime.NewClock()}
	judged := make(chan uint32, 8)
	release := make(chan struct{})
	var once sync.Once
	free := func() { once.Do(func() { close(release) }) }
	var seen []uint32
	member := func(rec audit.Record, _ sensor.ExeID) {
		if rec.Process.PID == 1 {
			<-release // the agent's executable takes long to probe
		}
		seen = append(seen, rec.Process.PID)
	}
	launched := func(tgid uint32) (session.Launch, bool) { judged <- tgid; return session.Launch{}, false }
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { p.emitExecs(ctx, j, launched, func(audit.Record) {}, member); close(done) }()
	defer func() { free(); cancel(); <-done }()

	p.execs <- execItem{ev: &sensor.ExecEvent{TGID: 1, PID: 1, Filename: "/agent"}}
	p.execs <- execItem{ev: &sensor.ExecEvent{TGID: 2, PID: 2, Filename: "/server"}}
	for _, want := range []uint32{1, 2} {
		select {
		case got := <-judged:
			if got != want {
				t.Fatalf("judged %d, want %d", got, want)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("exec %d not judged while the work on exec 1 goes on", want)
		}
	}
	synced := make(chan struct{})
	go func() { p.Sync(context.Background()); close(synced) }()
	select {
	case <-synced:
		t.Fatal("Sync returned before member saw every exec")
	case <-time.After(100 * time.Millisecond):
	}
	free()
	<-synced
	if len(seen) != 2 || seen[0] != 1 || seen[1] != 2 {
		t.Errorf("member saw %v, want [1 2]", seen)
	}
}
