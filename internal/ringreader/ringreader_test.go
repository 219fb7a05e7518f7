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
	// A long poll interval: only Sync can make the records show up quickly.
	rd, err := New(m, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var n atomic.Int64
	done := make(chan error, 1)
	go func() { done <- rd.Run(ctx, func([]byte) { n.Add(1) }) }()
	for round := 1; round <= 20; round++ {
		if _, err := prog.Run(&ebpf.RunOptions{Data: make([]byte, 14)}); err != nil {
			t.Fatal(err)
		}
		sctx, scancel := context.WithTimeout(context.Background(), 10*time.Second)
		start := time.Now()
		rd.Sync(sctx)
		scancel()
		if got := n.Load(); got != int64(round) {
			t.Fatalf("round %d: %d records handled after Sync", round, got)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Fatalf("Sync took %s", d)
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// submitter makes a ring buffer and a program that submits one 8-byte
// record to it without waking the reader, each time it runs.
func submitter(t *testing.T) (*ebpf.Map, *ebpf.Program) {
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
		asm.Mov.Imm(asm.R2, 1), // BPF_RB_NO_WAKEUP
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

// OnCaughtUp runs once the reader has handled every record in the ring:
// after the last of a burst, not after each.
func TestOnCaughtUp(t *testing.T) {
	m, prog := submitter(t)
	rd, err := New(m, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var handled atomic.Int64
	var caughtUpAt []int64 // records handled at each call; Run's goroutine only until Sync returns
	rd.OnCaughtUp(func() { caughtUpAt = append(caughtUpAt, handled.Load()) })
	done := make(chan error, 1)
	for burst, want := range []int64{5, 8} {
		for range want - handled.Load() {
			if _, err := prog.Run(&ebpf.RunOptions{Data: make([]byte, 14)}); err != nil {
				t.Fatal(err)
			}
		}
		if burst == 0 {
			go func() { done <- rd.Run(ctx, func([]byte) { handled.Add(1) }) }()
		}
		sctx, scancel := context.WithTimeout(context.Background(), 10*time.Second)
		rd.Sync(sctx)
		scancel()
		if len(caughtUpAt) != burst+1 || caughtUpAt[burst] != want {
			t.Fatalf("burst %d: caught up after %v records, want once more after %d", burst, caughtUpAt, want)
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
