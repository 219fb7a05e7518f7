package ringreader

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/rlimit"

	"github.com/agentfence/agentfence/internal/privtest"
)

// Sync returns once every record submitted before it has been handled, and
// without waiting for the poll interval.
func TestSync(t *testing.T) {
	m, prog := submitter(t)
	rd, handled := start(t, m, nil)
	for round := 1; round <= 20; round++ {
		submit(t, prog)
		begin := time.Now()
		syncWithin10s(rd)
		if got := handled.Load(); got != int64(round) {
			t.Fatalf("round %d: %d records handled after Sync", round, got)
		}
		if d := time.Since(begin); d > 5*time.Second {
			t.Fatalf("Sync took %s", d)
		}
	}
}

// start runs a reader of m with a poll interval of an hour (only Sync and
// wakeups make records show up quickly), counting the records handled;
// caughtUp, if set, is called at its OnCaughtUp with the count so far. The
// test's end stops it and checks that Run returned no error.
func start(t *testing.T, m *ebpf.Map, caughtUp func(handled int64)) (*Reader, *atomic.Int64) {
	t.Helper()
	rd, err := New(m, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	handled := new(atomic.Int64)
	if caughtUp != nil {
		rd.OnCaughtUp(func() { caughtUp(handled.Load()) })
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- rd.Run(ctx, func([]byte) { handled.Add(1) }) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	return rd, handled
}

func submit(t *testing.T, prog *ebpf.Program) {
	t.Helper()
	if _, err := prog.Run(&ebpf.RunOptions{Data: make([]byte, 14)}); err != nil {
		t.Fatal(err)
	}
}

func syncWithin10s(rd *Reader) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rd.Sync(ctx)
}

// submitter makes a ring buffer and a program that submits one 8-byte
// record to it without waking the reader, each time it runs.
func submitter(t *testing.T) (*ebpf.Map, *ebpf.Program) {
	return submitterFlags(t, 1) // BPF_RB_NO_WAKEUP
}

// submitterFlags is submitter with the submit's flags.
func submitterFlags(t *testing.T, flags int64) (*ebpf.Map, *ebpf.Program) {
	t.Helper()
	privtest.RequireRoot(t)
	if err := rlimit.RemoveMemlock(); err != nil {
		t.Fatal(err)
	}
	m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.RingBuf, MaxEntries: 1 << 16})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	// A program that submits one 8-byte record without waking the reader.
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.SocketFilter, License: "GPL", Instructions: asm.Instructions{
		asm.LoadMapPtr(asm.R1, m.FD()),
		asm.Mov.Imm(asm.R2, 8),
		asm.Mov.Imm(asm.R3, 0),
		asm.FnRingbufReserve.Call(),
		asm.JEq.Imm(asm.R0, 0, "out"),
		asm.Mov.Reg(asm.R1, asm.R0),
		asm.Mov.Imm(asm.R2, 42),
		asm.StoreMem(asm.R1, 0, asm.R2, asm.DWord),
		asm.Mov.Imm(asm.R2, int32(flags)),
		asm.FnRingbufSubmit.Call(),
		asm.Mov.Imm(asm.R0, 0).WithSymbol("out"),
		asm.Return(),
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { prog.Close() })
	return m, prog
}

// A record submitted with a wakeup (as the gate submits denials) is read
// at once, by a reader whose poll interval is an hour: the kernel's wakeup
// reaches it through the runtime's poller. Each round submits as soon as
// the previous record was handled, while the reader goes from its read to
// its wait, the moment where a wakeup could be lost (and leave the record
// for an hour); the window is too narrow for the test to hit it reliably.
func TestWakeupReadAtOnce(t *testing.T) {
	m, prog := submitterFlags(t, 2) // BPF_RB_FORCE_WAKEUP
	_, handled := start(t, m, nil)
	for round := int64(1); round <= 500; round++ {
		submit(t, prog)
		deadline := time.Now().Add(10 * time.Second)
		for handled.Load() < round {
			if time.Now().After(deadline) {
				t.Fatalf("round %d: a record submitted with a wakeup not read in 10 s", round)
			}
			time.Sleep(time.Millisecond)
		}
	}
}

// OnCaughtUp runs once the reader has handled every record in the ring:
// after the last of a burst, not after each.
func TestOnCaughtUp(t *testing.T) {
	m, prog := submitter(t)
	var caughtUpAt []int64 // records handled at each call; Run's goroutine only until Sync returns
	var rd *Reader
	var want int64
	for burst, n := range []int64{5, 3} {
		for range n {
			submit(t, prog)
		}
		want += n
		if burst == 0 { // the first burst waits in the ring for the reader
			rd, _ = start(t, m, func(handled int64) { caughtUpAt = append(caughtUpAt, handled) })
		}
		syncWithin10s(rd)
		if len(caughtUpAt) != burst+1 || caughtUpAt[burst] != want {
			t.Fatalf("burst %d: caught up after %v records, want once more after %d", burst, caughtUpAt, want)
		}
	}
}

// The poll interval doubles while polls find nothing, up to IdleWait, and
// is back at its base after one that found records; a base above IdleWait
// stays.
func TestNextWait(t *testing.T) {
	base := 50 * time.Millisecond
	var got []time.Duration
	for w, i := base, 0; i < 6; i++ {
		w = NextWait(w, base, false)
		got = append(got, w)
	}
	want := []time.Duration{100, 200, 400, 500, 500, 500}
	for i := range want {
		if got[i] != want[i]*time.Millisecond {
			t.Fatalf("after %d empty polls: %v, want %v ms", i+1, got, want)
		}
	}
	if w := NextWait(IdleWait, base, true); w != base {
		t.Errorf("after records: %v, want %v", w, base)
	}
	if w := NextWait(time.Hour, time.Hour, false); w != time.Hour {
		t.Errorf("a base of an hour became %v", w)
	}
}

// A record submitted without a wakeup, after the ring was quiet long
// enough for the poll to back off, is still read without a Sync.
func TestQuietRingStillPolled(t *testing.T) {
	m, prog := submitter(t)
	rd, err := New(m, 10*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	handled := new(atomic.Int64)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- rd.Run(ctx, func([]byte) { handled.Add(1) }) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	for round := int64(1); round <= 3; round++ {
		// Quiet for longer than the backoff takes to reach IdleWait
		// (10+20+...+320 ms): the scenario, not a wait for the reader.
		time.Sleep(IdleWait + 700*time.Millisecond)
		submit(t, prog)
		// IdleWait, and room for a busy machine: a backoff without its
		// bound would be past it by the third round.
		deadline := time.Now().Add(IdleWait + 2500*time.Millisecond)
		for handled.Load() < round {
			if time.Now().After(deadline) {
				t.Fatalf("round %d: a record submitted without wakeup was not read in %v", round, IdleWait+2500*time.Millisecond)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
}
