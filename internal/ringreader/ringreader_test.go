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
	privtest.RequireRoot(t)
	if err := rlimit.RemoveMemlock(); err != nil {
		t.Fatal(err)
	}
	m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.RingBuf, MaxEntries: 1 << 16})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
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
	defer prog.Close()
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
