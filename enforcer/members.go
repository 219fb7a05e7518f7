package enforcer

import (
	"fmt"
	"io"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// taskLister lists the pid-bound processes with the task iterator of
// bpf/members.c, which needs the kernel's BTF. Without it PidsOf reads the
// pid table instead.
type taskLister struct {
	prog *ebpf.Program
	iter *link.Iter
}

func loadTaskLister(pidSessions *ebpf.Map) (*taskLister, error) {
	spec, err := loadMembers()
	if err != nil {
		return nil, err
	}
	var progs membersPrograms
	opts := ebpf.CollectionOptions{MapReplacements: map[string]*ebpf.Map{"pid_sessions": pidSessions}}
	if err := spec.LoadAndAssign(&progs, &opts); err != nil {
		return nil, fmt.Errorf("load task iterator: %w", err)
	}
	it, err := link.AttachIter(link.IterOptions{Program: progs.BoundTasks})
	if err != nil {
		progs.Close()
		return nil, fmt.Errorf("attach task iterator: %w", err)
	}
	return &taskLister{prog: progs.BoundTasks, iter: it}, nil
}

func (t *taskLister) close() error {
	t.iter.Close()
	return t.prog.Close()
}

const sizeofBoundTask = int(unsafe.Sizeof(membersBoundTask{}))

// pidsOf runs the iterator once and keeps the processes bound to slot/gen.
func (t *taskLister) pidsOf(slot uint32, gen uint64) ([]uint32, error) {
	r, err := t.iter.Open()
	if err != nil {
		return nil, err
	}
	defer r.Close()
	b, err := io.ReadAll(r)
	if err != nil {
		return nil, fmt.Errorf("read task iterator: %w", err)
	}
	var out []uint32
	var rec membersBoundTask
	for ; len(b) >= sizeofBoundTask; b = b[sizeofBoundTask:] {
		copy(unsafe.Slice((*byte)(unsafe.Pointer(&rec)), sizeofBoundTask), b)
		if rec.Slot == slot && rec.Gen == gen {
			out = append(out, rec.Tgid)
		}
	}
	return out, nil
}
