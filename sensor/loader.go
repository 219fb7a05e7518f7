//go:build linux

package sensor

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"

	"github.com/agentfence/agentfence/internal/boottime"
	"github.com/agentfence/agentfence/internal/ringreader"
	"github.com/agentfence/agentfence/internal/ringsize"
)

// ErrClosed is returned by ReadEvent after Close.
var ErrClosed = os.ErrClosed

// EventSource is what the process cache consumes; ProcessPrograms implements
// it against the kernel and tests implement it with canned events.
type EventSource interface {
	// ReadEvent blocks until the next event, or a Quiet; after Close it
	// returns an error wrapping ErrClosed.
	ReadEvent() (Event, error)
	// Wake makes a ReadEvent that waits for the poll interval return at
	// once: a Quiet if the ring is empty.
	Wake()
	// Lost is the number of events the kernel dropped because the ring
	// buffer was full.
	Lost() (uint64, error)
	Close() error
}

// ProcessOptions configures LoadProcessPrograms. The zero value loads
// standalone with private maps.
type ProcessOptions struct {
	// PidSessions and ProcExe, when set, replace the object's maps of the
	// same name so the gate and these programs share state. They must have
	// the shapes declared in bpf/common.h.
	PidSessions *ebpf.Map
	ProcExe     *ebpf.Map
	// Sessions, CgroupSessions, GateEvents and GateStats are the gate's
	// maps of those names (bpf/gate.c): the session slots, the cgroup
	// bindings, the decision ring and its counters. With them, a member
	// by cgroup is bound by tgid at its first fork or exec, so a move to
	// another cgroup does not take it out of its session, and the move is
	// reported on the gate's ring as an escape (EscapeEvent) that counts
	// against the session's budget. Without them the object uses private
	// maps of the same shapes: nothing is a member by cgroup.
	Sessions       *ebpf.Map
	CgroupSessions *ebpf.Map
	GateEvents     *ebpf.Map
	GateStats      *ebpf.Map
	// RingBufferSize overrides the size of proc_events in bytes; it must be
	// a power of two and a multiple of the page size.
	RingBufferSize uint32
	// PollInterval bounds how long an event may wait in the ring buffer
	// before ReadEvent returns it (default 10ms) while events flow. The
	// programs only wake the reader once a batch has accumulated, so this is
	// the delivery latency of a trickle; after a quiet spell it is up to
	// ringreader.IdleWait.
	PollInterval time.Duration
	// KernelTypes supplies BTF for CO-RE on kernels that lack
	// /sys/kernel/btf/vmlinux.
	KernelTypes *btf.Spec
}

// ProcessPrograms holds the loaded and attached process programs.
type ProcessPrograms struct {
	objs  processObjects
	links []link.Link
	rd    *ringbuf.Reader
	w     *ringreader.Waiter // where ReadEvent waits; reads never block
	rec   ringbuf.Record
	poll  time.Duration
	wait  time.Duration // the poll interval now (ringreader.NextWait)

	mu      sync.Mutex
	waiters []chan struct{} // Sync callers, oldest first
	closed  bool
}

var _ EventSource = (*ProcessPrograms)(nil)

// LoadProcessPrograms loads bpf/process.c, attaches it to the sched
// tracepoints and opens the event reader. Close releases everything.
func LoadProcessPrograms(opts ProcessOptions) (_ *ProcessPrograms, err error) {
	spec, err := ProcessSpec(opts)
	if err != nil {
		return nil, fmt.Errorf("load process spec: %w", err)
	}
	repl := map[string]*ebpf.Map{}
	for name, m := range map[string]*ebpf.Map{"pid_sessions": opts.PidSessions, "proc_exe": opts.ProcExe,
		"sessions": opts.Sessions, "cgroup_sessions": opts.CgroupSessions, "gate_events": opts.GateEvents,
		"gate_stats": opts.GateStats} {
		if m != nil {
			repl[name] = m
		}
	}
	ringsize.FromReplacements(spec, repl)

	p := &ProcessPrograms{poll: opts.PollInterval}
	if p.poll <= 0 {
		p.poll = 10 * time.Millisecond
	}
	defer func() {
		if err != nil {
			p.Close()
		}
	}()
	err = spec.LoadAndAssign(&p.objs, &ebpf.CollectionOptions{
		MapReplacements: repl,
		Programs:        ebpf.ProgramOptions{KernelTypes: opts.KernelTypes},
	})
	if err != nil {
		var verr *ebpf.VerifierError
		if errors.As(err, &verr) {
			return nil, fmt.Errorf("load process objects: %+v", verr)
		}
		return nil, fmt.Errorf("load process objects: %w", err)
	}

	// Reader first: events produced between attach and NewReader would be
	// buffered anyway, but an error here should not leave programs attached.
	if p.rd, err = ringbuf.NewReader(p.objs.ProcEvents); err != nil {
		return nil, fmt.Errorf("open proc_events reader: %w", err)
	}
	p.rd.SetDeadline(time.Unix(1, 0))
	if p.w, err = ringreader.NewWaiter(p.objs.ProcEvents); err != nil {
		return nil, fmt.Errorf("watch proc_events: %w", err)
	}
	// Exit before fork before exec: a process forked between two attaches is
	// then never seen exiting without its fork, only the reverse. The
	// cgroup move comes last: it needs the bindings fork and exec make.
	for _, a := range []struct {
		name string
		prog *ebpf.Program
	}{
		{"sched_process_exit", p.objs.AfSchedExit},
		{"sched_process_fork", p.objs.AfSchedFork},
		{"sched_process_exec", p.objs.AfSchedExec},
		{"cgroup_attach_task", p.objs.AfTaskCgroupAttach},
	} {
		l, err := link.AttachRawTracepoint(link.RawTracepointOptions{Name: a.name, Program: a.prog})
		if err != nil {
			return nil, fmt.Errorf("attach raw_tp/%s: %w", a.name, err)
		}
		p.links = append(p.links, l)
	}
	return p, nil
}

