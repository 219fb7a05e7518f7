package sensor

import (
	"bytes"
	"errors"
	"fmt"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ExeID identifies an executable as the kernel saw it at exec time. Dev uses
// the kernel's internal encoding (major<<20 | minor), not st_dev.
type ExeID struct {
	Ino uint64
	Dev uint32
}

// Major and Minor split the kernel's internal device encoding.
func (e ExeID) Major() uint32 { return e.Dev >> 20 }
func (e ExeID) Minor() uint32 { return e.Dev & (1<<20 - 1) }

// ExeIDOf is the ExeID of the file st describes.
func ExeIDOf(st *syscall.Stat_t) ExeID { return ExeID{Ino: st.Ino, Dev: KernelDev(st.Dev)} }

// KernelDev converts st_dev to the encoding BPF reads from
// super_block.s_dev.
func KernelDev(dev uint64) uint32 { return unix.Major(dev)<<20 | unix.Minor(dev) }

// Event is one of *ExecEvent, *ForkEvent or *ExitEvent.
type Event interface {
	// Process is the thread group the event is about.
	Process() (tgid uint32, startTime uint64)
	// Time is the kernel's boot-clock time of the event in ns.
	Time() uint64
}

// ExecEvent reports a successful execve by any thread of a group; after it the
// group has TGID and the new image.
type ExecEvent struct {
	TGID, PID, PPID uint32
	UID, GID        uint32
	Ktime           uint64
	CgroupID        uint64
	StartTime       uint64 // boot ns; with TGID names the process
	Exe             ExeID
	Filename        string // as passed to execve
	Interp          string // set only when it differs from Filename (#! scripts)
	Args            []string
	ArgsTruncated   bool // the kernel read only the first ArgvMax bytes
	ArgsFault       bool // argv was not readable; Args is empty
}

// ForkEvent reports a new process (not a thread).
type ForkEvent struct {
	TGID, ParentTGID uint32
	Ktime            uint64
	StartTime        uint64
	ParentStartTime  uint64
	SessionInherited bool // the child was bound to a session at fork: its parent's, or its cgroup's
	ExeInherited     bool // the parent's proc_exe entry was copied
}

// ExitEvent reports that the last thread of a group exited.
type ExitEvent struct {
	TGID      uint32
	Ktime     uint64
	StartTime uint64
	// Status is the wait(2) status: exit code in bits 8-15, signal in 0-6.
	Status uint32
}

// Quiet says that the ring was empty at a poll that began at Ktime, when a
// Wake asked (EventSource.Wake): every
// fork, exec and exit before then has been read. A process that connects
// after its exec committed that exec before it ran, so a Quiet after the
// connect's time tells a process that did not exec from one whose exec is
// still to come (proccache's WaitFor), without waiting for another
// process's event.
type Quiet struct{ Ktime uint64 }

func (e *Quiet) Process() (uint32, uint64) { return 0, 0 }
func (e *Quiet) Time() uint64              { return e.Ktime }

func (e *ExecEvent) Process() (uint32, uint64) { return e.TGID, e.StartTime }
func (e *ForkEvent) Process() (uint32, uint64) { return e.TGID, e.StartTime }
func (e *ExitEvent) Process() (uint32, uint64) { return e.TGID, e.StartTime }
func (e *ExecEvent) Time() uint64              { return e.Ktime }
func (e *ForkEvent) Time() uint64              { return e.Ktime }
func (e *ExitEvent) Time() uint64              { return e.Ktime }

// ExitCode is the code passed to exit, or -1 when a signal killed the group.
func (e *ExitEvent) ExitCode() int {
	if e.Signal() != 0 {
		return -1
	}
	return int(e.Status>>8) & 0xff
}

// Signal is the signal that killed the group, or 0.
func (e *ExitEvent) Signal() int { return int(e.Status & 0x7f) }

// ArgvMax is the kernel-side bound on argv bytes per exec.
const ArgvMax = len(processProcExecEvent{}.Argv)

var errShort = errors.New("short event")

// Decode parses one ring buffer record. It copies everything it keeps, so raw
// may be reused.
func Decode(raw []byte) (Event, error) {
	if len(raw) < int(unsafe.Sizeof(processProcEventHdr{})) {
		return nil, fmt.Errorf("decode: %w: %d bytes", errShort, len(raw))
	}
	switch processAfProcEventType(raw[0]) {
	case processAfProcEventTypeAF_PROC_EXEC:
		var r processProcExecEvent
		if err := decodeInto(&r, raw); err != nil {
			return nil, err
		}
		fl := processAfProcFlags(r.Hdr.Flags)
		return &ExecEvent{
			TGID: r.Hdr.Tgid, PID: r.Pid, PPID: r.Ppid,
			UID: r.Uid, GID: r.Gid,
			Ktime: r.Hdr.Ktime, CgroupID: r.CgroupId, StartTime: r.StartTime,
			Exe:           ExeID{Ino: r.Exe.Ino, Dev: r.Exe.Dev},
			Filename:      cstring(i8(r.Filename[:]), int(r.FilenameLen)),
			Interp:        cstring(i8(r.Interp[:]), int(r.InterpLen)),
			Args:          splitArgs(i8(r.Argv[:min(int(r.ArgvLen), len(r.Argv))])),
			ArgsTruncated: fl&processAfProcFlagsAF_FLAG_ARGV_TRUNCATED != 0,
			ArgsFault:     fl&processAfProcFlagsAF_FLAG_ARGV_FAULT != 0,
		}, nil
	case processAfProcEventTypeAF_PROC_FORK:
		var r processProcForkEvent
		if err := decodeInto(&r, raw); err != nil {
			return nil, err
		}
		fl := processAfProcFlags(r.Hdr.Flags)
		return &ForkEvent{
			TGID: r.Hdr.Tgid, ParentTGID: r.ParentTgid,
			Ktime: r.Hdr.Ktime, StartTime: r.StartTime, ParentStartTime: r.ParentStartTime,
			SessionInherited: fl&processAfProcFlagsAF_FLAG_SESSION_INHERITED != 0,
			ExeInherited:     fl&processAfProcFlagsAF_FLAG_EXE_INHERITED != 0,
		}, nil
	case processAfProcEventTypeAF_PROC_EXIT:
		var r processProcExitEvent
		if err := decodeInto(&r, raw); err != nil {
			return nil, err
		}
		return &ExitEvent{TGID: r.Hdr.Tgid, Ktime: r.Hdr.Ktime, StartTime: r.StartTime, Status: r.ExitCode}, nil
	}
	return nil, fmt.Errorf("decode: unknown event type %d", raw[0])
}

// decodeInto copies raw over *T. The generated types carry HostLayout and the
// kernel writes host-endian records, so a byte copy is the exact decoding and
// avoids reflection on the hot path; copying sidesteps alignment of raw.
func decodeInto[T any](dst *T, raw []byte) error {
	n := int(unsafe.Sizeof(*dst))
	if len(raw) < n {
		return fmt.Errorf("decode %T: %w: %d < %d bytes", *dst, errShort, len(raw), n)
	}
	copy(unsafe.Slice((*byte)(unsafe.Pointer(dst)), n), raw[:n])
	return nil
}

// i8 views a C char array, which bpf2go renders as int8, as bytes.
func i8(b []int8) []byte {
	if len(b) == 0 {
		return nil
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(&b[0])), len(b))
}

func cstring(b []byte, n int) string {
	if n > len(b) || n < 0 {
		n = len(b)
	}
	b = b[:n]
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	return string(b)
}

// splitArgs splits the NUL-separated argv block. Bytes are kept as they are;
// sanitising for JSON is the consumer's business.
func splitArgs(b []byte) []string {
	b = bytes.TrimSuffix(b, []byte{0})
	if len(b) == 0 {
		return nil
	}
	parts := bytes.Split(b, []byte{0})
	out := make([]string, len(parts))
	for i, p := range parts {
		out[i] = string(p)
	}
	return out
}
