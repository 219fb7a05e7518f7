package sensor

// Escapes. The process programs keep membership per process: a member by
// cgroup is bound by tgid at its first fork or exec, and the gate looks at
// that binding first, so moving to another cgroup does not take a process
// out of its session. The attempt is reported on the gate's event ring, in
// the gate's event layout (bpf/process.h), so that it becomes an audit
// record and counts against the session's violation budget like a denial.
// In an event decoded by the enforcer (enforcer.Event), such a report has
//
//	Hook      HookEscape
//	Reason    the EscapeKind
//	CgroupID  the cgroup the member was moved or cloned into
//	PID, TID  the member (for a clone into a cgroup, the process that
//	          called clone3; for a fork into a new network namespace, the
//	          new process)
//	NameHash  the other process: for a move, the tgid of the process that
//	          moved the member; for a clone, the new process
//	Slot, Gen, QuarantinedNow  as for a decision

// HookEscape is the hook value of an escape report on the gate's ring.
const HookEscape = uint8(processAfProcHookAF_HOOK_ESCAPE)

// EscapeKind is what a member tried.
type EscapeKind uint8

const (
	// EscapeCgroupMove: the member was written into another cgroup's
	// cgroup.procs or cgroup.threads, by itself or another process.
	EscapeCgroupMove = EscapeKind(processAfEscapeKindAF_ESCAPE_CGROUP_MOVE)
	// EscapeCloneIntoCgroup: the member forked a process into another
	// cgroup (clone3 CLONE_INTO_CGROUP).
	EscapeCloneIntoCgroup = EscapeKind(processAfEscapeKindAF_ESCAPE_CLONE_INTO_CGROUP)
	// EscapeNetns: the member moved to another network namespace than
	// the one it was last seen in. The event's CgroupID is then the new
	// namespace's inode number, NameHash the old one's (0: not known) and
	// Protocol the NetnsVia.
	EscapeNetns = EscapeKind(processAfEscapeKindAF_ESCAPE_NETNS)
	// EscapePtrace: the member asked to attach to a process outside its
	// session (ptrace, process_vm_*, /proc/PID/mem, pidfd_getfd), or in a
	// session that launches MCP servers to any process or to be traced,
	// and the program at the LSM hook refused it (bpf/boundary.c). The
	// event's Verdict is the decision, NameHash the other process's tgid
	// and Protocol the PtraceHow.
	EscapePtrace = EscapeKind(processAfEscapeKindAF_ESCAPE_PTRACE)
	// EscapeSocketReceive: a member of a session that launches MCP servers
	// received an inet socket (SCM_RIGHTS, pidfd_getfd), refused at the
	// file_receive hook. The event's Dest is the socket's peer, Protocol
	// its IPPROTO.
	EscapeSocketReceive = EscapeKind(processAfEscapeKindAF_ESCAPE_SOCKET_RECEIVE)
)

// PtraceHow is which ptrace request an EscapePtrace refused, and why.
type PtraceHow uint8

const (
	PtraceOutsideSession = PtraceHow(processAfPtraceHowAF_PTRACE_OUTSIDE_SESSION)
	PtraceServersSession = PtraceHow(processAfPtraceHowAF_PTRACE_SERVERS_SESSION)
	PtraceTraceme        = PtraceHow(processAfPtraceHowAF_PTRACE_TRACEME)
)

// Via is how records name the request ("via"): attach or traceme.
func (h PtraceHow) Via() string {
	if h == PtraceTraceme {
		return "traceme"
	}
	return "attach"
}

// NetnsVia is how a member came to another network namespace.
type NetnsVia uint8

const (
	// NetnsViaExec: seen at an exec in it, the change itself unseen.
	NetnsViaExec = NetnsVia(processAfNetnsViaAF_NETNS_VIA_EXEC)
	// NetnsViaClone: the member forked a child into a new one.
	NetnsViaClone = NetnsVia(processAfNetnsViaAF_NETNS_VIA_CLONE)
	// NetnsViaUnshare, NetnsViaSetns: the syscall returned in it (the
	// syscall exit program, which the gate attaches).
	NetnsViaUnshare = NetnsVia(processAfNetnsViaAF_NETNS_VIA_UNSHARE)
	NetnsViaSetns   = NetnsVia(processAfNetnsViaAF_NETNS_VIA_SETNS)
)

// String is the name audit records give it ("via").
func (v NetnsVia) String() string {
	switch v {
	case NetnsViaExec:
		return "exec"
	case NetnsViaClone:
		return "clone"
	case NetnsViaUnshare:
		return "unshare"
	case NetnsViaSetns:
		return "setns"
	}
	return "unknown"
}

// String is the name audit records give the attempt ("what").
func (k EscapeKind) String() string {
	switch k {
	case EscapeCgroupMove:
		return "cgroup_move"
	case EscapeCloneIntoCgroup:
		return "clone_into_cgroup"
	case EscapeNetns:
		return "netns"
	case EscapePtrace:
		return "ptrace"
	case EscapeSocketReceive:
		return "socket_receive"
	}
	return "unknown"
}