// ReadEvent blocks for the next event, or returns a Quiet when Wake (or
// Sync) found the ring empty. It must not be called concurrently with
// itself; Close unblocks it with ErrClosed.
func (p *ProcessPrograms) ReadEvent() (Event, error) {
	for {
		p.mu.Lock()
		waiting := len(p.waiters)
		p.mu.Unlock()
		if p.wait == 0 {
			p.wait = p.poll
		}
		asked := p.w.Asked()
		began := boottime.Now()
		if err := p.rd.ReadInto(&p.rec); err != nil {
			if !errors.Is(err, os.ErrDeadlineExceeded) {
				return nil, err
			}
			// The ring was empty: whoever called Sync before this read
			// began has had every earlier event returned.
			p.release(waiting)
			if asked {
				// Someone asked (Wake, Sync): say the ring is empty. A
				// Quiet at every poll cost an idle daemon a tenth of its
				// CPU at rest for nothing.
				return &Quiet{Ktime: began}, nil
			}
			// Records submitted without wakeup are read after the wait,
			// which grows while the ring stays empty.
			if err := p.w.Wait(time.Now().Add(p.wait)); err != nil {
				return nil, err
			}
			p.wait = ringreader.NextWait(p.wait, p.poll, false)
			continue
		}
		p.wait = p.poll
		ev, err := Decode(p.rec.RawSample)
		if err != nil {
			// A layout mismatch is a build bug; surface it, do not spin.
			return nil, err
		}
		return ev, nil
	}
}

// Wake makes a waiting ReadEvent return at once.
func (p *ProcessPrograms) Wake() { p.w.Interrupt() }

// Sync returns once ReadEvent has returned every event submitted before the
// call, or ctx is done, or Close was called.
func (p *ProcessPrograms) Sync(ctx context.Context) {
	done := make(chan struct{})
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.waiters = append(p.waiters, done)
	p.mu.Unlock()
	p.w.Interrupt() // no poll interval's wait for records submitted without wakeup
	select {
	case <-done:
	case <-ctx.Done():
	}
}

// release answers the n oldest Sync callers, or all of them if n < 0.
func (p *ProcessPrograms) release(n int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if n < 0 || n > len(p.waiters) { // all, or Close took them meanwhile
		n = len(p.waiters)
	}
	for _, c := range p.waiters[:n] {
		close(c)
	}
	p.waiters = p.waiters[n:]
}

// Lost sums the per-CPU count of events dropped on a full ring buffer.
func (p *ProcessPrograms) Lost() (uint64, error) {
	var perCPU []uint64
	if err := p.objs.ProcLost.Lookup(uint32(0), &perCPU); err != nil {
		return 0, fmt.Errorf("read proc_lost: %w", err)
	}
	var n uint64
	for _, v := range perCPU {
		n += v
	}
	return n, nil
}

// PidSessions, ProcExe, Sessions, CgroupSessions and GateEvents return the
// maps in use (the replacements if given).
func (p *ProcessPrograms) PidSessions() *ebpf.Map    { return p.objs.PidSessions }
func (p *ProcessPrograms) ProcExe() *ebpf.Map        { return p.objs.ProcExe }
func (p *ProcessPrograms) Sessions() *ebpf.Map       { return p.objs.Sessions }
func (p *ProcessPrograms) CgroupSessions() *ebpf.Map { return p.objs.CgroupSessions }
func (p *ProcessPrograms) GateEvents() *ebpf.Map     { return p.objs.GateEvents }

// Close detaches the programs, stops ReadEvent and releases the objects.
// Replacement maps passed in ProcessOptions stay open; they belong to the
// caller. Only the first call does anything: the process cache closes its
// source when its context ends, which may race the owner's Close, and a
// descriptor closed twice may by then be another file's.
func (p *ProcessPrograms) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	p.mu.Unlock()
	p.release(-1)
	var errs []error
	for _, l := range p.links {
		errs = append(errs, l.Close())
	}
	p.links = nil
	if p.rd != nil {
		errs = append(errs, p.rd.Close())
	}
	if p.w != nil {
		errs = append(errs, p.w.Close())
	}
	errs = append(errs, p.objs.Close())
	return errors.Join(errs...)
}
