package session

import (
	"net/netip"

	"github.com/agentfence/agentfence/enforcer"
	"github.com/agentfence/agentfence/scope"
)

// Kernel is the part of the enforcer the registry writes policy to.
type Kernel interface {
	// Slots is how many session slots the kernel maps hold, slot 0 (never
	// used) included.
	Slots() int
	PutSession(slot uint32, s enforcer.SessionState) error
	Session(slot uint32) (enforcer.SessionState, error)
	SetState(slot uint32, gen uint64, st enforcer.State) error
	WriteScope(slot uint32, gen uint64, entries []scope.Entry) error
	DeleteScope(slot uint32, entries []scope.Entry) error
	// WriteNames and DeleteNames take a session's full rule list and act on
	// its hostname rules; PurgeLearned drops the addresses learned for a slot.
	WriteNames(slot uint32, gen uint64, rules []scope.Rule) error
	DeleteNames(slot uint32, rules []scope.Rule) error
	PurgeLearned(slot uint32) error
	// Learned lists the addresses learned for a session's hostname rules,
	// and Hostname names a learned name's hash.
	Learned(slot uint32, gen uint64) ([]enforcer.LearnedAddr, error)
	Hostname(slot uint32, hash uint64) string
	BindCgroup(cgroupID uint64, slot uint32, gen uint64) error
	UnbindCgroup(cgroupID uint64) error
	// HoldCgroup binds a cgroup bound to nothing to the hold
	// (enforcer.HoldSlot); ReleaseCgroup unbinds one bound to the hold.
	// Each reports whether it did.
	HoldCgroup(cgroupID uint64) (bool, error)
	ReleaseCgroup(cgroupID uint64) (bool, error)
	BindPid(tgid uint32, slot uint32, gen uint64) error
	UnbindPid(tgid uint32) error
	PidBinding(tgid uint32) (slot uint32, gen uint64, ok bool)
	PidsOf(slot uint32, gen uint64) ([]uint32, error)
	// HookHostnames and UnhookHostnames attach and detach (counted per
	// cgroup) the programs hostname rules need on a cgroup's packets;
	// PruneHostnameHooks drops what an earlier daemon attached and Restore
	// did not claim.
	HookHostnames(cgroupPath string) error
	UnhookHostnames(cgroupPath string) error
	PruneHostnameHooks() error
}

// Cgroups creates, finds and empties the cgroups sessions are bound to.
type Cgroups interface {
	// Create makes cgroup name below parent ("" = the sessions' base); a
	// non-negative owner uid is given the cgroup, so that a non-root session
	// member can start processes in its child sessions.
	Create(parent, name string, owner int) (path string, cgroupID uint64, err error)
	// Destroy kills whatever still runs in the cgroup and removes it.
	Destroy(path string) error
	// Kill kills every process in the cgroup and below.
	Kill(path string) error
	// KillPIDs kills the processes (members bound by pid).
	KillPIDs(pids []uint32)
	// Procs lists the processes in the cgroup and below.
	Procs(path string) ([]int, error)
	// Of returns the cgroup directory of pid.
	Of(pid int) (string, error)
	// FindContainer returns the cgroup of a container by (a prefix of at
	// least 12 characters of) its id.
	FindContainer(id string) (path string, cgroupID uint64, err error)
	// FindPod returns the cgroup of a Kubernetes pod by its UID.
	FindPod(uid string) (path string, cgroupID uint64, err error)
}

// Conn is a connection of a member process, for Sockets.
type Conn struct {
	PID    int
	Proto  string
	Remote netip.AddrPort
}

// Sockets destroys connections of member processes.
type Sockets interface {
	// Destroy destroys the connections of pids that match selects; a nil
	// match selects all, which lets the implementation skip listing them
	// first.
	Destroy(pids []int, match func(Conn) bool) ([]Conn, error)
}
